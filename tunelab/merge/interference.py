"""How much do adapters interfere? Metrics written to ``interference/metrics.json`` (kind "interference").

* **cosine** of the flattened ΔWᵢ (all modules concatenated, and per module type q/k/v/o/gate/
  up/down). For LoRA pairs ⟨s₁B₁A₁, s₂B₂A₂⟩ = s₁s₂·tr((B₁ᵀB₂)(A₂A₁ᵀ)), so no d_out×d_in product is
  ever formed; a LoRA/task-vector pair costs nnz·r, two task vectors nnz. Weights are not applied
  (a cosine does not change with positive scaling).
* **subspace overlap**: per module, the mean cosine of the principal angles between the column
  spaces of A₁ᵀ and A₂ᵀ (the input directions each adapter reads), averaged over common modules:
  1 = same subspace, ≈0 = orthogonal (LoRI's seeded random A's are nearly orthogonal).
* **mask overlap** of sparse supports: LoRI-S masks over B (mask.safetensors, or B ≠ 0) and LoTA
  task-vector supports: |M₁∩M₂|/min(|M₁|,|M₂|) and Jaccard |M₁∩M₂|/|M₁∪M₂|. Only pairs of the same
  kind are compared (a B mask and a weight support live in different spaces).
* **tasks** (optional): each single adapter scored on its own task vs the merged model on every task.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from tunelab.errors import TunelabError
from tunelab.merge.interference_config import InterferenceConfig
from tunelab.merge.results import InterferenceResult
from tunelab.merge.sources import AdapterSource, LoraFactors, SparseDelta, common_base, read_sources
from tunelab.results import RunDir

Matrix = list[list[float | None]]


# --------------------------------------------------------------------------- inner products
def module_type(name: str) -> str:
    """``model.layers.0.self_attn.q_proj(.weight)`` → ``q``; ``...mlp.gate_proj`` → ``gate``."""
    return name.removesuffix(".weight").rsplit(".", 1)[-1].removesuffix("_proj")


def factor_inner(x: LoraFactors, y: LoraFactors) -> float:
    """⟨sₓBₓAₓ, s_yB_yA_y⟩ via the trace formula (r×r matrices only)."""
    return x.scale * y.scale * float(((x.b.T @ y.b) * (x.a @ y.a.T)).sum())


def factor_sparse_inner(f: LoraFactors, d: SparseDelta) -> float:
    """⟨s·B·A, Δ⟩ for a sparse Δ: Σₖ vₖ·(B[rowₖ]·A[:, colₖ]), cost nnz·r."""
    d_in = d.shape[1]
    rows, cols = d.indices // d_in, d.indices % d_in
    return f.scale * float(((f.b[rows] * f.a[:, cols].T).sum(dim=1) * d.values).sum())


def sparse_inner(x: SparseDelta, y: SparseDelta) -> float:
    """⟨Δₓ, Δ_y⟩ of two sparse deltas over the same weight."""
    flat = torch.zeros(math.prod(x.shape), dtype=torch.float32)
    flat[x.indices] = x.values
    return float((flat[y.indices] * y.values).sum())


def delta_inner(x: AdapterSource, y: AdapterSource, name: str) -> float:
    """⟨ΔWₓ, ΔW_y⟩ over one base weight (0 when either leaves it alone)."""
    key = name.removesuffix(".weight")
    fx, fy = x.factors.get(key), y.factors.get(key)
    tx, ty = x.task_vector.get(name), y.task_vector.get(name)
    if fx is not None and fy is not None:
        return factor_inner(fx, fy)
    if fx is not None and ty is not None:
        return factor_sparse_inner(fx, ty)
    if tx is not None and fy is not None:
        return factor_sparse_inner(fy, tx)
    if tx is not None and ty is not None:
        return sparse_inner(tx, ty)
    return 0.0


def cosine_matrices(sources: Sequence[AdapterSource]) -> tuple[Matrix, dict[str, Matrix]]:
    """Pairwise cosine of flattened ΔW: over all weights, and per module type."""
    n = len(sources)
    names = sorted({nm for s in sources for nm in s.parameter_names()})
    types = sorted({module_type(nm) for nm in names}, key=_type_order)
    gram = {t: torch.zeros(n, n, dtype=torch.float64) for t in types}
    owned = [set(s.parameter_names()) for s in sources]
    for nm in names:
        t = module_type(nm)
        for i in range(n):
            if nm not in owned[i]:
                continue
            for j in range(i, n):
                if nm in owned[j]:
                    v = delta_inner(sources[i], sources[j], nm)
                    gram[t][i, j] += v
                    if i != j:
                        gram[t][j, i] += v
    total = sum(gram.values(), torch.zeros(n, n, dtype=torch.float64))
    return _cos(total), {t: _cos(g) for t, g in gram.items()}


def _cos(g: torch.Tensor) -> Matrix:
    d = g.diagonal().clamp_min(0).sqrt()
    return [[float(g[i, j] / (d[i] * d[j])) if d[i] > 0 and d[j] > 0 else None for j in range(len(d))] for i in range(len(d))]


# --------------------------------------------------------------------------- subspaces
def row_space_basis(a: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (d_in×k) of the column space of Aᵀ, k = numerical rank of A."""
    u, s, _ = torch.linalg.svd(a.T.to(torch.float64), full_matrices=False)
    if s.numel() == 0 or float(s.max()) == 0.0:
        return u[:, :0]
    tol = float(s.max()) * max(a.shape) * torch.finfo(torch.float64).eps
    return u[:, s > tol]


