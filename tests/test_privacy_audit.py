"""The canary auditor: golden one-run ε values, the perfect-attack ceiling, ROC metrics, validation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from tunelab.errors import TunelabError
from tunelab.privacy import BootstrapParams, CanaryScoreAuditor, epsilon_ceiling, one_run_p_value


def quantile_scores(shift: float, n: int) -> np.ndarray:
    """N(shift, 1) "built deterministically": normal quantiles at the midpoints (k + 1/2) / n (as jax_privacy)."""
    return scipy.stats.norm.ppf((np.arange(n) + 0.5) / n) + shift


OK = ([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])  # a valid, balanced little audit


@pytest.fixture(scope="module")
def golden() -> dict[float, CanaryScoreAuditor]:
    return {s: CanaryScoreAuditor(quantile_scores(s, 10_000), quantile_scores(0, 10_000)) for s in (0, 1, 2, 4)}


# ----------------------------------------------------------------------------- ε lower bound

@pytest.mark.parametrize("shift, expected", [(1, 1.133460), (2, 2.311945), (4, 4.395568)])
def test_golden_vectors_match_jax_privacy(golden, shift, expected):
    bound = golden[shift].epsilon_one_run(0.05, 1e-6)  # default: Bonferroni over the ROC hull
    assert float(bound) == pytest.approx(expected, rel=1e-5)
    assert bound.epsilon < bound.ceiling and bound.m == 20_000
    assert bound.corrected_significance == pytest.approx(0.05 / bound.n_candidates)
    assert f"{bound.ceiling:.6f}" in str(bound)  # the ceiling is printed beside every ε_LB


@pytest.mark.parametrize("kwargs", [{"threshold_strategy": "bonferroni"}, {"threshold_strategy": "split"},
                                    {"threshold_strategy": "bonferroni", "bonferroni_candidates": "all"}])
def test_null_scores_give_zero(golden, kwargs):
    assert golden[0].epsilon_one_run(0.05, 1e-6, **kwargs).epsilon == 0.0


def test_strict_bonferroni_is_more_conservative(golden):
    # Dividing by every distinct threshold (20 001) leaves 2.5e-6 per test, below the δ term's floor
    # (≈ 2mδ/v with 2mδ = 0.04): the strict correction proves nothing on these vectors.
    assert golden[4].epsilon_one_run(0.05, 1e-6, bonferroni_candidates="all").epsilon == 0.0


@pytest.mark.parametrize("m, expected", [(200, 3.49), (500, 4.40), (1000, 5.09), (2000, 5.76)])
def test_ceiling_table(m, expected):
    # The brief's table lists 4.41 for m = 500; its own formula gives 4.404769 (checked against an
    # sf-difference + brentq implementation too), so 4.40 is asserted here. The other three agree.
    assert round(epsilon_ceiling(m, 1e-5, 0.05), 2) == expected


def test_ceiling_is_what_a_perfect_attack_gets():
    auditor = CanaryScoreAuditor(np.arange(100) + 1000.0, np.arange(100))
    bound = auditor.epsilon_one_run(0.05, 1e-5, bonferroni_candidates="hull")
    assert bound.ceiling == pytest.approx(epsilon_ceiling(200, 1e-5, 0.05))
    # Perfect separation has 3 hull vertices, so the corrected bound is the ceiling at 0.05 / 3.
    assert bound.n_candidates == 3 and bound.n_guesses == bound.n_correct == 100
    assert bound.epsilon < bound.ceiling


@pytest.mark.parametrize("m, r, v", [(10, 1, 1), (100, 10, 9), (1000, 100, 90), (1000, 100, 100), (100, 10, 0)])
@pytest.mark.parametrize("eps", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("delta", [1e-6, 1e-2])
def test_p_value_matches_the_formula_term_by_term(m, r, v, eps, delta):
    q = np.exp(eps) / (1 + np.exp(eps))
    beta = sum(scipy.stats.binom.pmf(k, r, q) for k in range(v, r + 1))
    alpha = max((sum(scipy.stats.binom.pmf(k, r, q) for k in range(v - i, v)) / i for i in range(1, v + 1)), default=0)
    expected = min(1.0, beta + 2 * m * delta * alpha) if v else 1.0
    assert one_run_p_value(m, r, v, eps, delta) == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("ins, outs, hull_size", [
    ([1.5, 2.5, 0.5, 3.5], [0, 3, 2, 1], 4),  # jax_privacy's threshold-enumeration cases
    ([0, 1, 1, 2], [0, 0, 1, 1], 4),
    ([0, 0, 1, 2], [0, 1, 1, 1], 3),
    ([0, 0, 0, 0], [0, 0, 0, 0], 2),
])
def test_bonferroni_counts_roc_hull_vertices(ins, outs, hull_size):
    bound = CanaryScoreAuditor(ins, outs).epsilon_one_run(0.05, 1e-5)
    assert bound.n_candidates == hull_size
    assert CanaryScoreAuditor(ins, outs).epsilon_one_run(0.05, 1e-5, bonferroni_candidates="all").n_candidates == \
        len(set(ins) | set(outs)) + 1


def test_split_is_seeded_and_uses_the_held_half(golden):
    a, b = (golden[2].epsilon_one_run(0.05, 1e-6, "split", seed=7) for _ in range(2))
    assert a == b and a.m == 10_000 and a.n_candidates == 1 and a.corrected_significance == 0.05
    assert 0 < a.epsilon < a.ceiling == pytest.approx(epsilon_ceiling(10_000, 1e-6, 0.05, n_in=a.n_members))
    assert 4_800 < a.n_members < 5_200  # a random half of all canaries, not a half of each side


def test_split_needs_an_even_m():
    with pytest.raises(TunelabError, match="m must be even, got m=5"):
        CanaryScoreAuditor([1.0, 2.0, 3.0], [0.0, 1.0]).epsilon_one_run(0.05, 1e-5, "split")


@settings(max_examples=25, deadline=None)
@given(n=st.integers(20, 120), s1=st.floats(0, 6), s2=st.floats(0, 6), delta=st.sampled_from([1e-6, 1e-5, 1e-3]))
def test_epsilon_monotone_in_shift(n, s1, s2, delta):
    # Strict Bonferroni (K fixed by the scores alone). The default hull correction is *not* exactly
    # monotone: K moves with the scores, and ε_LB can dip by a few hundredths (module docstring).
    lo, hi = sorted((s1, s2))
    eps = [CanaryScoreAuditor(quantile_scores(s, n), quantile_scores(0, n))
           .epsilon_one_run(0.05, delta, bonferroni_candidates="all").epsilon for s in (lo, hi)]
    assert eps[0] <= eps[1] + 1e-8


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 150), s=st.floats(0, 12), delta=st.sampled_from([1e-6, 1e-5, 1e-2]),
       significance=st.sampled_from([0.01, 0.05, 0.2]), seed=st.integers(0, 100))
def test_epsilon_never_exceeds_ceiling(n, s, delta, significance, seed):
    auditor = CanaryScoreAuditor(quantile_scores(s, n), quantile_scores(0, n))
    cap = epsilon_ceiling(2 * n, delta, significance)
    for bound in (auditor.epsilon_one_run(significance, delta),
                  auditor.epsilon_one_run(significance, delta, bonferroni_candidates="all")):
        assert 0 <= bound.epsilon <= bound.ceiling == pytest.approx(cap)
    # A split is bounded by its held half's ceiling (at large δ that can exceed the full one: 2mδ).
    try:
        split = auditor.epsilon_one_run(significance, delta, "split", seed=seed)
    except TunelabError as exc:  # a few canaries: a random half may hold only one side
        assert "a half has no members or no non-members" in str(exc) and n < 20
        return
    assert 0 <= split.epsilon <= split.ceiling == pytest.approx(
        epsilon_ceiling(split.m, delta, significance, n_in=split.n_members))


@settings(max_examples=25, deadline=None)
@given(outs=st.lists(st.floats(-100, 100), min_size=2, max_size=60), s=st.floats(0, 5), seed=st.integers(0, 100),
       gap=st.floats(1e-3, 50))
def test_zero_when_members_score_below(outs, s, seed, gap):
    # Equal numbers, as the one-run test assumes (see test_unbalanced_counts_are_flagged).
    below = CanaryScoreAuditor(min(outs) - gap - np.arange(len(outs)), outs)  # every member below every non-member
    shifted = CanaryScoreAuditor(quantile_scores(-s, 80), quantile_scores(0, 80))
    for auditor in (below, shifted):
        for strategy in ("bonferroni", "split"):
            try:
                assert auditor.epsilon_one_run(0.05, 1e-5, strategy, seed=seed).epsilon == 0.0
            except TunelabError as exc:  # a few canaries: a random half may hold only one side
                assert "a half has no members" in str(exc) and auditor.m < 40


def test_unbalanced_counts_are_flagged():
    # 10 members all *below* 2 non-members: guessing "in" for everyone is right 10/12 of the time,
    # which the fair-coin test reads as evidence. The result says so instead of hiding it.
    bound = CanaryScoreAuditor(np.arange(10) - 20.0, [0.0, 1.0]).epsilon_one_run(0.05, 1e-5)
    assert bound.warning and "10 members vs 2 non-members" in bound.warning and "warning" in str(bound)
    assert CanaryScoreAuditor(*OK).epsilon_one_run(0.05, 1e-5).warning is None


# ----------------------------------------------------------------------------- ROC metrics

def test_tpr_at_fpr_hand_built():
    auditor = CanaryScoreAuditor([1, 3], [0, 2])
    # ROC points (FPR, TPR): (0, 0) (0, .5) (.5, .5) (.5, 1) (1, 1); no interpolation between them.
    assert [auditor.tpr_at_given_fpr(f) for f in (0.1, 0.25, 0.5, 0.75)] == [0.5, 0.5, 1.0, 1.0]
    ties = CanaryScoreAuditor([1, 1, 2], [1, 0, 0, 0])  # threshold 1 takes all three members and one non-member
    assert ties.tpr_at_given_fpr(0.2) == pytest.approx(1 / 3) and ties.tpr_at_given_fpr(0.25) == 1.0
    assert ties.attack_auroc() == pytest.approx((3 * 3 + 0.5 * 2 + 1 * 1) / 12)  # 2 ties between 1s count 1/2
    roc = ties.roc()
    assert roc.thresholds[0] == np.inf and list(roc.fpr) == [0, 0, 0.25, 1] and list(roc.tpr) == [0, 1 / 3, 1, 1]


@settings(max_examples=40, deadline=None)
@given(ins=st.lists(st.integers(0, 6), min_size=1, max_size=25), outs=st.lists(st.integers(0, 6), min_size=1, max_size=25),
       fpr=st.floats(0.01, 0.99))
def test_tpr_and_auroc_match_brute_force(ins, outs, fpr):
    auditor = CanaryScoreAuditor(ins, outs)
    ins_a, outs_a = np.asarray(ins), np.asarray(outs)
    best = max(np.mean(ins_a >= t) for t in [*set(ins) | set(outs), np.inf] if np.mean(outs_a >= t) <= fpr)
    assert auditor.tpr_at_given_fpr(fpr) == pytest.approx(best)
    pairs = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(ins, outs)]
    labels = [1] * len(ins) + [0] * len(outs)
    assert auditor.attack_auroc() == pytest.approx(np.mean(pairs)) == pytest.approx(roc_auc_score(labels, ins + outs))


def test_bootstrap_ci_contains_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    auditor = CanaryScoreAuditor(rng.normal(1, 1, 1000), rng.normal(0, 1, 1000))
    params = BootstrapParams(num_samples=200, seed=3)
    ci = auditor.confidence_intervals(bootstrap=params)
    assert ci == auditor.confidence_intervals(bootstrap=params)
    assert ci != auditor.confidence_intervals(bootstrap=BootstrapParams(num_samples=200, seed=4))
    for f in (0.001, 0.01, 0.1):
        lo, hi = ci[f"tpr@{f:g}"]
        assert lo <= auditor.tpr_at_given_fpr(f) <= hi
    assert ci["auroc"][0] <= auditor.attack_auroc() <= ci["auroc"][1]


def test_summary_bundles_everything_and_refuses_underpowered_fpr():
    rng = np.random.default_rng(1)
    auditor = CanaryScoreAuditor(rng.normal(2, 1, 150), rng.normal(0, 1, 150))
    out = auditor.summary(1e-5, bootstrap=BootstrapParams(num_samples=50, seed=0))
    rows = {row["fpr"]: row for row in out["tpr_at_fpr"]}
    assert rows[0.001]["tpr"] is None and "needs >= 1000" in rows[0.001]["refused"]  # 150 < 1000 non-members
    assert rows[0.01]["tpr"] == auditor.tpr_at_given_fpr(0.01) and rows[0.01]["refused"] is None
    assert rows[0.1]["ci"] is not None and out["auroc"]["ci"] is not None
    assert out["epsilon_lb"] == auditor.epsilon_one_run(0.05, 1e-5).epsilon
    assert out["epsilon_ceiling"] == pytest.approx(epsilon_ceiling(300, 1e-5, 0.05))
    assert (out["m"], out["delta"], out["significance"], out["threshold_strategy"]) == (300, 1e-5, 0.05, "bonferroni")
    assert out["warning"] is None
    small = CanaryScoreAuditor(rng.normal(2, 1, 99), rng.normal(0, 1, 99)).summary(1e-5, bootstrap=None)
    assert small["tpr_at_fpr"][1]["tpr"] is None and "needs >= 100" in small["tpr_at_fpr"][1]["refused"]
    assert CanaryScoreAuditor.min_non_members(0.01) == 100 and CanaryScoreAuditor.min_non_members(0.001) == 1000


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("call", [
    lambda: CanaryScoreAuditor([1.0], []),  # fewer than 2 canaries
    lambda: CanaryScoreAuditor([], [1.0, 2.0]),  # empty side
    lambda: CanaryScoreAuditor([1.0, 2.0], []),
    lambda: CanaryScoreAuditor([1.0, np.nan], [0.0]),  # non-finite
    lambda: CanaryScoreAuditor([1.0], [0.0, np.inf]),
    lambda: CanaryScoreAuditor([[1.0, 2.0]], [0.0]),  # not 1-D
    lambda: CanaryScoreAuditor(["a"], [0.0]),
    lambda: CanaryScoreAuditor(*OK).tpr_at_given_fpr(0.0),  # FPR outside (0, 1)
    lambda: CanaryScoreAuditor(*OK).tpr_at_given_fpr(1.0),
    lambda: CanaryScoreAuditor(*OK).tpr_at_given_fpr(float("nan")),
    lambda: CanaryScoreAuditor(*OK).summary(1e-5, fprs=(0.01, 1.5)),
    lambda: CanaryScoreAuditor(*OK).epsilon_one_run(0.05, 0.0),  # δ <= 0 or >= 1
    lambda: CanaryScoreAuditor(*OK).epsilon_one_run(0.05, 1.0),
    lambda: CanaryScoreAuditor(*OK).epsilon_one_run(0.0, 1e-5),  # significance outside (0, 1)
    lambda: CanaryScoreAuditor(*OK).epsilon_one_run(1.0, 1e-5),
    lambda: CanaryScoreAuditor([1.0, 2.0], [0.0]).epsilon_one_run(0.05, 1e-5, "split"),  # too few for a split
    lambda: CanaryScoreAuditor(*OK).epsilon_one_run(0.05, 1e-5, "max"),  # unknown strategy
    lambda: CanaryScoreAuditor(*OK).epsilon_one_run(0.05, 1e-5, bonferroni_candidates="some"),
    lambda: epsilon_ceiling(1, 1e-5, 0.05),
    lambda: epsilon_ceiling(200, 0.0, 0.05),
    lambda: epsilon_ceiling(200, 1e-5, 1.5),
    lambda: BootstrapParams(num_samples=1),
    lambda: BootstrapParams(confidence=1.0),
])
def test_bad_input_is_one_line_tunelab_error(call):
    with pytest.raises(TunelabError) as info:
        call()
    assert "\n" not in str(info.value) and str(info.value)
