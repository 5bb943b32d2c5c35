"""Known answers for merging interference (LoRI's claim): adapters whose subspaces overlap interfere
when merged; adapters on disjoint / orthogonal subspaces do not.

The plant: synthetic adapters written as PEFT dirs (and LoTA task-vector dirs), read back through
``tunelab inspect interference`` (:func:`inspect_interference`) and merged with the registry's methods
(:func:`merged_delta_fn`). No model is loaded: the shapes are tiny-random's (hidden 64, MLP 128).

* **overlap**: both adapters read the *same* input directions (the same A, independent B's: LoRI's
  "same seed" pitfall);
* **disjoint**: the adapters' A's span orthogonal subspaces (a random rotation split in two);
* **sparse** (LoRI-S / LoTA): the same, on coordinates: disjoint input columns and disjoint B-mask rows
  (or task-vector supports) against shared ones — the case sign election (TIES) and drops (DARE) act on.

Merge loss, the ground truth the metrics must predict: each task's inputs are its own subspace Uᵢ
(the row space of Aᵢ), each adapter solves its own task exactly (target ΔWᵢx), and the loss is
‖(M − ΔWᵢ)Uᵢ‖ / ‖ΔWᵢUᵢ‖ for the merged ΔW M, averaged over tasks and modules.
Control: two copies of the disjoint construction drawn with different rotations, coordinate
permutations, signs and B's must read the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tunelab.adapters.storage import save_task_vector
from tunelab.merge import get_merge_method, merged_delta_fn
from tunelab.merge.interference import inspect_interference
from tunelab.merge.interference_config import InterferenceConfig
from tunelab.merge.sources import read_sources

RANK = 4
ALPHA = 4.0  # scale α/r = 1: the files hold ΔW = B·A as drawn
# tiny-random's shapes (d_out, d_in): an attention and an MLP weight
MODULES = {"model.layers.0.self_attn.q_proj": (64, 64), "model.layers.1.mlp.up_proj": (128, 64)}
Construction = dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]  # module -> per task (A, B, U)


def _orthonormal(d: int, gen: torch.Generator) -> torch.Tensor:
    """A random rotation of R^d (QR of a Gaussian)."""
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q.float()


def build(kind: str, seed: int) -> Construction:
    """Two tasks' (A, B, U) per module; U (d_in×r, orthonormal) spans the task's inputs = rows of A.

    ``overlap``: one A for both, independent B's. ``disjoint``: A's on orthogonal halves of a random
    rotation. ``sparse-overlap`` / ``sparse-disjoint``: A's on (shared / disjoint) random coordinate
    sets with random signs, B's non-zero on (shared / disjoint) output rows only.
    """
    gen = torch.Generator().manual_seed(seed)
    out: Construction = {}
    for key, (d_out, d_in) in MODULES.items():
        tasks = []
        if kind in ("overlap", "disjoint"):
            q = _orthonormal(d_in, gen)
            for t in range(2):
                u = q[:, :RANK] if kind == "overlap" else q[:, t * RANK:(t + 1) * RANK]
                tasks.append((u.T.contiguous(), torch.randn(d_out, RANK, generator=gen), u))
        else:
            cols, rows = torch.randperm(d_in, generator=gen), torch.randperm(d_out, generator=gen)
            for t in range(2):
                c = cols[:RANK] if kind == "sparse-overlap" else cols[t * RANK:(t + 1) * RANK]
                r = rows[: d_out // 4] if kind == "sparse-overlap" else rows[t * (d_out // 4):(t + 1) * (d_out // 4)]
                signs = torch.where(torch.rand(RANK, generator=gen) < 0.5, -1.0, 1.0)
                u = torch.zeros(d_in, RANK)
                u[c, torch.arange(RANK)] = signs
                b = torch.zeros(d_out, RANK)
                b[r] = torch.randn(len(r), RANK, generator=gen)
                tasks.append((u.T.contiguous(), b, u))
        out[key] = tasks
    return out


def write_adapters(construction: Construction, root: Path, method: str = "lora") -> list[Path]:
    """Each task as a PEFT LoRA dir (``lori-s``: B ≠ 0 is its mask) with tunelab.json naming the base."""
    dirs = []
    for t in range(2):
        d = root / f"task{t}"
        d.mkdir(parents=True)
        weights = {}
        for key, tasks in construction.items():
            a, b, _ = tasks[t]
            weights[f"base_model.model.{key}.lora_A.weight"] = a.contiguous()
            weights[f"base_model.model.{key}.lora_B.weight"] = b.contiguous()
        save_file(weights, str(d / "adapter_model.safetensors"))
        (d / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "bias": "none", "task_type": "CAUSAL_LM",
            "target_modules": sorted({k.rsplit(".", 1)[-1] for k in construction}),
            "base_model_name_or_path": "tiny-random"}))
        (d / "tunelab.json").write_text(json.dumps({"method": method, "base_model": "tiny-random"}))
        dirs.append(d)
    return dirs


def write_task_vectors(construction: Construction, root: Path) -> list[Path]:
    """Each task's ΔW = B·A as a LoTA sparse task vector (its support is ΔW ≠ 0)."""
    dirs = []
    for t in range(2):
        d = root / f"tv{t}"
        d.mkdir(parents=True)
        save_task_vector({k + ".weight": tasks[t][1] @ tasks[t][0] for k, tasks in construction.items()},
                         d / "task_vector.safetensors")
        (d / "tunelab.json").write_text(json.dumps({"method": "lota", "base_model": "tiny-random"}))
        dirs.append(d)
    return dirs


