"""DP-SGD (tunelab.privacy.dp_sgd): Opacus's per-sample gradients against per-example autograd, one
step against the formula, masks, resume and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_config
from tunelab.data import Collator, tokenize_records
from tunelab.errors import TunelabError
from tunelab.finetune import TrainConfig, train
from tunelab.privacy.dp import physical_batches
from tunelab.privacy.dp_sgd import DPSGD, PerSampleHooks
from tunelab.train import fit

DP = {"optimizer": "dp-sgd", "noise_multiplier": 1.0}
# Opacus's full backward hooks warn on modules whose inputs need no gradient (token ids, frozen layers)
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


@pytest.fixture(scope="module")
def lori_d(qa_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished lori-d run: the mask source of lori-s."""
    return train(tiny_config(qa_file, tmp_path_factory.mktemp("lori-d") / "run", "lori-d", max_steps=1))


def _per_example_grads(loss_fn, batch: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter]) -> list[list[torch.Tensor]]:
    """Autograd of each example's own loss, one example (trimmed to its length) at a time."""
    grads = []
    for i in range(batch["input_ids"].shape[0]):
        one = next(physical_batches({k: v[i : i + 1] for k, v in batch.items()}, 1))
        loss = loss_fn(one, per_example=True)[0]
        got = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        grads.append([torch.zeros_like(p) if g is None else g for g, p in zip(got, params.values())])
    return grads


@pytest.mark.parametrize("method", ["lora", "full"])
def test_opacus_per_sample_gradients_equal_per_example_autograd(method: str):
    from tunelab.adapters import get_method
    from tunelab.models import load_model
    from tunelab.train.objectives import CausalLMLoss

    model, tokenizer = load_model("tiny-random")  # a fresh copy: the adapter is attached in place
    cfg = tiny_config(Path("x"), Path("y"), method)
    model = get_method(method).prepare(model, cfg.adapter_settings()).model
    with torch.no_grad():  # B = 0 would give A no gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    chats = [[{"role": "user", "content": "hi " * (3 * i + 1)}, {"role": "assistant", "content": "ok " * (i + 1)}]
             for i in range(4)]
    examples, _ = tokenize_records(chats, tokenizer, 128)
    batch = Collator(examples, tokenizer.pad_token_id)(list(range(4)))
    assert len(set(batch["attention_mask"].sum(dim=1).tolist())) == 4  # four lengths, three rows padded
    net = CausalLMLoss(model).train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    expected = _per_example_grads(lambda b, per_example: net(**b, per_example=per_example), batch, params)

    hooks = PerSampleHooks(model)
    hooks.set_batch(batch)
    net(**batch, per_example=True).sum().backward()
    worst = 0.0
    for j, (name, p) in enumerate(params.items()):
        assert p.grad_sample.shape == (4, *p.shape), name
        for i in range(4):
            worst = max(worst, float((p.grad_sample[i] - expected[i][j]).abs().max()))
    # full: the tied embedding/LM head (its [N, H] input summed per example, padding_idx row) and
    # RMSNorm (no Opacus sampler: functorch) are in the comparison
    # relative to the gradients' size: multi-threaded reductions differ from one-example autograd
    # in the last bits (up to 2.3e-6 on gradients of size ~1); the bugs this guards against were O(1)
    scale = max(float(g.abs().max()) for grads in expected for g in grads)
    assert worst < 1e-5 * max(1.0, scale), (worst, scale)
    hooks.cleanup()


