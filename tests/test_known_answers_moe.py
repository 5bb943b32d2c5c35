"""Known answers for Default MoE (issue 26): the harness must find a planted effect and nothing in its control.

Default MoE's claim is mechanistic: unpicked experts contribute their EMA default output, so the router
gets a gradient from every expert, closer to the dense one. Three plants, each with its control:

1. whole model, renormalised top-k gates: the logit of an unpicked expert gets *exactly* zero gradient
   under top-k, and a non-zero one under Default MoE once its defaults are filled (same weights);
2. the EMA is what the spec says on varied tokens: Êᵢ ← βÊᵢ + (1 − β)·mean over the tokens routed to i
   of the raw (ungated) Eᵢ(x), training only, unhit experts untouched;
3. the harness ``router_gradient_cosine``: with every token equal and the defaults set to the exact
   expert outputs (ungated top-k), Default MoE's forward *is* the dense forward, so the cosine must be
   1; top-k with the same weights is the control (< 1), and zero defaults fall back to top-k's value.

Models are width 16, one MoE layer, 4 experts top-2; the file runs in a few seconds.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tunelab.moe.block import expert_forward
from tunelab.moe.default_moe import DefaultMoeBlock
from tunelab.moe.diagnostics import router_gradient_cosine
from tunelab.moe.model import ModelSpec, build_model, moe_blocks

W, N, K, S, V = 16, 4, 2, 16, 259  # width, experts, top-k, sequence length, vocab (bytes)


def model_pair(seed: int, renormalize: bool, beta: float = 0.9) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(top-k, Default MoE forward) models with identical weights (same seed, same spec otherwise)."""
    spec = {"width": W, "depth": 1, "experts": N, "top_k": K, "seq_len": S, "renormalize": renormalize}
    topk = build_model(ModelSpec(**spec, router="topk"), seed=seed)
    default = build_model(ModelSpec(**spec, router="default", default_beta=beta), seed=seed)
    default.load_state_dict(topk.state_dict())  # the EMA buffer is non-persistent: weights only
    return topk, default


def windows(seed: int, batch: int = 2) -> torch.Tensor:
    return torch.randint(3, V, (batch, S + 1), generator=torch.Generator().manual_seed(seed))


def logit_grad(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d loss / d router logits [T, N], top-k indices [T, K]) of the model's one MoE layer, eval routing."""
    (block,) = moe_blocks(model)
    model.eval()
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids[:, :-1]).logits
    block.last_logits.retain_grad()
    torch.nn.functional.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1)).backward()
    return block.last_logits.grad.detach().clone(), block.last_indices.clone()


