"""DP-ZO: the privatised step, its noise and sampling, the run's ledger and hygiene, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from tests.conftest import tiny_config
from safetensors.torch import load_file
from scipy import stats
from tests.test_bad_input import assert_one_line, run_cli, train_args

from tunelab.privacy.dp import PoissonBatches, physical_batches
from tunelab.privacy.dp_zo import DPZO
from tunelab.finetune import TrainConfig
from tunelab.train import fit
from tunelab.train.zo import step_seed

B, CLIP, LR = 4, 0.5, 0.1


def _rule(params: dict[str, torch.nn.Parameter], noise: str = "gaussian", physical: int | None = None) -> DPZO:
    cfg = TrainConfig(data="d", output="o", seed=5, lr=LR, zo_eps=1e-3, optimizer="dp-zo", noise=noise, clip=CLIP,
                      noise_multiplier=1.0, batch_size=B, physical_batch_size=physical)
    run = SimpleNamespace(cfg=cfg, accelerator=SimpleNamespace(num_processes=1), prepared=SimpleNamespace(grad_masks=dict))
    rule = DPZO(secret_seed=11)
    rule.run_cfg, rule.noise = cfg, 1.0
    rule.setup(run, params, total_steps=10)
    return rule


def _batch(rows: list[int]) -> dict[str, torch.Tensor]:
    ids = torch.tensor(rows, dtype=torch.long).reshape(-1, 1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


@pytest.mark.parametrize("physical", [None, 2])
def test_one_step_is_the_clipped_sum_plus_one_noise_draw_over_expected_batch(physical):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(3))
    x = torch.randn(5, 3) * 3  # per-example loss x_i·w is linear: a_i = x_i·z exactly
    rule = _rule({"w": w}, physical=physical)
    draws = []
    rule.draw_noise = lambda: draws.append(0.7) or 0.7

    def loss_fn(batch, per_example=False):
        assert per_example
        return x[batch["input_ids"][:, 0]] @ w

    z = next(rule.directions(step_seed(5, 0)))[1]
    rule.micro_step(loss_fn, _batch([0, 1, 2, 4, 3]))  # 5 drawn, B = 4 expected
    rule.step()
    a = (x @ z).double().clamp(-CLIP, CLIP)
    expected = -LR * (float(a.sum()) + 0.7 * CLIP) / B * z
    assert len(draws) == 1
    assert torch.allclose(w.detach(), expected, atol=1e-5)


def test_empty_batch_is_a_noise_only_step():
    w = torch.nn.Parameter(torch.zeros(3))
    rule = _rule({"w": w})
    rule.draw_noise = lambda: -2.0
    z = next(rule.directions(step_seed(5, 0)))[1]
    loss = rule.micro_step(lambda batch, per_example=False: pytest.fail("no forward on an empty batch"),
                           {"input_ids": torch.zeros(0, 0, dtype=torch.long)})
    rule.step()
    assert torch.isnan(loss)
    assert torch.allclose(w.detach(), LR * 2.0 * CLIP / B * z)


def test_non_finite_projections_count_as_zero():
    w = torch.nn.Parameter(torch.zeros(2))
    rule = _rule({"w": w})
    rule.draw_noise = lambda: 0.0
    rule.micro_step(lambda batch, per_example=False: torch.tensor([float("nan"), float("inf")]) + w.sum(), _batch([0, 1]))
    assert rule.clipped_sum == 0.0


@pytest.mark.parametrize("noise, dist", [("gaussian", stats.norm(scale=1.0)), ("laplace", stats.laplace(scale=1.0))])
def test_noise_draws_follow_the_mechanism(noise, dist):
    rule = _rule({"w": torch.nn.Parameter(torch.zeros(1))}, noise=noise)
    draws = [rule.draw_noise() for _ in range(4000)]
    assert stats.kstest(draws, dist.cdf).pvalue > 1e-3
    other = _rule({"w": torch.nn.Parameter(torch.zeros(1))}, noise="laplace" if noise == "gaussian" else "gaussian")
    assert stats.kstest([other.draw_noise() for _ in range(4000)], dist.cdf).pvalue < 1e-3


def test_poisson_batches_rate_determinism_and_empty_draws():
    sampler = PoissonBatches(n=200, q=0.05, steps=400)
    sampler.seed = 3
    sizes = [len(b) for b in sampler]
    assert abs(sum(sizes) / len(sizes) - 10) < 0.5 and min(sizes) < max(sizes)
    assert list(sampler) == list(sampler)
    other = PoissonBatches(n=200, q=0.05, steps=400)
    other.seed = 4
    assert list(other) != list(sampler)
    tiny = PoissonBatches(n=10, q=0.05, steps=200)
    tiny.seed = 0
    assert any(not b for b in tiny)


def test_physical_batches_split_and_trim_padding():
    ids = torch.tensor([[1, 2, 3, 0], [1, 2, 0, 0], [1, 0, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids > 0).long(), "labels": ids.clone()}
    chunks = list(physical_batches(batch, 2))
    assert [c["input_ids"].shape for c in chunks] == [torch.Size([2, 3]), torch.Size([1, 1])]


def test_dp_zo_run_records_the_ledger_and_hides_private_metrics(qa_file: Path, tmp_path: Path):
    cfg = tiny_config(qa_file, tmp_path / "run", optimizer="dp-zo", target_epsilon=2.0, max_steps=None, epochs=1)
    out = fit(cfg, rule=DPZO(secret_seed=123456789))
    record = json.loads((out / "tunelab.json").read_text())
    dp = record["dp"]
    assert dp["steps"] == record["steps"] == 6 and dp["sample_rate"] == pytest.approx(4 / 24)
    assert dp["epsilon"] == pytest.approx(2.0, rel=1e-3) and dp["epsilon"] <= 2.0 * (1 + 1e-3)
    assert dp["neighbouring"].startswith("add/remove") and dp["private_metrics_logged"] is False
    assert record["losses"] == []
    assert all(json.loads(line)["loss"] is None and json.loads(line)["grad_norm"] is None
               for line in (out / "metrics.jsonl").read_text().splitlines())
    for name in ("tunelab.json", "config.yaml", "metrics.jsonl"):  # the secret seed is nowhere
        assert "123456789" not in (out / name).read_text()
    assert yaml.safe_load((out / "config.yaml").read_text())["optimizer"] == "dp-zo"


def test_log_private_metrics_logs_and_says_so(qa_file: Path, tmp_path: Path):
    cfg = tiny_config(qa_file, tmp_path / "run", optimizer="dp-zo", noise_multiplier=1.0, log_private_metrics=True)
    record = json.loads((fit(cfg, rule=DPZO()) / "tunelab.json").read_text())
    assert len(record["losses"]) == 4 and record["dp"]["private_metrics_logged"] is True


def test_dp_zo_resumed_equals_uninterrupted(qa_file: Path, tmp_path: Path):
    kw = dict(optimizer="dp-zo", noise="laplace", noise_multiplier=2.0, max_steps=4, save_every=2)
    full = fit(tiny_config(qa_file, tmp_path / "full", **kw), rule=DPZO(secret_seed=7))
    part = tiny_config(qa_file, tmp_path / "part", **kw)
    fit(part, rule=DPZO(secret_seed=7), stop_after_step=2)
    fit(TrainConfig(**{**part.to_dict(), "resume": True}), rule=DPZO())  # the secret comes from the checkpoint
    a, b = load_file(full / "adapter_model.safetensors"), load_file(tmp_path / "part" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(v.abs().max() > 0 for k, v in a.items() if "lora_B" in k)
    ledgers = [json.loads((p / "tunelab.json").read_text())["dp"] for p in (full, tmp_path / "part")]
    assert ledgers[0] == ledgers[1]


def test_cli_dp_zo_prints_the_ledger(qa_file: Path, tmp_path: Path, capsys):
    code, output = run_cli(capsys, *train_args(qa_file, tmp_path / "run", "--method", "lora", "--max-steps", "2",
                                               "--optimizer", "dp-zo", "--target-epsilon", "3", "--target-delta", "1e-3",
                                               "--batch-size", "4", "--seed", "1"))
    assert code == 0, output
    assert "privacy ledger: dp-zo (gaussian), (ε = 3" in output and "add/remove" in output


@pytest.mark.parametrize("extra, fragments", [
    (["--optimizer", "dp-zo", "--target-epsilon", "0"], ["--target-epsilon must be > 0"]),
    (["--optimizer", "dp-zo", "--target-epsilon", "-1"], ["--target-epsilon must be > 0"]),
    (["--optimizer", "dp-sgd", "--target-epsilon", "1", "--target-delta", "0"], ["needs --noise laplace"]),
    (["--optimizer", "dp-zo", "--target-epsilon", "1", "--clip", "0"], ["--clip must be > 0"]),
    (["--optimizer", "dp-zo", "--target-epsilon", "1", "--zo-eps", "0"], ["--zo-eps must be > 0"]),
    (["--optimizer", "zo", "--zo-eps", "-1e-3"], ["--zo-eps must be > 0"]),
    (["--optimizer", "dp-zo", "--target-epsilon", "1", "--grad-accum", "2"], ["breaks Poisson sampling"]),
    (["--optimizer", "dp-zo"], ["exactly one of --target-epsilon", "--noise-multiplier"]),
    (["--optimizer", "dp-zo", "--target-epsilon", "1", "--noise-multiplier", "1"], ["exactly one of"]),
    (["--optimizer", "dp-sgd", "--noise", "laplace", "--target-epsilon", "1"], ["--noise laplace applies to --optimizer dp-zo"]),
    (["--optimizer", "dp-zo", "--noise", "laplace", "--accountant", "rdp", "--target-epsilon", "1"], ["RDP accountant cannot"]),
    (["--target-epsilon", "1"], ["--target-epsilon only applies to --optimizer dp-zo or dp-sgd"]),
    (["--optimizer", "sgd"], ["unknown optimizer 'sgd'"]),
    (["--optimizer", "dp-zo", "--target-epsilon", "1e-4", "--accountant", "rdp"], ["below what the RDP accountant resolves"]),
    (["--optimizer", "dp-zo", "--target-epsilon", "1", "--batch-size", "100"], ["--batch-size 100", "24 training examples"]),
])
def test_bad_private_training_input_is_one_line(qa_file: Path, tmp_path: Path, capsys, extra, fragments):
    code, output = run_cli(capsys, *train_args(qa_file, tmp_path / "run", *extra))
    assert_one_line(code, output, *fragments)
    assert not (tmp_path / "run").exists()  # refused before the output dir is touched


def test_delta_at_least_one_over_n_warns(qa_file: Path, tmp_path: Path, capsys):
    code, output = run_cli(capsys, *train_args(qa_file, tmp_path / "run", "--optimizer", "dp-zo", "--max-steps", "1",
                                               "--target-epsilon", "4", "--target-delta", "0.1", "--seed", "0"))
    assert code == 0 and "warning: δ = 0.1 ≥ 1/N" in output.replace("\n", " "), output


def test_pure_epsilon_laplace_run_uses_the_closed_form(qa_file: Path, tmp_path: Path):
    from tunelab.privacy.accounting import pure_laplace_epsilon

    cfg = tiny_config(qa_file, tmp_path / "run", optimizer="dp-zo", noise="laplace", target_epsilon=2.0, target_delta=0.0)
    dp = json.loads((fit(cfg, rule=DPZO()) / "tunelab.json").read_text())["dp"]
    assert dp["delta"] == 0.0 and dp["epsilon"] == pytest.approx(2.0)
    assert dp["epsilon"] == pytest.approx(pure_laplace_epsilon(dp["sample_rate"], dp["steps"], dp["noise_multiplier"]))


def test_dp_zo_lori_s_keeps_entries_outside_the_mask_at_zero(qa_file: Path, tmp_path: Path):
    from tunelab.finetune import train

    lori_d = train(tiny_config(qa_file, tmp_path / "lori-d", "lori-d", max_steps=1))
    out = fit(tiny_config(qa_file, tmp_path / "lori-s", "lori-s", mask_from=str(lori_d), sparsity=0.8, max_steps=3,
                          optimizer="dp-zo", noise_multiplier=1.0, lr=0.1), rule=DPZO(secret_seed=1))
    weights, masks = load_file(out / "adapter_model.safetensors"), load_file(out / "mask.safetensors")
    for key, mask in masks.items():
        b = weights[f"base_model.model.{key}.lora_B.weight"]
        assert torch.equal(b[~mask.bool()], torch.zeros_like(b[~mask.bool()])), key
        assert bool((b[mask.bool()] != 0).all()), key  # noise and signal reach every entry inside
