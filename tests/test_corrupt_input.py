"""Truncated or corrupt files a command reads → one line naming the file, exit 2, never a traceback.

The four defects of issue 24 (pretrain --init-from, report, CSV canaries; the privacy table's
width is checked in tests/test_report_privacy.py) and the same class swept: model directories,
checkpoints, metrics files and canary files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_bad_input import _truncate, assert_one_line, run_cli
from tunelab.errors import TunelabError


@pytest.fixture
def model_dir(tmp_path: Path, tiny) -> Path:  # noqa: ARG001 - `tiny` makes sure the cache exists
    from tunelab.models import resolve_model_path

    out = tmp_path / "model"
    shutil.copytree(resolve_model_path("tiny-random"), out)
    return out


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_pretrain_init_from_a_truncated_model_dir(capsys: pytest.CaptureFixture[str], model_dir: Path, tmp_path: Path, name: str):
    _truncate(model_dir / name, (model_dir / name).stat().st_size // 2)
    args = ("pretrain", "--init-from", model_dir, "--corpus", "pydoc", "--max-steps", "1", "--output", tmp_path / "o")
    assert_one_line(*run_cli(capsys, *args), str(model_dir / name))
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_report_names_the_truncated_metrics_file(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    bad = tmp_path / "runs" / "eval" / "metrics.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"kind": "task", "task": "arith')
    assert_one_line(*run_cli(capsys, "report", tmp_path / "runs", "--output", tmp_path / "r.html"),
                    "no tunelab runs", f"{bad}:1: malformed JSON")


def test_report_lists_a_truncated_file_beside_good_runs(tmp_path: Path):
    from tunelab.report import render_report

    good = tmp_path / "runs" / "good" / "metrics.json"
    good.parent.mkdir(parents=True)
    good.write_text(json.dumps({"kind": "task", "task": "arithmetic", "n": 4, "score": 0.5, "scorer": "exact"}))
    bad = tmp_path / "runs" / "bad" / "metrics.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"kind": "ta')
    page = render_report([tmp_path / "runs"])
    assert f"skipped {bad}:1: malformed JSON" in page


@pytest.mark.parametrize("cells, expected", [(("true", "FALSE"), [True, False]), (("1", "0"), [True, False]),
                                              (("Yes", "no"), [True, False])])
def test_csv_canary_files_mark_membership_with_text(tmp_path: Path, cells: tuple[str, str], expected: list[bool]):
    from tunelab.privacy.audit_run import load_canary_file

    path = tmp_path / "canaries.csv"
    path.write_text("prompt,response,member\n" + "".join(f"prompt {i},secret {i},{c}\n" for i, c in enumerate(cells)))
    records, member, _ = load_canary_file(path)
    assert member == expected and records[0] == {"prompt": "prompt 0", "response": "secret 0"}


def test_csv_canary_file_with_a_bad_membership_cell(tmp_path: Path):
    from tunelab.privacy.audit_run import load_canary_file

    path = tmp_path / "canaries.csv"
    path.write_text("prompt,response,member\np,s,true\np2,s2,maybe\n")
    with pytest.raises(TunelabError, match=rf"^{path}:3: field 'member' must be true or false"):
        load_canary_file(path)


def test_jsonl_canary_membership_stays_strict(tmp_path: Path):
    from tunelab.privacy.audit_run import load_canary_file

    path = tmp_path / "canaries.jsonl"
    path.write_text(json.dumps({"prompt": "p", "response": "s", "member": "true"}) + "\n")
    with pytest.raises(TunelabError, match=r":1: field 'member' must be true or false"):
        load_canary_file(path)


def test_truncated_canary_set(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    path = tmp_path / "canaries.json"
    path.write_text('{"format": "tunelab-canaries", "fam')
    args = ("audit", "privacy", "--model", "tiny-random", "--canaries", path, "--output", tmp_path / "a")
    assert_one_line(*run_cli(capsys, *args), str(path))


@pytest.mark.parametrize("name", ["trainable.safetensors", "rng.safetensors", "state.json"])
def test_resume_from_a_truncated_checkpoint(capsys: pytest.CaptureFixture[str], qa_file: Path, tmp_path: Path, name: str):
    from tests.conftest import tiny_config
    from tunelab.finetune import train

    out = tmp_path / "run"
    train(tiny_config(qa_file, out, max_steps=3, save_every=1), stop_after_step=1)
    target = out / "checkpoint" / name
    assert target.is_file()
    _truncate(target, target.stat().st_size // 2)
    assert_one_line(*run_cli(capsys, "train", "--output", out, "--resume"), str(target))