def block_input(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The MoE layer's input [T, W] on one forward of ``ids`` (in the model's current train/eval mode)."""
    (block,) = moe_blocks(model)
    seen: list[torch.Tensor] = []
    handle = block.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().reshape(-1, W)))
    try:
        model(input_ids=ids[:, :-1])
    finally:
        handle.remove()
    return seen[0]


# --------------------------------------------------------------------------- 1. gradient from unpicked experts
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_unpicked_experts_reach_the_router_only_through_default_outputs(seed: int):
    """Plant: Default MoE with filled defaults; control: top-k, same weights, same batch. With
    renormalised gates top-k's logit gradient on every unpicked (token, expert) is 0 (to rounding) (gᵢ does
    not depend on z_j, j ∉ A); Default MoE's is not (π_j·Ê_j is in the output). Removing the plant
    (zero defaults) must make Default MoE's gradient equal top-k's."""
    topk, default = model_pair(seed, renormalize=True)
    ids = windows(seed)
    default.train()
    default(input_ids=ids[:, :-1])  # one training forward fills the EMA of the experts it hit
    (block,) = moe_blocks(default)
    assert block.defaults.abs().sum() > 0

    g_topk, picked = logit_grad(topk, ids)
    g_default, picked_default = logit_grad(default, ids)
    assert torch.equal(picked, picked_default)  # same routing: only the default term differs
    unpicked = torch.ones_like(g_topk, dtype=torch.bool).scatter(1, picked, False)
    hit = block.defaults.abs().sum(dim=1) > 0  # experts with a non-zero default
    planted = unpicked & hit[None, :]
    assert planted.any()
    # zero up to float rounding (the renormalisation divides softmax terms; ~1e-12 of the largest entry)
    assert g_topk[unpicked].abs().max() < 1e-7 * g_topk.abs().max(), g_topk[unpicked].abs().max()
    assert g_default[planted].abs().min() > 0 and g_default[planted].abs().max() > 1e-6 * g_default.abs().max()

    block.defaults = torch.zeros_like(block.defaults)  # the plant removed: Default MoE is top-k again
    g_zero, _ = logit_grad(default, ids)
    torch.testing.assert_close(g_zero, g_topk, rtol=0, atol=1e-7)


# --------------------------------------------------------------------------- 2. the EMA, as the spec writes it
@pytest.mark.parametrize("beta", [0.0, 0.9, 0.999])
def test_ema_is_the_mean_raw_output_over_each_experts_routed_tokens(beta: float):
    """On varied tokens, one training forward from defaults d₀ must give, per expert e hit by the
    routing, β·d₀[e] + (1 − β)·mean_{t: e ∈ A_t} E_e(x_t) — the ungated output, averaged over exactly
    the tokens routed to e — and leave unhit experts at d₀. An eval forward must change nothing."""
    _, model = model_pair(3, renormalize=False, beta=beta)
    (block,) = moe_blocks(model)
    d0 = torch.randn(N, W, generator=torch.Generator().manual_seed(9))
    block.defaults = d0.clone()
    model.eval()
    model(input_ids=windows(4)[:, :-1])
    assert torch.equal(block.defaults, d0)  # evaluation never moves the EMA
    model.train()
    x, picked = block_input(model, windows(4)), block.last_indices
    with torch.no_grad():
        for e in range(N):
            routed = (picked == e).any(dim=1)
            if routed.any():
                mean = expert_forward(block.experts, e, x[routed]).mean(dim=0)
                torch.testing.assert_close(block.defaults[e], beta * d0[e] + (1 - beta) * mean, rtol=1e-5, atol=1e-6)
            else:
                assert torch.equal(block.defaults[e], d0[e])
    assert int((picked[:, :, None] == torch.arange(N)).any(dim=1).any(dim=0).sum()) >= 2  # several experts checked


# --------------------------------------------------------------------------- 3. the router-gradient cosine harness
def exact_defaults(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Every expert's output on the MoE layer's input, which is one vector when every token is equal."""
    (block,) = moe_blocks(model)
    model.eval()
    with torch.no_grad():
        x = block_input(model, ids)
    # identical tokens → identical values in every position, so attention returns the same vector everywhere
    torch.testing.assert_close(x, x[:1].expand_as(x), rtol=0, atol=1e-5)
    with torch.no_grad():
        return torch.stack([expert_forward(block.experts, e, x[:1])[0] for e in range(N)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_router_gradient_cosine_finds_the_dense_gradient_when_defaults_are_exact(seed: int):
    """Plant: one repeated token and defaults equal to the true expert outputs, gates not
    renormalised: y = Σ_A πᵢEᵢ + Σ_∉A πᵢÊᵢ = Σ πᵢEᵢ, the dense forward, so the harness must report
    cosine 1. Control: top-k with the same weights (unpicked experts missing) must be clearly below
    1, and Default MoE with zero defaults must report top-k's value."""
    topk, default = model_pair(seed, renormalize=False)
    ids = torch.full((2, S + 1), 40 + seed)
    (block,) = moe_blocks(default)
    assert isinstance(block, DefaultMoeBlock)
    block.defaults = exact_defaults(default, ids)
    planted = router_gradient_cosine(default, ids)
    control = router_gradient_cosine(topk, ids)
    block.defaults = torch.zeros_like(block.defaults)
    removed = router_gradient_cosine(default, ids)
    assert planted[0] == pytest.approx(1.0, abs=1e-4), (planted, control)
    assert control[0] < 0.99, control
    assert removed[0] == pytest.approx(control[0], abs=1e-4), (removed, control)
