"""Merged ΔW: the factor methods' merged (A, B), any method's dense ΔW per base weight, and
folding it into a model's weights (used by ``tunelab merge`` and the interference analysis)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from tunelab.errors import TunelabError
from tunelab.merge.base import MergeMethod
from tunelab.merge.sources import AdapterSource, LoraFactors


def merged_factors(sources: Sequence[AdapterSource], merge: MergeMethod, weights: Sequence[float]) -> dict[str, LoraFactors]:
    """Per module key, the factor method's merged (A, B); modules a source lacks count as zeros."""
    lora = [(s, w) for s, w in zip(sources, weights) if s.factors]
    keys = sorted({k for s, _ in lora for k in s.factors}, key=module_order)
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


def merged_delta_fn(sources: Sequence[AdapterSource], merge: MergeMethod, weights: Sequence[float],
                    density: float | None, seed: int) -> tuple[list[str], Callable[[str], torch.Tensor]]:
    """(base weight names touched, name → merged dense ΔW) for any method.

    Factor methods combine the LoRA sources' factors and add LoTA sources as Σ wᵢΔᵢ (exact).
    """
    names = sorted({n for s in sources for n in s.parameter_names()}, key=module_order)
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


def module_order(name: str) -> tuple:
    """Sort key: numeric layer order (``layers.2`` before ``layers.10``)."""
    # Numeric layer order (layers.2 before layers.10), so progress and files read naturally.
    return tuple(int(p) if p.isdigit() else p for p in name.split("."))



__all__ = ["merged_factors", "merged_delta_fn", "apply_deltas", "module_order"]
