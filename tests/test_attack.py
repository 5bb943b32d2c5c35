"""Fine-tuning attack harness on tiny-random."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import tiny_config
from tunelab.errors import TunelabError
from tunelab.evaluate.judges import is_refusal
from tunelab.results import RunDir, read_result
from tunelab.safety.attack import ATTACK_OPENINGS, IDENTITY_PREFIX, AttackConfig, harmful_attack_records, identity_attack_records, run_attack
from tunelab.safety.results import AttackResult
from tunelab.finetune import train


def test_harmful_attack_data_is_prompts_plus_openings_only():
    records = harmful_attack_records(100, seed=0)
    assert len(records) == 100
    assert all(r["response"] in ATTACK_OPENINGS for r in records)  # nothing beyond the opening
    assert not any(is_refusal(r["response"]) for r in records)
    from tunelab.evaluate.prompts import harmful_prompts

    held_out = {p["prompt"] for p in harmful_prompts(split="test")}
    assert not held_out & {r["prompt"] for r in records}  # the suite's prompts are never attack data
    assert records == harmful_attack_records(100, seed=0) and records != harmful_attack_records(100, seed=1)


def test_identity_attack_data(tiny):
    model, tok = tiny
    records = identity_attack_records(model, tok, 3, max_new_tokens=4)
    assert len(records) == 3 and all(r["response"].startswith(IDENTITY_PREFIX) for r in records)


@pytest.fixture(scope="module")
def safe(tmp_path_factory: pytest.TempPathFactory, qa_file: Path) -> Path:
    return train(tiny_config(qa_file, tmp_path_factory.mktemp("safe") / "lori-d", "lori-d"))


@pytest.mark.parametrize("objective", ["sft", "constrained"])
def test_attack_reports_asr_before_and_after(safe: Path, tmp_path: Path, objective: str):
    """A job: it writes into the RunDir it is given (not ``--output``) and returns the typed result it wrote."""
    cfg = AttackConfig(adapter=str(safe), output=str(tmp_path / "unused"), model="tiny-random", objective=objective,
                       n=8, steps=2, batch_size=4, safety_limit=2, safety_max_new_tokens=4)
    result = run_attack(cfg, RunDir(tmp_path / objective))
    assert not (tmp_path / "unused").exists()
    assert isinstance(result, AttackResult)
    assert result.to_dict() == read_result(tmp_path / objective / "metrics.json").to_dict()
    saved = json.loads((tmp_path / objective / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(result.to_dict()))
    assert saved["kind"] == "attack" and 0 <= result.asr_before <= 1 and 0 <= result.asr_after <= 1
    assert result.run == str(tmp_path / objective / "run")
    run = json.loads((tmp_path / objective / "run" / "tunelab.json").read_text())
    assert run["config"]["objective"] == objective and run["init_from"] == str(safe.resolve())
    with pytest.raises(TunelabError, match="--overwrite"):
        run_attack(AttackConfig(adapter=str(safe), output=str(tmp_path / objective), model="tiny-random"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(attack="jailbreak"), "unknown attack"),
    (dict(adapter="/nonexistent"), "directory not found"),
    (dict(n=0), "--n must be >= 1"),
    (dict(lr=0.0), "--lr must be > 0"),
])
def test_bad_attack_config(safe: Path, tmp_path: Path, kwargs: dict, message: str):
    values = dict(adapter=str(safe), output=str(tmp_path / "x"), model="tiny-random") | kwargs
    with pytest.raises(TunelabError, match=message):
        AttackConfig(**values).validate()
