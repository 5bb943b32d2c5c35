"""On-disk forms of sparse adapters: masks, and LoRI-S's compact file.

The compact file holds the A seed, B's values at mask positions and the mask as a bitmap.
A is regenerated from the seed, so ``unpack`` rebuilds PEFT's ``adapter_model.safetensors``
bit for bit.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from tunelab.adapters.base import AdapterSettings, InitAdapter, module_key, read_run_record
from tunelab.adapters.projection import generate_a
from tunelab.errors import TunelabError, first_line
from tunelab.files import json_field, load_safetensors, open_safetensors, read_json, read_text

from tunelab.layout import COMPACT_FILE, MASK_FILE, PEFT_CONFIG, PEFT_WEIGHTS, atomic_write_text  # noqa: F401 (re-exported)

COMPACT_FORMAT = "tunelab-lori-compact/1"
_A, _B = ".lora_A.weight", ".lora_B.weight"


def atomic_save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors`` save through a temp file + rename, so a crash never leaves half a file."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """One bit per entry of a bool mask (flattened), as uint8."""
    return torch.from_numpy(np.packbits(mask.flatten().cpu().numpy()))


def _unpack_bits(bits: torch.Tensor, shape: list[int] | tuple[int, ...]) -> torch.Tensor:
    n = int(np.prod(shape))
    return torch.from_numpy(np.unpackbits(bits.numpy(), count=n).astype(bool)).reshape(tuple(shape))


def load_file(path: str | Path, what: str = "adapter weights") -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` for files a user hands over: a missing, truncated or corrupt
    file is a one-line ``TunelabError`` naming it."""
    return load_safetensors(path, what)[1]


