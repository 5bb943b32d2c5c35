"""LoRI: LoRA with Reduced Interference (frozen random A; LoRI-S adds a sparse B).

* LoRI-D: ``A`` is drawn per module from a ``torch.Generator`` seeded by (adapter seed, module
  name), so it is bit-exactly regenerable and independent of module order; only ``B`` trains.
* LoRI-S: a mask over ``B`` from a LoRI-D run (top ``1 - sparsity`` of ``|B|``), the same A seed,
  a fresh ``B = 0`` and gradients outside the mask zeroed every step, so those entries stay 0.
* Continual learning (``--init-from RUN``): A seed and B come from the earlier run; B keeps
  training. For LoRI-S the mask is taken from the task's update ``|B_src - B_init|`` and, with
  ``--disjoint``, restricted to positions the earlier adapter does not use, so the earlier
  adapter's entries stay exactly as they were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tunelab.adapters import storage
from tunelab.adapters.projection import generate_a, new_seed
from tunelab.adapters.base import (
    AdapterMethod,
    AdapterSettings,
    InitAdapter,
    PreparedModel,
    layer_index,
    load_init_weights,
    lora_layers,
    wrap_lora,
)
from tunelab.adapters.storage import read_init_adapter
from tunelab.errors import TunelabError
from tunelab.files import read_json

GRANULARITIES = ("global", "layer", "matrix")


def _freeze_a(model: Any, adapter_seed: int, rank: int) -> None:
    for key, layer in lora_layers(model):
        a = layer.lora_A["default"].weight
        with torch.no_grad():
            a.copy_(generate_a(adapter_seed, key, rank, a.shape[1]))
            layer.lora_B["default"].weight.zero_()
        a.requires_grad_(False)


def compute_masks(
    b: dict[str, torch.Tensor],
    sparsity: float,
    granularity: str = "global",
    exclude: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep the top ``1 - sparsity`` fraction of ``|B|`` (entries ``>=`` the k-th largest).

    ``granularity`` picks the pool the top-k runs over: all modules together, each
    transformer block, or each matrix. ``exclude`` (True = taken) removes positions from the
    pool; k still counts all entries, so the density stays ``1 - sparsity``.
    """
    if not 0.0 <= sparsity < 1.0:
        raise TunelabError(f"--sparsity must be in [0, 1), got {sparsity}")
    if granularity not in GRANULARITIES:
        raise TunelabError(f"--mask-granularity must be one of {', '.join(GRANULARITIES)}, got '{granularity}'")
    groups: dict[str, list[str]] = {}
    for key in b:
        group = {"global": "all", "layer": layer_index(key), "matrix": key}[granularity]
        groups.setdefault(group, []).append(key)
    masks: dict[str, torch.Tensor] = {}
    for keys in groups.values():
        scored = {key: b[key].abs().float() for key in keys}
        if exclude is not None:
            # -1 sorts below every |B|, and the >= threshold test below never keeps it
            scored = {key: s.masked_fill(exclude[key].to(torch.bool), -1.0) for key, s in scored.items()}
        scores = torch.cat([s.flatten() for s in scored.values()])
        k = max(1, int((1.0 - sparsity) * scores.numel()))
        free = int((scores >= 0).sum())
        if k > free:
            raise TunelabError(f"--disjoint: only {free} of {scores.numel()} entries are free, but sparsity {sparsity} needs {k}; raise --sparsity")
        threshold = torch.topk(scores, k, sorted=False).values.min()
        for key in keys:
            masks[key] = scored[key] >= threshold
    return masks