def metrics(dirs: list[Path], out: Path) -> dict:
    """The shipped job: ``tunelab inspect interference DIR DIR``."""
    return inspect_interference(InterferenceConfig(adapters=[str(d) for d in dirs], output=str(out))).to_dict()


def merge_loss(dirs: list[Path], construction: Construction, method: str, weights: list[float],
               density: float | None = None, seed: int = 0) -> float:
    """Mean over tasks and modules of ‖(M − ΔWᵢ)Uᵢ‖ / ‖ΔWᵢUᵢ‖ for the method's merged ΔW M."""
    sources = read_sources(dirs)
    names, delta = merged_delta_fn(sources, get_merge_method(method), weights, density, seed)
    losses = []
    for name in names:
        merged = delta(name)
        for t, (a, b, u) in enumerate(construction[name.removesuffix(".weight")]):
            own = b @ a
            losses.append(float(torch.linalg.norm((merged - own) @ u) / torch.linalg.norm(own @ u)))
    return sum(losses) / len(losses)


# (method, weights, density): linear at w = 1 and normalised (Σw = 1), exact concatenation, task arithmetic
DENSE_MERGES = [("cat", [1.0, 1.0], None), ("task-arithmetic", [1.0, 1.0], None), ("task-arithmetic", [0.5, 0.5], None),
                ("linear", [1.0, 1.0], None), ("linear", [0.5, 0.5], None)]
SPARSE_MERGES = [("ties", [1.0, 1.0], 1.0), ("ties", [1.0, 1.0], 0.2), ("dare-linear", [1.0, 1.0], 0.5),
                 ("dare-ties", [1.0, 1.0], 0.5)]


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Construction, list[Path], dict]]:
    """Every construction written, read by the interference job; the disjoint one twice (control)."""
    root = tmp_path_factory.mktemp("known-merge")
    out = {}
    for label, kind, seed, method in [("overlap", "overlap", 1, "lora"), ("disjoint", "disjoint", 2, "lora"),
                                      ("disjoint-copy", "disjoint", 3, "lora"),
                                      ("sparse-overlap", "sparse-overlap", 4, "lori-s"),
                                      ("sparse-disjoint", "sparse-disjoint", 5, "lori-s"),
                                      ("sparse-disjoint-copy", "sparse-disjoint", 6, "lori-s")]:
        construction = build(kind, seed)
        dirs = write_adapters(construction, root / label, method)
        out[label] = (construction, dirs, metrics(dirs, root / label / "interference"))
    for label in ("sparse-overlap", "sparse-disjoint"):
        construction = out[label][0]
        dirs = write_task_vectors(construction, root / f"{label}-tv")
        out[label + "-tv"] = (construction, dirs, metrics(dirs, root / f"{label}-tv" / "interference"))
    return out


def test_metrics_rank_overlapping_adapters_above_disjoint_ones(planted) -> None:
    """Subspace overlap 1 vs 0, |cosine| > 0 vs 0, mask overlap 1 vs 0 (B masks and task-vector supports)."""
    ov, dj = planted["overlap"][2], planted["disjoint"][2]
    print("subspace overlap", ov["mean_subspace_overlap"], dj["mean_subspace_overlap"],
          "| |cos|", ov["mean_abs_cosine"], dj["mean_abs_cosine"])
    assert ov["mean_subspace_overlap"] == pytest.approx(1.0, abs=1e-5)
    assert dj["mean_subspace_overlap"] == pytest.approx(0.0, abs=1e-5)
    # independent B's on a shared A: the deltas are nearly orthogonal as vectors (|cos| ~ 1/√(d_out·r)),
    # yet they overlap; the cosine alone cannot tell overlap from disjointness, only order them weakly
    assert dj["mean_abs_cosine"] < 1e-5 < ov["mean_abs_cosine"]
    sov, sdj = planted["sparse-overlap"][2], planted["sparse-disjoint"][2]
    assert sov["support_kinds"] == ["b-mask", "b-mask"]
    assert sov["mask_intersection_over_min"][0][1] == pytest.approx(1.0) and sov["mask_jaccard"][0][1] == pytest.approx(1.0)
    assert sdj["mask_intersection_over_min"][0][1] == 0.0 and sdj["mask_jaccard"][0][1] == 0.0
    assert sov["mean_subspace_overlap"] == pytest.approx(1.0, abs=1e-5) and sdj["mean_subspace_overlap"] == pytest.approx(0.0, abs=1e-5)
    tov, tdj = planted["sparse-overlap-tv"][2], planted["sparse-disjoint-tv"][2]
    assert tov["support_kinds"] == ["task-vector", "task-vector"]
    assert tov["mask_intersection_over_min"][0][1] == pytest.approx(1.0) and tdj["mask_intersection_over_min"][0][1] == 0.0
    assert tdj["mean_abs_cosine"] == 0.0 < tov["mean_abs_cosine"]


