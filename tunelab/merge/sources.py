"""Read what a merge takes as input: LoRA-family PEFT adapters and LoTA sparse task vectors.

A source is a directory holding one of

* a PEFT LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``), with or without
  tunelab's ``tunelab.json`` (lora, lori-d, lori-s); a LoRI-S dir holding only
  ``adapter_compact.safetensors`` is unpacked to a temporary dir first;
* a LoTA run: ``tunelab.json`` (method ``lota``) + ``task_vector.safetensors``.

Everything is read in fp32. ΔW of a LoRA module is ``s·B·A`` with ``s = α/r`` (``α/√r`` with
rsLoRA), α and r taken from ``alpha_pattern`` / ``rank_pattern`` where they name the module.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from tunelab.adapters import method_class, storage
from tunelab.adapters.base import module_key
from tunelab.errors import TunelabError
from tunelab.files import json_field, json_value, open_safetensors, read_json
from tunelab.layout import COMPACT_FILE, MASK_FILE, PEFT_CONFIG, PEFT_WEIGHTS, RUN_FILE

_A, _B = ".lora_A.weight", ".lora_B.weight"


@dataclass
class LoraFactors:
    """One module's LoRA factors: ΔW = scale · B · A (A: r×d_in, B: d_out×r)."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float = 1.0

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    def delta(self) -> torch.Tensor:
        """The dense ΔW (d_out×d_in)."""
        return (self.b @ self.a) * self.scale

    @staticmethod
    def zeros(rank: int, d_in: int, d_out: int) -> "LoraFactors":
        """Zero factors: what a module an adapter does not touch contributes."""
        return LoraFactors(torch.zeros(rank, d_in), torch.zeros(d_out, rank), 1.0)


@dataclass
class SparseDelta:
    """One weight's sparse task-vector entry: flat indices + values over a ``shape`` tensor."""

    indices: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, ...]

    def dense(self) -> torch.Tensor:
        flat = torch.zeros(math.prod(self.shape), dtype=torch.float32)
        flat[self.indices] = self.values.to(torch.float32)
        return flat.reshape(self.shape)


@dataclass
class AdapterSource:
    """One merge input, read into memory."""

    path: Path
    method: str  # tunelab.json's method, or "peft" for a plain PEFT adapter
    base_model: str | None
    factors: dict[str, LoraFactors] = field(default_factory=dict)  # module key -> factors
    task_vector: dict[str, SparseDelta] = field(default_factory=dict)  # parameter name -> delta
    masks: dict[str, torch.Tensor] | None = None  # LoRI-S: module key -> bool mask over B
    name: str = ""

    @property
    def is_task_vector(self) -> bool:
        return not self.factors and bool(self.task_vector)

    @property
    def default_rank(self) -> int:
        """The most common rank over modules (used for zero padding where a module is absent)."""
        ranks = [f.rank for f in self.factors.values()]
        return max(set(ranks), key=ranks.count) if ranks else 0

    def parameter_names(self) -> list[str]:
        """Base-model weights this source changes, e.g. ``model.layers.0.self_attn.q_proj.weight``."""
        return [k + ".weight" for k in self.factors] + list(self.task_vector)

    def delta(self, name: str) -> torch.Tensor | None:
        """Dense fp32 ΔW of one base weight (``None`` if this source does not change it)."""
        key = name.removesuffix(".weight")
        if key in self.factors and name.endswith(".weight"):
            return self.factors[key].delta()
        if name in self.task_vector:
            return self.task_vector[name].dense()
        return None


