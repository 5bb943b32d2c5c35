"""The safety-drift monitor (``--monitor-safety K``): its rows, that it leaves training as it was,
the stop rule, the record, its one-line errors and its report section. tiny-random, fast."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_config
from tests.test_bad_input import assert_one_line, run_cli
from tunelab.errors import TunelabError
from tunelab.finetune import TrainConfig, train
from tunelab.safety import monitor as monitor_mod
from tunelab.train.checkpoint import find_checkpoint


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _monitor_steps(out: Path) -> list[int]:
    return [r["step"] for r in _rows(out) if "monitor" in r]


class Planted:
    """A measurement that returns the given refusal rates in turn and keeps each call's trainable weights."""

    def __init__(self, rates: list[float]) -> None:
        self.rates = rates
        self.weights: list[dict[str, torch.Tensor]] = []

    def __call__(self, model: Any, tokenizer: Any, harmful: list, benign: list, **kw: Any) -> dict[str, Any]:
        assert not model.training and not torch.is_grad_enabled()
        self.weights.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        rate = self.rates[min(len(self.weights) - 1, len(self.rates) - 1)]
        return {"refusal_rate": rate, "over_refusal": 0.25, "n_harmful": len(harmful), "n_benign": len(benign)}


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch):
    def plant(rates: list[float]) -> Planted:
        fake = Planted(rates)
        monkeypatch.setattr(monitor_mod, "measure_safety", fake)
        return fake
    return plant


def test_real_measurements_at_step_0_every_k_and_the_last(qa_file: Path, tmp_path: Path) -> None:
    out = train(tiny_config(qa_file, tmp_path / "run", max_steps=5,
                            monitor={"every": 2, "prefill": True, "prompts": 2, "max_new_tokens": 4}))
    rows = [r for r in _rows(out) if "monitor" in r]
    assert [r["step"] for r in rows] == [0, 2, 4, 5]
    first = rows[0]["monitor"]
    assert first["n_harmful"] == 2 and first["n_benign"] == 2 and first["prefill_k"] == 5
    for key in ("refusal_rate", "over_refusal", "prefill_asr", "seconds"):
        assert 0 <= first[key] <= (1 if key != "seconds" else 60), key
    loss_steps = [r["step"] for r in _rows(out) if "loss" in r]
    assert loss_steps == [1, 2, 3, 4, 5]  # the loss rows are as without the monitor
    entry = json.loads((out / "tunelab.json").read_text())["safety_monitor"]
    assert [r["step"] for r in entry["series"]] == [0, 2, 4, 5]
    assert entry["seconds"] > 0 and entry["train_seconds"] >= 0 and entry["stopped"] is None
    assert "dp_note" not in entry and not (out / monitor_mod.BEST_FILE).exists()
    typed = monitor_mod.MonitorRecord.read(out)
    assert typed is not None and [p.step for p in typed.series] == [0, 2, 4, 5] and typed.stopped is None
    assert typed.series[0].prefill_asr == first["prefill_asr"] and typed.every == 2