def _read_formatted(path: Path, fmt: str, what: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a tunelab safetensors file, checking its ``format`` tag."""
    if not path.is_file():
        raise TunelabError(f"{path}: {what} file not found")
    with open_safetensors(path, what) as fh:
        metadata = fh.metadata() or {}
        if metadata.get("format") != fmt:
            raise TunelabError(f"{path}: not a tunelab {what} (format {metadata.get('format')!r})")
        return metadata, {k: fh.get_tensor(k) for k in fh.keys()}


def _corrupt(path: Path, what: str, exc: BaseException) -> TunelabError:
    """A tunelab file whose header parsed but whose contents do not fit together."""
    detail = f"missing tensor or field {exc}" if isinstance(exc, KeyError) else first_line(exc)
    return TunelabError(f"{path}: corrupt {what} ({detail})")


def lora_b_from_peft_file(path: Path) -> dict[str, torch.Tensor]:
    """``{module key: B}`` from a PEFT ``adapter_model.safetensors``."""
    if not path.is_file():
        raise TunelabError(f"{path}: adapter weights not found")
    return {module_key(k.removesuffix(_B)): v for k, v in load_file(path).items() if k.endswith(_B)}


MASK_BITMAP_FORMAT = "tunelab-mask-bitmap/1"


def save_masks(masks: dict[str, torch.Tensor], path: Path, packed: bool = False) -> None:
    """Masks keyed by module key or parameter name (True = trainable entry).

    Plain bool tensors by default; ``packed`` stores one bit per entry (LoTA's masks cover
    whole weight matrices, where bool tensors would cost a byte per weight).
    """
    if not packed:
        atomic_save_file({k: m.to(torch.bool) for k, m in masks.items()}, path)
        return
    bitmaps = {k: _pack_bits(m) for k, m in masks.items()}
    shapes = {k: list(m.shape) for k, m in masks.items()}
    atomic_save_file(bitmaps, path, {"format": MASK_BITMAP_FORMAT, "shapes": json.dumps(shapes)})


def load_masks(path: Path) -> dict[str, torch.Tensor]:
    """Bool masks from :func:`save_masks` (either form)."""
    path = Path(path)
    metadata, stored = load_safetensors(path, "mask file")
    if metadata.get("format") != MASK_BITMAP_FORMAT:
        return stored
    shapes = json_field(metadata.get("shapes", ""), path, "shapes", dict)
    try:
        return {key: _unpack_bits(stored[key], shape) for key, shape in shapes.items()}
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise _corrupt(path, "mask file", exc) from None


def pack(run_dir: Path, a_seed: int, support: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``adapter_compact.safetensors`` next to a LoRI-S run's PEFT files and mask.

    ``support`` (default: the run's mask) is where B may be non-zero; a continued run passes
    its mask joined with the earlier adapter's non-zeros.
    """
    run_dir = Path(run_dir)
    weights = load_file(run_dir / PEFT_WEIGHTS)
    masks = support if support is not None else load_masks(run_dir / MASK_FILE)
    tensors: dict[str, torch.Tensor] = {}
    modules: dict[str, dict[str, object]] = {}
    for name, tensor in weights.items():
        if name.endswith(_A):
            continue  # regenerated from the seed
        if not name.endswith(_B):
            tensors[f"dense/{name}"] = tensor  # anything non-LoRA (none for our methods) stays dense
            continue
        prefix = name.removesuffix(_B)
        key = module_key(prefix)
        mask = masks[key]
        a = weights[prefix + _A]
        outside = tensor[~mask]
        if outside.numel() and outside.abs().max().item() != 0.0:
            raise TunelabError(f"{run_dir}: B of {key} has non-zero entries outside its mask; cannot pack")
        tensors[f"{key}.values"] = tensor[mask]
        tensors[f"{key}.bitmap"] = _pack_bits(mask)
        modules[key] = {"peft_prefix": prefix, "a_shape": list(a.shape), "b_shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
    metadata = {
        "format": COMPACT_FORMAT,
        "a_seed": str(a_seed),
        "adapter_config": read_text(run_dir / PEFT_CONFIG, "adapter config"),
        "modules": json.dumps(modules),
    }
    out = run_dir / COMPACT_FILE
    atomic_save_file(tensors, out, metadata)
    return out


def unpack(compact_path: Path, out_dir: Path) -> Path:
    """Rebuild PEFT's ``adapter_config.json`` + ``adapter_model.safetensors`` from a compact file."""
    compact_path = Path(compact_path)
    if compact_path.is_dir():
        compact_path = compact_path / COMPACT_FILE
    metadata, stored = _read_formatted(compact_path, COMPACT_FORMAT, "compact adapter")
    modules = json_field(metadata.get("modules", ""), compact_path, "modules", dict)
    json_field(metadata.get("adapter_config", ""), compact_path, "adapter_config", dict)
    weights: dict[str, torch.Tensor] = {k.removeprefix("dense/"): v for k, v in stored.items() if k.startswith("dense/")}
    try:
        a_seed = int(metadata["a_seed"])
        for key, info in modules.items():
            rank, in_features = info["a_shape"]
            b_shape = info["b_shape"]
            mask = _unpack_bits(stored[f"{key}.bitmap"], b_shape)
            dtype = getattr(torch, info["dtype"])
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"dtype {info['dtype']!r}")
            b = torch.zeros(b_shape, dtype=dtype)
            b[mask] = stored[f"{key}.values"]
            a = generate_a(a_seed, key, rank, in_features).to(b.dtype)
            weights[info["peft_prefix"] + _A] = a
            weights[info["peft_prefix"] + _B] = b
    except (KeyError, ValueError, TypeError, AttributeError, RuntimeError) as exc:  # fields that do not fit together
        raise _corrupt(compact_path, "compact adapter", exc) from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / PEFT_CONFIG, metadata["adapter_config"])
    atomic_save_file(weights, out_dir / PEFT_WEIGHTS, {"format": "pt"})
    return out_dir


# --------------------------------------------------------------------------- sparse task vectors
TASK_VECTOR_FILE = "task_vector.safetensors"
TASK_VECTOR_FORMAT = "tunelab-task-vector/1"


