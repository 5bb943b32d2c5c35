"""Merge task adapters and LoTA task vectors; measure how much they interfere.

    from tunelab.merge import merge_adapters
    merge_adapters(["runs/a", "runs/b"], "cat", [0.5, 0.5], output="runs/ab")

Methods (:data:`MERGE_METHODS`, one file each; a new method is one file plus one registry line):

* ``cat`` — exact, PEFT adapter of rank Σrᵢ (ΔW = Σ wᵢsᵢBᵢAᵢ);
* ``linear`` — PEFT's, same rank, has cross terms BᵢAⱼ;
* ``task-arithmetic``, ``ties``, ``dare-linear``, ``dare-ties`` — on dense ΔW per base weight
  (LoRA's s·B·A, or a LoTA task vector); they write a merged model directory.

``cat``/``linear`` write a PEFT adapter unless ``to_model`` (then base + ΔW as a model dir); a LoTA
source needs ``to_model`` there. Every merge needs at least two sources, except task arithmetic,
which takes one (to rescale or negate a single task vector). The output is built in a temp dir
and renamed into place; its ``tunelab.json`` (``method: "merge"``) is written last.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from tunelab.errors import TunelabError
from tunelab.layout import PEFT_WEIGHTS, RUN_FILE, atomic_write_text
from tunelab.results import RunDir
from tunelab.merge.base import MergeMethod
from tunelab.merge.cat import Cat
from tunelab.merge.dare import DareLinear, DareTies
from tunelab.merge.linear import Linear
from tunelab.merge.sources import AdapterSource, LoraFactors, common_base, read_sources
from tunelab.merge.task_arithmetic import TaskArithmetic
from tunelab.merge.ties import Ties

MERGE_METHODS: dict[str, MergeMethod] = {
    "cat": Cat(),
    "linear": Linear(),
    "task-arithmetic": TaskArithmetic(),
    "ties": Ties(),
    "dare-linear": DareLinear(),
    "dare-ties": DareTies(),
}

INTERFERENCE_DIR = "interference"


def get_merge_method(name: str) -> MergeMethod:
    """A registered method by name (``task_arithmetic`` is accepted for ``task-arithmetic``)."""
    method = MERGE_METHODS.get(name.strip().lower().replace("_", "-"))
    if method is None:
        raise TunelabError(f"unknown merge method '{name}'; choose one of {', '.join(MERGE_METHODS)}")
    return method


def parse_weights(text: str) -> list[float]:
    """``"0.5,0.5"`` → ``[0.5, 0.5]`` (TunelabError on anything that is not a finite number)."""
    out = []
    for part in text.split(","):
        try:
            w = float(part)
        except ValueError:
            raise TunelabError(f"--weights must be comma-separated numbers, got '{text}'") from None
        if not math.isfinite(w):
            raise TunelabError(f"--weights must be finite numbers, got '{part.strip()}'")
        out.append(w)
    return out


def merge_adapters(
    dirs: Sequence[str | os.PathLike[str]],
    method: str,
    weights: Sequence[float],
    *,
    output: str | os.PathLike[str],
    density: float | None = None,
    to_model: bool = False,
    seed: int = 0,
    model: str | None = None,
    overwrite: bool = False,
    analyze: bool = False,
    tasks: Sequence[str] | None = None,
    limit: int = 50,
    progress: bool = False,
) -> Path:
    """Merge the adapters / task vectors in ``dirs`` into ``output``; return its path.

    ``weights`` has one number per source (negative ones subtract). ``density`` (0, 1] is the
    fraction TIES keeps / DARE keeps (defaults: ties 0.2, dare 0.5). ``seed`` seeds DARE's drops.
    ``model`` overrides the recorded base model. ``analyze`` also writes
    ``OUTPUT/interference/metrics.json``; with ``tasks`` (one per source) it scores each single
    adapter and the merged model on ``limit`` examples.
    """
    start = time.perf_counter()
    merge = get_merge_method(method)
    dirs = [Path(d) for d in dirs]
    if len(dirs) < merge.min_sources:
        need = "one adapter" if merge.min_sources == 1 else f"at least {merge.min_sources} adapters"
        raise TunelabError(f"{merge.name} needs {need}, got {len(dirs)}")
    weights = [float(w) for w in weights]
    if len(weights) != len(dirs):
        raise TunelabError(f"--weights has {len(weights)} values for {len(dirs)} adapters; give one weight per adapter")
    if not all(math.isfinite(w) for w in weights):
        raise TunelabError("--weights must be finite numbers")
    if density is not None and not (0.0 < density <= 1.0):
        raise TunelabError(f"--density must be in (0, 1], got {density}")
    used_density = (merge.default_density if density is None else float(density)) if merge.uses_density else None
    out = Path(output)
    _check_output(out, dirs, overwrite)
    task_list = _check_tasks(tasks, len(dirs)) if tasks else None
    if task_list and not analyze:
        analyze = True  # --tasks only makes sense with the analysis; do not make the user say it twice
    sources = read_sources(dirs)
    base = common_base(sources, model)
    for a, b in shared_projections(sources):
        warnings.warn(f"{a.path} and {b.path} have identical A matrices (same LoRI seed?): their updates share one "
                      "subspace and interfere; train adapters meant for merging with different --seed", stacklevel=2)
    output_kind = "model" if (merge.family == "delta" or to_model) else "peft"
    if merge.family == "factors" and output_kind == "peft":
        for s in sources:
            if s.is_task_vector:
                raise TunelabError(f"{s.path}: a LoTA task vector has no LoRA factors; {merge.name} can only write "
                                   "a merged model from it: add --to-model")
    if merge.name == "linear":
        _check_same_ranks(sources)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        record: dict[str, Any] = {}
        if output_kind == "peft":
            record["rank"] = _write_peft(tmp, sources, merge, weights, base)
        else:
            _write_model(tmp, sources, merge, weights, base, used_density, seed, progress)
        if analyze:
            from tunelab.merge.interference import analyze as run_analysis
            from tunelab.merge.interference import write_metrics

            result = run_analysis(sources, merged=tmp, base_model=base, tasks=task_list, limit=limit, seed=seed,
                                  progress=progress)
            result.update(merged=str(out), merge_method=merge.name, weights=weights)
            write_metrics(result, tmp / INTERFERENCE_DIR)
        record = {
            "method": "merge", "merge_method": merge.name, "sources": [str(d) for d in dirs],
            "source_methods": [s.method for s in sources], "weights": weights, "density": used_density,
            "seed": seed, "base_model": base, "output_kind": output_kind, **record,
            "wall_time_s": time.perf_counter() - start, "versions": _versions(),
        }
        atomic_write_text(tmp / RUN_FILE, _json(record))  # last: marks the output complete
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# --------------------------------------------------------------------------- checks
def shared_projections(sources: Sequence[AdapterSource]) -> list[tuple[AdapterSource, AdapterSource]]:
    """Pairs of adapters whose A matrices are identical (e.g. LoRI-D runs trained with the same seed)."""
    pairs = []
    for i, x in enumerate(sources):
        for y in sources[i + 1:]:
            common = sorted(set(x.factors) & set(y.factors))
            if common and all(torch.equal(x.factors[k].a, y.factors[k].a) for k in common[:3]):
                pairs.append((x, y))
    return pairs


def _check_output(out: Path, dirs: Sequence[Path], overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TunelabError(f"--output {out} is a file; give a directory")
    if any(out.resolve() == d.resolve() for d in dirs):
        raise TunelabError(f"--output {out} is one of the adapters being merged; choose another directory")
    # PEFT pitfall: add_weighted_adapter silently does nothing when the target exists. Refuse loudly.
    RunDir(out, marker=RUN_FILE, not_empty="--output {path} exists and is not empty; pass --overwrite to replace it"
           ).check(overwrite=overwrite)


def _check_tasks(tasks: Sequence[str], n: int) -> list[str]:
    from tunelab.evaluate.tasks import resolve_task

    task_list = [t.strip() for t in tasks if t.strip()]
    if len(task_list) != n:
        raise TunelabError(f"--tasks has {len(task_list)} names for {n} adapters; give one task per adapter")
    for t in task_list:
        resolve_task(t)  # raises a one-line error for unknown tasks
    return task_list


def _check_same_ranks(sources: Sequence[AdapterSource]) -> None:
    for key in {k for s in sources for k in s.factors}:
        here = {s.name: s.factors[key].rank for s in sources if key in s.factors}
        if len(set(here.values())) > 1:
            shown = ", ".join(f"{n} r={r}" for n, r in here.items())
            raise TunelabError(f"linear needs adapters of the same rank ({key}: {shown}); use --method cat (exact) instead")


# --------------------------------------------------------------------------- factor methods
def merged_factors(sources: Sequence[AdapterSource], merge: MergeMethod, weights: Sequence[float]) -> dict[str, LoraFactors]:
    """Per module key, the factor method's merged (A, B); modules a source lacks count as zeros."""
    lora = [(s, w) for s, w in zip(sources, weights) if s.factors]
    keys = sorted({k for s, _ in lora for k in s.factors}, key=_module_order)
    out = {}
    for key in keys:
        present = next(s.factors[key] for s, _ in lora if key in s.factors)
        d_in, d_out = present.a.shape[1], present.b.shape[0]
        factors = [s.factors.get(key) or LoraFactors.zeros(s.default_rank or present.rank, d_in, d_out) for s, _ in lora]
        for s, f in zip((s for s, _ in lora), factors):
            if f.a.shape[1] != d_in or f.b.shape[0] != d_out:
                raise TunelabError(f"{s.path}: {key} has shape {tuple(f.b.shape[:1]) + tuple(f.a.shape[1:])}, "
                                   f"others have ({d_out}, {d_in}); were these trained on the same base model?")
        out[key] = merge.merge_factors(factors, [w for _, w in lora])
    return out