def subspace_overlap(qx: torch.Tensor, qy: torch.Tensor) -> float | None:
    """Mean cosine of the principal angles between span(qx) and span(qy)."""
    if qx.shape[1] == 0 or qy.shape[1] == 0:
        return None
    return float(torch.linalg.svdvals(qx.T @ qy).clamp(max=1.0).mean())


def subspace_matrix(sources: Sequence[AdapterSource]) -> Matrix:
    """Subspace overlap of A's, averaged over the modules two LoRA adapters share (None otherwise)."""
    bases = [{k: row_space_basis(f.a) for k, f in s.factors.items()} for s in sources]
    n = len(sources)
    out: Matrix = [[None] * n for _ in range(n)]
    for i in range(n):
        for j in range(i, n):
            vals = [v for k in bases[i].keys() & bases[j].keys() if (v := subspace_overlap(bases[i][k], bases[j][k])) is not None]
            if vals:
                out[i][j] = out[j][i] = sum(vals) / len(vals)
    return out


# --------------------------------------------------------------------------- masks
def support_kind(s: AdapterSource) -> str | None:
    """"b-mask" (LoRI-S), "task-vector" (LoTA) or None (dense adapters have no sparse support)."""
    if s.masks is not None:
        return "b-mask"
    if s.is_task_vector:
        return "task-vector"
    return None


def mask_overlap(x: AdapterSource, y: AdapterSource) -> tuple[float, float] | None:
    """(|∩|/min, Jaccard) of two sources' supports, or None when not comparable."""
    kind = support_kind(x)
    if kind is None or kind != support_kind(y):
        return None
    if kind == "b-mask":
        assert x.masks is not None and y.masks is not None
        size_x = sum(int(m.sum()) for m in x.masks.values())
        size_y = sum(int(m.sum()) for m in y.masks.values())
        inter = sum(int((x.masks[k] & y.masks[k]).sum()) for k in x.masks.keys() & y.masks.keys()
                    if x.masks[k].shape == y.masks[k].shape)
    else:
        size_x = sum(d.indices.numel() for d in x.task_vector.values())
        size_y = sum(d.indices.numel() for d in y.task_vector.values())
        inter = sum(int(torch.isin(x.task_vector[k].indices, y.task_vector[k].indices).sum())
                    for k in x.task_vector.keys() & y.task_vector.keys())
    union = size_x + size_y - inter
    smaller = min(size_x, size_y)
    return (inter / smaller if smaller else 0.0, inter / union if union else 0.0)


# --------------------------------------------------------------------------- tasks
def _scored(model: Any, tokenizer: Any, task: str, limit: int, seed: int, progress: bool) -> float:
    from tunelab.evaluate import evaluate_task

    model.eval()
    return float(evaluate_task(model, tokenizer, task, limit=limit, seed=seed, progress=progress)["score"])


def _single_model(base: str, source: AdapterSource) -> tuple[Any, Any]:
    """Base + this source's ΔW at weight 1."""
    from tunelab.merge.deltas import apply_deltas
    from tunelab.models import load_model

    model, tokenizer = load_model(base)
    names = source.parameter_names()
    apply_deltas(model, names, lambda n: source.delta(n))  # type: ignore[arg-type,return-value]
    return model, tokenizer


def _merged_model(merged: Path, base: str) -> tuple[Any, Any]:
    """A merge output: a model dir as it is, a PEFT adapter on top of ``base``."""
    from tunelab.merge.deltas import apply_deltas
    from tunelab.merge.sources import read_source
    from tunelab.models import load_model

    if (merged / "config.json").is_file():
        return load_model(str(merged))
    adapter = read_source(merged)
    model, tokenizer = load_model(base)
    apply_deltas(model, adapter.parameter_names(), lambda n: adapter.delta(n))  # type: ignore[arg-type,return-value]
    return model, tokenizer


def check_tasks(tasks: Sequence[str], n: int) -> list[str]:
    """The ``--tasks`` names, one per adapter, each a known task (one-line error otherwise)."""
    from tunelab.evaluate.tasks import resolve_task

    task_list = [t.strip() for t in tasks if t.strip()]
    if len(task_list) != n:
        raise TunelabError(f"--tasks has {len(task_list)} names for {n} adapters; give one task per adapter")
    for t in task_list:
        resolve_task(t)  # raises a one-line error for unknown tasks
    return task_list



