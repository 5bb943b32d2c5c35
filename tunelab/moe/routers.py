"""Routers: top-k (Hugging Face's, with or without renormalised gates) and Sinkhorn-balanced top-k.

Every router subclasses ``MixtralTopKRouter`` and returns what it returns —
``(router_logits, gate weights [T, k], expert indices [T, k])`` — so transformers' router-logit
capture (``output_router_logits=True``, matched by ``isinstance``) keeps working.

``ROUTERS`` is the registry ``tunelab pretrain --router`` reads: name → a :class:`RouterKind` (how a
layer's MoE block is built from the Mixtral config and the saved router settings, and whether the
router balances the load itself). Default MoE is a block
(:mod:`tunelab.moe.default_moe`) on top of the top-k router, not a router of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

from tunelab.moe.block import MoeBlock
from tunelab.moe.default_moe import DefaultMoeBlock
from tunelab.registry import Registry


class TopKRouter(MixtralTopKRouter):
    """Softmax over experts, keep the top k. ``renormalize`` (Mixtral's choice) rescales the k
    gates to sum to 1; without it they are the raw probabilities (the Default MoE authors' setup)."""

    def __init__(self, config, renormalize: bool = True) -> None:
        super().__init__(config)
        self.renormalize = renormalize

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        logits = F.linear(hidden_states, self.weight)
        probs = torch.softmax(logits.float(), dim=-1)
        top, indices = torch.topk(probs, self.top_k, dim=-1)
        if self.renormalize:
            top = top / top.sum(dim=-1, keepdim=True)
        return logits, top, indices


def sinkhorn(logits: torch.Tensor, tol: float = 1e-4, max_iter: int = 100) -> tuple[torch.Tensor, int]:
    """Balance exp(logits) [T, N] to rows summing to 1/T and columns to 1/N, in log space.

    Alternates row and column normalisation (columns are exact after each round) until every row
    sum is within ``tol`` (in log space) of 1/T or ``max_iter`` rounds have run — the public implementation exponentiates raw logits
    (overflow) and loops until converged (possibly forever). Returns (balanced matrix × T, so each
    row sums to 1, and the rounds used).
    """
    z = logits.float()
    t, n = z.shape
    row = torch.zeros(t, 1, dtype=z.dtype, device=z.device)
    col = torch.zeros(1, n, dtype=z.dtype, device=z.device)
    rounds = 0
    for rounds in range(1, max_iter + 1):
        row = -math.log(t) - torch.logsumexp(z + col, dim=1, keepdim=True)
        col = -math.log(n) - torch.logsumexp(z + row, dim=0, keepdim=True)
        # columns are now exact; the next row step is a no-op once rows are too
        row_sums = torch.logsumexp(z + row + col, dim=1)  # log of each row's mass (target -log t)
        if float((row_sums + math.log(t)).abs().max()) < tol:
            break
    return torch.exp(z + row + col) * t, rounds


class SinkhornRouter(TopKRouter):
    """Megatron-style Sinkhorn top-k: in training, experts are chosen on the Sinkhorn-balanced
    matrix (no gradient); gates come from the raw logits (sigmoid for k = 1, softmax otherwise),
    not renormalised. In evaluation, plain top-k of the logits (nothing to balance against)."""

    def __init__(self, config, tol: float = 1e-4, max_iter: int = 100) -> None:
        super().__init__(config, renormalize=False)
        self.tol, self.max_iter = tol, max_iter
        self.last_rounds = 0

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        logits = F.linear(hidden_states, self.weight)
        gates = torch.sigmoid(logits.float()) if self.top_k == 1 else torch.softmax(logits.float(), dim=-1)
        if self.training:
            with torch.no_grad():
                balanced, self.last_rounds = sinkhorn(logits.detach(), self.tol, self.max_iter)
                indices = torch.topk(balanced, self.top_k, dim=-1).indices
        else:
            indices = torch.topk(gates, self.top_k, dim=-1).indices
        return logits, torch.gather(gates, 1, indices), indices


@dataclass(frozen=True)
class RouterKind:
    """One ``--router``: ``block(config, settings)`` builds a layer's MoE block (``settings`` is
    ``config.tunelab_moe``); ``balances_itself``: the routing balances the load by construction, so
    the Switch auxiliary loss and the z-loss default to 0."""

    block: Callable[[Any, dict[str, Any]], MoeBlock]
    balances_itself: bool = False


def topk_block(config: Any, s: dict[str, Any]) -> MoeBlock:
    """Mixtral's block with the top-k router (renormalised gates unless ``renormalize`` is off)."""
    return MoeBlock(config, TopKRouter(config, renormalize=s.get("renormalize", True)))


def sinkhorn_block(config: Any, s: dict[str, Any]) -> MoeBlock:
    """The block with the Sinkhorn-balanced router."""
    return MoeBlock(config, SinkhornRouter(config, s.get("sinkhorn_tol", 1e-4), s.get("sinkhorn_iters", 100)))


def default_block(config: Any, s: dict[str, Any]) -> MoeBlock:
    """Default MoE: the top-k router, unpicked experts contributing their EMA default output."""
    router = TopKRouter(config, renormalize=s.get("renormalize", True))
    return DefaultMoeBlock(config, router, beta=s.get("default_beta", 0.9), mode=s.get("default_mode", "forward"))


ROUTERS: Registry[RouterKind] = Registry("router")
ROUTERS.register("topk", RouterKind(topk_block))
ROUTERS.register("sinkhorn", RouterKind(sinkhorn_block, balances_itself=True))
ROUTERS.register("default", RouterKind(default_block))
