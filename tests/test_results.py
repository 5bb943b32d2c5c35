"""Typed results (versioned, self-reading metrics.json) and the one run directory."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tunelab.errors import TunelabError
from tunelab.results import RESULT_KINDS, Result, RunDir, not_written, read_result, result_kind


@result_kind("test-fit", version=2)
@dataclass
class FitResult(Result):
    rows: int = 0
    fit: dict[str, float] = field(default_factory=dict)
    table: Path | None = None

    @classmethod
    def upgrade(cls, data: dict, version: int) -> dict:
        if version < 2 and "n_rows" in data:  # version 1 called it n_rows
            data["rows"] = data.pop("n_rows")
        return data


def test_round_trip_keeps_fields_order_and_unknown_keys(tmp_path: Path) -> None:
    res = FitResult(rows=3, fit={"alpha": 0.3}, table=tmp_path / "t.csv", extra={"note": "kept"})
    path = res.write(RunDir(tmp_path))
    raw = json.loads(path.read_text())
    assert list(raw)[:4] == ["kind", "schema_version", "rows", "fit"] and raw["note"] == "kept"
    back = read_result(path)
    assert isinstance(back, FitResult) and back.rows == 3 and back.fit == {"alpha": 0.3}
    assert back.extra == {"note": "kept"} and "test-fit" in RESULT_KINDS


def test_an_older_schema_is_upgraded_and_a_newer_one_refused(tmp_path: Path) -> None:
    old = tmp_path / "metrics.json"
    old.write_text(json.dumps({"kind": "test-fit", "n_rows": 7}))  # no schema_version: version 1
    assert FitResult.read(old).rows == 7
    old.write_text(json.dumps({"kind": "test-fit", "schema_version": 3}))
    with pytest.raises(TunelabError, match=r"metrics.json: schema version 3 .* newer"):
        FitResult.read(old)


@pytest.mark.parametrize("text, message", [
    ('{"kind": "test-fit", "ro', r"metrics.json:1: malformed JSON .*truncated"),
    ("[1, 2]", r"metrics.json: expected a JSON object, got list"),
    ('{"kind": "other"}', r"metrics.json: a 'other' result, not 'test-fit'"),
])
def test_bad_files_are_one_line_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(text)
    with pytest.raises(TunelabError, match=message):
        FitResult.read(path)


def test_unknown_kind_reads_as_a_plain_result(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"kind": "someone-else", "score": 1}))
    res = read_result(path)
    assert type(res) is Result and res.extra == {"kind": "someone-else", "score": 1}
    assert res.to_dict()["kind"] == "someone-else"


@dataclass
class CarriedResult(Result):  # not registered: test_result_kinds checks every registered kind has a writer
    KIND = "test-carried"

    score: float = 0.0
    records: list[dict] = not_written(default_factory=list)
    where: str | None = not_written(None)


def test_not_written_fields_ride_on_the_result_but_stay_out_of_the_file(tmp_path: Path) -> None:
    res = CarriedResult(score=0.5, records=[{"output": "x"}], where="here")
    path = res.write(tmp_path)
    assert json.loads(path.read_text()) == {"kind": "test-carried", "score": 0.5} == res.to_dict()
    back = CarriedResult.read(path)
    assert back.records == [] and back.where is None and back == res
    from_dict = CarriedResult.from_dict({"kind": "test-carried", "score": 1.0, "records": [1]})  # a file's key of that name
    assert from_dict.records == [] and from_dict.extra == {"records": [1]}


def test_run_dir_refuses_a_finished_dir_and_overwrite_clears_marker_first(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    rd.prepare()
    rd.write_text("outputs.jsonl", "{}\n")
    FitResult(rows=1).write(rd)
    assert rd.finished
    with pytest.raises(TunelabError, match="already holds a finished result; pass --overwrite"):
        rd.prepare()
    with pytest.raises(TunelabError, match="nothing to resume"):
        rd.prepare(resume=True)
    rd.prepare(overwrite=True)
    assert not rd.finished and list(rd.path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(TunelabError, match="not a directory"):
        RunDir(tmp_path / "file").prepare()