def _load_source(mask_from: str, settings: AdapterSettings) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a LoRI-D (or LoRI-S) run and check it fits the model and rank being trained."""
    src = Path(mask_from)
    meta_path = src / "tunelab.json"
    if not meta_path.is_file():
        raise TunelabError(f"--mask-from {src}: not a finished tunelab run (no tunelab.json)")
    meta = read_json(meta_path, "run record")
    if meta.get("method") not in ("lori-d", "lori-s"):
        raise TunelabError(f"--mask-from {src}: a '{meta.get('method')}' run; a mask needs a lori-d (or lori-s) run")
    if meta.get("base_model") != settings.base_model:
        raise TunelabError(
            f"--mask-from {src}: trained on base model '{meta.get('base_model')}', not '{settings.base_model}'"
        )
    if meta.get("rank") != settings.rank:
        raise TunelabError(f"--mask-from {src}: rank {meta.get('rank')}, but this run uses --rank {settings.rank}")
    if sorted(meta.get("target_modules", [])) != sorted(settings.target_modules):
        raise TunelabError(f"--mask-from {src}: adapts {meta.get('target_modules')}, not {list(settings.target_modules)}")
    return meta, storage.lora_b_from_peft_file(src / "adapter_model.safetensors")


class LoRID(AdapterMethod):
    name = "lori-d"
    default_lr = 5e-5

    def prepare(self, model: Any, settings: AdapterSettings) -> PreparedModel:
        init = _read_lori_init(settings)
        if init is not None:
            return self._prepare_with_seed(model, settings, int(init.meta["a_seed"]), init)
        seed = settings.seed if settings.seed is not None else new_seed()
        return self._prepare_with_seed(model, settings, seed)

    def _prepare_with_seed(self, model: Any, settings: AdapterSettings, seed: int, init: InitAdapter | None = None) -> PreparedModel:
        peft_model = wrap_lora(model, settings)
        _freeze_a(peft_model, seed, settings.rank)
        record = {"a_seed": str(seed), "rank": settings.rank, "alpha": settings.alpha}
        if init is not None:
            load_init_weights(peft_model, init)
            record["init_from"] = str(init.path)
        return PreparedModel(peft_model, record)


def _read_lori_init(settings: AdapterSettings) -> InitAdapter | None:
    """The ``--init-from`` run for a LoRI method: a LoRI run (its A is regenerable from its seed)."""
    if not settings.init_from:
        return None
    return read_init_adapter(settings.init_from, settings, ("lori-d", "lori-s"))


class LoRIS(LoRID):
    name = "lori-s"
    default_lr = 5e-4
    trains_new_token_rows = False
    needs_mask_from = True
    mask_source = "lori-d"
    sparse_b = True
    compact_file = True
    supports_disjoint = True
    frozen_entries = "with init_from"

    def prepare(self, model: Any, settings: AdapterSettings) -> PreparedModel:
        if not settings.mask_from:
            raise TunelabError("--method lori-s needs --mask-from DIR (a finished lori-d run to take the mask from)")
        meta, source_b = _load_source(settings.mask_from, settings)
        init = _read_lori_init(settings)
        if init is not None and meta["a_seed"] != init.meta["a_seed"]:
            raise TunelabError(f"--mask-from {settings.mask_from} and --init-from {settings.init_from} use different A seeds; "
                               "train the mask source with --init-from the same run")
        prepared = self._prepare_with_seed(model, settings, int(meta["a_seed"]), init)
        keys = [key for key, _ in lora_layers(prepared.model)]
        if sorted(keys) != sorted(source_b):
            raise TunelabError(f"--mask-from {settings.mask_from}: its modules do not match this model's")
        exclude = None
        if init is not None:
            if meta.get("init_from") == str(init.path):
                # the source continued from the same run: its task update is B_src - B_init
                source_b = {k: v - init.b[k] for k, v in source_b.items()}
            if settings.disjoint:
                exclude = {k: v != 0 for k, v in init.b.items()}
            prepared.frozen_values = {k: v.clone() for k, v in init.b.items()}
        elif settings.disjoint:
            raise TunelabError("--disjoint needs --init-from RUN (the adapter whose positions to keep clear of)")
        masks = compute_masks(source_b, settings.sparsity, settings.mask_granularity, exclude)
        for key, layer in lora_layers(prepared.model):
            weight = layer.lora_B["default"].weight
            if masks[key].shape != weight.shape:
                raise TunelabError(f"--mask-from {settings.mask_from}: {key} has shape {tuple(masks[key].shape)}, model has {tuple(weight.shape)}")
        # The trainer zeroes B's gradient outside the mask: with B starting at 0, AdamW keeps
        # those entries at exactly 0 (zero moments give a zero step; decay of 0 is 0).
        prepared.masks, prepared.mask_keys = masks, "module"
        kept = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        prepared.record.update(
            sparsity=settings.sparsity,
            mask_granularity=settings.mask_granularity,
            mask_from=str(Path(settings.mask_from).resolve()),
            mask_density=kept / total,
            disjoint=settings.disjoint,
        )
        if init is not None:
            used = sum(int((v != 0).sum()) for v in init.b.values())
            overlap = sum(int((masks[k] & (init.b[k] != 0)).sum()) for k in masks)
            prepared.record["mask_overlap_with_init"] = overlap / max(1, min(used, kept))
        return prepared

    def trainable_parameters(self, prepared: PreparedModel) -> int:
        assert prepared.masks is not None
        return sum(int(m.sum()) for m in prepared.masks.values())

    def verify(self, prepared: PreparedModel) -> None:
        assert prepared.masks is not None
        frozen = prepared.frozen_values or {}
        for key, layer in lora_layers(prepared.model):
            b = layer.lora_B["default"].weight.detach()
            outside = ~prepared.masks[key]
            expected = frozen[key][outside].to(b.dtype) if key in frozen else torch.zeros_like(b[outside])
            if not torch.equal(b[outside], expected):
                raise RuntimeError(f"LoRI-S invariant broken: {key} changed B entries outside its mask")

    def save(self, prepared: PreparedModel, tokenizer: Any, out_dir: Path) -> None:
        super().save(prepared, tokenizer, out_dir)
        assert prepared.masks is not None
        storage.save_masks(prepared.masks, out_dir / storage.MASK_FILE)
        support = None
        if prepared.frozen_values is not None:
            support = {k: m | (prepared.frozen_values[k] != 0) for k, m in prepared.masks.items()}
        storage.pack(out_dir, int(prepared.record["a_seed"]), support)
