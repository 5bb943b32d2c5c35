"""What every adapter method provides, and helpers shared by the LoRA family."""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from tunelab.errors import TunelabError

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PEFT_PREFIX = "base_model.model."


@dataclass
class AdapterSettings:
    """The adapter part of a training config (what ``prepare`` needs)."""

    method: str
    rank: int = 32
    alpha: float = 64.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    seed: int | None = None
    sparsity: float = 0.9
    mask_granularity: str = "global"
    mask_from: str | None = None
    base_model: str = ""


@dataclass
class PreparedModel:
    """A model ready to train plus what the method wants recorded in ``tunelab.json``."""

    model: Any
    record: dict[str, Any] = field(default_factory=dict)
    # LoRI-S: module name -> bool mask over lora_B (True = trainable).
    masks: dict[str, torch.Tensor] | None = None


class AdapterMethod(abc.ABC):
    """One fine-tuning method. Subclasses are registered in ``tunelab.adapters.METHODS``."""

    name: str = ""
    default_lr: float = 1e-4
    #: whether outputs are PEFT adapters (else a full HF model directory)
    is_peft: bool = True

    @abc.abstractmethod
    def prepare(self, model: Any, settings: AdapterSettings) -> PreparedModel:
        """Wrap/freeze ``model`` for training with this method."""

    def save(self, prepared: PreparedModel, tokenizer: Any, out_dir: Path) -> None:
        """Write the trained adapter into ``out_dir`` (PEFT format for the LoRA family)."""
        prepared.model.save_pretrained(out_dir, safe_serialization=True)

    def verify(self, prepared: PreparedModel) -> None:
        """Check method invariants after training (e.g. exact zeros outside a mask)."""

    def trainable_parameters(self, prepared: PreparedModel) -> int:
        """Parameters the method actually updates."""
        return sum(p.numel() for p in prepared.model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- LoRA helpers
def module_key(peft_module_name: str) -> str:
    """PEFT's module path without its wrapper prefix, e.g. ``model.layers.0.self_attn.q_proj``."""
    return peft_module_name.removeprefix(PEFT_PREFIX)


def lora_config(settings: AdapterSettings) -> LoraConfig:
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def wrap_lora(model: Any, settings: AdapterSettings) -> PeftModel:
    """``get_peft_model`` with a clear error when no target module exists in the model."""
    if settings.rank < 1:
        raise TunelabError(f"--rank must be >= 1, got {settings.rank}")
    try:
        return get_peft_model(model, lora_config(settings))
    except ValueError as exc:
        raise TunelabError(
            f"cannot attach LoRA to modules {list(settings.target_modules)}: {str(exc).splitlines()[0]}"
        ) from None


def lora_layers(model: PeftModel) -> Iterator[tuple[str, Any]]:
    """``(module key, LoRA layer)`` for every adapted linear layer, in model order."""
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            yield module_key(name), module


_LAYER_RE = re.compile(r"\.(\d+)\.")


def layer_index(key: str) -> str:
    """The transformer block a module belongs to (``"-"`` if none)."""
    match = _LAYER_RE.search(key)
    return match.group(1) if match else "-"