def save_task_vector(deltas: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    """A sparse task vector as flat indices + values per weight (never dense masks).

    ``deltas`` maps a parameter name of the base model (e.g.
    ``model.layers.0.self_attn.q_proj.weight``) to its dense delta; only non-zero entries are
    stored (``NAME.indices`` int64 into the flattened weight, ``NAME.values``), the shapes go
    into the metadata.
    """
    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for name, delta in deltas.items():
        flat = delta.detach().flatten()
        idx = torch.nonzero(flat, as_tuple=True)[0]
        # int32 indices halve the file; a single weight never has 2**31 entries here
        tensors[f"{name}.indices"] = idx.to(torch.int32 if flat.numel() < 2**31 else torch.int64)
        tensors[f"{name}.values"] = flat[idx].contiguous()
        shapes[name] = list(delta.shape)
    meta = {"format": TASK_VECTOR_FORMAT, "shapes": json.dumps(shapes), **(metadata or {})}
    atomic_save_file(tensors, Path(path), meta)
    return Path(path)


def load_task_vector(path: Path, dense: bool = True) -> dict[str, torch.Tensor]:
    """``{parameter name: delta}`` from a task-vector file (dense tensors, or sparse COO if ``dense=False``)."""
    path = Path(path)
    if path.is_dir():
        path = path / TASK_VECTOR_FILE
    metadata, stored = _read_formatted(path, TASK_VECTOR_FORMAT, "task vector")
    out: dict[str, torch.Tensor] = {}
    try:
        for name, shape in json_field(metadata.get("shapes", ""), path, "shapes", dict).items():
            idx, values = stored[f"{name}.indices"], stored[f"{name}.values"]
            n = int(np.prod(shape))
            if dense:
                flat = torch.zeros(n, dtype=values.dtype)
                flat[idx.long()] = values
                out[name] = flat.reshape(shape)
            else:
                out[name] = torch.sparse_coo_tensor(idx.long().unsqueeze(0), values, (n,)).coalesce()
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as exc:  # indices past the shape, ...
        raise _corrupt(path, "task vector", exc) from None
    return out


def task_vector_metadata(path: Path) -> dict[str, str]:
    """The metadata block of a task-vector file (format, shapes, base model, ...)."""
    with open_safetensors(path, "task vector") as fh:
        return dict(fh.metadata() or {})


# Here, not in base: it reads the stored forms (compact or PEFT), and storage builds on base.
def read_init_adapter(init_from: str, settings: AdapterSettings, methods: tuple[str, ...]) -> InitAdapter:
    """Load the adapter ``--init-from`` names and check it fits this run (base, rank, alpha, modules)."""
    path = Path(init_from)
    if not path.is_dir():
        raise TunelabError(f"--init-from {path}: directory not found")
    meta = read_run_record(path)
    if meta and meta.get("method") not in methods:
        raise TunelabError(f"--init-from {path}: a '{meta.get('method')}' run; --method {settings.method} continues from {' or '.join(methods)}")
    if not meta and "lora" not in methods:
        raise TunelabError(f"--init-from {path}: not a finished tunelab run (no tunelab.json); --method {settings.method} needs one")
    if meta and meta.get("base_model") != settings.base_model:
        raise TunelabError(f"--init-from {path}: trained on base model '{meta.get('base_model')}', not '{settings.base_model}'")
    peft_dir = path
    if not (path / PEFT_WEIGHTS).is_file() and (path / COMPACT_FILE).is_file():
        peft_dir = unpack(path, Path(tempfile.mkdtemp(prefix="tunelab-init-")))
    if not (peft_dir / PEFT_CONFIG).is_file():
        raise TunelabError(f"--init-from {path}: no adapter_config.json (not a PEFT adapter or tunelab run)")
    config = read_json(peft_dir / PEFT_CONFIG, "adapter config")
    if config.get("r") != settings.rank or float(config.get("lora_alpha", 0)) != float(settings.alpha):
        raise TunelabError(f"--init-from {path}: rank {config.get('r')} / alpha {config.get('lora_alpha')}; "
                           f"pass --rank {config.get('r')} --alpha {config.get('lora_alpha')}")
    if config.get("use_rslora") or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise TunelabError(f"--init-from {path}: rsLoRA / per-module ranks are not supported for continual training")
    weights = load_file(peft_dir / PEFT_WEIGHTS)
    a = {module_key(k.removesuffix(".lora_A.weight")): v for k, v in weights.items() if k.endswith(".lora_A.weight")}
    b = {module_key(k.removesuffix(".lora_B.weight")): v for k, v in weights.items() if k.endswith(".lora_B.weight")}
    targets = {k.rsplit(".", 1)[-1] for k in b}
    if targets != set(settings.target_modules):
        raise TunelabError(f"--init-from {path}: adapts {sorted(targets)}, not {sorted(settings.target_modules)}")
    return InitAdapter(path.resolve(), meta, a, b)
