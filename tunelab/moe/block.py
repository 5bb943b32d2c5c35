"""The sparse MoE block every tunelab MoE layer uses: Hugging Face's Mixtral block with a
pluggable router, the routing of its last forward kept for losses and diagnostics, and a
dense-routing switch for the router-gradient diagnostic.

With a :class:`~tunelab.moe.routers.TopKRouter` that renormalises, the block computes exactly what
``MixtralSparseMoeBlock`` computes (it calls the same experts module), so a checkpoint loads
with ``AutoModelForCausalLM`` and gives the same logits.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock


def expert_forward(experts: nn.Module, index: int, x: torch.Tensor) -> torch.Tensor:
    """Expert ``index`` of a Mixtral experts module on tokens ``x`` [t, H] (ungated), with the
    arithmetic of transformers' eager experts loop."""
    gate, up = nn.functional.linear(x, experts.gate_up_proj[index]).chunk(2, dim=-1)
    return nn.functional.linear(experts.act_fn(gate) * up, experts.down_proj[index])


def routed_tokens(indices: torch.Tensor, num_experts: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per expert, (slot in the top-k, token row) of its assignments, in transformers' order."""
    mask = nn.functional.one_hot(indices, num_classes=num_experts).permute(2, 1, 0)  # [N, k, T]
    return [torch.where(mask[e]) for e in range(num_experts)]


class MoeBlock(MixtralSparseMoeBlock):
    """Mixtral's sparse block with ``router`` as its gate.

    After each forward, ``last_logits`` [T, N] (with graph) and ``last_indices`` [T, k] hold the
    routing, for the balancing losses and load statistics. ``dense_routing = True`` runs every
    expert on every token, weighted by the full softmax — the dense gradient the router would get
    if compute were not sparse (the reference for the router-gradient cosine).
    """

    def __init__(self, config, router: nn.Module) -> None:
        super().__init__(config)
        self.gate = router
        self.num_experts = config.num_local_experts
        self.dense_routing = False
        self.last_logits: torch.Tensor | None = None
        self.last_indices: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        logits, weights, indices = self.gate(x)
        self.last_logits, self.last_indices = logits, indices.detach()
        if self.dense_routing:
            out = self.dense_forward(x, logits)
        else:
            out = self.sparse_forward(x, logits, weights, indices)
        return out.reshape(shape)

    def sparse_forward(self, x: torch.Tensor, logits: torch.Tensor, weights: torch.Tensor,
                       indices: torch.Tensor) -> torch.Tensor:
        """The routed output (subclasses add to it)."""
        return self.experts(x, indices, weights)

    def dense_forward(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=-1)
        out = torch.zeros_like(x)
        for e in range(self.num_experts):
            out = out + (expert_forward(self.experts, e, x) * probs[:, e, None]).to(x.dtype)
        return out