def _write_peft(tmp: Path, sources: Sequence[AdapterSource], merge: MergeMethod, weights: Sequence[float], base: str) -> int:
    """Write the merged PEFT adapter (output scale 1: lora_alpha = r per module); return the rank."""
    from peft import LoraConfig

    from tunelab.adapters.base import PEFT_PREFIX
    from tunelab.adapters.storage import atomic_save_file

    factors = merged_factors(sources, merge, weights)
    ranks = Counter(f.rank for f in factors.values())
    rank = ranks.most_common(1)[0][0]
    # Modules whose rank differs (sources with rank_pattern) get exact-name patterns; α = r keeps scale 1.
    rank_pattern = {k: f.rank for k, f in factors.items() if f.rank != rank}
    config = LoraConfig(
        r=rank, lora_alpha=rank, target_modules=list(factors), rank_pattern=rank_pattern,
        alpha_pattern=dict(rank_pattern), use_rslora=False, lora_dropout=0.0, bias="none",
        task_type="CAUSAL_LM", base_model_name_or_path=base,
    )
    config.save_pretrained(str(tmp))
    tensors = {}
    for key, f in factors.items():
        tensors[f"{PEFT_PREFIX}{key}.lora_A.weight"] = f.a.contiguous()
        tensors[f"{PEFT_PREFIX}{key}.lora_B.weight"] = f.b.contiguous()
    atomic_save_file(tensors, tmp / PEFT_WEIGHTS, {"format": "pt"})
    return rank


