"""``task-arithmetic``: ΔW = Σᵢ wᵢ·ΔWᵢ on dense weight deltas (Ilharco et al., 2023).

One source is allowed: ``--weights -1`` negates a task vector ("forgetting by negation") and any
other weight rescales it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from tunelab.merge.base import MergeMethod, dense


@dataclass(frozen=True)
class TaskArithmetic(MergeMethod):
    name: str = "task-arithmetic"
    description: str = "Σ wᵢΔWᵢ on dense deltas (one source allowed: scale/negate it)"
    min_sources: int = 1

    def merge_deltas(self, name: str, deltas: Sequence[torch.Tensor | None], weights: Sequence[float],
                     density: float, seed: int) -> torch.Tensor:
        """Weighted sum of the deltas."""
        return sum(float(w) * d for d, w in zip(dense(deltas), weights))  # type: ignore[return-value]
