"""``study.json``: every figure of a study, typed (kind ``study``). Torch-free: the report imports it.

Schema (version 1), in the order written::

    {"kind": "study", "name": "...", "model": "smollm2-135m", "task": "reverse_words", "scorer": "exact",
     "data": {"train": "data/train.jsonl", "test": "data/test.jsonl", "train_sha256": "...",
              "test_sha256": "...", "n_train": 800, "n_test": 200},
     "budget": {"max_steps": 60, "epochs": null, "batch_size": 8, "max_length": 256},
     "seeds": [0, 1, 2], "reference": "lora",
     "canaries": {"file": "canaries.json", "count": 32, "members": 16, "family": "random"} | null,
     "arms": [{"name": "lora", "train": {...the arm's delta over `tunelab train`...},
               "epsilon": null | 4.0, "private": false}],
     "runs": [RunRecord, ...],          # one per arm × seed (the base arm: one per seed, no training)
     "summary": [ArmSummary, ...],      # one per arm: mean ± sd over its finished seeds
     "paired": [PairedDiff, ...],       # one per arm ≠ reference: arm − reference, paired by seed
     "wall_time_s": 1234.5,
     "config": {...the resolved StudyConfig...}}

A :class:`Measure` is ``{"value": x, "ci95": [lo, hi] | null, "n": count | null}`` (``ceiling`` too
for ``epsilon_lb``). Metric names (:data:`METRICS`, in table order) are flat: ``utility``,
``forgetting``, ``asr``, ``refusal``, ``over_refusal``, ``asr_drift``, ``refusal_drift``,
``prefill_asr_k5`` (one per prefill k), ``epsilon_lb``, ``epsilon``, ``tpr_at_1pct_fpr``, ``auroc``,
``wall_time_s``, ``tokens_per_s``, ``peak_rss_mb``, ``peak_cuda_mb``, ``trainable_params``,
``adapter_bytes``. A metric a run did not measure is absent from its ``metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunelab.results import Result, result_kind

STUDY_FILE = "study.json"

# (name, label, higher is better?) — the table's and the plots' order; prefill k's are inserted after over_refusal
METRICS: tuple[tuple[str, str, bool | None], ...] = (
    ("utility", "task score", True),
    ("forgetting", "general benchmark", True),
    ("asr", "ASR", False),
    ("refusal", "refusal", True),
    ("over_refusal", "over-refusal", False),
    ("asr_drift", "Δ ASR", False),
    ("refusal_drift", "Δ refusal", True),
    ("epsilon_lb", "ε_LB", False),
    ("epsilon", "ε (ledger)", False),
    ("tpr_at_1pct_fpr", "TPR@1%FPR", False),
    ("auroc", "AUROC", False),
    ("wall_time_s", "wall s", False),
    ("tokens_per_s", "tokens/s", True),
    ("peak_rss_mb", "peak RSS MB", False),
    ("peak_cuda_mb", "peak CUDA MB", False),
    ("trainable_params", "trainable", None),
    ("adapter_bytes", "adapter bytes", None),
)


def prefill_metric(k: int) -> str:
    """The metric name of prefill ASR at ``k`` prefilled tokens."""
    return f"prefill_asr_k{k}"


@dataclass
class Measure:
    """One figure: a value, its 95% interval when it has one, the count behind it."""

    value: float | None = None
    ci95: list[float] | None = None
    n: int | None = None
    ceiling: float | None = None  # epsilon_lb only: the largest ε_LB this many canaries can show

    @classmethod
    def of(cls, data: Any) -> "Measure":
        """From its written form (a dict) or a bare number."""
        if isinstance(data, Measure):
            return data
        if isinstance(data, dict):
            return cls(**{k: data.get(k) for k in ("value", "ci95", "n", "ceiling")})
        return cls(value=None if data is None else float(data))


@dataclass
class RunRecord:
    """One arm × seed: where it ran, how it ended, what it measured."""

    arm: str
    seed: int
    dir: str | None = None            # relative to the study directory (None: the base arm has none)
    status: str = "pending"           # pending | done | failed
    config_hash: str | None = None    # of the arm's resolved training config (skip/resume key)
    error: str | None = None
    stopped: dict[str, Any] | None = None  # the safety monitor's stop, when it stopped the run
    flags: list[str] = field(default_factory=list)  # loud warnings, e.g. "epsilon_lb > epsilon"
    metrics: dict[str, Measure] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.metrics = {k: Measure.of(v) for k, v in self.metrics.items()}

    @classmethod
    def of(cls, data: Any) -> "RunRecord":
        return data if isinstance(data, RunRecord) else cls(**data)


@dataclass
class Spread:
    """A metric over an arm's seeds."""

    mean: float | None = None
    sd: float | None = None
    min: float | None = None
    max: float | None = None
    n: int = 0