class _Recording(DPSGD):
    """DP-SGD that also computes each step's expected gradient by hand and records AdamW's input."""

    def setup(self, run, params, total_steps):
        super().setup(run, params, total_steps)
        self.expected_sums: list[dict[str, torch.Tensor]] = []
        self.seen: list[tuple[dict[str, torch.Tensor], torch.Tensor, float]] = []
        self.clipped = {"yes": 0, "no": 0}
        self._sum = {n: torch.zeros_like(p) for n, p in params.items()}
        self.base.register_step_pre_hook(lambda *_: self.seen.append(
            ({n: p.grad.clone() for n, p in self.params.items()}, self._gen_state, self._clip)))

    def micro_step(self, loss_fn, batch):
        if batch["input_ids"].shape[0]:
            self.hooks.disable_hooks()
            grads = _per_example_grads(loss_fn, batch, self.params)
            self.hooks.enable_hooks()
            names = list(self.params)
            grads = [[g * self.masks[n] if n in self.masks else g for n, g in zip(names, gs)] for gs in grads]
            norms = torch.stack([torch.cat([g.flatten() for g in gs]).norm() for gs in grads])
            # a clip between the norms: some examples are clipped, some are not
            self.optimizer.max_grad_norm = float(norms.sort().values[len(norms) // 2 - 1 : len(norms) // 2 + 1].mean())
            for gs, norm in zip(grads, norms):
                factor = min(1.0, self.optimizer.max_grad_norm / (float(norm) + 1e-6))  # Opacus's 1e-6
                self.clipped["yes" if factor < 1 else "no"] += 1
                for name, g in zip(self.params, gs):
                    self._sum[name] += factor * g
        return super().micro_step(loss_fn, batch)

    def step(self):
        self._gen_state, self._clip = self.noise_generator.get_state(), self.optimizer.max_grad_norm
        self.expected_sums.append(self._sum)
        self._sum = {n: torch.zeros_like(p) for n, p in self.params.items()}
        return super().step()


@pytest.mark.parametrize("method", ["lora", "lori-s"])
def test_one_step_is_clipped_sum_plus_one_noise_draw_over_expected_batch(qa_file: Path, tmp_path: Path, method: str,
                                                                         request: pytest.FixtureRequest):
    # g = (Σ_i clip_C(m ⊙ g_i) + m ⊙ N(0, σ²C²)) / B with the gradient mask m (lori-s) and the expected B.
    # Secret seed 17, q = 3/24: Poisson batches of 4, 0 and 3 examples (physical batches of 2).
    extra = {"mask_from": str(request.getfixturevalue("lori_d")), "sparsity": 0.8} if method == "lori-s" else {}
    cfg = tiny_config(qa_file, tmp_path / "run", method, max_steps=3, batch_size=3, physical_batch_size=2, **extra, **DP)
    rule = _Recording(secret_seed=17)
    fit(cfg, rule=rule)
    assert [len(rule.sampler.batch(t)) for t in range(3)] == [4, 0, 3]
    assert rule.clipped["yes"] and rule.clipped["no"]
    assert len(rule.seen) == 3 and bool(rule.masks) == (method == "lori-s")
    for expected_sum, (grads, gen_state, clip) in zip(rule.expected_sums, rule.seen):
        replay = torch.Generator().manual_seed(0)
        replay.set_state(gen_state)
        for name, p in rule.params.items():  # one Gaussian draw per step, in the optimizer's order
            noise = torch.normal(0.0, cfg.noise_multiplier * clip, p.shape, generator=replay, dtype=p.dtype)
            noise = noise * rule.masks[name] if name in rule.masks else noise
            expected = (expected_sum[name] + noise) / cfg.batch_size  # the expected B, also for the empty batch
            torch.testing.assert_close(grads[name], expected, rtol=1e-5, atol=1e-6)
    assert not any(s.any() for s in rule.expected_sums[1].values())  # the empty step: noise only


@pytest.mark.parametrize("method", ["lora", "full"])
def test_runs_end_to_end_with_a_ledger(qa_file: Path, tmp_path: Path, method: str):
    out = train(tiny_config(qa_file, tmp_path / method, method, max_steps=3, physical_batch_size=2, **DP))
    record = json.loads((out / "tunelab.json").read_text())
    assert record["dp"]["mechanism"] == "dp-sgd (gaussian)" and record["dp"]["steps"] == 3
    assert record["dp"]["epsilon"] > 0
    assert not any(record["losses"])  # the training loss stays out of the record


class _Snapshot(DPSGD):
    def setup(self, run, params, total_steps):
        super().setup(run, params, total_steps)
        self.initial = {n: p.detach().clone() for n, p in params.items()}


def test_entries_outside_the_mask_never_move(qa_file: Path, tmp_path: Path, lori_d: Path):
    rule = _Snapshot(secret_seed=0)
    fit(tiny_config(qa_file, tmp_path / "lori-s", "lori-s", max_steps=3, sparsity=0.8, mask_from=str(lori_d), **DP), rule=rule)
    assert rule.masks
    for name, mask in rule.masks.items():
        now, before, inside = rule.params[name].detach(), rule.initial[name], mask.bool()
        assert torch.equal(now[~inside], before[~inside]), name  # bit-exact, despite the noise
        assert bool((now[inside] != before[inside]).all()), name  # noise reaches every entry inside


def test_resumed_run_equals_uninterrupted(qa_file: Path, tmp_path: Path):
    kw = dict(max_steps=4, save_every=2, scheduler="cosine", warmup_steps=1, physical_batch_size=2, **DP)
    whole = fit(tiny_config(qa_file, tmp_path / "whole", **kw), rule=DPSGD(secret_seed=5))
    part = tiny_config(qa_file, tmp_path / "part", **kw)
    fit(part, rule=DPSGD(secret_seed=5), stop_after_step=2)
    # the secret (noise generator, sampling seed) comes back from the checkpoint, not from the new rule
    fit(TrainConfig(**{**part.to_dict(), "resume": True}), rule=DPSGD(secret_seed=99))
    a, b = load_file(whole / "adapter_model.safetensors"), load_file(tmp_path / "part" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra, rb = (json.loads((d / "tunelab.json").read_text()) for d in (whole, tmp_path / "part"))
    assert ra["dp"] == rb["dp"]


@pytest.mark.parametrize("options", [{"canaries": 4, "canary_family": "new-token"}, {"refusal_tokens": "single"}],
                         ids=["new-token-canaries", "refusal-tokens"])
def test_new_token_rows_are_refused_before_the_output_dir(qa_file: Path, tmp_path: Path, options: dict):
    cfg = tiny_config(qa_file, tmp_path / "run", max_steps=2, **options, **DP)
    with pytest.raises(TunelabError, match="new-token rows get no per-sample gradient under Opacus"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_lota_is_refused_its_mask_comes_from_a_non_private_pass(qa_file: Path, tmp_path: Path):
    with pytest.raises(TunelabError, match="--method lota picks its mask with a non-private AdamW pass"):
        fit(tiny_config(qa_file, tmp_path / "lota", "lota", max_steps=2, **DP), rule=DPSGD(secret_seed=0))
    assert not (tmp_path / "lota").exists()
