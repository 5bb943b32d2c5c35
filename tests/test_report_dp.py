"""`tunelab report`: the "Private training" section for runs with a privacy ledger."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_report import assert_self_contained, fake_run, section_ids, visible
from tunelab.report import render_report


def dp_run(d: Path, epsilon: float, epsilon_lb: float | None, mechanism: str = "dp-zo (gaussian)") -> Path:
    fake_run(d, "lora", 1000, 4000)
    record = json.loads((d / "tunelab.json").read_text())
    record["losses"] = []
    record["dp"] = {"mechanism": mechanism, "sample_rate": 0.032, "expected_batch_size": 32, "examples": 1000,
                    "noise_multiplier": 0.7822, "clip": 1.0, "steps": 93, "accountant": "pld", "delta": 1e-5,
                    "epsilon": epsilon, "target_epsilon": 4.0, "neighbouring": "add/remove one example (sensitivity C)",
                    "private_metrics_logged": False, "outside_guarantee": ["--mask-from runs/x: not covered"]}
    if epsilon_lb is not None:
        record["privacy"] = {"epsilon_lb": epsilon_lb, "epsilon_ceiling": 5.0, "auroc": 0.55}
    (d / "tunelab.json").write_text(json.dumps(record))
    return d


def test_dp_section_shows_the_ledger_and_audit(tmp_path: Path):
    dp_run(tmp_path / "runs" / "zo-eps4", 3.9998, 0.42)
    dp_run(tmp_path / "runs" / "sgd-eps4", 4.0, None, mechanism="dp-sgd (gaussian)")
    page = render_report([tmp_path / "runs"])
    assert "dp" in section_ids(page)
    assert_self_contained(page)
    text = visible(page)
    for value in ("Private training", "dp-zo (gaussian)", "dp-sgd (gaussian)", "σ = 0.782", "add/remove one example",
                  "--mask-from runs/x", "0.42", "PLD"):
        assert value in text, value
    assert "audited ε_LB vs ε spent" in page and "contradicts the guarantee" not in text


def test_dp_section_flags_an_audit_above_the_guarantee(tmp_path: Path):
    dp_run(tmp_path / "runs" / "broken", 1.0, 2.5)
    text = visible(render_report([tmp_path / "runs"]))
    assert "ε_LB above ε spent in broken" in text and "contradicts the guarantee" in text


def test_no_dp_runs_no_section(tmp_path: Path):
    fake_run(tmp_path / "runs" / "plain", "lora", 1000, 4000)
    assert "dp" not in section_ids(render_report([tmp_path / "runs"]))