# --------------------------------------------------------------------------- reading
def read_source(path: str | Path) -> AdapterSource:
    """Read one adapter / task-vector directory (raises TunelabError for anything else)."""
    path = Path(path)
    if not path.exists():
        raise TunelabError(f"adapter directory not found: {path}")
    if not path.is_dir():
        raise TunelabError(f"{path}: not a directory (pass the adapter's directory)")
    run = read_json(path / RUN_FILE, RUN_FILE) if (path / RUN_FILE).is_file() else {}
    method = str(run.get("method") or "peft")
    recorded = method_class(method)  # None for "peft" (a plain adapter dir), "merge" and foreign records
    has_peft = (path / PEFT_CONFIG).is_file() or (path / COMPACT_FILE).is_file()
    if (recorded is not None and recorded.saves_task_vector) or ((path / storage.TASK_VECTOR_FILE).is_file() and not has_peft):
        return _read_task_vector(path, run)
    if (recorded is not None and recorded.full_model) or ((path / "config.json").is_file() and not has_peft):
        raise TunelabError(f"{path}: a full fine-tuned model, not an adapter; merging full models is not supported")
    if method == "merge" and not has_peft:
        raise TunelabError(f"{path}: a merged model (not an adapter); merge its sources instead")
    if not has_peft:
        raise TunelabError(f"{path}: not an adapter (no {PEFT_CONFIG}, {COMPACT_FILE} or {storage.TASK_VECTOR_FILE})")
    if not (path / PEFT_WEIGHTS).is_file() and (path / COMPACT_FILE).is_file():
        with tempfile.TemporaryDirectory(prefix="tunelab-merge-unpack-") as tmp:
            storage.unpack(path / COMPACT_FILE, Path(tmp))
            return _read_peft(path, Path(tmp), run, method)
    return _read_peft(path, path, run, method)


def read_sources(paths: Sequence[str | Path]) -> list[AdapterSource]:
    """Read every source and give each a unique display name (its dir name, parents added on clashes)."""
    sources = [read_source(p) for p in paths]
    for depth in range(1, 8):
        names = ["/".join(s.path.resolve().parts[-depth:]) for s in sources]
        if len(set(names)) == len(names) or depth == 7:
            break
    for s, n in zip(sources, names):
        s.name = n
    return sources


def _read_peft(path: Path, files: Path, run: dict, method: str) -> AdapterSource:
    from peft.utils.other import get_pattern_key

    cfg = read_json(files / PEFT_CONFIG, PEFT_CONFIG)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise TunelabError(f"{path}: a {cfg.get('peft_type')} adapter; only LoRA-family adapters can be merged")
    for flag, what in (("use_dora", "DoRA"), ("fan_in_fan_out", "fan_in_fan_out"), ("lora_bias", "lora_bias")):
        if cfg.get(flag):
            raise TunelabError(f"{path}: {what} adapters are not supported by tunelab merge")
    if cfg.get("bias", "none") != "none":
        raise TunelabError(f"{path}: bias={cfg.get('bias')!r} adapters are not supported by tunelab merge (only bias='none')")
    if not (files / PEFT_WEIGHTS).is_file():
        raise TunelabError(f"{path}: {PEFT_WEIGHTS} not found")
    weights = storage.load_file(files / PEFT_WEIGHTS)
    extra = [k for k in weights if not (k.endswith(_A) or k.endswith(_B))]
    if extra:
        raise TunelabError(f"{path}: holds non-LoRA weights (e.g. {extra[0]}); only lora_A/lora_B weights can be merged")
    # A compact file carries its adapter config inside: name the file the user has.
    config_file = files / PEFT_CONFIG if files == path else path / COMPACT_FILE
    r_default = int(json_value(cfg.get("r", 8), config_file, "r", int))  # type: ignore[call-overload]
    alpha_default = float(json_value(cfg.get("lora_alpha", 8), config_file, "lora_alpha", float))  # type: ignore[arg-type]
    rank_pattern: dict = json_value(cfg.get("rank_pattern") or {}, config_file, "rank_pattern", dict)  # type: ignore[assignment]
    alpha_pattern: dict = json_value(cfg.get("alpha_pattern") or {}, config_file, "alpha_pattern", dict)  # type: ignore[assignment]
    for name, pattern, kind in (("rank_pattern", rank_pattern, int), ("alpha_pattern", alpha_pattern, float)):
        for module, value in pattern.items():
            json_value(value, config_file, f"{name}.{module}", kind)
    factors: dict[str, LoraFactors] = {}
    for name, a in weights.items():
        if not name.endswith(_A):
            continue
        prefix = name.removesuffix(_A)
        if prefix + _B not in weights:
            raise TunelabError(f"{path}: {prefix} has lora_A but no lora_B")
        key = module_key(prefix)
        b = weights[prefix + _B].to(torch.float32)
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0]:
            raise TunelabError(f"{files / PEFT_WEIGHTS if files == path else path / COMPACT_FILE}: {key} has lora_A "
                               f"{tuple(a.shape)} and lora_B {tuple(b.shape)}, which do not multiply (corrupt file?)")
        rank = int(a.shape[0])
        configured = int(rank_pattern.get(get_pattern_key(list(rank_pattern), key), r_default)) if rank_pattern else r_default
        if configured != rank:
            raise TunelabError(f"{path}: {key} has rank {rank} but the config says {configured}")
        alpha = float(alpha_pattern.get(get_pattern_key(list(alpha_pattern), key), alpha_default)) if alpha_pattern else alpha_default
        # PEFT pitfall: rsLoRA scales by α/√r, not α/r.
        scale = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
        factors[key] = LoraFactors(a.to(torch.float32), b, scale)
    if not factors:
        raise TunelabError(f"{path}: {PEFT_WEIGHTS} holds no LoRA weights")
    masks = None
    if (path / MASK_FILE).is_file():
        masks = {k: m.to(torch.bool) for k, m in storage.load_masks(path / MASK_FILE).items()}
        for key, f in factors.items():
            if key in masks and masks[key].shape != f.b.shape:
                raise TunelabError(f"{path / MASK_FILE}: mask of {key} is {tuple(masks[key].shape)}, but its lora_B is "
                                   f"{tuple(f.b.shape)} (a mask from another run?)")
    elif getattr(method_class(method), "sparse_b", False):
        masks = {k: f.b != 0 for k, f in factors.items()}  # the mask is recoverable as B ≠ 0
    base = run.get("base_model") or cfg.get("base_model_name_or_path")
    return AdapterSource(path=path, method=method, base_model=str(base) if base else None, factors=factors, masks=masks)


