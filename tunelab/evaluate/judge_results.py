"""Typed results of ``tunelab judge train`` and ``tunelab judge compare`` (torch-free: the report reads them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunelab.results import Result, result_kind


@result_kind("judge-train")
@dataclass
class JudgeTrainResult(Result):
    """A trained embedding judge: data sizes and each judge's accuracy per labelled set."""

    INDENT = 2

    judge_dir: str | None = None
    encoder: dict[str, Any] = field(default_factory=dict)
    threshold: float | None = None
    sizes: dict[str, Any] = field(default_factory=dict)
    # set → {"n", "embedding", "keyword"}: accuracy of each judge on that set
    accuracy: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float | None = None
    config: dict[str, Any] = field(default_factory=dict)


@result_kind("judge-compare")
@dataclass
class JudgeCompareResult(Result):
    """Every judge on the same answers: refusal rates, pairwise agreement and Cohen's κ, disagreements."""

    INDENT = 2

    source: str | None = None
    n: int = 0
    labelled: int = 0
    # one per judge: {"name", "threshold", "refusal_rate", "accuracy" (labelled answers only), "answers_per_s"}
    judges: list[dict[str, Any]] = field(default_factory=list)
    # one per pair: {"a", "b", "agreement", "kappa", "disagree"}
    pairs: list[dict[str, Any]] = field(default_factory=list)
    # a few disagreeing answers, truncated: {"prompt", "response", "set", "label", "verdicts": {judge: "complied"/"refused"}}
    disagreements: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    output_dir: str | None = None


__all__ = ["JudgeTrainResult", "JudgeCompareResult"]
