"""The trainer's extension points: plug-in hooks, update rules, and what the loop refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_config
from tunelab.errors import TunelabError
from tunelab.finetune import TrainConfig, train
from tunelab.train import Plugin, Run, StepInfo, fit



class Recorder(Plugin):
    """Records the hooks in call order; adds one chat, a loss factor and a record entry."""

    def __init__(self, loss_factor: float = 1.0) -> None:
        self.calls: list[str] = []
        self.loss_factor = loss_factor
        self.steps: list[StepInfo] = []

    def on_data(self, run: Run, rows: list[tuple[str, Any]], chats: list[Any]) -> list[Any]:
        self.calls.append("on_data")
        self.n_rows = len(rows)
        return chats + [[{"role": "user", "content": "extra?"}, {"role": "assistant", "content": "extra!"}]]

    def on_model(self, run: Run) -> None:
        self.calls.append("on_model")
        assert run.model is not None and run.prepared is None and not run.examples

    def on_prepared(self, run: Run) -> None:
        self.calls.append("on_prepared")
        assert run.prepared is not None and not (run.out / "config.yaml").exists()

    def on_start(self, run: Run) -> None:
        self.calls.append("on_start")
        assert (run.out / "config.yaml").is_file()

    def loss(self, run: Run, batch: dict[str, torch.Tensor], loss: torch.Tensor) -> torch.Tensor:
        if "loss" not in self.calls:
            self.calls.append("loss")
        return loss * self.loss_factor

    def on_step(self, run: Run, info: StepInfo) -> None:
        self.steps.append(info)

    def on_finish(self, run: Run, record: dict[str, Any]) -> None:
        self.calls.append("on_finish")
        record["recorder"] = {"steps": len(self.steps)}


def test_hooks_run_in_order_and_reach_the_record(qa_file: Path, tmp_path: Path) -> None:
    plugin = Recorder()
    out = fit(tiny_config(qa_file, tmp_path / "run", max_steps=3), [plugin])
    assert plugin.calls == ["on_data", "on_model", "on_prepared", "on_start", "loss", "on_finish"]
    assert [s.step for s in plugin.steps] == [1, 2, 3]
    record = json.loads((out / "tunelab.json").read_text())
    assert record["recorder"] == {"steps": 3}
    assert record["examples"] == plugin.n_rows + 1  # the chat on_data added was trained on
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == [s.loss for s in plugin.steps]


def test_a_loss_term_reaches_the_gradient(qa_file: Path, tmp_path: Path) -> None:
    # A plug-in that zeroes the loss leaves LoRA's B at its initial zeros: no gradient, no AdamW step.
    out = fit(tiny_config(qa_file, tmp_path / "zero", max_steps=2), [Recorder(loss_factor=0.0)])
    weights = load_file(out / "adapter_model.safetensors")
    b = [v for k, v in weights.items() if "lora_B" in k]
    assert b and all(torch.count_nonzero(v) == 0 for v in b)
    out = fit(tiny_config(qa_file, tmp_path / "one", max_steps=2), [Recorder()])
    assert any(torch.count_nonzero(v) for k, v in load_file(out / "adapter_model.safetensors").items() if "lora_B" in k)


def _docstring_code(module: Any, drop: str) -> dict[str, Any]:
    """Run the example in ``module``'s docstring (without its last call, ``drop``); return its names."""
    source = module.__doc__.split("::", 1)[1]
    code = "\n".join(line[4:] for line in source.splitlines()).replace(drop, "")
    namespace: dict[str, Any] = {}
    exec(compile(code, f"{module.__name__}-docstring", "exec"), namespace)  # noqa: S102 - our own docstring
    return namespace


def test_docstring_example_plugin(qa_file: Path, tmp_path: Path) -> None:
    """The example in tunelab.train.plugins' docstring runs as written."""
    import tunelab.train.plugins as plugins_module

    l2 = _docstring_code(plugins_module, "fit(cfg, plugins=[L2(1e-4)])")["L2"]
    out = fit(tiny_config(qa_file, tmp_path / "l2", max_steps=2), plugins=[l2(1e-4)])
    assert json.loads((out / "tunelab.json").read_text())["l2_weight"] == 1e-4


def test_plugin_options_need_their_plugins(qa_file: Path, tmp_path: Path) -> None:
    cfg = tiny_config(qa_file, tmp_path / "run", refusal_tokens="single")
    with pytest.raises(TunelabError, match="refusal_tokens need their plug-ins"):
        fit(cfg)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    assert tiny_config(qa_file, tmp_path / "x").plugin_options_set() == []
    assert tiny_config(qa_file, tmp_path / "x", safety_eval_limit=3, objective="constrained").plugin_options_set() \
        == ["safety_eval_limit", "objective"]


def test_docstring_example_update_rule_drives_the_update(qa_file: Path, tmp_path: Path) -> None:
    import tunelab.train.update_rules as rules_module

    rule = _docstring_code(rules_module, "fit(cfg, rule=SignSGD())")["SignSGD"]()
    out = fit(tiny_config(qa_file, tmp_path / "sign", "lora", max_steps=3, grad_accum=2), rule=rule)
    record = json.loads((out / "tunelab.json").read_text())
    assert record["steps"] == 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == [1e-3] * 3 and all(r["grad_norm"] is None for r in rows)
    # B started at 0 and moved by at most 1e-3 per step, in sign steps
    values = torch.cat([v.flatten() for k, v in load_file(out / "adapter_model.safetensors").items() if "lora_B" in k])
    assert 0 < values.abs().max() <= 3e-3 + 1e-7


