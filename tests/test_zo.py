"""Zeroth-order training (MeZO SPSA): the estimate, the perturbation, masks, RNG hygiene, resume."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tests.conftest import tiny_config
from safetensors.torch import load_file

from tunelab.errors import TunelabError
from tunelab.finetune import TrainConfig, train
from tunelab.train import fit
from tunelab.train.zo import ZO, step_seed


def _rule(params: dict[str, torch.nn.Parameter], masks: dict[str, torch.Tensor] | None = None, **cfg) -> ZO:
    """A ZO rule set up on bare parameters (no model, no loop)."""
    values = dict(seed=5, lr=0.1, zo_eps=1e-3, method="lora", scheduler="constant", warmup_steps=0, weight_decay=0.0, optimizer="zo")
    values.update(cfg)
    run = SimpleNamespace(cfg=SimpleNamespace(**values), accelerator=SimpleNamespace(num_processes=1),
                          prepared=SimpleNamespace(grad_masks=lambda: masks or {}))
    rule = ZO()
    rule.setup(run, params, total_steps=10)
    return rule


def test_spsa_estimate_is_the_directional_derivative():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 4))
    x = torch.randn(4)
    rule = _rule({"w": w})

    def loss_fn(batch):
        return ((w @ x).tanh() ** 2).sum()

    loss_fn({}).backward()
    z = dict((id(p), z) for p, z in rule.directions(step_seed(5, 0)))[id(w)]
    expected = float((w.grad * z).sum())
    plus, minus = rule.two_sided(lambda: loss_fn({}))
    assert float(plus - minus) / 2e-3 == pytest.approx(expected, rel=1e-3)


def test_perturbation_restores_weights_and_leaves_global_rng_alone():
    w = torch.nn.Parameter(torch.randn(50, 50))
    before = w.detach().clone()
    rule = _rule({"w": w})
    state = torch.get_rng_state()
    rule.micro_step(lambda batch: (w ** 2).sum(), {})
    assert torch.equal(torch.get_rng_state(), state)  # dropout and data order do not move
    assert torch.allclose(w, before, atol=1e-6)


def test_update_follows_z_and_masks_hold_exactly():
    w = torch.nn.Parameter(torch.zeros(8, 8))
    mask = torch.rand(8, 8) > 0.5
    rule = _rule({"w": w}, masks={"w": mask}, lr=1.0)
    rule.micro_step(lambda batch: w.sum(), {})  # L linear: the estimate is exact, Σ z
    z = next(rule.directions(step_seed(5, 0)))[1]
    rule.step()
    assert torch.equal(w[~mask], torch.zeros_like(w[~mask]))  # never perturbed, never updated
    assert torch.allclose(w, -z * z.sum(), atol=1e-4)


def test_same_seed_same_direction_new_step_new_direction():
    w = torch.nn.Parameter(torch.zeros(5))
    rule = _rule({"w": w})
    first = next(rule.directions(step_seed(5, 0)))[1]
    assert torch.equal(first, next(rule.directions(step_seed(5, 0)))[1])
    assert not torch.equal(first, next(rule.directions(step_seed(5, 1)))[1])


def test_bf16_trainable_weights_are_refused():
    with pytest.raises(TunelabError, match="perturbs fp32 weights"):
        _rule({"w": torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))})


@pytest.mark.parametrize("method", ["lora", "full"])
def test_zo_run_trains_and_resumes_exactly(qa_file: Path, tmp_path: Path, method: str):
    kw = dict(optimizer="zo", max_steps=4, save_every=2, lr=1e-2 if method == "lora" else 1e-4)
    full = train(tiny_config(qa_file, tmp_path / "full", method, **kw))
    part = tiny_config(qa_file, tmp_path / "part", method, **kw)
    train(part, stop_after_step=2)
    train(TrainConfig(**{**part.to_dict(), "resume": True}))
    name = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    a, b = load_file(full / name), load_file(tmp_path / "part" / name)
    assert all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((full / "tunelab.json").read_text())
    assert record["steps"] == 4 and len(record["losses"]) == 4
    if method == "lora":  # B starts at 0: ZO moved it
        assert any(v.abs().max() > 0 for k, v in a.items() if "lora_B" in k)


def test_zo_default_learning_rates(qa_file: Path, tmp_path: Path):
    cfg = tiny_config(qa_file, tmp_path / "run", optimizer="zo", lr=None)
    assert ZO().default_lr(cfg) == 1e-4 and ZO().default_lr(TrainConfig(**{**cfg.to_dict(), "method": "full"})) == 1e-6


def test_fit_refuses_a_rule_the_config_does_not_name(qa_file: Path, tmp_path: Path):
    with pytest.raises(TunelabError, match="--optimizer zo needs its update rule"):
        fit(tiny_config(qa_file, tmp_path / "run", optimizer="zo"))
