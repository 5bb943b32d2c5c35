"""``ties``: TIES-merging (Yadav et al., 2023) per base weight.

1. trim: keep each ΔWᵢ's top ``density`` fraction of entries by magnitude (per tensor);
2. elect: the sign of Σᵢ wᵢΔWᵢ (over the trimmed deltas) per entry;
3. disjoint merge: per entry, the weighted mean over the sources whose wᵢΔWᵢ has the elected
   sign, Σ_agree wᵢΔWᵢ / Σ_agree |wᵢ| (mergekit's normalised form, so only the weights' ratios
   matter; an entry no source keeps stays 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from tunelab.merge.base import MergeMethod, dense, elect_and_merge, trim_top_magnitude


@dataclass(frozen=True)
class Ties(MergeMethod):
    name: str = "ties"
    description: str = "trim to top-density magnitude, elect sign of Σ wᵢΔᵢ, disjoint weighted mean"
    uses_density: bool = True
    default_density: float = 0.2  # the TIES paper keeps the top 20%

    def merge_deltas(self, name: str, deltas: Sequence[torch.Tensor | None], weights: Sequence[float],
                     density: float, seed: int) -> torch.Tensor:
        """Trim, elect sign, disjoint weighted mean (see the module docstring)."""
        trimmed = [trim_top_magnitude(d, density) for d in dense(deltas)]
        weighted = torch.stack([float(w) * t for t, w in zip(trimmed, weights)])
        return elect_and_merge(weighted, weights)
