"""Load a base model plus an adapter: a PEFT dir, a tunelab run dir, or a full fine-tune."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from peft import PeftModel

from tunelab.adapters import method_class, storage
from tunelab.errors import TunelabError, first_line
from tunelab.files import check_safetensors, json_value, read_json
from tunelab.layout import RUN_FILE
from tunelab.models import load_model


def load_with_adapter(model: str, adapter: str | Path | None = None, merge: bool = True) -> tuple[Any, Any]:
    """``(model, tokenizer)`` with ``adapter`` applied.

    ``adapter`` may be a PEFT adapter dir, a tunelab LoRI-S dir holding only the compact file,
    a LoTA run (its sparse task vector is added to the base weights), or a ``--method full``
    output (then it *is* the model). ``merge`` folds LoRA weights into the base for faster
    generation. The adapter's files are read and checked before the base model is loaded, so a
    broken one fails in a second with a line naming the file.
    """
    if adapter is None:
        return load_model(model)
    path = Path(adapter)
    if not path.is_dir():
        raise TunelabError(f"adapter directory not found: {path}")
    run = read_json(path / RUN_FILE, "run record") if (path / RUN_FILE).is_file() else {}
    is_full_model = (path / "config.json").is_file() and not (path / storage.PEFT_CONFIG).is_file()
    recorded = method_class(run.get("method"))
    if (recorded is not None and recorded.full_model) or is_full_model:
        return load_model(str(path))
    if (path / storage.TASK_VECTOR_FILE).is_file():
        from tunelab.adapters.lota import apply_task_vector

        if run.get("base_model") not in (None, model):
            raise TunelabError(f"{adapter}: a task vector for base model '{run['base_model']}', not '{model}'")
        deltas = storage.load_task_vector(path / storage.TASK_VECTOR_FILE)
        base, tokenizer = load_model(model)
        try:
            apply_task_vector(base, deltas)
        except TunelabError as exc:
            raise TunelabError(f"{path / storage.TASK_VECTOR_FILE}: {exc}") from None
        return base, tokenizer
    config_file = path / storage.PEFT_CONFIG  # what error messages name
    if not (path / storage.PEFT_WEIGHTS).is_file() and (path / storage.COMPACT_FILE).is_file():
        config_file = path / storage.COMPACT_FILE  # the config travels inside the compact file
        path = storage.unpack(path / storage.COMPACT_FILE, Path(tempfile.mkdtemp(prefix="tunelab-unpacked-")))
    if not (path / storage.PEFT_CONFIG).is_file():
        raise TunelabError(f"{adapter}: no adapter_config.json (not a PEFT adapter or tunelab run)")
    check_adapter_files(path, config_file)
    base, tokenizer = load_model(model)
    base, tokenizer = _with_adapter_tokenizer(base, tokenizer, path)
    try:
        peft_model = PeftModel.from_pretrained(base, str(path))
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
        # e.g. a size mismatch: an adapter trained on another base model, or a hand-edited config
        raise TunelabError(f"{adapter}: cannot apply the adapter to model '{model}' ({first_line(exc)})") from exc
    return (peft_model.merge_and_unload() if merge else peft_model), tokenizer


# Text files a saved adapter may hold next to its weights (the tokenizer's, with refusal tokens).
_ADAPTER_JSON = (storage.PEFT_CONFIG, "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json", "added_tokens.json")


def check_adapter_files(path: Path, config_file: Path | None = None) -> None:
    """Read a PEFT adapter dir's JSON files and the weights' header; raise ``TunelabError`` on the first bad one.

    ``config_file`` is the file errors in the adapter config name (default: ``adapter_config.json``).
    """
    for name in _ADAPTER_JSON:
        if (path / name).is_file():
            read_json(path / name, name)
    config = read_json(path / storage.PEFT_CONFIG, storage.PEFT_CONFIG)
    shown = config_file or path / storage.PEFT_CONFIG
    # The fields PEFT does arithmetic with; a wrong type would fail deep inside it.
    for field, kind in (("peft_type", str), ("r", int), ("lora_alpha", float)):
        if config.get(field) is not None:
            json_value(config[field], shown, field, kind)
    weights = path / storage.PEFT_WEIGHTS
    if weights.is_file():
        check_safetensors(weights, "adapter weights")
    elif not (path / "adapter_model.bin").is_file():
        raise TunelabError(f"{path}: no {storage.PEFT_WEIGHTS} next to {storage.PEFT_CONFIG}")


def _with_adapter_tokenizer(base: Any, tokenizer: Any, path: Path) -> tuple[Any, Any]:
    """An adapter trained with added tokens (refusal tokens) saves its tokenizer: use it, and resize the
    base to it the way training did, so the adapter's TrainableTokens rows fit."""
    if not (path / "tokenizer_config.json").is_file():
        return base, tokenizer
    from transformers import AutoTokenizer

    try:
        saved = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # JSON that parses but is not a tokenizer
        raise TunelabError(f"{path}: cannot load the adapter's tokenizer ({first_line(exc)})") from exc
    if not grow_to_tokenizer(base, tokenizer, saved):
        return base, tokenizer
    if saved.pad_token is None:
        saved.pad_token = saved.eos_token
    return base, saved


def grow_to_tokenizer(base: Any, base_tokenizer: Any, tokenizer: Any) -> bool:
    """Resize ``base`` for the tokens ``tokenizer`` has beyond ``base_tokenizer`` (refusal tokens,
    new-token canaries), their rows at the start training gave them; return whether any were added."""
    known = base_tokenizer.get_vocab()  # get_vocab builds a fresh dict: call it once
    added = [t for t in tokenizer.get_vocab() if t not in known]
    if added:
        from tunelab.models import resize_for_tokenizer

        resize_for_tokenizer(base, tokenizer, added)
    return bool(added)
