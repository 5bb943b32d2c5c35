"""Read, validate, chat-format and batch fine-tuning data.

Records are ``{"prompt": str, "response": str}`` or ``{"messages": [{"role", "content"}, ...]}``
in JSONL, CSV, Parquet or a Hugging Face dataset saved with ``save_to_disk``. They are rendered
with the tokenizer's own chat template; the loss covers assistant tokens only. A prompt/response
record may add ``"prefix": str``: the assistant turn is then prefix + response, and the prefix
tokens are read but not trained (safety-recovery augmentation).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from tunelab.errors import TunelabError, first_line
from tunelab.files import decode_text, json_type, parse_json, read_bytes, read_text

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")
_FORMAT_HINT = "expected {'prompt', 'response'} or {'messages': [{'role', 'content'}, ...]}"


# --------------------------------------------------------------------------- reading
def _read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    # Split the raw bytes on b"\n" (not str.splitlines, which also splits on U+2028 and friends
    # that JSON strings may hold), so line numbers match an editor's and a bad byte names its line.
    for lineno, raw in enumerate(read_bytes(path, "data file").split(b"\n"), 1):
        line = decode_text(raw, path, lineno)
        if not line.strip():
            continue
        yield f"{path}:{lineno}", parse_json(line, path, lineno)


def _read_json(path: Path) -> Iterator[tuple[str, Any]]:
    rows = parse_json(read_text(path, "data file"), path)
    if not isinstance(rows, list):
        raise TunelabError(f"{path}: a .json data file must hold a list of records, got {json_type(rows)}")
    for i, row in enumerate(rows):
        yield f"{path}[{i}]", row


def _read_csv(path: Path) -> Iterator[tuple[str, Any]]:
    text = read_text(path, "data file")  # decoded up front: a bad byte is reported with its line
    lines_read = 0

    def counted() -> Iterator[str]:
        # csv's own line_num lags behind on errors; count the lines handed to it instead.
        nonlocal lines_read
        for line in io.StringIO(text, newline=""):
            lines_read += 1
            yield line

    reader = csv.DictReader(counted())
    try:
        for row in reader:
            where = f"{path}:{lines_read}"  # the row's last line (a quoted field may span several)
            if None in row:  # DictReader files surplus fields under the key None
                raise TunelabError(f"{where}: {len(reader.fieldnames or []) + len(row[None])} fields, but the header has "
                                   f"{len(reader.fieldnames or [])}")
            if "messages" in row and isinstance(row["messages"], str):
                try:
                    row["messages"] = json.loads(row["messages"])
                except (json.JSONDecodeError, RecursionError):
                    raise TunelabError(f"{where}: field 'messages' is not valid JSON") from None
            yield where, row
    except csv.Error as exc:
        raise TunelabError(f"{path}:{lines_read}: malformed CSV ({first_line(exc)})") from None


def _read_rows(rows: Iterable[dict[str, Any]], where: str) -> Iterator[tuple[str, Any]]:
    for i, row in enumerate(rows):
        yield f"{where} row {i}", row


def _read_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types (ArrowInvalid, OSError, ...) for bad files
        raise TunelabError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
    return _read_rows(rows, str(path))


def _read_hf_disk(path: Path) -> Iterator[tuple[str, Any]]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
        if isinstance(ds, DatasetDict):
            if "train" not in ds:
                raise TunelabError(f"{path}: dataset dict has no 'train' split (splits: {', '.join(ds)})")
            ds = ds["train"]
        rows = list(ds)  # read now, so a broken arrow file fails here with the dir's name
    except TunelabError:
        raise
    except Exception as exc:  # datasets/pyarrow/json raise many types for a damaged dir
        raise TunelabError(f"{path}: not a readable saved dataset ({type(exc).__name__}: {first_line(exc)})") from None
    return _read_rows(rows, str(path))


def _is_hf_dataset_dir(path: Path) -> bool:
    return path.is_dir() and any(
        (path / marker).exists() for marker in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


def validate_record(record: Any, where: str) -> list[dict[str, str]]:
    """Check one record and return it as a chat: a list of ``{"role", "content"}`` messages."""
    if not isinstance(record, dict):
        raise TunelabError(f"{where}: record is a {type(record).__name__}, {_FORMAT_HINT}")
    if "messages" in record and record["messages"] is not None:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise TunelabError(f"{where}: field 'messages' must be a non-empty list")
        for j, msg in enumerate(messages):
            if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
                raise TunelabError(f"{where}: messages[{j}] needs 'role' and 'content'")
            if msg["role"] not in ROLES:
                raise TunelabError(f"{where}: messages[{j}].role is '{msg['role']}', expected one of {ROLES}")
            if not isinstance(msg["content"], str):
                raise TunelabError(f"{where}: messages[{j}].content must be a string")
        if not any(m["role"] == "assistant" for m in messages):
            raise TunelabError(f"{where}: field 'messages' has no assistant turn to learn from")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    for field in ("prompt", "response"):
        if field not in record or record[field] is None:
            raise TunelabError(f"{where}: field '{field}' missing ({_FORMAT_HINT})")
        if not isinstance(record[field], str) or not record[field].strip():
            raise TunelabError(f"{where}: field '{field}' must be a non-empty string")
    prefix = record.get("prefix")
    if prefix is None or prefix == "":
        return [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]
    if not isinstance(prefix, str):
        raise TunelabError(f"{where}: field 'prefix' must be a string (assistant text kept out of the loss)")
    # The assistant turn is prefix + response, verbatim; tokenize_chat masks the prefix from the loss.
    return [{"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": prefix + record["response"], "prefix": prefix}]


def read_rows(path: str | Path) -> list[tuple[str, Any]]:
    """Raw rows of a data file (or HF dataset dir), each with its location ("file:line") for errors."""
    path = Path(path)
    if not path.exists():
        raise TunelabError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if _is_hf_dataset_dir(path):
        rows = _read_hf_disk(path)
    elif path.is_dir():
        raise TunelabError(f"{path}: a directory, but not a dataset saved with datasets' save_to_disk")
    elif suffix == ".jsonl":
        rows = _read_jsonl(path)
    elif suffix == ".json":
        rows = _read_json(path)
    elif suffix == ".csv":
        rows = _read_csv(path)
    elif suffix in (".parquet", ".pq"):
        rows = _read_parquet(path)
    else:
        raise TunelabError(f"{path}: unknown data format '{suffix}' (use .jsonl, .json, .csv, .parquet or a saved HF dataset dir)")
    rows = list(rows)
    if not rows:
        raise TunelabError(f"{path}: no records (the dataset is empty)")
    return rows


def read_records(path: str | Path) -> list[list[dict[str, str]]]:
    """Read and validate a data file (or HF dataset dir); return one chat per record."""
    return [validate_record(row, where) for where, row in read_rows(path)]


def data_sha256(path: str | Path) -> str:
    """Content hash of a data file, or of every file under a dataset directory."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            digest.update(str(f.relative_to(path)).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- tokenizing
