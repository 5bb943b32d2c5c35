"""What every merge method provides (one class per file in ``tunelab.merge``).

Two families:

* **factor methods** (``cat``, ``linear``) combine LoRA factors per module and can write a PEFT
  adapter; with ``--to-model`` their ΔW is folded into the base weights instead;
* **delta methods** (task arithmetic, TIES, DARE) combine dense ΔW per base weight and always
  write a merged model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch

from tunelab.merge.sources import LoraFactors


@dataclass(frozen=True)
class MergeMethod:
    """One registered merge method."""

    name: str = ""
    description: str = ""
    #: "factors": combines (A, B) per module; "delta": combines dense ΔW per weight
    family: str = "delta"
    uses_density: bool = False
    default_density: float = 1.0
    min_sources: int = 2
    #: the sources must have the same rank per module (PEFT's linear combination of A's and B's)
    same_ranks: bool = False

    def merge_factors(self, factors: Sequence[LoraFactors], weights: Sequence[float]) -> LoraFactors:
        """Factor methods: one module's merged (A, B) with scale 1 (a module a source lacks comes
        as zero factors of that source's rank)."""
        raise NotImplementedError

    def merge_deltas(self, name: str, deltas: Sequence[torch.Tensor | None], weights: Sequence[float],
                     density: float, seed: int) -> torch.Tensor:
        """Delta methods: one weight's merged ΔW (``None`` = this source does not touch it)."""
        raise NotImplementedError


def dense(deltas: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    """Missing deltas as zeros of the right shape, everything fp32."""
    like = next(d for d in deltas if d is not None)
    return [torch.zeros_like(like, dtype=torch.float32) if d is None else d.to(torch.float32) for d in deltas]


def parameter_generator(seed: int, name: str) -> torch.Generator:
    """A generator seeded by hash(seed, parameter name): reproducible and independent of order."""
    digest = hashlib.sha256(f"merge/{seed}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def trim_top_magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``density`` fraction of entries with the largest |value| (TIES "trim")."""
    if density >= 1.0:
        return delta
    k = int(density * delta.numel())
    if k <= 0:
        return torch.zeros_like(delta)
    flat = delta.flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.topk(flat.abs(), k, sorted=False).indices] = True
    return (flat * keep).reshape(delta.shape)


def elect_and_merge(weighted: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """TIES "elect sign" + "disjoint merge" over stacked weighted deltas ``wᵢΔᵢ`` (dim 0).

    The elected sign is that of Σ wᵢΔᵢ; each entry is the weighted mean over the sources whose
    wᵢΔᵢ agrees with it: Σ_agree wᵢΔᵢ / Σ_agree |wᵢ| (0 where none agrees).
    """
    elected = torch.sign(weighted.sum(dim=0))
    agree = (torch.sign(weighted) == elected) & (weighted != 0)
    w = torch.tensor([abs(float(x)) for x in weights], dtype=weighted.dtype).view(-1, *([1] * (weighted.dim() - 1)))
    num = (weighted * agree).sum(dim=0)
    den = (w * agree).sum(dim=0)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(weighted.dtype).tiny), torch.zeros_like(num))