def test_metrics_after_resume_hold_each_step_once(qa_file: Path, tmp_path: Path) -> None:
    cfg = tiny_config(qa_file, tmp_path / "run", max_steps=6, save_every=2)
    train(cfg, stop_after_step=2)
    metrics = tmp_path / "run" / "metrics.jsonl"
    # as if the process had logged steps 3 and 4 and been killed before the next checkpoint
    with metrics.open("a") as fh:
        for step in (3, 4):
            fh.write(json.dumps({"step": step, "loss": 9.0}) + "\n")
    train(TrainConfig(**{**cfg.to_dict(), "resume": True}))
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert 9.0 not in [json.loads(line)["loss"] for line in metrics.read_text().splitlines()]


# --------------------------------------------------------------------------- config sections
def test_sections_nested_and_flat_give_the_same_config(tmp_path: Path) -> None:
    """``dp: {noise_multiplier: 1.0}`` in YAML is ``noise_multiplier: 1.0`` is the flag; a flag
    overrides one option of a YAML section."""
    nested = tmp_path / "nested.yaml"
    nested.write_text("data: d.jsonl\noutput: out\noptimizer: dp-zo\ndp: {noise_multiplier: 1.0, noise: laplace}\n"
                      "canary:\n  count: 8\n  family: unigram\nrefusal: {tokens: single}\nsafety_check: {eval_limit: 3}\n")
    flat = tmp_path / "flat.yaml"
    flat.write_text("data: d.jsonl\noutput: out\noptimizer: dp-zo\nnoise_multiplier: 1.0\nnoise: laplace\n"
                    "canaries: 8\ncanary_family: unigram\nrefusal_tokens: single\nsafety_eval_limit: 3\n")
    a, b = TrainConfig.from_sources(nested), TrainConfig.from_sources(flat)
    assert a == b and a.dp.noise_multiplier == 1.0 and a.canary.count == 8 and a.refusal.tokens == "single"
    assert TrainConfig.from_sources(None, data="d.jsonl", output="out", optimizer="dp-zo", noise_multiplier=1.0,
                                    noise="laplace", canaries=8, canary_family="unigram", refusal_tokens="single",
                                    safety_eval_limit=3) == a
    over = TrainConfig.from_sources(nested, noise="gaussian")  # one option of the section, the rest kept
    assert over.dp.noise == "gaussian" and over.dp.noise_multiplier == 1.0
    assert a.to_dict()["canary_family"] == "unigram" and "canary" not in a.to_dict()  # saved flat, as older runs
    assert TrainConfig(**a.to_dict()) == a


def test_section_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: d.jsonl\noutput: out\ndp:\n  noise_multiplyer: 1.0\n")
    with pytest.raises(TunelabError, match=r"bad.yaml:4: unknown option 'dp.noise_multiplyer'"):
        TrainConfig.from_sources(bad)
    bad.write_text("data: d.jsonl\noutput: out\ndp:\n  clip: fast\n")
    with pytest.raises(TunelabError, match=r"bad.yaml:4: dp.clip: expected a number, got 'fast'"):
        TrainConfig.from_sources(bad)
    bad.write_text("data: d.jsonl\noutput: out\nnoise: laplace\ndp: {noise: laplace}\n")
    with pytest.raises(TunelabError, match="given twice"):
        TrainConfig.from_sources(bad)
    with pytest.raises(TunelabError, match="--noise-multiplier only applies to --optimizer dp-zo or dp-sgd"):
        TrainConfig.from_sources(None, data="d.jsonl", output="out", dp={"noise_multiplier": 1.0})


def test_every_plugin_option_belongs_to_a_registered_section() -> None:
    """The sections are exactly SECTIONS' entries; the loop's config has no plug-in options but ``objective``."""
    import dataclasses

    from tunelab.finetune import RULES, SECTIONS
    from tunelab.train.config import TrainConfig as LoopConfig

    sections = {f.name: f.type for f in dataclasses.fields(TrainConfig) if f.name in SECTIONS}
    assert list(sections) == list(SECTIONS) and all(sections[n] is SECTIONS.get(n).config for n in SECTIONS)
    assert [f.name for f in dataclasses.fields(LoopConfig) if f.metadata.get("plugin")] == ["objective"]
    assert RULES.names() == ("adamw", "zo", "dp-zo", "dp-sgd")
    with pytest.raises(TunelabError, match="unknown optimizer 'adamv'"):
        TrainConfig.from_sources(None, data="d.jsonl", output="out", optimizer="adamv")


# Training options newer than the saved runs under tests/data/saved, with their defaults.
NEWER_OPTIONS = {"monitor_safety": 0, "monitor_prefill": False, "monitor_prompts": 16, "monitor_max_new_tokens": 32,
                 "stop_on_refusal_drop": None}


def test_saved_run_configs_load() -> None:
    """Old runs' flat ``config`` (tunelab.json) builds the sectioned config unchanged."""
    root = Path(__file__).parent / "data" / "saved" / "runs"
    for record in root.glob("*/tunelab.json"):
        saved = json.loads(record.read_text()).get("config")
        if saved is None or "optimizer" not in saved:
            continue
        got = TrainConfig(**saved).to_dict()
        # options added after these runs were saved come back at their defaults
        assert {k: got[k] for k in got if k in saved or k not in NEWER_OPTIONS} == saved, record
        assert {k: got[k] for k in NEWER_OPTIONS if k not in saved} == {k: v for k, v in NEWER_OPTIONS.items() if k not in saved}
