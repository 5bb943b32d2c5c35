"""Typed results of the ``privacy`` room: one :class:`~tunelab.results.Result` per ``metrics.json`` kind.

The fields are the schema, in the order the writers always wrote them; every field has a default so
older run directories (missing a later key) still load. Torch-free: the report imports this."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from tunelab.results import Result, result_kind


@result_kind("privacy-audit")
@dataclass
class PrivacyAuditResult(Result):
    """``tunelab privacy audit``: ε lower bound, its ceiling, TPR at 1% FPR and AUROC per score."""

    subject: str | None = None
    model: str | None = None
    adapter: str | None = None
    canaries: dict[str, Any] = field(default_factory=dict)
    delta: float | None = None
    significance: float | None = None
    threshold_strategy: str | None = None
    fprs: list[float] = field(default_factory=list)
    headline_score: str | None = None
    scores: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    bf16: bool | None = None
    epsilon_lb: float | None = None
    epsilon_ceiling: float | None = None
    tpr_at_1pct_fpr: float | None = None
    auroc: float | None = None
    seconds: float | None = None
    output: str | None = None


@result_kind("phishing")
@dataclass
class PhishingResult(Result):
    """``tunelab privacy phishing``: secret extraction rate vs the number of poisons."""

    INDENT = 2

    name: str | None = None
    ser_at_max_poisons: dict[str, float] = field(default_factory=dict)
    max_poisons: int | None = None
    digits: int | None = None
    duplicates: int | None = None
    poison_prefix: str | None = None
    is_not: bool | None = None
    method: str | None = None
    random_guess: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    corpus: str | None = None
    training_order: str | None = None
    ser: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    seconds: float | None = None
    trial_seconds: list[float] = field(default_factory=list)




@dataclass
class PrivacyHeadline:
    """The canary audit's headline a run record keeps (``tunelab.json``: ``privacy``), typed for readers."""

    score: str
    family: str | None
    m: int
    members: int
    epsilon_lb: float
    epsilon_ceiling: float
    auroc: float
    delta: float
    tpr_at_1pct_fpr: float | None = None  # None: too few non-members for a 1% FPR
    audited_m: int | None = None
    significance: float | None = None
    threshold_strategy: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrivacyHeadline":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


__all__ = ["PrivacyAuditResult", "PhishingResult", "PrivacyHeadline"]
