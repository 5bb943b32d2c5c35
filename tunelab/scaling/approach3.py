"""Approach 3 (Chinchilla, Gemstones): fit L = E + Σ_j A_j / x_j^α_j to a table of runs.

The sizes x_j are (N, D) — parameters and tokens — or any other positive columns, e.g.
(width, depth, D). The fit works in log space with the log-sum-exp form

    log L̂ = LSE(a_1 − α_1·log x_1, …, a_k − α_k·log x_k, e),   A_j = exp(a_j), E = exp(e)

and minimises Σ_i Huber_δ(log L_i − log L̂_i) with L-BFGS-B and the analytic gradient, from
every point of a grid of starts (exponents 0..2 step 0.5, a_j 0..25 step 5, e −1..1 step 0.5:
4,500 starts for two terms), in parallel over starts; the best converged end point wins. The
parameter vector is θ = (α_1..α_k, a_1..a_k, e), the order the Gemstones code uses, so its
published parameters can be evaluated directly. The reported objective is Σ Huber, as in
Gemstones; L-BFGS-B minimises it divided by δ, so that its default tolerances stop at the
minimum rather than where the (tiny, δ-scaled) gradient first looks small.

Bootstrap CIs refit resampled rows from the best few distinct end points of the grid;
:func:`degeneracy` names the ways a fit collapses (E → 0, an exponent at a bound, a term that
vanishes or is indistinguishable from noise). :func:`compute_optimal` is the closed-form
allocation N*, D* of a budget C = k·N·D (k = 6 by default).
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import numpy as np
from scipy.optimize import minimize

from tunelab.errors import TunelabError

# Bounds keep L-BFGS-B away from overflow; a fit that ends on one is flagged as degenerate.
EXPONENT_BOUNDS = (0.0, 4.0)
LOG_COEFFICIENT_BOUNDS = (-30.0, 100.0)
LOG_E_BOUNDS = (-10.0, 10.0)
# The spec's grid of starts (Epoch's Chinchilla replication, Gemstones).
EXPONENT_GRID = (0.0, 0.5, 1.0, 1.5, 2.0)
LOG_COEFFICIENT_GRID = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
LOG_E_GRID = (-1.0, -0.5, 0.0, 0.5, 1.0)
# E below this share of the smallest observed loss counts as collapsed (an LM's E is most of its loss).
E_FLOOR = 0.05


# --------------------------------------------------------------------------- the law
@dataclass(frozen=True)
class Law:
    """L(x) = E + Σ_j A_j / x_j^α_j, stored in log space: a_j = log A_j, e = log E."""

    columns: tuple[str, ...]
    alpha: tuple[float, ...]
    a: tuple[float, ...]
    e: float

    @property
    def E(self) -> float:
        return math.exp(self.e)

    @property
    def A(self) -> tuple[float, ...]:
        return tuple(_exp(a) for a in self.a)

    @property
    def theta(self) -> np.ndarray:
        return np.array([*self.alpha, *self.a, self.e], dtype=float)

    @classmethod
    def from_theta(cls, theta: Sequence[float], columns: Sequence[str]) -> Law:
        k = len(columns)
        theta = [float(v) for v in theta]
        if len(theta) != 2 * k + 1:
            raise ValueError(f"a law over {k} columns has {2 * k + 1} parameters, got {len(theta)}")
        return cls(tuple(columns), tuple(theta[:k]), tuple(theta[k:2 * k]), theta[2 * k])

    def log_predict(self, x: np.ndarray) -> np.ndarray:
        """log L̂ for sizes ``x`` of shape (rows, terms)."""
        return _log_predict(self.theta, np.log(np.asarray(x, dtype=float)), len(self.columns))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.exp(self.log_predict(x))

    def terms(self, x: np.ndarray) -> np.ndarray:
        """Each term A_j / x_j^α_j, shape (rows, terms)."""
        log_x = np.log(np.asarray(x, dtype=float))
        return np.exp(np.asarray(self.a) - np.asarray(self.alpha) * log_x)

    def formula(self) -> str:
        names = ("A", "B", "C", "F", "G", "H")
        greek = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta")
        k = len(self.columns)
        parts = [f"{names[j] if k <= len(names) else f'A{j + 1}'}/{c}^{greek[j] if k <= len(greek) else f'alpha{j + 1}'}"
                 for j, c in enumerate(self.columns)]
        return "L = E + " + " + ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: E and per-term A, alpha (and their logs); for two terms also A, B, alpha, beta."""
        out: dict[str, Any] = {"formula": self.formula(), "E": self.E, "e": self.e,
                               "terms": [{"column": c, "A": A, "a": a, "alpha": al}
                                         for c, A, a, al in zip(self.columns, self.A, self.a, self.alpha)]}
        if len(self.columns) == 2:
            out.update(A=self.A[0], B=self.A[1], alpha=self.alpha[0], beta=self.alpha[1])
        return out


