"""Typed results of the ``moe`` room: one :class:`~tunelab.results.Result` per ``metrics.json`` kind.

The fields are the schema, in the order the writers always wrote them; every field has a default so
older run directories (missing a later key) still load. Torch-free: the report imports this."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunelab.results import Result, result_kind


@result_kind("pretrain")
@dataclass
class PretrainResult(Result):
    """``tunelab pretrain``: the run summed up (losses, throughput, routing statistics, figures)."""

    name: str | None = None
    arch: str | None = None
    router: str | None = None
    shape: dict[str, Any] = field(default_factory=dict)
    params: int | None = None
    data: str | None = None
    init_from: str | None = None
    replay: dict[str, Any] | None = field(default_factory=dict)
    schedule: str | None = None
    aux_loss_coef: float | None = None
    z_loss_coef: float | None = None
    steps: int | None = None
    tokens: int | None = None
    train_seconds: float | None = None
    tokens_per_s: float | None = None
    seed: int | None = None
    final_loss: dict[str, Any] = field(default_factory=dict)
    initial_loss: dict[str, Any] = field(default_factory=dict)
    evals: list[dict[str, Any]] = field(default_factory=list)
    routing: dict[str, Any] = field(default_factory=dict)
    router_grad_cosine: dict[str, Any] | None = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    wall_seconds: float | None = None
    expert_changes: dict[str, Any] = field(default_factory=dict)


__all__ = ["PretrainResult"]
