"""LoRA baseline: plain PEFT, A and B both trained (with ``--init-from``: A frozen, B trained)."""

from __future__ import annotations

from typing import Any

from tunelab.adapters.base import AdapterMethod, AdapterSettings, PreparedModel, load_init_weights, wrap_lora
from tunelab.adapters.storage import read_init_adapter


class LoRA(AdapterMethod):
    name = "lora"
    default_lr = 2e-4

    def prepare(self, model: Any, settings: AdapterSettings) -> PreparedModel:
        peft_model = wrap_lora(model, settings)
        record: dict[str, Any] = {"rank": settings.rank, "alpha": settings.alpha}
        if settings.init_from:
            init = read_init_adapter(settings.init_from, settings, ("lora", "lori-d", "lori-s"))
            load_init_weights(peft_model, init)
            record["init_from"] = str(init.path)
        return PreparedModel(peft_model, record)