def _read_task_vector(path: Path, run: dict) -> AdapterSource:
    file = path / storage.TASK_VECTOR_FILE
    if not file.is_file():
        raise TunelabError(f"{path}: a {run.get('method', 'lota')} run without {storage.TASK_VECTOR_FILE}")
    # Read indices + values as stored (storage.load_task_vector densifies or builds COO tensors).
    with open_safetensors(file, "task vector") as fh:
        meta = fh.metadata() or {}
        if meta.get("format") != storage.TASK_VECTOR_FORMAT:
            raise TunelabError(f"{file}: not a tunelab task vector (format {meta.get('format')!r})")
        shapes = json_field(meta.get("shapes", "{}"), file, "shapes", dict)
        stored = set(fh.keys())
        deltas = {}
        for name, shape in shapes.items():
            missing = [k for k in (f"{name}.indices", f"{name}.values") if k not in stored]
            if missing or not isinstance(shape, list) or not all(isinstance(x, int) and x >= 0 for x in shape):
                raise TunelabError(f"{file}: corrupt task vector ({f'no tensor {missing[0]}' if missing else f'bad shape for {name}'})")
            indices = fh.get_tensor(f"{name}.indices").to(torch.int64)
            values = fh.get_tensor(f"{name}.values").to(torch.float32)
            if indices.shape != values.shape or indices.dim() != 1 or \
                    (indices.numel() and not 0 <= int(indices.min()) <= int(indices.max()) < math.prod(shape)):
                raise TunelabError(f"{file}: corrupt task vector (indices of {name} do not fit its values or shape {shape})")
            deltas[name] = SparseDelta(indices, values, tuple(shape))
    base = run.get("base_model") or meta.get("base_model")
    return AdapterSource(path=path, method=str(run.get("method") or "lota"), base_model=str(base) if base else None, task_vector=deltas)


# --------------------------------------------------------------------------- base models
def canonical_base(name: str) -> str:
    """A comparable form of a base model name: aliases and local dirs become resolved paths."""
    from tunelab.models import ALIASES, cache_dir

    if name in ALIASES:
        return str((cache_dir() / name).resolve())
    p = Path(name).expanduser()
    return str(p.resolve()) if p.is_dir() else name


def common_base(sources: Sequence[AdapterSource], model: str | None = None) -> str:
    """The base model all sources were trained on (``model`` overrides what is recorded).

    Raises TunelabError when recorded bases disagree, or when none is recorded and no ``model``.
    """
    known = [(s, s.base_model) for s in sources if s.base_model]
    if len({canonical_base(b) for _, b in known}) > 1:
        listed = ", ".join(f"{s.path} ({b})" for s, b in known)
        raise TunelabError(f"mismatched base models: {listed}; merge adapters trained on the same base model")
    if model:
        return model
    if not known:
        raise TunelabError("no base model recorded in the adapters; pass --model")
    # Prefer a tunelab alias over the resolved cache path PEFT writes into adapter_config.json.
    from tunelab.models import ALIASES

    names = [b for _, b in known]
    return next((b for b in names if b in ALIASES), names[0])