@dataclass
class Example:
    """One tokenized chat: ``labels`` is ``IGNORE_INDEX`` outside assistant turns."""

    input_ids: list[int]
    labels: list[int]
    # Constrained objective: log π_ref(labels[j]) at each label position j (0.0 where unsupervised).
    ref_logprobs: list[float] | None = None

    @property
    def n_loss_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def tokenize_chat(messages: list[dict[str, str]], tokenizer: Any, max_length: int) -> Example:
    """Render a chat with the tokenizer's template; supervise assistant turns only.

    Each assistant turn is cut out as (render up to it with a generation prompt) vs (render
    including it), so the labels cover exactly the assistant's text and its end-of-turn marker.
    Segments are tokenized separately and concatenated, so prompt tokens never merge with
    response tokens across the boundary.
    """
    if tokenizer.chat_template is None:
        raise TunelabError("the tokenizer has no chat template; use a chat/instruct model")
    input_ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not prefix.startswith(rendered) or not full.startswith(prefix):
            raise TunelabError("the chat template does not render turns as prefixes of each other; cannot mask prompts")
        prompt_ids = tokenizer(prefix[len(rendered):], add_special_tokens=False)["input_ids"]
        response = full[len(prefix):]
        masked: list[int] = []
        if msg.get("prefix"):
            # A record's "prefix": assistant text the model reads but is not trained to write.
            if not response.startswith(msg["prefix"]):
                raise TunelabError("the chat template alters the assistant text, so its 'prefix' cannot be masked")
            masked = tokenizer(msg["prefix"], add_special_tokens=False)["input_ids"]
            response = response[len(msg["prefix"]):]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        input_ids += prompt_ids + masked + response_ids
        labels += [IGNORE_INDEX] * (len(prompt_ids) + len(masked)) + response_ids
        rendered = full
    return Example(input_ids[:max_length], labels[:max_length])


def tokenize_records(chats: list[list[dict[str, str]]], tokenizer: Any, max_length: int) -> tuple[list[Example], int]:
    """Tokenize all chats; drop those whose assistant tokens were all truncated away.

    Returns the examples and how many were dropped.
    """
    examples = [tokenize_chat(chat, tokenizer, max_length) for chat in chats]
    kept = [ex for ex in examples if ex.n_loss_tokens > 0]
    return kept, len(examples) - len(kept)


# --------------------------------------------------------------------------- batching
def length_grouped_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, mega_batch_factor: int = 16
) -> list[list[int]]:
    """Shuffle, then sort by length inside mega-batches so each batch pads little.

    Deterministic in ``(seed, epoch)``: a resumed run rebuilds exactly the same batches.
    """
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = batch_size * mega_batch_factor
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


class Collator:
    """Pads a list of examples to the longest one (right padding)."""

    def __init__(self, examples: list[Example], pad_token_id: int) -> None:
        self.examples = examples
        self.pad_token_id = pad_token_id

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        batch = [self.examples[i] for i in indices]
        if not batch:  # Poisson sampling (DP) may draw an empty batch: the step still happens
            empty = torch.zeros((0, 0), dtype=torch.long)
            return {"input_ids": empty, "attention_mask": empty.clone(), "labels": empty.clone()}
        width = max(len(ex.input_ids) for ex in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ex in enumerate(batch):
            n = len(ex.input_ids)
            input_ids[row, :n] = torch.tensor(ex.input_ids)
            labels[row, :n] = torch.tensor(ex.labels)
            attention_mask[row, :n] = 1
        out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if batch[0].ref_logprobs is not None:
            ref = torch.zeros((len(batch), width), dtype=torch.float32)
            for row, ex in enumerate(batch):
                ref[row, : len(ex.ref_logprobs)] = torch.tensor(ex.ref_logprobs)
            out["ref_logprobs"] = ref
        return out
