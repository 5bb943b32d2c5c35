"""``linear``: PEFT's linear combination of LoRA factors (same rank required).

B = Σᵢ sign(wᵢ)·√(|wᵢ|sᵢ)·Bᵢ and A = Σⱼ √(|wⱼ|sⱼ)·Aⱼ, output scale 1. This is *not* Σ wᵢsᵢBᵢAᵢ:
the product B·A contains the cross terms √(|wᵢ|sᵢ|wⱼ|sⱼ)·sign(wᵢ)·BᵢAⱼ for i ≠ j. It keeps the rank
r but is only an approximation; use ``cat`` (exact) or a task-vector method when that matters.
The sign goes on B only, so negative weights subtract instead of cancelling out (PEFT pitfall).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from tunelab.merge.base import MergeMethod
from tunelab.merge.sources import LoraFactors


@dataclass(frozen=True)
class Linear(MergeMethod):
    name: str = "linear"
    description: str = "PEFT's: (Σ ±√(|wᵢ|sᵢ)Bᵢ)(Σ √(|wⱼ|sⱼ)Aⱼ), same rank, has cross terms BᵢAⱼ"
    family: str = "factors"
    same_ranks: bool = True

    def merge_factors(self, factors: Sequence[LoraFactors], weights: Sequence[float]) -> LoraFactors:
        """One module: weighted sums of the A's and of the B's (see the module docstring)."""
        a = sum(f.a * math.sqrt(abs(float(w)) * f.scale) for f, w in zip(factors, weights))
        b = sum(f.b * (math.copysign(1.0, float(w)) * math.sqrt(abs(float(w)) * f.scale)) for f, w in zip(factors, weights))
        return LoraFactors(a, b, 1.0)  # type: ignore[arg-type]