def _exp(v: float) -> float:
    try:
        return math.exp(v)
    except OverflowError:
        return math.inf


def _stacked(theta: np.ndarray, log_x: np.ndarray, k: int) -> np.ndarray:
    """The log-sum-exp arguments per row: a_j − α_j·log x_j for every term, then e."""
    t = np.empty((log_x.shape[0], k + 1))
    t[:, :k] = theta[k:2 * k] - theta[:k] * log_x
    t[:, k] = theta[2 * k]
    return t


def _log_predict(theta: np.ndarray, log_x: np.ndarray, k: int) -> np.ndarray:
    t = _stacked(theta, log_x, k)
    m = t.max(axis=1)
    return m + np.log(np.exp(t - m[:, None]).sum(axis=1))


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber_δ(r): r²/2 inside ±δ, δ(|r| − δ/2) outside (scipy.special.huber's convention)."""
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


def objective(theta: np.ndarray, log_x: np.ndarray, log_loss: np.ndarray, delta: float,
              weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Σ_i w_i Huber_δ(log L_i − log L̂_i) and its gradient in θ = (α, a, e).

    With p_ij the softmax weights of the log-sum-exp and ψ = Huber' (r clipped to ±δ):
    ∂/∂α_j = Σ ψ_i p_ij log x_ij, ∂/∂a_j = −Σ ψ_i p_ij, ∂/∂e = −Σ ψ_i p_i,E.
    """
    k = log_x.shape[1]
    t = _stacked(theta, log_x, k)
    m = t.max(axis=1)
    z = np.exp(t - m[:, None])
    s = z.sum(axis=1)
    r = log_loss - (m + np.log(s))
    w = 1.0 if weights is None else weights
    value = float(np.sum(w * huber(r, delta)))
    psi = w * np.clip(r, -delta, delta)
    p = z / s[:, None]
    q = psi[:, None] * p
    grad = np.empty_like(theta, dtype=float)
    grad[:k] = (q[:, :k] * log_x).sum(axis=0)
    grad[k:2 * k] = -q[:, :k].sum(axis=0)
    grad[2 * k] = -q[:, k].sum()
    return value, grad


# --------------------------------------------------------------------------- starts and fitting
def grid_starts(k: int, exponents: Sequence[float] = EXPONENT_GRID, coefficients: Sequence[float] = LOG_COEFFICIENT_GRID,
                irreducible: Sequence[float] = LOG_E_GRID) -> np.ndarray:
    """Every combination of start values, rows θ = (α_1..α_k, a_1..a_k, e): 5^k · 6^k · 5 for the spec's grid."""
    return np.array(list(product(*[exponents] * k, *[coefficients] * k, irreducible)), dtype=float)


def subsample_starts(starts: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """At most ``n`` of ``starts``, drawn without replacement (seeded), in grid order."""
    if n is None or n >= len(starts):
        return starts
    keep = np.sort(np.random.default_rng(seed).choice(len(starts), size=n, replace=False))
    return starts[keep]


def bounds(k: int) -> list[tuple[float, float]]:
    return [EXPONENT_BOUNDS] * k + [LOG_COEFFICIENT_BOUNDS] * k + [LOG_E_BOUNDS]


def _scaled(theta: np.ndarray, log_x: np.ndarray, log_loss: np.ndarray, delta: float,
            weights: np.ndarray | None) -> tuple[float, np.ndarray]:
    value, grad = objective(theta, log_x, log_loss, delta, weights)
    return value / delta, grad / delta


def _minimize_many(starts: np.ndarray, log_x: np.ndarray, log_loss: np.ndarray, delta: float,
                   weights: np.ndarray | None = None) -> list[tuple[float, bool, np.ndarray]]:
    """L-BFGS-B from each start: (objective, converged, end point). Top-level so processes can run it."""
    k = log_x.shape[1]
    box = bounds(k)
    lo, hi = np.array([b[0] for b in box]), np.array([b[1] for b in box])
    out = []
    with np.errstate(over="ignore", under="ignore"):
        for start in starts:
            res = minimize(_scaled, np.clip(start, lo, hi), args=(log_x, log_loss, delta, weights), jac=True,
                           method="L-BFGS-B", bounds=box)
            value = float(res.fun) * delta
            out.append((value if math.isfinite(value) else math.inf, bool(res.success), np.asarray(res.x, dtype=float)))
    return out


def _run_chunks(fn: Any, chunks: list[tuple[Any, ...]], workers: int) -> list[Any]:
    """``fn(*chunk)`` for every chunk, in order; in worker processes when ``workers`` > 1."""
    if workers <= 1 or len(chunks) <= 1:
        return [fn(*c) for c in chunks]
    # spawn, not fork: the caller may hold threads (torch, BLAS) that a fork would copy mid-lock.
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, *zip(*chunks)))


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


@dataclass
class Fit:
    """The best law of a grid search and what the search found."""

    law: Law
    objective: float
    converged: bool
    n_starts: int
    n_converged: int
    delta: float
    optima: list[np.ndarray] = field(default_factory=list)  # distinct converged end points, best first
    near_best: dict[str, Any] = field(default_factory=dict)  # how far apart the almost-as-good end points are



def fit_law(x: np.ndarray, loss: np.ndarray, columns: Sequence[str], *, delta: float = 1e-3,
            starts: np.ndarray | None = None, workers: int = 1, weights: np.ndarray | None = None) -> Fit:
    """Fit the law over ``columns`` (sizes ``x``, shape (rows, terms)) to ``loss``: best of all starts.

    The winner is the converged end point with the lowest objective (ties: the earlier start), so
    the result does not depend on ``workers``. If no start converged, the best end point is kept
    and ``converged`` is False.
    """
    x = np.asarray(x, dtype=float)
    loss = np.asarray(loss, dtype=float)
    k = len(columns)
    if x.ndim != 2 or x.shape[1] != k or x.shape[0] != loss.shape[0]:
        raise ValueError(f"x must have shape (rows, {k}) matching loss, got {x.shape} and {loss.shape}")
    if x.shape[0] < 2 * k + 2:
        raise TunelabError(f"{x.shape[0]} rows are too few for a law with {2 * k + 1} parameters: give at least {2 * k + 2}")
    if np.any(x <= 0) or np.any(loss <= 0):
        raise TunelabError("sizes and losses must be > 0 (the law is fitted on their logarithms)")
    starts = grid_starts(k) if starts is None else np.asarray(starts, dtype=float)
    log_x, log_loss = np.log(x), np.log(loss)
    n_chunks = 1 if workers <= 1 else min(len(starts), 4 * workers)
    chunks = [(part, log_x, log_loss, delta, weights) for part in np.array_split(starts, n_chunks) if len(part)]
    results = [r for part in _run_chunks(_minimize_many, chunks, workers) for r in part]
    order = sorted(range(len(results)), key=lambda i: (not results[i][1], results[i][0], i))
    best = results[order[0]]
    converged = [results[i] for i in order if results[i][1] and math.isfinite(results[i][0])]
    return Fit(law=Law.from_theta(best[2], columns), objective=best[0], converged=best[1], n_starts=len(results),
               n_converged=len(converged), delta=delta, optima=_distinct([r[2] for r in converged]),
               near_best=_near_best(converged, columns))


NEAR_BEST = 1e-3  # end points whose objective is within 0.1% of the best one


def _near_best(converged: list[tuple[float, bool, np.ndarray]], columns: Sequence[str]) -> dict[str, Any]:
    """The range of each parameter over the converged end points within 0.1% of the best objective:
    a flat objective (small δ makes it almost L1) leaves the exponents less pinned than one fit suggests."""
    if not converged:
        return {}
    best = converged[0][0]
    near = [Law.from_theta(r[2], columns) for r in converged if r[0] <= best + NEAR_BEST * abs(best)]

    def span(values: list[float]) -> list[float]:
        return [float(min(values)), float(max(values))]

    return {"within": NEAR_BEST, "n": len(near), "E": span([law.E for law in near]),
            "terms": [{"column": c, "A": span([law.A[j] for law in near]), "alpha": span([law.alpha[j] for law in near])}
                      for j, c in enumerate(columns)]}


def _distinct(points: list[np.ndarray], tol: float = 1e-2, limit: int = 16) -> list[np.ndarray]:
    """The first ``limit`` points that differ from every earlier kept one by more than ``tol``."""
    kept: list[np.ndarray] = []
    for p in points:
        if all(np.max(np.abs(p - q)) > tol for q in kept):
            kept.append(p)
            if len(kept) == limit:
                break
    return kept


# --------------------------------------------------------------------------- bootstrap
def _bootstrap_chunk(samples: np.ndarray, starts: np.ndarray, log_x: np.ndarray, log_loss: np.ndarray,
                     delta: float) -> list[np.ndarray]:
    """Refit each resample (a row of indices) from ``starts``; the best end point of each."""
    out = []
    for idx in samples:
        results = _minimize_many(starts, log_x[idx], log_loss[idx], delta)
        out.append(min(results, key=lambda r: (not r[1], r[0]))[2])
    return out


def bootstrap_laws(x: np.ndarray, loss: np.ndarray, fit: Fit, *, n: int, seed: int = 0, starts: int = 4,
                   workers: int = 1) -> list[Law]:
    """``n`` refits on rows resampled with replacement (seeded), each started from the best
    ``starts`` distinct end points of the full grid search."""
    if n <= 0:
        return []
    columns = fit.law.columns
    log_x, log_loss = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(loss, dtype=float))
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(log_loss), size=(n, len(log_loss)))
    begin = np.array((fit.optima or [fit.law.theta])[:max(1, starts)])
    n_chunks = 1 if workers <= 1 else min(n, 4 * workers)
    chunks = [(part, begin, log_x, log_loss, fit.delta) for part in np.array_split(samples, n_chunks) if len(part)]
    thetas = [t for part in _run_chunks(_bootstrap_chunk, chunks, workers) for t in part]
    return [Law.from_theta(t, columns) for t in thetas]


