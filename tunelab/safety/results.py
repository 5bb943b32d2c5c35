"""Typed results of the ``safety`` room: one :class:`~tunelab.results.Result` per ``metrics.json`` kind.

The fields are the schema, in the order the writers always wrote them; every field has a default so
older run directories (missing a later key) still load. Torch-free: the report imports this."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunelab.results import Result, result_kind


@result_kind("safety-depth")
@dataclass
class SafetyDepthResult(Result):
    """``tunelab safety depth``: KL(aligned ‖ base) per response position and prefill ASR."""

    INDENT = 2

    name: str | None = None
    title: str | None = None
    xlabel: str | None = None
    ylabel: str | None = None
    model: str | None = None
    adapter: str | None = None
    base: str | None = None
    base_adapter: str | None = None
    limit: int | None = None
    n_prompts: int | None = None
    prompts: str | None = None
    opening: str | None = None
    judge: str | None = None
    max_new_tokens: int | None = None
    kl_first: float | None = None
    kl_mean: float | None = None
    asr_by_k: dict[str, Any] = field(default_factory=dict)
    kl: dict[str, Any] = field(default_factory=dict)
    asr: list[dict[str, Any]] = field(default_factory=list)
    series: list[dict[str, Any]] = field(default_factory=list)


@result_kind("refusal-calibration")
@dataclass
class RefusalCalibrationResult(Result):
    """``tunelab safety calibrate``: refusal rates and F1 vs the refusal-token threshold τ."""

    INDENT = 2

    name: str | None = None
    title: str | None = None
    xlabel: str | None = None
    ylabel: str | None = None
    model: str | None = None
    adapter: str | None = None
    mode: str | None = None
    categories: list[str] = field(default_factory=list)
    temperature: float | None = None
    n_harmful: int | None = None
    n_benign: int | None = None
    prompts: str | None = None
    best_threshold: float | None = None
    best_f1: float | None = None
    p_refuse_mean: dict[str, float] = field(default_factory=dict)
    sweep: list[dict[str, Any]] = field(default_factory=list)
    series: list[dict[str, Any]] = field(default_factory=list)


@result_kind("attack")
@dataclass
class AttackResult(Result):
    """``tunelab safety attack``: ASR and over-refusal before → after a fine-tuning attack."""

    INDENT = 2

    name: str | None = None
    model: str | None = None
    adapter: str | None = None
    attack: str | None = None
    objective: str | None = None
    method: str | None = None
    n: int | None = None
    steps: int | None = None
    lr: float | None = None
    seed: int | None = None
    asr_before: float | None = None
    asr_after: float | None = None
    over_refusal_before: float | None = None
    over_refusal_after: float | None = None
    intervals: dict[str, list[float]] = field(default_factory=dict)
    n_harmful: int | None = None
    final_loss: float | None = None
    run: str | None = None


__all__ = ["SafetyDepthResult", "RefusalCalibrationResult", "AttackResult"]
