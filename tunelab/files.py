"""Readers for the files a user hands to tunelab, with one-line errors.

Every such file (data, configs, prompts, adapter dirs) goes through these readers, so a missing,
unreadable, non-UTF-8, malformed-JSON or broken safetensors file becomes a ``TunelabError``
naming the file (and the line, where there is one) instead of a library traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tunelab.errors import TunelabError, first_line

_BOM = b"\xef\xbb\xbf"


# --------------------------------------------------------------------------- text
def read_bytes(path: str | Path, what: str = "file") -> bytes:
    """The bytes of ``path``; a missing, directory or unreadable path raises ``TunelabError``."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise TunelabError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise TunelabError(f"{path}: a directory, not a {what}") from None
    except OSError as exc:
        raise TunelabError(f"{path}: cannot read the {what} ({exc.strerror or first_line(exc)})") from None


def not_utf8_message(path: str | Path, data: bytes, pos: int, line: int | None = None) -> str:
    """``FILE:LINE: not UTF-8 text (byte 0xNN at column C)`` for the bad byte at ``data[pos]``.

    ``data`` is the whole file, or one line of it when ``line`` says which.
    """
    start = data.rfind(b"\n", 0, pos) + 1
    lineno = (line or 1) + data.count(b"\n", 0, pos)
    # Count characters, not bytes, up to the bad byte: everything before it decoded fine.
    column = len(data[start:pos].decode("utf-8", errors="replace")) + 1
    hint = ""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") and lineno == 1:
        hint = "; it looks like UTF-16, save it as UTF-8"  # PowerShell's `>` writes UTF-16
    return f"{path}:{lineno}: not UTF-8 text (byte 0x{data[pos]:02x} at column {column}{hint})"


def decode_text(data: bytes, path: str | Path, line: int | None = None) -> str:
    """``data`` as UTF-8 (a leading BOM is dropped); a bad byte raises with its line and column."""
    if data.startswith(_BOM) and (line or 1) == 1:
        data = data[len(_BOM):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TunelabError(not_utf8_message(path, data, exc.start, line)) from None


def read_text(path: str | Path, what: str = "file") -> str:
    """A user's text file as a string (UTF-8); every failure is a one-line ``TunelabError``."""
    return decode_text(read_bytes(path, what), path)


# --------------------------------------------------------------------------- JSON
_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}


def json_type(value: Any) -> str:
    """How JSON (or YAML) would name ``value``'s type, for messages."""
    if isinstance(value, bool) or value is None:
        return _JSON_TYPES[type(value)]
    if isinstance(value, (int, float)):
        return "a number"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def parse_json(text: str, path: str | Path, line: int | None = None) -> Any:
    """``json.loads`` with errors as ``FILE:LINE: malformed JSON (...)``; ``line``: where ``text`` starts."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TunelabError(f"{path}:{(line or 1) + exc.lineno - 1}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:  # json's parser recurses once per nested [ or {
        raise TunelabError(f"{path}:{line or 1}: JSON nested too deeply") from None


def read_json(path: str | Path, what: str = "JSON file", expect: type | None = dict) -> Any:
    """A user's JSON file; ``expect`` (default: an object) is the type the top level must have."""
    data = parse_json(read_text(path, what), path)
    if expect is not None and not isinstance(data, expect):
        raise TunelabError(f"{path}: expected {_JSON_TYPES.get(expect, expect.__name__)} at the top level, got {json_type(data)}")
    return data


def json_field(text: str, path: str | Path, field: str, expect: type | None = None) -> Any:
    """A JSON value stored as text inside a file (e.g. safetensors metadata), errors naming the field."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError, TypeError):
        raise TunelabError(f"{path}: metadata '{field}' is not valid JSON (corrupt file?)") from None
    if expect is not None and not isinstance(value, expect):
        raise TunelabError(f"{path}: metadata '{field}' must be {_JSON_TYPES.get(expect, expect.__name__)}, got {json_type(value)}")
    return value


_KINDS = {int: "an integer", float: "a number", str: "a string", dict: "an object"}


def json_value(value: Any, path: str | Path, field: str, kind: type) -> Any:
    """A field of a user's JSON file, checked for type: ints count as numbers, bools never do."""
    if isinstance(value, (int, float) if kind is float else kind) and not isinstance(value, bool):
        return value
    raise TunelabError(f"{path}: field '{field}' must be {_KINDS[kind]}, got {json_type(value)}")


# --------------------------------------------------------------------------- safetensors
def _safetensors_error(path: str | Path, exc: BaseException) -> TunelabError:
    reason = first_line(exc).removeprefix("Error while deserializing header: ")
    return TunelabError(f"{path}: not a readable safetensors file ({reason})")


@contextmanager
def open_safetensors(path: str | Path, what: str = "safetensors file") -> Iterator[Any]:
    """``safe_open(path)`` for a user's file: missing, truncated or corrupt files raise ``TunelabError``.

    Opening reads and checks only the header (which also catches a truncated file: the header
    must cover the file exactly), so this is cheap enough to run before a model is loaded.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise TunelabError(f"{what} not found: {path}")
    if path.is_dir():
        raise TunelabError(f"{path}: a directory, not a {what}")
    try:
        handle = safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as exc:
        raise _safetensors_error(path, exc) from None
    with handle as fh:
        try:
            yield fh
        except SafetensorError as exc:  # a tensor's bytes could not be read back
            raise _safetensors_error(path, exc) from None


def check_safetensors(path: str | Path, what: str = "safetensors file") -> dict[str, str]:
    """Check that ``path`` is a readable safetensors file (header only); return its metadata."""
    with open_safetensors(path, what) as fh:
        return dict(fh.metadata() or {})


def load_safetensors(path: str | Path, what: str = "safetensors file") -> tuple[dict[str, str], dict[str, Any]]:
    """Metadata and all tensors of a user's safetensors file."""
    with open_safetensors(path, what) as fh:
        return dict(fh.metadata() or {}), {k: fh.get_tensor(k) for k in fh.keys()}


@contextmanager
def publish_dir(target: Path) -> Iterator[Path]:
    """Fill a temporary sibling of ``target``, then move it into place in one rename.

    Readers never see half a directory; if another process published ``target`` first, its copy
    wins and ours is dropped; an error leaves nothing behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        yield tmp
        try:
            os.replace(tmp, target)
        except OSError:  # another process published it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
