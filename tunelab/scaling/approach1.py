"""Approach 1 (Chinchilla, Gemstones): the compute-optimal frontier read off the runs themselves.

Every row (a run, or a checkpoint of one) is a point (log C, log L). The lower convex hull of
those points, up to the lowest loss, is the frontier: for each compute budget on it, no mix of
the runs reaches a lower loss. Regressing log N and log D on log C over the hull points gives
N_opt ∝ C^a and D_opt ∝ C^b (Chinchilla found a ≈ b ≈ 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


def lower_hull(flops: np.ndarray, loss: np.ndarray) -> list[int]:
    """Indices of the lower convex hull of (log C, log L), by increasing C, ending at the lowest loss.

    Andrew's monotone chain on the lower side; among equal C only the lowest loss can be on it,
    and points collinear with their neighbours are dropped. The part after the lowest loss
    (more compute, higher loss) is not a frontier and is cut.
    """
    x, y = np.log(np.asarray(flops, dtype=float)), np.log(np.asarray(loss, dtype=float))
    order = sorted(range(len(x)), key=lambda i: (x[i], y[i], i))
    hull: list[int] = []
    for i in order:
        if hull and x[hull[-1]] == x[i]:
            continue  # same compute, higher (or equal) loss than the point already kept
        while len(hull) >= 2:
            o, a = hull[-2], hull[-1]
            cross = (x[a] - x[o]) * (y[i] - y[o]) - (y[a] - y[o]) * (x[i] - x[o])
            if cross > 0:  # a turns left (convex from below): keep it
                break
            hull.pop()
        hull.append(i)
    lowest = min(range(len(hull)), key=lambda j: (y[hull[j]], j))
    return hull[:lowest + 1]


@dataclass(frozen=True)
class PowerFit:
    """y = coefficient · C^exponent, fitted by least squares in log-log space."""

    exponent: float
    coefficient: float

    def __call__(self, c: Any) -> Any:
        return self.coefficient * np.asarray(c, dtype=float) ** self.exponent

    def to_dict(self) -> dict[str, float]:
        return {"exponent": self.exponent, "coefficient": self.coefficient}


def power_fit(c: np.ndarray, y: np.ndarray) -> PowerFit | None:
    """log y = log k + a·log C over the points; None with fewer than two distinct C."""
    lc, ly = np.log(np.asarray(c, dtype=float)), np.log(np.asarray(y, dtype=float))
    if len(lc) < 2 or np.ptp(lc) == 0:
        return None
    slope, intercept = np.polyfit(lc, ly, 1)
    return PowerFit(float(slope), math.exp(float(intercept)))


def approach1(flops: np.ndarray, loss: np.ndarray, params: np.ndarray | None = None,
              tokens: np.ndarray | None = None) -> dict[str, Any]:
    """The hull points and the power laws N_opt(C), D_opt(C) fitted on them (when N, D are known)."""
    hull = lower_hull(flops, loss)
    out: dict[str, Any] = {"hull": hull, "hull_flops": [float(flops[i]) for i in hull],
                           "hull_loss": [float(loss[i]) for i in hull], "n_hull": len(hull)}
    for name, values in (("params", params), ("tokens", tokens)):
        if values is None:
            continue
        out[f"hull_{name}"] = [float(values[i]) for i in hull]
        fit = power_fit(np.asarray(flops)[hull], np.asarray(values)[hull])
        out[f"{name}_fit"] = fit.to_dict() if fit else None
    if len(hull) < 3:
        out["note"] = f"only {len(hull)} hull point(s): the power laws rest on too few budgets"
    return out
