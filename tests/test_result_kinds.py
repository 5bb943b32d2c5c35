"""Every metrics kind has a typed Result, every typed Result has a writer, and saved run dirs load.

The saved run directories in ``tests/data/saved/runs/`` were written by the untyped writers; each
``metrics.json`` must read through :func:`read_result` into its registered class and write back
(``to_dict``, and the bytes ``write`` produces) exactly as it was.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

from tunelab.results import RESULT_KINDS, Result, read_result

ROOT = Path(__file__).resolve().parents[1]
SAVED = ROOT / "tests" / "data" / "saved" / "runs"
# The rooms' result modules (each registers its kinds on import).
RESULT_MODULES = ("tunelab.evaluate.results", "tunelab.safety.results", "tunelab.privacy.results",
                  "tunelab.inspect.results", "tunelab.moe.results", "tunelab.scaling.results",
                  "tunelab.merge.results")
# "kind" values that are not a command's metrics.json: the head sweep's own heads.json.
NOT_RESULTS = {"head_sweep"}
# Kinds born typed: written by constructing their dataclass (nested typed fields), never from a dict.
BORN_TYPED = {"study", "judge-train", "judge-compare"}  # written as Result objects from the start

for _name in RESULT_MODULES:
    importlib.import_module(_name)

SAVED_FILES = sorted(SAVED.rglob("metrics.json"))


def _written_kinds() -> set[str]:
    """Kinds the package's code writes: ``"kind": "x"`` literals and ``KIND = "x"`` constants."""
    kinds: set[str] = set()
    for path in (ROOT / "tunelab").rglob("*.py"):
        if path.name == "results.py":
            continue
        text = path.read_text()
        kinds |= set(re.findall(r'"kind":\s*"([^"]+)"', text))
        kinds |= set(re.findall(r'^KIND\s*=\s*"([^"]+)"', text, flags=re.M))
    return kinds - NOT_RESULTS


@pytest.mark.parametrize("path", SAVED_FILES, ids=lambda p: str(p.relative_to(SAVED)))
def test_saved_metrics_load_typed_and_round_trip(path: Path) -> None:
    data = json.loads(path.read_text())
    result = read_result(path)
    assert type(result) is not Result and result.KIND == data["kind"]
    assert result.to_dict() == data and list(result.to_dict()) == list(data)


def test_writing_a_read_result_gives_the_same_bytes(tmp_path: Path) -> None:
    for path in SAVED_FILES:
        text = path.read_text()
        written = read_result(path).write(tmp_path).read_text()
        # the saved files' indents are their writers'; the class writes with the same indent
        assert json.loads(written) == json.loads(text)
        assert written.rstrip("\n") == json.dumps(json.loads(text), indent=type(read_result(path)).INDENT)


def test_every_written_kind_has_a_result_class_and_every_class_a_writer() -> None:
    written, registered = _written_kinds(), set(RESULT_KINDS.names()) - {"test-fit"} - BORN_TYPED
    assert written - registered == set(), f"kinds written with no Result class: {sorted(written - registered)}"
    assert registered - written == set(), f"Result classes with no writer: {sorted(registered - written)}"


def test_result_fields_are_typed() -> None:
    import dataclasses
    import typing

    for name in RESULT_KINDS.names():
        cls = RESULT_KINDS.get(name)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            assert f.name in hints and hints[f.name] is not typing.Any, f"{cls.__name__}.{f.name} is untyped"


@pytest.mark.parametrize("kind", sorted(set(RESULT_KINDS.names()) - {"test-fit"} - BORN_TYPED))
def test_a_writer_dict_writes_the_same_bytes_through_its_result(kind: str, tmp_path: Path) -> None:
    """A writer's dict (some fields left out, fields in its own order, a key the class does not
    know) written through its Result is the file ``json.dumps`` wrote before results were typed."""
    import dataclasses

    from tunelab.results import as_result

    cls = RESULT_KINDS.get(kind)
    names = [f.name for f in dataclasses.fields(cls) if f.init and f.name != "extra"]
    data = {"kind": kind, **{name: i for i, name in enumerate(reversed(names[::2]))}, "later_key": [1, 2]}
    path = as_result(data).write(tmp_path)
    expected = json.dumps(data, indent=cls.INDENT) + ("\n" if cls.TRAILING_NEWLINE else "")
    assert path.read_text() == expected
