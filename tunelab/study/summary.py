"""A study's numbers over seeds: each arm's spread, and each arm's paired difference from the reference.

Torch-free (numpy is not needed either: the sums are :func:`math.fsum`, exactly rounded, so the
figures do not depend on the order the runs were recorded in). Only runs with ``status == "done"``
count; a metric a run did not measure (or measured as ``None``/NaN) is left out of that metric only.
"""

from __future__ import annotations

import math
from typing import Iterable

from tunelab.study.results import ArmSummary, Difference, PairedDiff, RunRecord, Spread

CONFIDENCE = 0.95


def summarize(runs: list[RunRecord], arms: list[str], reference: str) -> tuple[list[ArmSummary], list[PairedDiff]]:
    """Per arm (in ``arms`` order, the base arm included): mean, sd (ddof=1; ``None`` with one
    seed), min, max and n of every metric over its finished runs; per arm ≠ ``reference``: the mean
    of (arm − reference) over the seeds both finished, its 95% t interval (``None`` with fewer than
    two pairs) and the number of pairs. A reference with no finished run gives empty differences."""
    values = _values_by_arm(runs)
    summaries = []
    for arm in arms:
        by_seed = values.get(arm, {})
        metrics: dict[str, Spread] = {}
        for name in _metric_names(by_seed.values()):
            metrics[name] = spread([m[name] for m in by_seed.values() if name in m])
        summaries.append(ArmSummary(arm=arm, n_seeds=len(by_seed), metrics=metrics))
    ref = values.get(reference, {})
    paired = []
    for arm in arms:
        if arm == reference:
            continue
        by_seed = values.get(arm, {})
        seeds = sorted(set(by_seed) & set(ref))
        metrics_d: dict[str, Difference] = {}
        for name in _metric_names([by_seed[s] for s in seeds]):
            diffs = [by_seed[s][name] - ref[s][name] for s in seeds if name in by_seed[s] and name in ref[s]]
            if diffs:
                metrics_d[name] = difference(diffs)
        paired.append(PairedDiff(arm=arm, reference=reference, metrics=metrics_d))
    return summaries, paired


def spread(xs: list[float]) -> Spread:
    """Mean, sample sd (``None`` below two values), min, max and n of ``xs``."""
    if not xs:
        return Spread()
    return Spread(mean=_mean(xs), sd=_sd(xs), min=min(xs), max=max(xs), n=len(xs))


def difference(diffs: list[float]) -> Difference:
    """The mean of paired differences and its two-sided 95% Student-t interval (``None`` below two pairs)."""
    mean = _mean(diffs)
    sd = _sd(diffs)
    ci = None
    if sd is not None:
        from scipy.stats import t  # here: the summary's other users (the schema, the table) do not need scipy

        half = float(t.ppf(0.5 + CONFIDENCE / 2, len(diffs) - 1)) * sd / math.sqrt(len(diffs))
        ci = [mean - half, mean + half]
    return Difference(mean=mean, ci95=ci, n_pairs=len(diffs))


def _values_by_arm(runs: Iterable[RunRecord]) -> dict[str, dict[int, dict[str, float]]]:
    """arm → seed → metric → value, over finished runs with finite values (a later record of the same
    arm × seed replaces an earlier one)."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for run in runs:
        if run.status != "done":
            continue
        finite = {}
        for name, measure in run.metrics.items():
            v = measure.value
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                finite[name] = float(v)
        out.setdefault(run.arm, {})[run.seed] = finite
    return out


def _metric_names(rows: Iterable[dict[str, float]]) -> list[str]:
    return sorted({name for row in rows for name in row})


def _mean(xs: list[float]) -> float:
    return math.fsum(xs) / len(xs)


def _sd(xs: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    mean = _mean(xs)
    return math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


__all__ = ["summarize", "spread", "difference", "CONFIDENCE"]