# --------------------------------------------------------------------------- merged models
def merged_delta_fn(sources: Sequence[AdapterSource], merge: MergeMethod, weights: Sequence[float],
                    density: float | None, seed: int) -> tuple[list[str], Callable[[str], torch.Tensor]]:
    """(base weight names touched, name → merged dense ΔW) for any method.

    Factor methods combine the LoRA sources' factors and add LoTA sources as Σ wᵢΔᵢ (exact).
    """
    names = sorted({n for s in sources for n in s.parameter_names()}, key=_module_order)
    if merge.family == "factors":
        factors = merged_factors(sources, merge, weights)
        vectors = [(s, w) for s, w in zip(sources, weights) if s.is_task_vector]

        def factor_delta(name: str) -> torch.Tensor:
            f = factors.get(name.removesuffix(".weight"))
            total = f.delta() if f is not None and name.endswith(".weight") else None
            for s, w in vectors:
                d = s.delta(name)
                if d is not None:
                    total = w * d if total is None else total + w * d
            assert total is not None
            return total

        return names, factor_delta

    def delta(name: str) -> torch.Tensor:
        return merge.merge_deltas(name, [s.delta(name) for s in sources], weights, 1.0 if density is None else density, seed)

    return names, delta


def apply_deltas(model: Any, names: Sequence[str], delta: Callable[[str], torch.Tensor], *, what: str = "",
                 progress: bool = False) -> None:
    """Add ``delta(name)`` to each named base weight of ``model`` in place (fp32 math)."""
    from rich.progress import track

    params = dict(model.named_parameters())
    for name in track(names, description=f"merging {what}".strip(), disable=not progress, transient=True):
        if name not in params:
            raise TunelabError(f"weight {name} is not in the base model; was the adapter trained on another model?")
        p = params[name]
        d = delta(name)
        if tuple(d.shape) != tuple(p.shape):
            raise TunelabError(f"ΔW for {name} has shape {tuple(d.shape)} but the base weight is {tuple(p.shape)}; "
                               "was the adapter trained on another model?")
        with torch.no_grad():
            p.copy_((p.to(torch.float32) + d).to(p.dtype))


def _write_model(tmp: Path, sources: Sequence[AdapterSource], merge: MergeMethod, weights: Sequence[float], base: str,
                 density: float | None, seed: int, progress: bool) -> None:
    from tunelab.models import load_model

    model, tokenizer = load_model(base)
    names, delta = merged_delta_fn(sources, merge, weights, density, seed)
    apply_deltas(model, names, delta, what=merge.name, progress=progress)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))


# --------------------------------------------------------------------------- helpers
def _module_order(name: str) -> tuple:
    # Numeric layer order (layers.2 before layers.10), so progress and files read naturally.
    return tuple(int(p) if p.isdigit() else p for p in name.split("."))


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished temp dir to ``out``, replacing an old output only after it is complete."""
    if out.exists():
        trash = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, trash)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)
    os.chmod(out, 0o755)  # mkdtemp makes 0700; outputs are meant to be read by others


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2) + "\n"


def _versions() -> dict[str, str]:
    import platform

    import peft
    import transformers

    import tunelab

    return {"tunelab": tunelab.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version()}


__all__ = ["MERGE_METHODS", "MergeMethod", "get_merge_method", "merge_adapters", "merged_delta_fn", "merged_factors",
           "apply_deltas", "parse_weights", "INTERFERENCE_DIR"]
