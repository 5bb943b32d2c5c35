"""Resumable checkpoints: trainable weights, the update rule's state, RNG and progress.

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
from safetensors.torch import save_file

from tunelab.errors import TunelabError
from tunelab.files import load_safetensors, read_json

CHECKPOINT_DIR = "checkpoint"
_OLD = ".checkpoint-old"


def optimizer_to_flat(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A torch optimizer ``state_dict`` as (safetensors-able tensors, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in state["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_flat`."""
    state: dict[int | str, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.rsplit(".", 1)  # idx: a parameter index, or its name (FSDP's full state)
        state.setdefault(_param_key(idx), {})[name] = value
    for idx, values in meta["scalars"].items():
        state.setdefault(_param_key(idx), {}).update(values)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _param_key(idx: str) -> int | str:
    return int(idx) if idx.isdigit() else idx


def save_checkpoint(
    out_dir: Path,
    trainable: dict[str, torch.Tensor],
    rule_state: tuple[dict[str, torch.Tensor], dict[str, Any]],
    progress: dict[str, Any],
) -> Path:
    """Atomically replace ``out_dir/checkpoint`` with the current training state."""
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-tmp-", dir=out_dir))
    rule_tensors, rule_meta = rule_state
    save_file({k: v.detach().contiguous() for k, v in trainable.items()}, tmp / "trainable.safetensors")
    save_file({k: v.contiguous() for k, v in rule_tensors.items()}, tmp / "update_rule.safetensors")
    save_file({"torch": torch.get_rng_state()}, tmp / "rng.safetensors")
    (tmp / "state.json").write_text(json.dumps({"progress": progress, "update_rule": rule_meta}))
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


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], tuple[dict[str, torch.Tensor], dict[str, Any]], dict[str, Any]]:
    """(trainable weights, update-rule state, progress) of a checkpoint; restores the RNG."""
    # A checkpoint truncated by a full disk or a kill mid-write is one line naming the file.
    state = read_json(path / "state.json", "checkpoint state")
    if not {"update_rule", "progress"} <= set(state):
        raise TunelabError(f"{path / 'state.json'}: not a tunelab checkpoint state (no update_rule/progress)")
    tensors = {name: load_safetensors(path / f"{name}.safetensors", "checkpoint")[1]
               for name in ("rng", "update_rule", "trainable")}
    torch.set_rng_state(tensors["rng"]["torch"])
    return tensors["trainable"], (tensors["update_rule"], state["update_rule"]), state["progress"]
