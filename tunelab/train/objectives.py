"""Training objectives. ``sft``: next-token cross-entropy on assistant tokens only."""

from __future__ import annotations

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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not self._fast:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False).loss
        base = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = base.get_output_embeddings()(hidden[:, :-1][keep])
        return F.cross_entropy(logits.float(), targets[keep])


def count_tokens(batch: dict[str, Any]) -> tuple[int, int]:
    """(non-padding tokens, supervised tokens) in a batch."""
    return int(batch["attention_mask"].sum()), int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
