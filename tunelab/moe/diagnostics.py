"""What routers do, measured: load, imbalance, the router-gradient cosine, expert changes.

* :func:`routing_stats` — per layer, expert loads and MRI on held-out windows, under evaluation
  routing (``model.eval()``) or training routing (routers switched to training mode only, so
  Sinkhorn balances; no EMA or other state changes);
* :func:`router_gradient_cosine` — per layer, the cosine between the router weight's gradient
  under the model's own sparse routing and under dense routing (every expert on every token,
  weighted by the full softmax), on the same batch: how well the sparse forward informs the router
  (Default MoE's claim);
* :func:`expert_changes` — per layer, the fraction of tokens whose top-1 expert (and top-k set)
  differs between two models on the same text (continual pre-training).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from tunelab.moe.balancing import expert_load
from tunelab.moe.default_moe import DefaultMoeBlock
from tunelab.moe.model import moe_blocks


def lm_loss(model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of windows [B, S + 1]."""
    windows = windows.to(_device(model))
    logits = model(input_ids=windows[:, :-1]).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def _mode(model: torch.nn.Module, training_routing: bool) -> Iterator[None]:
    was = model.training
    model.eval()
    routers = [b.gate for b in moe_blocks(model)]
    for r in routers:
        r.train(training_routing)
    try:
        yield
    finally:
        model.train(was)


@torch.no_grad()
def routing_stats(model: torch.nn.Module, batches: Sequence[torch.Tensor], training_routing: bool = False
                  ) -> dict[str, list]:
    """{"load": [[per expert] per layer], "mri": [per layer]} over ``batches``."""
    blocks = moe_blocks(model)
    if not blocks:
        return {"load": [], "mri": []}
    loads = [torch.zeros(b.num_experts, dtype=torch.long) for b in blocks]
    with _mode(model, training_routing):
        for windows in batches:
            model(input_ids=windows[:, :-1].to(_device(model)))
            for i, b in enumerate(blocks):
                loads[i] += expert_load(b.last_indices, b.num_experts).cpu()
    return {"load": [l.tolist() for l in loads], "mri": [float(l.max() / l.float().mean()) for l in loads]}


def router_gradient_cosine(model: torch.nn.Module, windows: torch.Tensor) -> list[float]:
    """Per MoE layer, cos(router grad with the model's routing, router grad with dense routing)."""
    blocks = moe_blocks(model)
    if not blocks:
        return []
    saved = [b.defaults for b in blocks if isinstance(b, DefaultMoeBlock)]
    was = model.training
    model.train()  # training routing; the EMA is restored below

    def grads(dense: bool) -> list[torch.Tensor]:
        for b in blocks:
            b.dense_routing = dense
        model.zero_grad(set_to_none=True)
        lm_loss(model, windows).backward()
        return [b.gate.weight.grad.detach().flatten().clone() for b in blocks]

    try:
        sparse, dense = grads(False), grads(True)
    finally:
        for b in blocks:
            b.dense_routing = False
        for b, d in zip([b for b in blocks if isinstance(b, DefaultMoeBlock)], saved):
            b.defaults = d
        model.zero_grad(set_to_none=True)
        model.train(was)
    return [float(F.cosine_similarity(s, d, dim=0)) for s, d in zip(sparse, dense)]


@torch.no_grad()
def routing_choices(model: torch.nn.Module, batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per layer, the evaluation-routing top-k choices [T, k] over ``batches``."""
    blocks = moe_blocks(model)
    out: list[list[torch.Tensor]] = [[] for _ in blocks]
    with _mode(model, False):
        for windows in batches:
            model(input_ids=windows[:, :-1].to(_device(model)))
            for i, b in enumerate(blocks):
                out[i].append(b.last_indices.cpu())
    return [torch.cat(x) for x in out]


def expert_changes(before: torch.nn.Module, after: torch.nn.Module, batches: Sequence[torch.Tensor]
                   ) -> dict[str, list[float]]:
    """Per layer, the fraction of tokens whose top-1 expert / top-k set differs between models."""
    a, b = routing_choices(before, batches), routing_choices(after, batches)
    top1 = [float((x[:, 0] != y[:, 0]).float().mean()) for x, y in zip(a, b)]
    topk = [float((x.sort(dim=1).values != y.sort(dim=1).values).any(dim=1).float().mean()) for x, y in zip(a, b)]
    return {"top1": top1, "topk_set": topk}
