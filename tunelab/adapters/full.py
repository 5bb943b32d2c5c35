"""Full fine-tuning baseline: every weight trains; output is a whole HF model directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.adapters.base import AdapterMethod, AdapterSettings, PreparedModel


class Full(AdapterMethod):
    name = "full"
    default_lr = 1e-5
    is_peft = False
    full_model = True
    supports_init_from = False

    def prepare(self, model: Any, settings: AdapterSettings) -> PreparedModel:
        for p in model.parameters():
            p.requires_grad_(True)
        return PreparedModel(model, {})

    def save(self, prepared: PreparedModel, tokenizer: Any, out_dir: Path) -> None:
        prepared.model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
