"""Default MoE: every expert the router did not pick still contributes its *default output* —
an EMA of its mean output over the tokens recently routed to it — so the router gets a gradient
from all N experts while expert compute stays sparse:

    y = Σ_{i∈A} gᵢ Eᵢ(x) + Σ_{i∉A} πᵢ Êᵢ,      Êᵢ ← β Êᵢ + (1 − β) · mean_{x→i} Eᵢ(x)   (training only)

with π the router's softmax, A its top-k and g the top-k gates. Modes:

* ``forward``: the default term is part of the output (the paper's method);
* ``straight-through``: ``y = topk + d − d.detach()`` — the forward equals plain top-k, the default
  term only shapes the router's gradient.

The EMA lives in a buffer and is replaced out of place (an in-place update would break autograd
of the step that read it). Checkpoints keep it in ``moe.safetensors`` beside the model.
"""

from __future__ import annotations

import torch

from tunelab.moe.block import MoeBlock, expert_forward, routed_tokens

DEFAULT_MODES = ("forward", "straight-through")


class DefaultMoeBlock(MoeBlock):
    """A :class:`MoeBlock` with Default MoE's default outputs (see the module docstring)."""

    def __init__(self, config, router: torch.nn.Module, beta: float = 0.9, mode: str = "forward") -> None:
        super().__init__(config, router)
        if mode not in DEFAULT_MODES:
            raise ValueError(f"mode must be one of {DEFAULT_MODES}, got {mode!r}")
        self.beta, self.mode = beta, mode
        self.register_buffer("defaults", torch.zeros(config.num_local_experts, config.hidden_size), persistent=False)

    def sparse_forward(self, x: torch.Tensor, logits: torch.Tensor, weights: torch.Tensor,
                       indices: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        means = torch.zeros_like(self.defaults)
        hit = torch.zeros(self.num_experts, dtype=torch.bool, device=x.device)
        for e, (slot, token) in enumerate(routed_tokens(indices, self.num_experts)):
            if token.numel() == 0:
                continue
            y = expert_forward(self.experts, e, x[token])
            out.index_add_(0, token, (y * weights[token, slot, None]).to(out.dtype))
            means[e] = y.detach().float().mean(dim=0).to(means.dtype)
            hit[e] = True
        probs = torch.softmax(logits.float(), dim=-1)
        unpicked = torch.ones_like(probs).scatter(1, indices, 0.0)
        default = ((probs * unpicked) @ self.defaults.float()).to(out.dtype)
        if self.training:  # out of place: the term above still needs the old buffer
            ema = self.beta * self.defaults + (1 - self.beta) * means
            self.defaults = torch.where(hit[:, None], ema, self.defaults)
        if self.mode == "straight-through":
            return out + default - default.detach()
        return out + default
