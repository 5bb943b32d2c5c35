"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG and progress.

Everything is safetensors + JSON (no pickle). A checkpoint directory is written under a temp
name and swapped in by rename, so a crash leaves either the old or the new one, never half.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_DIR = "checkpoint"
_OLD = ".checkpoint-old"


def _optimizer_to_flat(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in state["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    out_dir: Path,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: dict[str, Any],
) -> Path:
    """Atomically replace ``out_dir/checkpoint`` with the current training state."""
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-tmp-", dir=out_dir))
    opt_tensors, opt_meta = _optimizer_to_flat(optimizer.state_dict())
    save_file({k: v.detach().contiguous() for k, v in trainable.items()}, tmp / "trainable.safetensors")
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    save_file({"torch": torch.get_rng_state()}, tmp / "rng.safetensors")
    state = {"progress": progress, "optimizer": opt_meta, "scheduler": scheduler.state_dict()}
    (tmp / "state.json").write_text(json.dumps(state))
    final, old = out_dir / CHECKPOINT_DIR, out_dir / _OLD
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint (also one left behind by a crash mid-swap)."""
    for name in (CHECKPOINT_DIR, _OLD):
        path = out_dir / name
        if (path / "state.json").is_file():
            return path
    return None


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG in place; return the saved progress."""
    state = json.loads((path / "state.json").read_text())
    trainable = load_file(path / "trainable.safetensors")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in trainable.items():
            params[name].copy_(value)
    optimizer.load_state_dict(_optimizer_from_flat(load_file(path / "optimizer.safetensors"), state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(load_file(path / "rng.safetensors")["torch"])
    return state["progress"]
