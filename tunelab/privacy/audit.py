"""Canary auditing: how well can an attacker tell members from non-members, and what ε does that prove?

A *canary audit* trains with some canaries inserted (members) and some held out (non-members),
then gives every canary an attack score (higher = "looks like a member": a loss drop, a
likelihood ratio, ...). :class:`CanaryScoreAuditor` turns the two score lists into

* **attack metrics**: the ROC curve, AUROC, and TPR at FPR ∈ {0.1%, 1%, 10%} with seeded
  percentile-bootstrap CIs (members and non-members resampled independently). All ROC work is
  scikit-learn's ``roc_curve`` / ``roc_auc_score``: nothing hand-written.
* **an ε lower bound from one training run** (Steinke, Nasr, Jagielski 2023, "Privacy auditing
  with one (1) training run", https://arxiv.org/abs/2305.08846): if the training run were
  (ε, δ)-DP, a guesser could not be right too often. With a threshold ``t`` fixed in advance::

      m = number of canaries (members + non-members)
      guess "in" for score >= t, abstain below (one-sided: never guess "out")
      r = guesses made, v = correct guesses, q = e^ε / (1 + e^ε)
      β = P[Binom(r, q) >= v]
      α = max_{i=1..v} P[v - i <= Binom(r, q) < v] / i
      p(ε) = min(1, β + 2·m·δ·α)          # the δ term is always kept
      ε_LB = sup{ε >= 0 : p(ε) < significance}

  p(ε) rises with ε (β does; α does where it matters, r·q < v), so ε_LB is found by doubling
  then bisection; the reported value is the rejected end of the final bracket (width <= 1e-9),
  so it never overstates. ε_LB is 0 when even ε = 0 cannot be rejected. One-sided guessing is
  what jax_privacy implements (its ``one_sided`` must be True: k₋ = 0 in Steinke et al.) and is
  what reproduces its golden values. The test assumes each canary was in with probability 1/2
  (q is the odds of a correct guess under ε-DP for a fair coin). With unequal member and
  non-member counts the imbalance alone can give ε_LB > 0 (guess "in" for everyone), so such
  results carry a ``warning``; audit equal numbers.

**Choosing the threshold from the same scores** breaks the "fixed in advance" premise, so the
best threshold is never reported uncorrected. ``threshold_strategy``:

* ``"bonferroni"`` (default): test every candidate threshold at ``significance / K`` and report
  the best. ``bonferroni_candidates="hull"`` (default) mirrors jax_privacy: the candidates are the
  vertices of the ROC convex hull over all distinct scores (plus +∞), K = number of vertices.
  This is what reproduces jax_privacy's golden values (K = 386 / 374 / 140 for the s = 1 / 2 / 4
  vectors). Caveat, kept visible on purpose: the hull depends on the membership labels, so K is
  data-dependent and this is not a textbook union bound; it can also make ε_LB dip by a few
  hundredths when the attack gets stronger (K changes with the scores).
  ``bonferroni_candidates="all"`` searches every distinct threshold and divides by all of them
  (K = distinct scores + 1, fixed by the scores alone): a strict union bound, monotone in attack
  strength, but much more conservative: with m = 20 000 and δ = 1e-6 the δ term alone
  (≈ 2mδ/v) exceeds 0.05/K and every golden vector gives 0.
* ``"split"``: a seeded random half of the m canaries (m must be even; membership plays no part
  in the draw) chooses the threshold (the best one at the uncorrected level); the other m/2 are
  audited at that fixed threshold with the full significance and their own m. Strictly valid, at
  the cost of half the canaries. It pays neither the 1/K nor the full 2mδ, so on the golden
  vectors it is *higher* than the hull Bonferroni: 2.106203 / 4.248245 / 6.776163 for
  s = 1 / 2 / 4 (seed 0).

Every bound comes back as an :class:`EpsilonLowerBound` carrying the **ceiling**
(:func:`epsilon_ceiling`): the ε_LB a perfect attack would get from the canaries the bound was
computed on (all members guessed, no mistakes, uncorrected significance; for "split", the held
half). No threshold can exceed it, so an ε_LB near the ceiling means "more canaries needed", not
"ε is about this large".

TPR at a target FPR is the largest TPR among ROC points whose FPR <= target: a deterministic
threshold rule "in if score >= threshold", tied scores all on the same side, no interpolation
and no randomised classifiers (jax_privacy interpolates; this does not). With fewer than
``1 / fpr`` non-members that FPR admits less than one false positive, so :meth:`summary` refuses
the headline (``tpr: None`` plus a reason); 1% needs >= 100 non-members, 0.1% >= 1000.

Sources: Steinke, Nasr, Jagielski (2023) arXiv:2305.08846 (the p-value and its δ term);
google-deepmind/jax_privacy @ 8967688c ``jax_privacy/auditing.py`` and ``tests/auditing_test.py`` (API
shape, threshold enumeration, Bonferroni on the hull, golden vectors; reimplemented, not
imported). Torch-free: numpy, scipy, scikit-learn.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import scipy.special
import scipy.stats
from sklearn.metrics import auc, roc_auc_score, roc_curve

from tunelab.errors import TunelabError
from tunelab.privacy.audit_config import DEFAULT_FPRS  # noqa: F401 (re-exported: declared with the audit's options)

ThresholdStrategy = Literal["bonferroni", "split"]
BonferroniCandidates = Literal["hull", "all"]

_EPS_TOL = 1e-9  # bisection bracket width: far below the 1e-5 the golden values need


# ----------------------------------------------------------------------------- validation

def _check_open_unit(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TunelabError(f"{name} must be a number in (0, 1), got {value!r}") from None
    if not 0.0 < value < 1.0:  # also rejects NaN
        raise TunelabError(f"{name} must be in (0, 1), got {value}")
    return value


def _as_scores(name: str, scores: Any) -> np.ndarray:
    try:
        arr = np.asarray(scores, dtype=float)
    except (TypeError, ValueError):
        raise TunelabError(f"{name} must be a 1-D list of numbers") from None
    if arr.ndim != 1:
        raise TunelabError(f"{name} must be 1-D, got shape {arr.shape}")
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise TunelabError(f"{name} has {bad} non-finite score(s) (NaN or inf); drop or fix them")
    return arr


# ----------------------------------------------------------------------------- one-run test

def one_run_p_value(m: int, n_guesses: int, n_correct: int, epsilon: float, delta: float) -> float:
    """p(ε) of Steinke et al. (2023) for ``n_correct`` right out of ``n_guesses`` among ``m`` canaries."""
    r, v = int(n_guesses), int(n_correct)
    if r == 0 or v == 0:
        return 1.0  # no correct guesses: nothing to reject
    q = float(scipy.special.expit(epsilon))
    beta = float(scipy.stats.binom.sf(v - 1, r, q))
    # α: P[v-i <= B < v] is a running sum of pmf(v-1), pmf(v-2), ...; summing small terms upward
    # keeps it accurate where subtracting two survival functions would cancel.
    tail = np.cumsum(scipy.stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
    alpha = float(np.max(tail / np.arange(1, v + 1)))
    return min(1.0, beta + 2.0 * m * delta * alpha)


def _epsilon_for_counts(m: int, r: int, v: int, significance: float, delta: float, lo: float = 0.0) -> float:
    """sup{ε >= lo : p(ε) < significance}, or ``lo`` if p(lo) is already >= significance."""
    if one_run_p_value(m, r, v, lo, delta) >= significance:
        return lo
    hi = max(1.0, 2.0 * lo)
    while one_run_p_value(m, r, v, hi, delta) < significance:
        lo, hi = hi, 2.0 * hi  # terminates: as ε grows q -> 1 and β -> 1
    while hi - lo > _EPS_TOL:
        mid = 0.5 * (lo + hi)
        if one_run_p_value(m, r, v, mid, delta) < significance:
            lo = mid
        else:
            hi = mid
    return lo  # the rejected end: never overstates


def _best_threshold(r: np.ndarray, v: np.ndarray, m: int, significance: float, delta: float) -> tuple[float, int]:
    """Largest ε over candidate (guesses, correct) pairs, each tested at ``significance``; (ε, index or -1)."""
    best, best_idx = 0.0, -1
    # Most precise candidates first: they tend to win, so the rest are ruled out cheaply.
    precision = np.divide(v, r, out=np.zeros(len(r)), where=r > 0)
    order = np.lexsort((-r, -precision))
    alive = (r > 0) & (v > 0)

    def prune() -> None:
        # A vectorised lower bound on p(best) using two of α's terms (i = 1 and i = v):
        # p >= β + 2mδ·max(pmf(v-1), P[B < v] / v). It rises with ε, so a candidate that fails
        # at `best` cannot beat it; only the survivors pay for the full p-value.
        idx = np.flatnonzero(alive)
        q = scipy.special.expit(best)
        beta = scipy.stats.binom.sf(v[idx] - 1, r[idx], q)
        alpha_lb = np.maximum(scipy.stats.binom.pmf(v[idx] - 1, r[idx], q), (1.0 - beta) / v[idx])
        alive[idx[beta + 2.0 * m * delta * alpha_lb >= significance]] = False

    prune()
    for i in order:
        if not alive[i]:
            continue
        eps = _epsilon_for_counts(m, int(r[i]), int(v[i]), significance, delta, lo=best)
        if eps > best:
            best, best_idx = eps, int(i)
            prune()
    return best, best_idx


def _hull(fp: np.ndarray, tp: np.ndarray) -> np.ndarray:
    """Indices of the ROC convex-hull vertices (upper-left chain; collinear points dropped).

    ``fp``/``tp`` come from ``roc_curve`` (non-decreasing). This selects among sklearn's ROC points;
    it does not compute ROC.
    """
    keep: list[int] = []
    for i in range(len(fp)):
        while len(keep) >= 2:
            a, b = keep[-2], keep[-1]
            cross = (fp[b] - fp[a]) * (tp[i] - tp[a]) - (tp[b] - tp[a]) * (fp[i] - fp[a])
            if cross >= 0:  # b is on or below the segment a -> i
                keep.pop()
            else:
                break
        keep.append(i)
    return np.asarray(keep, dtype=int)


def epsilon_ceiling(m: int, delta: float, significance: float = 0.05, *, n_in: int | None = None) -> float:
    """ε_LB of a perfect attack on ``m`` canaries: all ``n_in`` members guessed, no mistakes.

    ``n_in`` defaults to ``m // 2`` (half the canaries in). Fewer or wrong guesses only raise the
    p-value (checked exhaustively for m <= 60), so this caps every threshold's ε_LB on these
    canaries at this significance. It is not monotone in m when δ is large (the 2mδ term grows),
    which is why a split's held half gets its own ceiling.
    """
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 2:
        raise TunelabError(f"m must be an integer >= 2 canaries, got {m!r}")
    delta = _check_open_unit("delta", delta)
    significance = _check_open_unit("significance", significance)
    k = int(m) // 2 if n_in is None else n_in
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= m:
        raise TunelabError(f"n_in must be an integer in [1, m={m}], got {n_in!r}")
    return _epsilon_for_counts(int(m), int(k), int(k), significance, delta)


# ----------------------------------------------------------------------------- results

@dataclass(frozen=True)
class EpsilonLowerBound:
    """A one-run ε lower bound with everything needed to read it, its ceiling included."""

    epsilon: float
    ceiling: float  # perfect-attack ε_LB on the canaries this bound used (uncorrected level)
    m: int  # canaries the bound was computed on (the evaluation half for "split")
    n_members: int
    delta: float
    significance: float  # as requested
    corrected_significance: float  # the level each threshold was actually tested at
    threshold_strategy: str
    n_candidates: int  # thresholds the correction paid for (1 for "split")
    threshold: float  # "in" if score >= threshold; inf when no threshold rejects anything
    n_guesses: int
    n_correct: int
    warning: str | None = None  # set when members and non-members differ in number

    def __float__(self) -> float:
        return self.epsilon

    def __str__(self) -> str:
        return (f"ε_LB = {self.epsilon:.6f} (ceiling {self.ceiling:.6f}; m = {self.m}, δ = {self.delta:g}, "
                f"significance {self.significance:g}, {self.threshold_strategy})"
                + (f"; warning: {self.warning}" if self.warning else ""))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BootstrapParams:
    """Percentile bootstrap: resample members and non-members independently, ``num_samples`` times."""

    num_samples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int) or self.num_samples < 2:
            raise TunelabError(f"bootstrap num_samples must be an integer >= 2, got {self.num_samples!r}")
        _check_open_unit("bootstrap confidence", self.confidence)


@dataclass(frozen=True)
class RocData:
    """sklearn's ROC curve with every threshold kept (``drop_intermediate=False``)."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray  # "in" if score >= threshold; the first is +inf (nothing guessed)


