"""What every adapter method provides, and helpers shared by the LoRA family."""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from tunelab.errors import TunelabError
from tunelab.files import read_json

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
    # continual learning: start from an earlier run (A frozen, B trained); lori-s/lota
    # ``disjoint`` keeps the new mask off the positions the earlier run uses.
    init_from: str | None = None
    disjoint: bool = False
    # lota: fraction of the data for the dense calibration fine-tune, and the function the
    # trainer hands over to run it: ``calibrate(model, params)`` trains ``params`` in place.
    calibration_fraction: float = 0.1
    calibrate: Callable[[Any, list[torch.nn.Parameter]], None] | None = None
    # lota: a run dir being resumed (its saved mask replaces a fresh calibration)
    resume_dir: str | None = None
    # refusal tokens: embedding rows trained through PEFT's TrainableTokens (the tokens added to the vocab)
    trainable_token_indices: tuple[int, ...] = ()


@dataclass
class PreparedModel:
    """A model ready to train plus what the method wants recorded in ``tunelab.json``."""

    model: Any
    record: dict[str, Any] = field(default_factory=dict)
    # LoRI-S: module key -> bool mask over lora_B; LoTA: parameter name -> mask over the
    # weight (True = trainable).
    masks: dict[str, torch.Tensor] | None = None
    # values the entries outside the masks must keep exactly (None: zero)
    frozen_values: dict[str, torch.Tensor] | None = None
    # anything else a method carries from prepare to save
    state: dict[str, Any] = field(default_factory=dict)
    # how ``masks`` keys name parameters: "module" (LoRI-S: the module whose lora_B they mask) or "param"
    mask_keys: str = "param"

    def grad_masks(self) -> dict[str, torch.Tensor]:
        """Parameter name (in ``model``) → mask of the entries that may change (True = trainable).

        The trainer's update rule zeroes gradients outside these before clipping and the optimizer
        step; with zero gradients there AdamW's moments and steps stay exactly 0.
        """
        if not self.masks:
            return {}
        if self.mask_keys == "module":
            return {f"{PEFT_PREFIX}{key}.lora_B.default.weight": mask for key, mask in self.masks.items()}
        return dict(self.masks)


class AdapterMethod(abc.ABC):
    """One fine-tuning method. Subclasses are registered in ``tunelab.adapters.ADAPTER_METHODS``.

    The class attributes below are the method's *capabilities*: callers outside ``adapters/`` ask
    ``ADAPTER_METHODS.get(name).<capability>`` instead of testing the method's name, so a new method
    is one file plus one registry line.
    """

    name: str = ""
    default_lr: float = 1e-4
    #: whether outputs are PEFT adapters (else a full HF model directory or a task vector)
    is_peft: bool = True
    #: the output is a whole model (every weight trained), not an adapter on a base model
    full_model: bool = False
    #: the output is a sparse task vector added to the base weights (``storage.TASK_VECTOR_FILE``)
    saves_task_vector: bool = False
    #: trains and saves embedding rows of added tokens (refusal tokens, new-token canaries);
    #: a method that packs only B or saves a task vector carries no new rows
    trains_new_token_rows: bool = True
    #: takes ``--mask-from`` (the finished run whose weights choose the sparse mask)
    needs_mask_from: bool = False
    #: the method whose finished run recipes train first to take the mask from ("" if none)
    mask_source: str = ""
    #: B is trained under a fixed sparse mask, so the mask is recoverable as B != 0
    sparse_b: bool = False
    #: saves B packed with its mask in ``storage.COMPACT_FILE`` (instead of the PEFT weights file)
    compact_file: bool = False
    #: continues an earlier run with ``--init-from``
    supports_init_from: bool = True
    #: keeps a new mask off an earlier run's positions (``--disjoint`` with ``--init-from``)
    supports_disjoint: bool = False
    #: when entries outside the trainable mask hold values that must not move (so weight decay
    #: cannot apply): "always", "with init_from" (the frozen entries are the earlier run's), or ""
    frozen_entries: str = ""
    #: chooses its mask with a dense, non-private pass over the training data (no DP guarantee)
    calibrates_on_data: bool = False

    @classmethod
    def weight_decay_applies(cls, init_from: bool) -> bool:
        """Whether ``--weight-decay`` can be used (it would move the entries outside a mask)."""
        return not (cls.frozen_entries == "always" or (cls.frozen_entries == "with init_from" and init_from))

    @abc.abstractmethod
    def prepare(self, model: Any, settings: AdapterSettings) -> PreparedModel:
        """Wrap/freeze ``model`` for training with this method."""

    def save(self, prepared: PreparedModel, tokenizer: Any, out_dir: Path) -> None:
        """Write the trained adapter into ``out_dir`` (PEFT format for the LoRA family).

        With added tokens (``state["added_tokens"]``) the tokenizer goes next to the adapter, and PEFT
        must not copy the whole resized embedding matrix into it: the TrainableTokens rows are enough
        once the base is resized to the saved tokenizer.
        """
        if prepared.state.get("added_tokens"):
            prepared.model.save_pretrained(out_dir, safe_serialization=True, save_embedding_layers=False)
            tokenizer.save_pretrained(out_dir)
            return
        prepared.model.save_pretrained(out_dir, safe_serialization=True)

    def verify(self, prepared: PreparedModel) -> None:
        """Check method invariants after training (e.g. exact zeros outside a mask)."""

    def on_output_ready(self, prepared: PreparedModel, out_dir: Path) -> None:
        """Called once the output dir exists, before training (e.g. to keep state a resume needs)."""

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
        trainable_token_indices=list(settings.trainable_token_indices) or None,
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


# --------------------------------------------------------------------------- continual learning
@dataclass
class InitAdapter:
    """An earlier LoRA-family run to continue from: its record and per-module A and B."""

    path: Path
    meta: dict[str, Any]
    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]


def read_run_record(path: Path) -> dict[str, Any]:
    """A finished run's ``tunelab.json`` ({} for a plain PEFT adapter dir)."""
    record = Path(path) / "tunelab.json"
    return read_json(record, "run record") if record.is_file() else {}


def load_init_weights(model: PeftModel, init: InitAdapter) -> None:
    """Copy the earlier run's A and B into ``model``'s adapter; A stays frozen, B trains."""
    keys = [key for key, _ in lora_layers(model)]
    if sorted(keys) != sorted(init.b):
        raise TunelabError(f"--init-from {init.path}: its modules do not match this model's")
    for key, layer in lora_layers(model):
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        if a.shape != init.a[key].shape or b.shape != init.b[key].shape:
            raise TunelabError(f"--init-from {init.path}: {key} has shapes {tuple(init.a[key].shape)}/{tuple(init.b[key].shape)}, "
                               f"model has {tuple(a.shape)}/{tuple(b.shape)}")
        with torch.no_grad():
            a.copy_(init.a[key])
            b.copy_(init.b[key])
        a.requires_grad_(False)


def broadcast_masks(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Under multi-process training, every rank takes rank 0's masks.

    A mask chosen from a calibration pass depends on floating-point results that may differ
    between GPUs (non-deterministic kernels); ranks that trained different positions would
    silently break the sparsity invariant. Single-process runs return ``masks`` unchanged.
    """
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes <= 1:
        return masks
    out = {}
    for name in sorted(masks):  # the same order on every rank
        t = masks[name].to(device=state.device, dtype=torch.uint8).contiguous()
        torch.distributed.broadcast(t, src=0)
        out[name] = t.to(device="cpu", dtype=torch.bool)
    return out
