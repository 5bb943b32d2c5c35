"""Load a base model plus an adapter: a PEFT dir, a tunelab run dir, or a full fine-tune."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from peft import PeftModel

from tunelab.adapters import storage
from tunelab.errors import TunelabError
from tunelab.models import load_model


def load_with_adapter(model: str, adapter: str | Path | None = None, merge: bool = True) -> tuple[Any, Any]:
    """``(model, tokenizer)`` with ``adapter`` applied.

    ``adapter`` may be a PEFT adapter dir, a tunelab LoRI-S dir holding only the compact file,
    a LoTA run (its sparse task vector is added to the base weights), or a ``--method full``
    output (then it *is* the model). ``merge`` folds LoRA weights into the base for faster
    generation.
    """
    if adapter is None:
        return load_model(model)
    path = Path(adapter)
    if not path.is_dir():
        raise TunelabError(f"adapter directory not found: {path}")
    run = json.loads((path / "tunelab.json").read_text()) if (path / "tunelab.json").is_file() else {}
    is_full_model = (path / "config.json").is_file() and not (path / storage.PEFT_CONFIG).is_file()
    if run.get("method") == "full" or is_full_model:
        return load_model(str(path))
    base, tokenizer = load_model(model)
    if (path / storage.TASK_VECTOR_FILE).is_file():
        from tunelab.adapters.lota import apply_task_vector

        if run.get("base_model") not in (None, model):
            raise TunelabError(f"{adapter}: a task vector for base model '{run['base_model']}', not '{model}'")
        apply_task_vector(base, storage.load_task_vector(path / storage.TASK_VECTOR_FILE))
        return base, tokenizer
    if not (path / storage.PEFT_WEIGHTS).is_file() and (path / storage.COMPACT_FILE).is_file():
        path = storage.unpack(path / storage.COMPACT_FILE, Path(tempfile.mkdtemp(prefix="tunelab-unpacked-")))
    if not (path / storage.PEFT_CONFIG).is_file():
        raise TunelabError(f"{adapter}: no adapter_config.json (not a PEFT adapter or tunelab run)")
    base, tokenizer = _with_adapter_tokenizer(base, tokenizer, path)
    peft_model = PeftModel.from_pretrained(base, str(path))
    return (peft_model.merge_and_unload() if merge else peft_model), tokenizer


def _with_adapter_tokenizer(base: Any, tokenizer: Any, path: Path) -> tuple[Any, Any]:
    """An adapter trained with added tokens (refusal tokens) saves its tokenizer: use it, and resize the
    base to it the way training did, so the adapter's TrainableTokens rows fit."""
    if not (path / "tokenizer_config.json").is_file():
        return base, tokenizer
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(path)
    known = tokenizer.get_vocab()  # get_vocab builds a fresh dict: call it once
    added = [t for t in saved.get_vocab() if t not in known]
    if not added:
        return base, tokenizer
    from tunelab.safety.refusal_tokens import resize_for_tokenizer

    if saved.pad_token is None:
        saved.pad_token = saved.eos_token
    resize_for_tokenizer(base, saved, added)
    return base, saved