# ----------------------------------------------------------------------------- auditor

class CanaryScoreAuditor:
    """Attack metrics and one-run ε lower bounds from member and non-member canary scores.

    Higher score = "member". If your attack gives members *lower* scores (e.g. raw loss), negate it.
    """

    def __init__(self, in_scores: Any, out_scores: Any) -> None:
        in_arr = _as_scores("member (in) scores", in_scores)
        out_arr = _as_scores("non-member (out) scores", out_scores)
        if in_arr.size + out_arr.size < 2:
            raise TunelabError(f"a canary audit needs at least 2 canaries, got {in_arr.size + out_arr.size}")
        if in_arr.size == 0:
            raise TunelabError("no member (in) scores: an audit needs both members and non-members")
        if out_arr.size == 0:
            raise TunelabError("no non-member (out) scores: an audit needs both members and non-members")
        self.in_scores = in_arr
        self.out_scores = out_arr
        self._roc = self._roc_of(in_arr, out_arr)

    @property
    def n_members(self) -> int:
        return int(self.in_scores.size)

    @property
    def n_non_members(self) -> int:
        return int(self.out_scores.size)

    @property
    def m(self) -> int:
        return self.n_members + self.n_non_members

    def imbalance_warning(self) -> str | None:
        """Why ε_LB may be unreliable here, or None: the one-run test assumes a fair coin per canary.

        q = e^ε/(1+e^ε) is the odds of a right guess when each canary was in with probability 1/2.
        With fixed, unequal counts, guessing "in" for (almost) everyone is right more than half the
        time with no attack signal at all, so the imbalance alone can give ε_LB > 0 (e.g. 10
        members below 2 non-members still yields ε_LB ≈ 0.06).
        """
        if self.n_members == self.n_non_members:
            return None
        return (f"{self.n_members} members vs {self.n_non_members} non-members: the one-run test assumes each "
                "canary was in with probability 1/2, so the imbalance alone can raise ε_LB; audit equal numbers")

    @staticmethod
    def _roc_of(in_arr: np.ndarray, out_arr: np.ndarray) -> RocData:
        labels = np.r_[np.ones(in_arr.size), np.zeros(out_arr.size)]
        fpr, tpr, thr = roc_curve(labels, np.r_[in_arr, out_arr], drop_intermediate=False)
        return RocData(fpr, tpr, thr)

    # --------------------------------------------------------------- ROC metrics

    def roc(self) -> RocData:
        """ROC points for every distinct threshold (sklearn ``roc_curve``, ``drop_intermediate=False``)."""
        return self._roc

    @staticmethod
    def _tpr_at(roc: RocData, fpr: float) -> float:
        # roc.fpr is non-decreasing from 0, so the last point with FPR <= target has the largest TPR.
        # fps/N and a target equal to k/N round to the same double, so the comparison is exact.
        return float(roc.tpr[np.searchsorted(roc.fpr, fpr, side="right") - 1])

    def tpr_at_given_fpr(self, fpr: float) -> float:
        """Largest TPR among ROC points with FPR <= ``fpr`` (rule "in if score >= threshold", ties together).

        Always defined (the +inf threshold has FPR 0). This raw number does not refuse small
        non-member counts; :meth:`summary` does (see :meth:`min_non_members`).
        """
        return self._tpr_at(self._roc, _check_open_unit("fpr", fpr))

    @staticmethod
    def min_non_members(fpr: float) -> int:
        """Fewest non-members n with n·fpr >= 1, i.e. ``fpr`` admits at least one false positive."""
        fpr = _check_open_unit("fpr", fpr)
        need = math.ceil(1.0 / fpr)
        # 1/fpr is rounded; settle the exact boundary on the product that defines it.
        while need * fpr < 1.0:
            need += 1
        while need > 1 and (need - 1) * fpr >= 1.0:
            need -= 1
        return need

    def attack_auroc(self) -> float:
        """Area under the ROC curve (sklearn ``roc_auc_score``; ties count one half)."""
        labels = np.r_[np.ones(self.n_members), np.zeros(self.n_non_members)]
        return float(roc_auc_score(labels, np.r_[self.in_scores, self.out_scores]))

    def confidence_intervals(self, fprs: tuple[float, ...] = DEFAULT_FPRS,
                             bootstrap: BootstrapParams | None = None) -> dict[str, tuple[float, float]]:
        """Percentile-bootstrap CIs for TPR at each FPR (keys ``"tpr@<fpr>"``) and ``"auroc"``.

        Reproducible for a given seed. Percentile intervals of TPR at a low FPR can be skewed
        (resampling duplicates non-members, coarsening the FPR grid); read them as the spread of
        the estimate, not as a guarantee.
        """
        params = bootstrap or BootstrapParams()
        fprs = tuple(_check_open_unit("fpr", f) for f in fprs)
        rng = np.random.default_rng(params.seed)
        values = np.empty((params.num_samples, len(fprs) + 1))
        for k in range(params.num_samples):
            ins = self.in_scores[rng.integers(0, self.n_members, self.n_members)]
            outs = self.out_scores[rng.integers(0, self.n_non_members, self.n_non_members)]
            roc = self._roc_of(ins, outs)
            values[k, :-1] = [self._tpr_at(roc, f) for f in fprs]
            # auc over the full roc_curve is exactly what roc_auc_score computes; one curve serves both.
            values[k, -1] = auc(roc.fpr, roc.tpr)
        tail = (1.0 - params.confidence) / 2.0
        lo, hi = np.quantile(values, [tail, 1.0 - tail], axis=0)
        names = [f"tpr@{f:g}" for f in fprs] + ["auroc"]
        return {name: (float(a), float(b)) for name, a, b in zip(names, lo, hi)}

    # --------------------------------------------------------------- ε lower bound

    def _counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact (false-positive, true-positive) counts at each ROC threshold."""
        fp = np.rint(self._roc.fpr * self.n_non_members).astype(np.int64)
        tp = np.rint(self._roc.tpr * self.n_members).astype(np.int64)
        return fp, tp

    def _search(self, significance: float, delta: float, candidates: BonferroniCandidates,
                correct: bool) -> tuple[float, float, int, int, int]:
        """(ε, threshold, guesses, correct guesses, K) of the best candidate; each tested at significance/K if ``correct``."""
        fp, tp = self._counts()
        idx = _hull(fp, tp) if candidates == "hull" else np.arange(len(fp))
        k = len(idx)
        level = significance / k if correct else significance
        eps, best = _best_threshold(tp[idx] + fp[idx], tp[idx], self.m, level, delta)
        if best < 0:
            return 0.0, math.inf, 0, 0, k
        j = idx[best]
        return eps, float(self._roc.thresholds[j]), int(tp[j] + fp[j]), int(tp[j]), k

    def epsilon_one_run(self, significance: float, delta: float,
                        threshold_strategy: ThresholdStrategy = "bonferroni", *,
                        bonferroni_candidates: BonferroniCandidates = "hull",
                        seed: int = 0) -> EpsilonLowerBound:
        """One-run ε lower bound (Steinke et al. 2023) with a corrected threshold choice.

        ``threshold_strategy="bonferroni"`` tests each candidate at significance / K
        (``bonferroni_candidates``: ``"hull"``, jax_privacy's choice, or ``"all"``, the strict
        one); ``"split"`` picks the threshold on a ``seed``-ed random half and bounds on the other.
        ``float(result)`` is ε_LB; ``result.ceiling`` is the perfect-attack cap beside it.
        """
        significance = _check_open_unit("significance", significance)
        delta = _check_open_unit("delta", delta)
        if bonferroni_candidates not in ("hull", "all"):
            raise TunelabError(f"bonferroni_candidates must be 'hull' or 'all', got {bonferroni_candidates!r}")

        if threshold_strategy == "bonferroni":
            eps, thr, r, v, k = self._search(significance, delta, bonferroni_candidates, correct=True)
            return EpsilonLowerBound(
                epsilon=eps, ceiling=epsilon_ceiling(self.m, delta, significance, n_in=self.n_members),
                m=self.m, n_members=self.n_members, delta=delta, significance=significance,
                corrected_significance=significance / k, threshold_strategy=f"bonferroni ({bonferroni_candidates}, K={k})",
                n_candidates=k, threshold=thr, n_guesses=r, n_correct=v, warning=self.imbalance_warning())

        if threshold_strategy == "split":
            if self.m % 2:
                raise TunelabError(f"threshold_strategy 'split' halves the canaries: m must be even, got m={self.m}")
            # A seeded random half of all m canaries (membership plays no part in the draw, so each
            # half keeps the fair-coin membership the one-run test assumes).
            scores = np.concatenate([self.in_scores, self.out_scores])
            member = np.arange(self.m) < self.n_members
            perm = np.random.default_rng(seed).permutation(self.m)
            pick, held = perm[: self.m // 2], perm[self.m // 2:]
            if member[pick].all() or not member[pick].any() or member[held].all() or not member[held].any():
                raise TunelabError("threshold_strategy 'split': a half has no members or no non-members "
                                   f"(m={self.m}, {self.n_members} members); use 'bonferroni' or more canaries")
            choose = CanaryScoreAuditor(scores[pick][member[pick]], scores[pick][~member[pick]])
            held_in, held_out = scores[held][member[held]], scores[held][~member[held]]
            # The choosing half only picks a threshold, so it may use the uncorrected level; the
            # held half never influenced the choice, so one fixed threshold there needs no correction.
            _, thr, *_ = choose._search(significance, delta, "hull", correct=False)
            v = int(np.count_nonzero(held_in >= thr))
            r = v + int(np.count_nonzero(held_out >= thr))
            m_held = held_in.size + held_out.size
            eps = _epsilon_for_counts(m_held, r, v, significance, delta) if r else 0.0
            return EpsilonLowerBound(
                epsilon=eps, ceiling=epsilon_ceiling(m_held, delta, significance, n_in=held_in.size),
                m=m_held, n_members=int(held_in.size), delta=delta, significance=significance,
                corrected_significance=significance, threshold_strategy="split", n_candidates=1,
                threshold=thr, n_guesses=r, n_correct=v, warning=self.imbalance_warning())

        raise TunelabError(f"threshold_strategy must be 'bonferroni' or 'split', got {threshold_strategy!r}")

    # --------------------------------------------------------------- report

    def summary(self, delta: float, significance: float = 0.05,
                threshold_strategy: ThresholdStrategy = "bonferroni", *,
                fprs: tuple[float, ...] = DEFAULT_FPRS,
                bootstrap: BootstrapParams | None = BootstrapParams(),
                bonferroni_candidates: BonferroniCandidates = "hull", seed: int = 0) -> dict[str, Any]:
        """One JSON-ready dict: TPR@FPR with CIs (refused when under-powered), AUROC, ε_LB beside its ceiling.

        ``bootstrap=None`` skips the CIs. A TPR@FPR entry has ``tpr: None`` and a ``refused`` reason
        when there are fewer than :meth:`min_non_members` non-members for that FPR.
        """
        eps = self.epsilon_one_run(significance, delta, threshold_strategy,
                                   bonferroni_candidates=bonferroni_candidates, seed=seed)
        cis = self.confidence_intervals(fprs, bootstrap) if bootstrap is not None else {}
        rows = []
        for f in fprs:
            need = self.min_non_members(f)
            ci = cis.get(f"tpr@{f:g}")
            if self.n_non_members < need:
                rows.append({"fpr": f, "tpr": None, "ci": None,
                             "refused": (f"{self.n_non_members} non-members: FPR {f:g} allows fewer than one "
                                         f"false positive (needs >= {need})")})
            else:
                rows.append({"fpr": f, "tpr": self.tpr_at_given_fpr(f), "ci": list(ci) if ci else None, "refused": None})
        return {
            "n_members": self.n_members,
            "n_non_members": self.n_non_members,
            "m": self.m,
            "tpr_at_fpr": rows,
            "auroc": {"value": self.attack_auroc(), "ci": list(cis["auroc"]) if cis else None},
            "epsilon_lb": eps.epsilon,
            "epsilon_ceiling": eps.ceiling,
            "epsilon": eps.as_dict(),
            "delta": delta,
            "significance": significance,
            "threshold_strategy": threshold_strategy,
            "warning": eps.warning,
            "bootstrap": asdict(bootstrap) if bootstrap is not None else None,
        }


__all__ = ["DEFAULT_FPRS", "BootstrapParams", "CanaryScoreAuditor", "EpsilonLowerBound", "RocData",
           "epsilon_ceiling", "one_run_p_value"]
