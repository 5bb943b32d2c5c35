"""DARE (Yu et al., 2024): drop each delta entry with probability 1 − density, rescale the kept
ones by 1/density, then combine linearly (``dare-linear``) or TIES-style (``dare-ties``: elect
sign of Σ wᵢΔᵢ, disjoint weighted mean; no magnitude trim).

Drops come from a ``torch.Generator`` seeded by hash(seed, parameter name), drawn for the
sources in order, so a merge is reproducible and does not depend on the order weights are
visited in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from tunelab.merge.base import MergeMethod, dense, elect_and_merge, parameter_generator


def drop_and_rescale(deltas: Sequence[torch.Tensor | None], density: float, seed: int, name: str) -> list[torch.Tensor]:
    """Each delta with entries kept with probability ``density`` and scaled by 1/density."""
    full = dense(deltas)
    if density >= 1.0:
        return full
    gen = parameter_generator(seed, name)
    return [d * (torch.rand(d.shape, generator=gen) < density) / density for d in full]


@dataclass(frozen=True)
class DareLinear(MergeMethod):
    name: str = "dare-linear"
    description: str = "random drop (keep density) + rescale 1/density, then Σ wᵢΔᵢ"
    uses_density: bool = True
    default_density: float = 0.5

    def merge_deltas(self, name: str, deltas: Sequence[torch.Tensor | None], weights: Sequence[float],
                     density: float, seed: int) -> torch.Tensor:
        """Drop + rescale, then the weighted sum."""
        kept = drop_and_rescale(deltas, density, seed, name)
        return sum(float(w) * d for d, w in zip(kept, weights))  # type: ignore[return-value]


@dataclass(frozen=True)
class DareTies(MergeMethod):
    name: str = "dare-ties"
    description: str = "random drop + rescale, then TIES sign election and disjoint weighted mean"
    uses_density: bool = True
    default_density: float = 0.5

    def merge_deltas(self, name: str, deltas: Sequence[torch.Tensor | None], weights: Sequence[float],
                     density: float, seed: int) -> torch.Tensor:
        """Drop + rescale, then elect sign and take the disjoint weighted mean."""
        kept = drop_and_rescale(deltas, density, seed, name)
        return elect_and_merge(torch.stack([float(w) * d for d, w in zip(kept, weights)]), weights)
