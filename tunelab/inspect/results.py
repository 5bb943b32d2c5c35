"""Typed results of the ``inspect`` room: one :class:`~tunelab.results.Result` per ``metrics.json`` kind.

The fields are the schema, in the order the writers always wrote them; every field has a default so
older run directories (missing a later key) still load. Torch-free: the report imports this."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunelab.results import Result, result_kind


@result_kind("heads")
@dataclass
class HeadsResult(Result):
    """``tunelab inspect heads``: accuracy as the top-scored heads are ablated, per score and fraction."""

    model: str | None = None
    n: int | None = None
    n_sequences: int | None = None
    scores: list[str] = field(default_factory=list)
    fractions: list[float] = field(default_factory=list)
    n_layers: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    chat_template: bool | None = None
    bf16: bool | None = None
    seed: int | None = None
    baseline: dict[str, Any] = field(default_factory=dict)
    baseline_accuracy: float | None = None
    directions: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    largest_within: dict[str, Any] = field(default_factory=dict)
    mean_scores: dict[str, Any] = field(default_factory=dict)
    flag_rates: list[dict[str, Any]] = field(default_factory=list)
    static_mask: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
    adapter: str | None = None
    series: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    xlabel: str | None = None
    ylabel: str | None = None
    wall_time_s: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    output_dir: str | None = None


@result_kind("pruning")
@dataclass
class PruningResult(Result):
    """``tunelab inspect prune``: dense vs each pruning method at each ratio."""

    name: str | None = None
    task: str | None = None
    model: str | None = None
    adapter: str | None = None
    n: int | None = None
    ppl_texts: int | None = None
    ppl_source: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    output_dir: str | None = None


@result_kind("steering")
@dataclass
class SteeringResult(Result):
    """``tunelab inspect steer``: a steering vector's layer sweep (separation and norms)."""

    name: str | None = None
    model: str | None = None
    adapter: str | None = None
    method: str | None = None
    n: int | None = None
    vector: str | None = None
    layers: list[int] = field(default_factory=list)
    separation: dict[str, Any] = field(default_factory=dict)
    norms: dict[str, Any] = field(default_factory=dict)
    best_layer: int | None = None
    series: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    xlabel: str | None = None
    ylabel: str | None = None
    wall_time_s: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    output_dir: str | None = None


@result_kind("multi-turn")
@dataclass
class MultiTurnResult(Result):
    """``tunelab inspect multi-turn``: accuracy per turn, the Markov chain fit and the residual probe."""

    name: str | None = None
    task: str | None = None
    model: str | None = None
    adapter: str | None = None
    scoring: str | None = None
    n: int | None = None
    turns: int | None = None
    follow_up: str | None = None
    reword: bool | None = None
    accuracy: list[float] = field(default_factory=list)
    accuracy_ci: list[Any] = field(default_factory=list)
    markov_prediction: list[float] = field(default_factory=list)
    p_tf: float | None = None
    p_tf_ci: list[float] | None = None
    p_ft: float | None = None
    p_ft_ci: list[float] = field(default_factory=list)
    acc_inf: float | None = None
    acc_inf_ci: list[float] | None = None
    acc_inf_reason: str | None = None
    transitions: dict[str, Any] = field(default_factory=dict)
    change_rate: list[float] = field(default_factory=list)
    probe: dict[str, Any] = field(default_factory=dict)
    baseline_auroc: float | None = None
    probe_reason: str | None = None
    probe_examples: int | None = None
    probe_changes: int | None = None
    probe_layers: list[int] = field(default_factory=list)
    bootstrap: int | None = None
    wall_time_s: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    output_dir: str | None = None


@result_kind("salt")
@dataclass
class SaltResult(Result):
    """``tunelab inspect salt``: leak and accuracy per steering coefficient."""

    name: str | None = None
    model: str | None = None
    adapter: str | None = None
    n_train: int | None = None
    n_test: int | None = None
    n_layers: int | None = None
    layers: list[int] = field(default_factory=list)
    layer_source: str | None = None
    separation: dict[str, float] = field(default_factory=dict)
    norms: dict[str, float] = field(default_factory=dict)
    read: str | None = None
    pairs: str | None = None
    own_leaky: bool | None = None
    method: str | None = None
    positions: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    baseline_leak: float | None = None
    baseline_accuracy: float | None = None
    leak_reduction: dict[str, float] = field(default_factory=dict)
    best_coeff: float | None = None
    questions: list[str] = field(default_factory=list)
    private_kinds: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    wall_time_s: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    output_dir: str | None = None


@result_kind("refusal-direction")
@dataclass
class RefusalDirectionResult(Result):
    """``tunelab inspect refusal``: the selected refusal direction, its candidates and measurements."""

    name: str | None = None
    model: str | None = None
    adapter: str | None = None
    n_layers: int | None = None
    post_instruction_tokens: list[str] = field(default_factory=list)
    selected: dict[str, Any] = field(default_factory=dict)
    filters_passed: bool | None = None
    filter_reason: str | None = None
    n_passed: int | None = None
    filters: dict[str, Any] = field(default_factory=dict)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    refusal_tokens: dict[str, Any] = field(default_factory=dict)
    prompt_filter: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    orthogonalized_max_logit_gap: float | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str | None] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    wall_time_s: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    output_dir: str | None = None


__all__ = ["HeadsResult", "PruningResult", "SteeringResult", "MultiTurnResult", "SaltResult", "RefusalDirectionResult"]
