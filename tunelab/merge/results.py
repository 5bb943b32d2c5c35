"""Typed results of the ``merge`` room: one :class:`~tunelab.results.Result` per ``metrics.json`` kind.

The fields are the schema, in the order the writers always wrote them; every field has a default so
older run directories (missing a later key) still load. Torch-free: the report imports this."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunelab.results import Result, result_kind


@result_kind("interference")
@dataclass
class InterferenceResult(Result):
    """``tunelab inspect interference`` / ``tunelab merge``: how much adapters interfere."""

    INDENT = 2
    TRAILING_NEWLINE = True

    name: str | None = None
    adapters: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    source_methods: list[str] = field(default_factory=list)
    base_model: str | None = None
    cosine: list[Any] = field(default_factory=list)
    cosine_by_module_type: dict[str, Any] = field(default_factory=dict)
    subspace_overlap: list[Any] = field(default_factory=list)
    mask_intersection_over_min: list[Any] = field(default_factory=list)
    mask_jaccard: list[Any] = field(default_factory=list)
    support_kinds: list[Any] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    mean_abs_cosine: float | None = None
    mean_subspace_overlap: float | None = None
    merged: str | None = None
    merge_method: str | None = None
    weights: list[float] = field(default_factory=list)
    tasks: dict[str, Any] = field(default_factory=dict)


__all__ = ["InterferenceResult"]