@pytest.mark.parametrize("method, weights, density", DENSE_MERGES)
def test_overlap_loses_more_when_merged_than_disjoint(planted, method: str, weights: list[float], density) -> None:
    """Dense subspaces (LoRI-D-like): every method loses more on the overlapping pair.

    Exact merges (cat, task arithmetic at w = 1) recover disjoint tasks exactly; normalised merges
    shrink each task by its weight (loss 1 − w = 0.5) on top of any interference; PEFT's ``linear``
    has cross terms BᵢAⱼ that map task j's inputs through task i's B, so even orthogonal A's leave
    a loss of ~1 (it is 2 on the shared A).
    """
    (c_ov, d_ov, _), (c_dj, d_dj, _) = planted["overlap"], planted["disjoint"]
    ov, dj = merge_loss(d_ov, c_ov, method, weights, density), merge_loss(d_dj, c_dj, method, weights, density)
    print(f"{method} w={weights}: overlap {ov:.4f} disjoint {dj:.4f}")
    assert ov > dj + 0.15
    exact = method in ("cat", "task-arithmetic") and weights == [1.0, 1.0]
    if exact:
        assert dj < 1e-5
    if method == "task-arithmetic" and weights == [0.5, 0.5]:
        assert dj == pytest.approx(0.5, abs=1e-5)  # only the normalisation's shrinkage, no interference


@pytest.mark.parametrize("method, weights, density", DENSE_MERGES + SPARSE_MERGES)
def test_disjoint_supports_survive_sign_election_and_drops(planted, method: str, weights: list[float], density) -> None:
    """Coordinate-disjoint (LoRI-S masks / LoTA supports): TIES at density 1 is exact on disjoint
    supports (no entry is shared, so no sign conflict and no averaging); trim and drops cost both
    pairs alike, and the overlapping pair loses more on top."""
    for suffix in ("", "-tv"):
        (c_ov, d_ov, _), (c_dj, d_dj, _) = planted["sparse-overlap" + suffix], planted["sparse-disjoint" + suffix]
        ov, dj = merge_loss(d_ov, c_ov, method, weights, density), merge_loss(d_dj, c_dj, method, weights, density)
        print(f"{method}{suffix} w={weights} density={density}: overlap {ov:.4f} disjoint {dj:.4f}")
        assert ov > dj + 0.1
        if method in ("cat", "task-arithmetic") and weights == [1.0, 1.0] or (method == "ties" and density == 1.0):
            assert dj < 1e-5


def test_control_two_disjoint_copies_read_the_same(planted) -> None:
    """Other rotations, permutations, signs and B's: no spurious difference in metrics or losses."""
    for a, b in (("disjoint", "disjoint-copy"), ("sparse-disjoint", "sparse-disjoint-copy")):
        (ca, da, ma), (cb, db, mb) = planted[a], planted[b]
        assert ma["mean_subspace_overlap"] == pytest.approx(mb["mean_subspace_overlap"], abs=1e-5)
        assert ma["mean_abs_cosine"] == pytest.approx(mb["mean_abs_cosine"], abs=1e-5)
        assert ma["mask_jaccard"] == mb["mask_jaccard"]
        for method, weights, density in DENSE_MERGES + (SPARSE_MERGES if a.startswith("sparse") else []):
            la, lb = merge_loss(da, ca, method, weights, density), merge_loss(db, cb, method, weights, density)
            # the copies differ only in their random draws: their gap is far below overlap-vs-disjoint's
            tolerance = 1e-5 if method in ("cat", "task-arithmetic") or (method == "ties" and density == 1.0) else 0.15
            assert la == pytest.approx(lb, abs=tolerance), (a, method, weights, density, la, lb)