def task_scores(sources: Sequence[AdapterSource], tasks: Sequence[str], merged: Path, base: str, *, limit: int,
                seed: int = 0, progress: bool = False) -> list[dict[str, Any]]:
    """Each single adapter on its own task vs the merged model; the merged model scores every task."""
    singles = []
    for s, task in zip(sources, tasks):
        model, tok = _single_model(base, s)
        singles.append(_scored(model, tok, task, limit, seed, progress))
        del model
    model, tok = _merged_model(Path(merged), base)
    merged_scores = {t: _scored(model, tok, t, limit, seed, progress) for t in dict.fromkeys(tasks)}
    return [{"task": t, "adapter": s.name, "single": single, "merged": merged_scores[t], "drop": single - merged_scores[t]}
            for s, t, single in zip(sources, tasks, singles)]


# --------------------------------------------------------------------------- entry points
def analyze(sources: Sequence[AdapterSource], *, merged: Path | None = None, base_model: str | None = None,
            tasks: Sequence[str] | None = None, limit: int = 50, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """All interference metrics for ``sources`` as a metrics.json-ready dict."""
    n = len(sources)
    cos_all, cos_by_type = cosine_matrices(sources)
    subspace = subspace_matrix(sources)
    masks: list[list[tuple[float, float] | None]] = [[mask_overlap(sources[i], sources[j]) for j in range(n)] for i in range(n)]
    pairs = []
    for i in range(n):
        for j in range(i + 1, n):
            pairs.append({
                "a": sources[i].name, "b": sources[j].name, "cosine": cos_all[i][j],
                "cosine_by_module_type": {t: m[i][j] for t, m in cos_by_type.items()},
                "subspace_overlap": subspace[i][j],
                "mask_intersection_over_min": masks[i][j][0] if masks[i][j] else None,
                "mask_jaccard": masks[i][j][1] if masks[i][j] else None,
            })
    result: dict[str, Any] = {
        "kind": "interference", "name": "interference",
        "adapters": [s.name for s in sources], "sources": [str(s.path) for s in sources],
        "source_methods": [s.method for s in sources], "base_model": base_model,
        "cosine": cos_all, "cosine_by_module_type": cos_by_type, "subspace_overlap": subspace,
        "mask_intersection_over_min": [[m[0] if m else None for m in row] for row in masks],
        "mask_jaccard": [[m[1] if m else None for m in row] for row in masks],
        "support_kinds": [support_kind(s) for s in sources], "pairs": pairs,
    }
    if n >= 2:
        off = [p for p in pairs if p["cosine"] is not None]
        result["mean_abs_cosine"] = sum(abs(p["cosine"]) for p in off) / len(off) if off else None
        sub = [p["subspace_overlap"] for p in pairs if p["subspace_overlap"] is not None]
        result["mean_subspace_overlap"] = sum(sub) / len(sub) if sub else None
    if tasks:
        if merged is None or base_model is None:
            raise TunelabError("--tasks needs a merged model to compare with (--merged DIR, a `tunelab merge` output)")
        result["tasks"] = task_scores(sources, tasks, merged, base_model, limit=limit, seed=seed, progress=progress)
        result["limit"] = limit
        result["mean_drop"] = sum(r["drop"] for r in result["tasks"]) / len(result["tasks"])
    return result


def write_metrics(result: dict[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """Write ``out_dir/metrics.json`` atomically; return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return InterferenceResult.from_dict(result).write(out)


def inspect_interference(cfg: InterferenceConfig, run_dir: RunDir | None = None, *,
                         progress: bool = False) -> InterferenceResult:
    """``tunelab inspect interference``: analyse ``cfg.adapters`` (no merge) into ``run_dir/metrics.json``
    (``None``: ``cfg.run_dir()``, i.e. ``--output``); return the :class:`InterferenceResult` written."""
    dirs, merged, tasks = cfg.adapters, cfg.merged, cfg.tasks
    run_dir = run_dir or cfg.run_dir()
    if len(dirs) < 2:
        raise TunelabError(f"interference needs at least 2 adapters, got {len(dirs)}")
    task_list = None
    if tasks:
        task_list = check_tasks(tasks, len(dirs))
        if merged is None:
            raise TunelabError("--tasks needs --merged DIR (a `tunelab merge` output) to compare the single adapters with")
    if merged is not None and not Path(merged).is_dir():
        raise TunelabError(f"--merged {merged}: directory not found")
    sources = read_sources(dirs)
    base = common_base(sources, cfg.model)
    result = analyze(sources, merged=Path(merged) if merged else None, base_model=base, tasks=task_list, limit=cfg.limit,
                     seed=cfg.seed, progress=progress)
    if merged is not None:
        result["merged"] = str(merged)
        run_file = Path(merged) / "tunelab.json"
        if run_file.is_file():
            from tunelab.files import read_json

            run = read_json(run_file, "run record")
            result.update(merge_method=run.get("merge_method"), weights=run.get("weights"))
    interference = InterferenceResult.from_dict(result)
    interference.write(run_dir)
    return interference


def _type_order(t: str) -> tuple[int, str]:
    order = ["q", "k", "v", "o", "gate", "up", "down"]
    return (order.index(t), t) if t in order else (len(order), t)