def percentile_ci(values: Sequence[float], level: float = 0.95) -> list[float] | None:
    """The central ``level`` percentile interval of the finite values, or None when there are none."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if finite.size < 2:
        return None
    tail = 100 * (1 - level) / 2
    return [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]


# --------------------------------------------------------------------------- the guard
def degeneracy(law: Law, x: np.ndarray, loss: np.ndarray) -> list[str]:
    """Why the fitted ``law`` should not be trusted, one reason per problem; empty when none.

    Flags: E → 0 (below 5% of the smallest loss, or at its bound); an exponent near 0 (the term is
    a constant, confounded with E) or at its upper bound; a log-coefficient at a bound (A_j
    exploding or vanishing); a term that contributes < 0.1% of the loss on every row, or whose
    variation over the data is within 3× the residual noise (no signal in that column).
    """
    x = np.asarray(x, dtype=float)
    loss = np.asarray(loss, dtype=float)
    reasons = []
    smallest = float(loss.min())
    if law.E < E_FLOOR * smallest or law.e <= LOG_E_BOUNDS[0] + 1e-6:
        reasons.append(f"E -> 0: the irreducible loss E = {law.E:.3g} is {law.E / smallest:.1%} of the smallest loss "
                       f"({smallest:.3g}); the law has no floor to extrapolate to")
    terms = law.terms(x)
    residual = loss - law.predict(x)
    noise = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    for j, column in enumerate(law.columns):
        alpha, a = law.alpha[j], law.a[j]
        if alpha < 0.01:
            reasons.append(f"the exponent of {column} is {alpha:.3g} (at its lower bound 0): the term is a constant, "
                           "confounded with E")
        elif alpha > EXPONENT_BOUNDS[1] - 1e-3:
            reasons.append(f"the exponent of {column} is at its upper bound {EXPONENT_BOUNDS[1]:g}")
        if a >= LOG_COEFFICIENT_BOUNDS[1] - 1e-3:
            reasons.append(f"the coefficient of {column} exploded (log A = {a:.3g}, at its upper bound)")
        elif a <= LOG_COEFFICIENT_BOUNDS[0] + 1e-3:
            reasons.append(f"the coefficient of {column} vanished (log A = {a:.3g}, at its lower bound)")
        largest, spread = float(terms[:, j].max()), float(np.ptp(terms[:, j]))
        if largest < 1e-3 * smallest:
            reasons.append(f"the {column} term is below 0.1% of the loss on every row (largest {largest:.3g}): "
                           "the loss does not depend on it")
        elif alpha >= 0.01 and spread <= 3 * noise:
            reasons.append(f"the {column} term varies by {spread:.3g} over the data, within 3x the residual noise "
                           f"({noise:.3g}): no signal in {column}")
    return reasons


def log_r2(law: Law, x: np.ndarray, loss: np.ndarray) -> float:
    """R² of the fit in log space (1 − SS_res / SS_tot of log L)."""
    y = np.log(np.asarray(loss, dtype=float))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    ss_res = float(np.sum((y - law.log_predict(x)) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


# --------------------------------------------------------------------------- compute-optimal allocation
def compute_optimal(law: Law, budget: float | np.ndarray, flops_per_param_token: float = 6.0) -> tuple[Any, Any]:
    """N*, D* minimising E + A/N^α + B/D^β subject to k·N·D = C (k = 6: C ≈ 6ND).

    With G = (αA / (βB))^{1/(α+β)}: N* = G·(C/k)^{β/(α+β)}, D* = G⁻¹·(C/k)^{α/(α+β)}.
    Needs a two-term law over (N, D) with positive exponents.
    """
    if len(law.columns) != 2:
        raise ValueError("compute-optimal allocation needs a law over exactly (N, D)")
    alpha, beta = law.alpha
    if alpha <= 0 or beta <= 0:
        raise ValueError("compute-optimal allocation needs positive exponents")
    (a, b), s = law.a, alpha + beta
    log_g = (math.log(alpha) + a - math.log(beta) - b) / s
    log_c = np.log(np.asarray(budget, dtype=float) / flops_per_param_token)
    n_opt = np.exp(log_g + beta / s * log_c)
    d_opt = np.exp(-log_g + alpha / s * log_c)
    if np.ndim(n_opt) == 0:
        return float(n_opt), float(d_opt)
    return n_opt, d_opt