def test_the_monitor_leaves_training_unchanged(qa_file: Path, tmp_path: Path) -> None:
    kw = dict(max_steps=4, dropout=0.1, scheduler="cosine")  # dropout: the RNG would show a shifted stream
    plain = train(tiny_config(qa_file, tmp_path / "plain", **kw))
    watched = train(tiny_config(qa_file, tmp_path / "watched", **kw,
                                monitor={"every": 1, "prompts": 2, "max_new_tokens": 4}))
    a, b = (json.loads((d / "tunelab.json").read_text()) for d in (plain, watched))
    assert a["losses"] == b["losses"]
    wa, wb = load_file(plain / "adapter_model.safetensors"), load_file(watched / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert len(b["safety_monitor"]["series"]) == 5


def test_stop_rule_keeps_the_best_measured_weights(qa_file: Path, tmp_path: Path, planted) -> None:
    fake = planted([0.8, 0.9, 0.7, 0.55, 0.5])  # steps 0, 1, 2, 3, ...: 0.8 - 0.55 > 0.2 at step 3
    cfg = tiny_config(qa_file, tmp_path / "run", max_steps=8, monitor={"every": 1, "stop_on_refusal_drop": 0.2})
    out = train(cfg)
    record = json.loads((out / "tunelab.json").read_text())
    assert record["steps"] == 3 and len(record["losses"]) == 3
    stopped = record["safety_monitor"]["stopped"]
    assert stopped["step"] == 3 and stopped["best_step"] == 1 and stopped["best_refusal_rate"] == 0.9
    assert stopped["baseline"] == 0.8 and "refusal rate fell" in stopped["reason"]
    assert _monitor_steps(out) == [0, 1, 2, 3]
    saved = load_file(out / "adapter_model.safetensors")
    best, last = fake.weights[1], fake.weights[3]  # the measurement of step 1 and of step 3
    assert saved and any(not torch.equal(best[n], last[n]) for n in best)
    for name, value in best.items():
        assert torch.equal(saved[name.replace(".default", "")], value), name


def test_no_stop_within_the_allowed_drop(qa_file: Path, tmp_path: Path, planted) -> None:
    planted([0.8, 0.7, 0.6])  # 0.2 below step 0: not *more* than 0.2
    out = train(tiny_config(qa_file, tmp_path / "run", max_steps=4, monitor={"every": 2, "stop_on_refusal_drop": 0.2}))
    record = json.loads((out / "tunelab.json").read_text())
    assert record["steps"] == 4 and record["safety_monitor"]["stopped"] is None


def test_resume_does_not_measure_again(qa_file: Path, tmp_path: Path, planted) -> None:
    fake = planted([0.8])
    cfg = tiny_config(qa_file, tmp_path / "run", max_steps=6, save_every=2,
                      monitor={"every": 2, "stop_on_refusal_drop": 0.5})
    train(cfg, stop_after_step=3)  # "killed" after step 3; the checkpoint is step 2's
    assert find_checkpoint(tmp_path / "run") is not None and len(fake.weights) == 2  # steps 0 and 2
    out = train(TrainConfig(**{**cfg.to_dict(), "resume": True}))
    assert len(fake.weights) == 4  # steps 4 and 6 only
    assert _monitor_steps(out) == [0, 2, 4, 6]
    series = json.loads((out / "tunelab.json").read_text())["safety_monitor"]["series"]
    assert [r["step"] for r in series] == [0, 2, 4, 6]
    assert not (out / monitor_mod.BEST_FILE).exists()


def test_dp_ledger_is_the_same_with_and_without_the_monitor(qa_file: Path, tmp_path: Path, planted) -> None:
    planted([0.9])
    dp = dict(optimizer="dp-sgd", noise_multiplier=1.0, max_steps=3)
    plain = json.loads((train(tiny_config(qa_file, tmp_path / "plain", **dp)) / "tunelab.json").read_text())
    watched = json.loads((train(tiny_config(qa_file, tmp_path / "watched", **dp, monitor={"every": 1}))
                          / "tunelab.json").read_text())
    assert plain["dp"]["epsilon"] > 0 and watched["dp"] == plain["dp"]
    assert "privacy ledger" in watched["safety_monitor"]["dp_note"]


@pytest.mark.parametrize(("kw", "message"), [
    ({"stop_on_refusal_drop": 0.2}, "--stop-on-refusal-drop needs --monitor-safety"),
    ({"prefill": True}, "--monitor-prefill needs --monitor-safety"),
    ({"every": -1}, "--monitor-safety must be >= 0"),
    ({"every": 2, "stop_on_refusal_drop": 1.5}, r"fraction in \(0, 1\]"),
    ({"every": 2, "stop_on_refusal_drop": 0.0}, r"fraction in \(0, 1\]"),
    ({"every": 2, "prompts": 0}, "monitor_prompts must be >= 1"),
])
def test_bad_values_are_refused(qa_file: Path, tmp_path: Path, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(TunelabError, match=message):
        tiny_config(qa_file, tmp_path / "run", monitor=kw).validate()
    assert not (tmp_path / "run").exists()


def test_fsdp_is_refused(qa_file: Path, tmp_path: Path) -> None:
    with pytest.raises(TunelabError, match="single process"):
        tiny_config(qa_file, tmp_path / "run", fsdp=True, monitor={"every": 2}).validate()


@pytest.mark.parametrize(("args", "fragment"), [
    (["--stop-on-refusal-drop", "0.3"], "needs --monitor-safety"),
    (["--monitor-safety", "2", "--stop-on-refusal-drop", "2"], "(0, 1]"),
    (["--monitor-safety", "-1"], ">= 0"),
])
def test_cli_errors_are_one_line(qa_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 args: list[str], fragment: str) -> None:
    code, output = run_cli(capsys, "train", "--model", "tiny-random", "--data", qa_file, "--output", tmp_path / "run", *args)
    assert_one_line(code, output, fragment)


def test_the_report_draws_every_run_on_one_plot(qa_file: Path, tmp_path: Path, planted) -> None:
    from tunelab.report.build import render_report

    planted([0.9, 0.4])
    for name in ("a", "b"):
        train(tiny_config(qa_file, tmp_path / name, max_steps=2, monitor={"every": 1, "stop_on_refusal_drop": 0.3}))
    html = render_report([str(tmp_path / "a"), str(tmp_path / "b")])
    section = html[html.index('<section id="monitor">'):]
    section = section[: section.index("</section>")]
    assert "Safety during training" in section and section.count("<img") == 1
    assert section.count("swatch") == 2 and "step 1, kept 0" in section
