"""Balancing losses computed per MoE layer from what the router did.

* Switch aux loss, per layer: ``N · Σᵢ fᵢ · Pᵢ`` with fᵢ the fraction of the layer's T·k
  assignments that went to expert i and Pᵢ its mean router probability; 1 when balanced.
  (transformers pools assignments over layers and counts fᵢ per token, so its balanced value is k.)
* z-loss, per layer: ``mean_t (logsumexp_j z_tj)²`` (no decoder-only transformers MoE class has it).

Both are summed over layers; the trainer multiplies them by their coefficients.
"""

from __future__ import annotations

import torch


def switch_aux_loss(logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """One layer's Switch load-balancing loss from its router logits [T, N] and choices [T, k]."""
    n = logits.shape[-1]
    probs = torch.softmax(logits.float(), dim=-1)
    counts = torch.bincount(indices.reshape(-1), minlength=n).to(probs.dtype)
    fraction = counts / indices.numel()
    return n * torch.sum(fraction * probs.mean(dim=0))


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """One layer's router z-loss: the mean squared log-partition of its logits [T, N]."""
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


def expert_load(indices: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Assignments per expert [N] (a token with top-k counts k times)."""
    return torch.bincount(indices.reshape(-1), minlength=num_experts)


def max_routing_imbalance(indices: torch.Tensor, num_experts: int) -> float:
    """MRI: the busiest expert's load ÷ the balanced load (T·k/N); 1 is perfectly balanced."""
    load = expert_load(indices, num_experts).float()
    return float(load.max() / load.mean()) if indices.numel() else float("nan")
