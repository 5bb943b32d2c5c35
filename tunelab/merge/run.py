"""``tunelab merge``: check the inputs, merge into a temp dir, write the record last, move into place.

The method docs are in :mod:`tunelab.merge`; the registry in :mod:`tunelab.merge.registry`.
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
from typing import Any, Sequence

import torch

from tunelab.errors import TunelabError
from tunelab.layout import PEFT_WEIGHTS, RUN_FILE, atomic_write_text
from tunelab.merge.base import MergeMethod
from tunelab.merge.config import MergeConfig, merge_run_dir
from tunelab.merge.deltas import apply_deltas, merged_delta_fn, merged_factors
from tunelab.merge.interference import check_tasks
from tunelab.merge.registry import get_merge_method
from tunelab.merge.sources import AdapterSource, common_base, read_sources
from tunelab.results import RunDir

INTERFERENCE_DIR = "interference"


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
    run_dir: RunDir | None = None,
) -> Path:
    """Merge the adapters / task vectors in ``dirs`` into ``output``; return its path.

    ``weights`` has one number per source (negative ones subtract). ``density`` (0, 1] is the
    fraction TIES keeps / DARE keeps (defaults: ties 0.2, dare 0.5). ``seed`` seeds DARE's drops.
    ``model`` overrides the recorded base model. ``analyze`` also writes
    ``OUTPUT/interference/metrics.json``; with ``tasks`` (one per source) it scores each single
    adapter and the merged model on ``limit`` examples. ``run_dir`` (the job's, see
    :func:`run_merge`) replaces ``output``'s default :func:`~tunelab.merge.config.merge_run_dir`.
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
    run_dir = merge_run_dir(output) if run_dir is None else run_dir
    out = run_dir.path
    _check_output(run_dir, dirs, overwrite)
    task_list = check_tasks(tasks, len(dirs)) if tasks else None
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
    if merge.same_ranks:
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
        atomic_write_text(tmp / RUN_FILE, _json(record))  # last: marks the output complete (moved into place whole)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def run_merge(cfg: MergeConfig, run_dir: RunDir | None = None, *, progress: bool = False) -> Path:
    """The ``tunelab merge`` job: ``run_merge(cfg, run_dir=None, *, progress=False) -> Path``.

    Merges ``cfg.adapters`` into ``run_dir`` (``None``: ``cfg.run_dir()``, i.e. ``--output``) and
    returns that directory. A merge writes no ``metrics.json`` (so it has no :class:`~tunelab.results.Result`
    kind): its record is the run's ``tunelab.json`` (``method: "merge"``, written last, read by the
    report as a run), and with ``--analyze`` an
    :class:`~tunelab.merge.results.InterferenceResult` in ``interference/``.
    """
    run_dir = cfg.run_dir() if run_dir is None else run_dir
    return merge_adapters(cfg.adapters, cfg.method, parse_weights(cfg.weights), output=run_dir.path,
                          density=cfg.density, to_model=cfg.to_model, seed=cfg.seed, model=cfg.model,
                          overwrite=cfg.overwrite, analyze=cfg.analyze, tasks=cfg.tasks, limit=cfg.limit,
                          progress=progress, run_dir=run_dir)


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


def _check_output(run_dir: RunDir, dirs: Sequence[Path], overwrite: bool) -> None:
    out = run_dir.path
    if out.exists() and not out.is_dir():
        raise TunelabError(f"--output {out} is a file; give a directory")
    if any(out.resolve() == d.resolve() for d in dirs):
        raise TunelabError(f"--output {out} is one of the adapters being merged; choose another directory")
    run_dir.check(overwrite=overwrite)


def _check_same_ranks(sources: Sequence[AdapterSource]) -> None:
    for key in {k for s in sources for k in s.factors}:
        here = {s.name: s.factors[key].rank for s in sources if key in s.factors}
        if len(set(here.values())) > 1:
            shown = ", ".join(f"{n} r={r}" for n, r in here.items())
            raise TunelabError(f"linear needs adapters of the same rank ({key}: {shown}); use --method cat (exact) instead")


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


def _write_model(tmp: Path, sources: Sequence[AdapterSource], merge: MergeMethod, weights: Sequence[float], base: str,
                 density: float | None, seed: int, progress: bool) -> None:
    from tunelab.models import load_model

    model, tokenizer = load_model(base)
    names, delta = merged_delta_fn(sources, merge, weights, density, seed)
    apply_deltas(model, names, delta, what=merge.name, progress=progress)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))


# --------------------------------------------------------------------------- helpers
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



__all__ = ["MergeConfig", "merge_adapters", "parse_weights", "run_merge", "shared_projections", "INTERFERENCE_DIR"]
