"""Training objectives.

* ``sft``: next-token cross-entropy on assistant tokens only.
* ``constrained``: token-wise constrained SFT (deep safety alignment), which keeps the first
  response tokens close to a safety-aligned reference model; see :class:`ConstrainedLoss`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn

from tunelab.data import IGNORE_INDEX


class CausalLMLoss(nn.Module):
    """Wraps a causal LM so ``forward(batch)`` returns the mean loss over supervised tokens.

    The LM head runs only on positions that carry a label: with chat prompts masked out
    that skips most of the (vocab × hidden) head work, the largest matmul in a small model.
    Wrapping (rather than calling submodules from the loop) keeps DDP/FSDP hooks intact.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        base = model.get_base_model() if isinstance(model, PeftModel) else model
        # Heads that do more than a linear map (e.g. logit soft-capping) take the plain path.
        self._fast = getattr(base.config, "final_logit_softcapping", None) is None and hasattr(base, "get_decoder")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                per_example: bool = False) -> torch.Tensor:
        if per_example:
            return self.per_example_losses(input_ids, attention_mask, labels)
        if not self._fast:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False).loss
        logits, targets, keep = self.supervised_logits(input_ids, attention_mask, labels)
        return F.cross_entropy(logits.float(), targets)

    def per_example_losses(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           labels: torch.Tensor) -> torch.Tensor:
        """[B]: each example's mean loss over its own supervised tokens (0 for an example without any).

        What per-example clipping (DP-SGD, DP-ZO) needs: the batch loss is token-weighted across
        examples, so one long example would otherwise weigh more than one short one.
        """
        logits, targets, keep = self.supervised_logits(input_ids, attention_mask, labels)
        token_losses = F.cross_entropy(logits.float(), targets, reduction="none")
        rows = supervised_rows(labels)
        sums = torch.zeros(keep.shape[0], dtype=token_losses.dtype, device=token_losses.device).index_add(0, rows, token_losses)
        return sums / keep.sum(dim=1).clamp(min=1)

    def supervised_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits [N, V] at the N supervised positions, their targets [N], mask [B, L-1] of them)."""
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        if not self._fast:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            return logits[:, :-1][keep], targets[keep], keep
        base = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return self._head(base.get_output_embeddings(), hidden[:, :-1][keep]), targets[keep], keep

    def _head(self, head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """``head(hidden)``, with a frozen fp32 head cast to the autocast dtype once, not every step.

        Autocast re-casts a weight that needs no gradient on every call: for SmolLM2's tied
        49k × 576 head that is a 113 MB read and a 56 MB write per step, about 4% of a CPU
        step. The cached copy is refreshed whenever the weight changes (tensor version).
        """
        device = hidden.device.type
        weight = getattr(head, "weight", None)
        if (type(head) is not nn.Linear or head.bias is not None or weight.requires_grad
                or weight.dtype != torch.float32 or not torch.is_autocast_enabled(device)):
            return head(hidden)
        dtype = torch.get_autocast_dtype(device)
        key = (weight.data_ptr(), weight._version, dtype)
        if getattr(self, "_head_cache_key", None) != key:
            self._head_cache_key = key
            self._head_cache = weight.detach().to(dtype)
        return F.linear(hidden, self._head_cache)


def supervised_rows(labels: torch.Tensor) -> torch.Tensor:
    """The example (row) of each supervised position, in the order ``supervised_logits`` returns
    them (boolean indexing is row-major)."""
    return (labels[:, 1:] != IGNORE_INDEX).nonzero()[:, 0]


OBJECTIVES = ("sft", "constrained")


@dataclass(frozen=True)
class BetaSchedule:
    """β_t of the constrained objective by response position t (1-based): β₁, β₂..β_until, then β_late."""

    first: float = 0.5
    early: float = 2.0
    early_until: int = 5
    late: float = 0.1

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        """β for each position in ``t`` (an integer tensor of 1-based response positions)."""
        beta = torch.full(t.shape, self.late, dtype=torch.float32, device=t.device)
        beta = torch.where((t >= 2) & (t <= self.early_until), torch.tensor(self.early, device=t.device), beta)
        return torch.where(t == 1, torch.tensor(self.first, device=t.device), beta)


def response_positions(keep: torch.Tensor) -> torch.Tensor:
    """1-based position of each supervised token within its run of consecutive supervised tokens.

    ``keep`` [B, L] marks supervised targets; each assistant turn (or the part after a masked
    prefix) is one run, and its first token gets t = 1. Values outside ``keep`` are meaningless.
    """
    idx = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)
    previous = F.pad(keep[:, :-1], (1, 0), value=False)
    starts = torch.where(keep & ~previous, idx, torch.zeros_like(idx))
    return idx - starts.cummax(dim=1).values + 1


def constrained_weights(logp: torch.Tensor, ref_logp: torch.Tensor, beta: torch.Tensor, floor: float = 1e-3) -> torch.Tensor:
    """w_t = clamp(2·(1 − σ(β_t·(log π_θ(y_t) − log π_ref(y_t)))), min=floor), detached.

    The gradient of the constrained loss −(2/β)·log σ(β·Δ) is w_t times SFT's: w = 1 where the
    model matches the reference, → 0 as it moves up past it (the constraint), → 2 below it.
    """
    return (2.0 * (1.0 - torch.sigmoid(beta * (logp.detach().float() - ref_logp.float())))).clamp(min=floor)


class ConstrainedLoss(CausalLMLoss):
    """Token-wise constrained SFT: −Σ_t w_t·log π_θ(y_t) / (supervised tokens), w from :func:`constrained_weights`.

    Needs ``ref_logprobs`` in the batch: the reference model's log-prob of each label,
    precomputed once (:func:`reference_logprobs`), aligned with ``labels``.
    """

    def __init__(self, model: nn.Module, schedule: BetaSchedule) -> None:
        super().__init__(model)
        self.schedule = schedule

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                ref_logprobs: torch.Tensor | None = None) -> torch.Tensor:
        if ref_logprobs is None:
            raise RuntimeError("the constrained objective needs precomputed reference log-probs in the batch")
        logits, targets, keep = self.supervised_logits(input_ids, attention_mask, labels)
        logp = F.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)
        beta = self.schedule(response_positions(keep)[keep])
        weights = constrained_weights(logp, ref_logprobs[:, 1:][keep], beta)
        return -(weights * logp).sum() / max(int(keep.sum()), 1)


@torch.inference_mode()
def reference_logprobs(model: nn.Module, examples: list[Any], pad_token_id: int, batch_size: int = 8) -> None:
    """Fill each example's ``ref_logprobs``: log π_ref(labels[j] | input[:j]) at label positions j, else 0.

    One pass of the reference model over the training set, before training; the trainer then
    reads these instead of running the reference every step.
    """
    from tunelab.data import Collator

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    net = CausalLMLoss(model)  # its head runs on supervised positions only, as in training
    collate = Collator(examples, pad_token_id)
    try:
        for start in range(0, len(examples), batch_size):
            indices = list(range(start, min(start + batch_size, len(examples))))
            batch = {k: v.to(device) for k, v in collate(indices).items() if k != "ref_logprobs"}
            logits, targets, keep = net.supervised_logits(**batch)
            picked = F.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)
            logp = torch.zeros(keep.shape, dtype=torch.float32, device=device)
            logp[keep] = picked
            logp = logp.cpu()
            for row, i in enumerate(indices):
                n = len(examples[i].input_ids)
                examples[i].ref_logprobs = [0.0] + logp[row, : n - 1].tolist()
    finally:
        model.train(was_training)


def count_tokens(batch: dict[str, Any]) -> tuple[int, int]:
    """(non-padding tokens, supervised tokens) in a batch."""
    return int(batch["attention_mask"].sum()), int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
