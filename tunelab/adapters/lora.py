"""LoRA baseline: plain PEFT, A and B both trained."""

from __future__ import annotations

from typing import Any

from tunelab.adapters.base import AdapterMethod, AdapterSettings, PreparedModel, wrap_lora


class LoRA(AdapterMethod):
    name = "lora"
    default_lr = 2e-4

    def prepare(self, model: Any, settings: AdapterSettings) -> PreparedModel:
        return PreparedModel(wrap_lora(model, settings), {"rank": settings.rank, "alpha": settings.alpha})
