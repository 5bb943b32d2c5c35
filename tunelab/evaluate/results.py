"""Typed results of the ``evaluate`` room: one :class:`~tunelab.results.Result` per ``metrics.json`` kind.

The fields are the schema, in the order the writers always wrote them; every field has a default so
older run directories (missing a later key) still load. Torch-free: the report imports this."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunelab.results import Result, not_written, result_kind


@dataclass
class EvalResult(Result):
    """What every ``tunelab eval`` result carries besides its ``metrics.json`` fields (none of it written there).

    ``records``: one dict per prompt (output, score or verdict), as in ``outputs.jsonl``;
    ``output_dir``: where the job wrote (``None``: nothing written). A result read back from disk
    has neither (read ``outputs.jsonl`` for the records).
    """

    records: list[dict[str, Any]] = not_written(default_factory=list)
    output_dir: str | None = not_written(None)


@result_kind("task")
@dataclass
class TaskResult(EvalResult):
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
class LmEvalResult(EvalResult):
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
class SafetyResult(EvalResult):
    """The safety suite (``tunelab eval --suite safety``): ASR, refusal and over-refusal rates with 95% intervals.

    ``judge``/``judge_version``/``judge_threshold`` and ``guard`` (the degenerate-text guard's
    settings) say who judged, ``guard_reference`` which model the guard's likelihood test scored
    the answers under (the base model, when an adapter or an intervention changed it; None: the
    test did not run); ``asr_fluent`` is ASR over the non-degenerate answers and
    ``degenerate_rate`` the share of harmful answers that were neither refusal nor compliance;
    ``by_category`` has the rates (with ``n``) per ``set/category``. Results written before the
    guard have none of these (read as None).
    """

    INDENT = 2

    suite: str | None = None
    harmful_set: str | None = None
    judge: str | None = None
    judge_version: str | None = None
    judge_threshold: float | None = None
    guard: dict[str, Any] | None = None
    guard_reference: str | None = None
    n_harmful: int | None = None
    n_benign: int | None = None
    asr: float | None = None
    refusal_rate: float | None = None
    over_refusal: float | None = None
    asr_fluent: float | None = None
    degenerate_rate: float | None = None
    n_degenerate: int | None = None
    benign_degenerate_rate: float | None = None
    intervals: dict[str, Any] = field(default_factory=dict)
    by_category: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    adapter: str | None = None
    decoder: str | None = None
    wall_time_s: float | None = None
    config: dict[str, Any] = field(default_factory=dict)


__all__ = ["EvalResult", "TaskResult", "LmEvalResult", "SafetyResult"]
