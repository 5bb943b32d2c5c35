"""``cat``: exact concatenation of LoRA factors (rank Σ rᵢ).

A = [A₁; A₂; ...], B = [w₁s₁B₁, w₂s₂B₂, ...] with output scale 1, so ΔW = Σᵢ wᵢ·sᵢ·Bᵢ·Aᵢ exactly —
no cross terms, any signs of wᵢ. The price is the rank: the output adapter is as large as all
inputs together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from tunelab.merge.base import MergeMethod
from tunelab.merge.sources import LoraFactors


@dataclass(frozen=True)
class Cat(MergeMethod):
    name: str = "cat"
    description: str = "exact: concatenate LoRA factors, rank Σrᵢ, ΔW = Σ wᵢsᵢBᵢAᵢ"
    family: str = "factors"

    def merge_factors(self, factors: Sequence[LoraFactors], weights: Sequence[float]) -> LoraFactors:
        """One module: A stacked over ranks, B's columns scaled by wᵢ·sᵢ (output scale 1)."""
        a = torch.cat([f.a for f in factors], dim=0)
        b = torch.cat([f.b * (float(w) * f.scale) for f, w in zip(factors, weights)], dim=1)
        return LoraFactors(a, b, 1.0)