@dataclass
class ArmSummary:
    arm: str
    n_seeds: int = 0
    metrics: dict[str, Spread] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.metrics = {k: v if isinstance(v, Spread) else Spread(**v) for k, v in self.metrics.items()}

    @classmethod
    def of(cls, data: Any) -> "ArmSummary":
        return data if isinstance(data, ArmSummary) else cls(**data)


@dataclass
class Difference:
    """arm − reference over the seeds both finished: mean, its 95% t interval, the pairs."""

    mean: float | None = None
    ci95: list[float] | None = None
    n_pairs: int = 0


@dataclass
class PairedDiff:
    arm: str
    reference: str
    metrics: dict[str, Difference] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.metrics = {k: v if isinstance(v, Difference) else Difference(**v) for k, v in self.metrics.items()}

    @classmethod
    def of(cls, data: Any) -> "PairedDiff":
        return data if isinstance(data, PairedDiff) else cls(**data)


@result_kind("study")
@dataclass
class StudyResult(Result):
    """``tunelab study``: every arm × seed's measurements, their spread and the paired differences."""

    INDENT = 2
    TRAILING_NEWLINE = True

    name: str | None = None
    model: str | None = None
    task: str | None = None
    scorer: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    reference: str | None = None
    canaries: dict[str, Any] | None = None
    arms: list[dict[str, Any]] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)
    summary: list[ArmSummary] = field(default_factory=list)
    paired: list[PairedDiff] = field(default_factory=list)
    wall_time_s: float | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.runs = [RunRecord.of(r) for r in self.runs]
        self.summary = [ArmSummary.of(s) for s in self.summary]
        self.paired = [PairedDiff.of(p) for p in self.paired]

    def arm_names(self) -> list[str]:
        """Arms in the study's order (``base`` first)."""
        return [a["name"] for a in self.arms]

    def runs_of(self, arm: str) -> list[RunRecord]:
        return [r for r in self.runs if r.arm == arm]

    def metric_names(self) -> list[str]:
        """Metrics some run measured, in :data:`METRICS` order (prefill k's after over-refusal)."""
        seen = {name for r in self.runs for name in r.metrics}
        order = [m for m, _, _ in METRICS]
        at = order.index("asr_drift")
        prefill = sorted((m for m in seen if m.startswith("prefill_asr_k")), key=lambda m: int(m.rsplit("k", 1)[1]))
        order[at:at] = prefill
        return [m for m in order if m in seen]


def metric_label(name: str) -> str:
    """A metric's column label."""
    if name.startswith("prefill_asr_k"):
        return f"prefill ASR k={name.rsplit('k', 1)[1]}"
    return {m: label for m, label, _ in METRICS}.get(name, name)


def higher_is_better(name: str) -> bool | None:
    if name.startswith("prefill_asr_k"):
        return False
    return {m: better for m, _, better in METRICS}.get(name)


__all__ = ["STUDY_FILE", "METRICS", "Measure", "RunRecord", "Spread", "ArmSummary", "Difference", "PairedDiff",
           "StudyResult", "metric_label", "higher_is_better", "prefill_metric"]
