"""Typed results of the ``evaluate`` room: one :class:`~tunelab.results.Result` per ``metrics.json`` kind.

The fields are the schema, in the order the writers always wrote them; every field has a default so
older run directories (missing a later key) still load. Torch-free: the report imports this."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunelab.results import Result, result_kind


@result_kind("task")
@dataclass
class TaskResult(Result):
    """A task's score (``tunelab eval --task``): the scorer's metrics, the model and decoder."""

    INDENT = 2

    task: str | None = None
    scorer: str | None = None
    n: int | None = None
    score: float | None = None
    chat_template: bool | None = None
    accuracy: float | None = None
    accuracy_norm: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    model: str | None = None
    adapter: str | None = None
    decoder: str | None = None
    wall_time_s: float | None = None
    config: dict[str, Any] = field(default_factory=dict)


@result_kind("lm-eval")
@dataclass
class LmEvalResult(Result):
    """lm-evaluation-harness tasks run on the model (``tunelab eval --lm-eval``)."""

    INDENT = 2

    tasks: list[str] = field(default_factory=list)
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    n: dict[str, int | None] = field(default_factory=dict)
    model: str | None = None
    adapter: str | None = None
    decoder: str | None = None
    wall_time_s: float | None = None
    config: dict[str, Any] = field(default_factory=dict)


@result_kind("safety")
@dataclass
class SafetyResult(Result):
    """The safety suite (``tunelab eval --suite safety``): ASR, refusal and over-refusal rates with 95% intervals."""

    INDENT = 2

    suite: str | None = None
    judge: str | None = None
    judge_threshold: float | None = None
    n_harmful: int | None = None
    n_benign: int | None = None
    asr: float | None = None
    refusal_rate: float | None = None
    over_refusal: float | None = None
    intervals: dict[str, Any] = field(default_factory=dict)
    by_category: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    adapter: str | None = None
    decoder: str | None = None
    wall_time_s: float | None = None
    config: dict[str, Any] = field(default_factory=dict)


__all__ = ["TaskResult", "LmEvalResult", "SafetyResult"]
