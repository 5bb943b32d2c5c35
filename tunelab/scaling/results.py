"""Typed results of the ``scaling`` room: one :class:`~tunelab.results.Result` per ``metrics.json`` kind.

The fields are the schema, in the order the writers always wrote them; every field has a default so
older run directories (missing a later key) still load. Torch-free: the report imports this."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunelab.results import Result, result_kind


@result_kind("scaling")
@dataclass
class ScalingResult(Result):
    """``tunelab scaling fit``: the fitted law, its bootstrap intervals and the compute-optimal split."""

    name: str | None = None
    table: str | None = None
    rows: int | None = None
    loss_column: str | None = None
    columns: list[str] = field(default_factory=list)
    nd_law: bool | None = None
    law: dict[str, Any] = field(default_factory=dict)
    ci: dict[str, Any] = field(default_factory=dict)
    delta: float | None = None
    objective: float | None = None
    degenerate: bool | None = None
    reasons: list[Any] = field(default_factory=list)
    optimal: dict[str, Any] = field(default_factory=dict)
    r2_log: float | None = None
    starts: dict[str, Any] = field(default_factory=dict)
    near_best: dict[str, Any] = field(default_factory=dict)
    bootstrap: dict[str, Any] = field(default_factory=dict)
    flops_source: str | None = None
    budget: float | None = None
    approach1: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    wall_time_s: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    output_dir: str | None = None


__all__ = ["ScalingResult"]
