"""LoTA: Lottery Ticket Adaptation — train a sparse subset of the base weights themselves.

1. Calibrate: a short dense fine-tune of the attention and MLP weights (``--calibration-fraction``
   of the data, one pass; embeddings, norms and the head stay frozen).
2. Mask: the global top ``1 - sparsity`` of ``|θ_ft − θ₀|`` (True = trainable; the public code
   uses the opposite convention).
3. Reset to θ₀ and train only the masked entries: gradients outside the mask are zeroed every
   step, so with weight decay 0 those weights stay exactly θ₀ (checked after training).

The result is a sparse task vector ``θ − θ_base`` stored as indices + values
(``task_vector.safetensors``), never as a dense mask or a full model. ``--init-from`` a LoTA run
starts from its weights; with ``--disjoint`` the new mask avoids the positions it uses (LoTTO),
so the task vectors of sequential tasks never collide and merge cleanly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tunelab.adapters import storage
from tunelab.adapters.base import AdapterMethod, AdapterSettings, PreparedModel, broadcast_masks, read_run_record
from tunelab.adapters.lori import compute_masks
from tunelab.errors import TunelabError


def target_weights(model: torch.nn.Module, target_modules: tuple[str, ...] | list[str]) -> dict[str, torch.nn.Parameter]:
    """``{parameter name: weight}`` of the linear layers named in ``target_modules`` (attention + MLP)."""
    wanted = set(target_modules)
    return {
        f"{name}.weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in wanted
    }


def apply_task_vector(model: torch.nn.Module, deltas: dict[str, torch.Tensor], sign: float = 1.0) -> None:
    """Add ``sign * delta`` to the named weights of ``model`` in place."""
    params = dict(model.named_parameters())
    missing = sorted(set(deltas) - set(params))
    if missing:
        raise TunelabError(f"task vector does not fit this model: no weight '{missing[0]}' (and {len(missing) - 1} more)")
    with torch.no_grad():
        for name, delta in deltas.items():
            if params[name].shape != delta.shape:
                raise TunelabError(f"task vector does not fit this model: {name} is {tuple(delta.shape)}, model has {tuple(params[name].shape)}")
            params[name].add_(delta.to(params[name].dtype), alpha=sign)


def _read_init(settings: AdapterSettings) -> tuple[Path, dict[str, torch.Tensor]]:
    path = Path(settings.init_from or "")
    meta = read_run_record(path)
    if meta.get("method") != "lota":
        raise TunelabError(f"--init-from {path}: --method lota continues from a finished lota run")
    if meta.get("base_model") != settings.base_model:
        raise TunelabError(f"--init-from {path}: trained on base model '{meta.get('base_model')}', not '{settings.base_model}'")
    return path.resolve(), storage.load_task_vector(path / storage.TASK_VECTOR_FILE)


class LoTA(AdapterMethod):
    name = "lota"
    default_lr = 1e-4
    is_peft = False
    saves_task_vector = True
    trains_new_token_rows = False
    supports_disjoint = True
    frozen_entries = "always"
    calibrates_on_data = True

    def prepare(self, model: Any, settings: AdapterSettings) -> PreparedModel:
        if not 0.0 < settings.calibration_fraction <= 1.0:
            raise TunelabError(f"--calibration-fraction must be in (0, 1], got {settings.calibration_fraction}")
        weights = target_weights(model, settings.target_modules)
        if not weights:
            raise TunelabError(f"--method lota: no linear layers named {list(settings.target_modules)} in this model")
        for p in model.parameters():
            p.requires_grad_(False)
        record: dict[str, Any] = {"sparsity": settings.sparsity, "mask_granularity": settings.mask_granularity,
                                  "calibration_fraction": settings.calibration_fraction, "disjoint": settings.disjoint}
        init_delta: dict[str, torch.Tensor] = {}
        if settings.init_from:
            init_path, init_delta = _read_init(settings)
            apply_task_vector(model, init_delta)
            record["init_from"] = str(init_path)
        elif settings.disjoint:
            raise TunelabError("--disjoint needs --init-from RUN (the lota run whose positions to keep clear of)")
        theta0 = {n: w.detach().cpu().clone() for n, w in weights.items()}

        resumed = Path(settings.resume_dir or "") / storage.MASK_FILE
        if settings.resume_dir and resumed.is_file():
            masks = storage.load_masks(resumed)  # the calibration already ran before the interruption
        else:
            if settings.calibrate is None:
                raise TunelabError("--method lota needs a calibration run (train it through tunelab.train)")
            for w in weights.values():
                w.requires_grad_(True)
            settings.calibrate(model, list(weights.values()))
            with torch.no_grad():
                # the calibration may have run on an accelerator; masks and θ₀ live on the CPU
                deltas = {n: (w.detach().cpu() - theta0[n]).float() for n, w in weights.items()}
                exclude = {n: init_delta[n] != 0 if n in init_delta else torch.zeros_like(w, dtype=torch.bool)
                           for n, w in weights.items()} if settings.disjoint else None
                masks = broadcast_masks(compute_masks(deltas, settings.sparsity, settings.mask_granularity, exclude))
                del deltas
                for n, w in weights.items():
                    w.copy_(theta0[n])  # back to θ₀: the calibration only chose the ticket
        for w in weights.values():
            w.requires_grad_(True)  # the trainer zeroes gradients outside the mask (PreparedModel.grad_masks)
        kept = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        record["mask_density"] = kept / total
        if init_delta:
            used = {n: d != 0 for n, d in init_delta.items()}
            overlap = sum(int((masks[n] & used[n]).sum()) for n in used if n in masks)
            record["mask_overlap_with_init"] = overlap / max(1, min(kept, sum(int(u.sum()) for u in used.values())))
        return PreparedModel(model, record, masks=masks, frozen_values=theta0, state={"init_delta": init_delta})

    def on_output_ready(self, prepared: PreparedModel, out_dir: Path) -> None:
        """Keep the mask beside the checkpoints: a resumed run must not re-calibrate."""
        assert prepared.masks is not None
        storage.save_masks(prepared.masks, out_dir / storage.MASK_FILE, packed=True)

    def trainable_parameters(self, prepared: PreparedModel) -> int:
        assert prepared.masks is not None
        return sum(int(m.sum()) for m in prepared.masks.values())

    def verify(self, prepared: PreparedModel) -> None:
        assert prepared.masks is not None and prepared.frozen_values is not None
        params = dict(prepared.model.named_parameters())
        for name, mask in prepared.masks.items():
            w = params[name].detach().cpu()
            if not torch.equal(w[~mask], prepared.frozen_values[name][~mask].to(w.dtype)):
                raise RuntimeError(f"LoTA invariant broken: {name} changed weights outside its mask")

    def task_vector(self, prepared: PreparedModel) -> dict[str, torch.Tensor]:
        """``θ − θ_base`` over the target weights (the earlier run's vector included when continuing)."""
        assert prepared.masks is not None and prepared.frozen_values is not None
        init_delta: dict[str, torch.Tensor] = prepared.state.get("init_delta", {})
        params = dict(prepared.model.named_parameters())
        out = {}
        for name, mask in prepared.masks.items():
            delta = torch.zeros_like(prepared.frozen_values[name], dtype=torch.float32)
            delta[mask] = (params[name].detach().cpu()[mask].float() - prepared.frozen_values[name][mask].float())
            if name in init_delta:
                delta += init_delta[name].float()
            out[name] = delta
        return out

    def save(self, prepared: PreparedModel, tokenizer: Any, out_dir: Path) -> None:
        assert prepared.masks is not None
        storage.save_masks(prepared.masks, out_dir / storage.MASK_FILE, packed=True)
        vector = self.task_vector(prepared)
        storage.save_task_vector(vector, out_dir / storage.TASK_VECTOR_FILE, {"record": json.dumps(prepared.record)})


def materialize(run_dir: Path, output: Path, model: str | None = None) -> Path:
    """Write base + task vector as a full HF model directory (``from_pretrained`` loads it)."""
    from tunelab.models import load_model

    run_dir, output = Path(run_dir), Path(output)
    meta = read_run_record(run_dir)
    base = model or meta.get("base_model")
    if not base:
        raise TunelabError(f"{run_dir}: no base model recorded; pass the model name")
    if output.exists() and any(output.iterdir()):
        raise TunelabError(f"{output} is not empty")
    lm, tokenizer = load_model(base)
    apply_task_vector(lm, storage.load_task_vector(run_dir / storage.TASK_VECTOR_FILE))
    output.mkdir(parents=True, exist_ok=True)
    lm.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    return output
