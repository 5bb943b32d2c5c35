"""Power of the Default MoE vs top-k comparison, from the recorded paired differences (no training).

Recorded in docs/pretraining.md (3 paired seeds each): (a) straight-through Δ = +0.0004 ± 0.0153,
(a') forward, renormalised gates Δ = -0.0011 ± 0.0241 (per seed -0.023, -0.005, +0.025).
Prints, for a two-sided paired t-test at alpha 0.05, the smallest effect 3 seeds resolve with 80%
power and the seeds needed for a range of effect sizes (the paper's size at this scale is unknown).
"""

from __future__ import annotations

from scipy import optimize, stats

RECORDED = {"(a) straight-through": 0.0153, "(a') forward, renormalised": 0.0241}  # sd of paired Δ, nats/byte
ALPHA, POWER = 0.05, 0.80


def power(effect: float, sd: float, n: int) -> float:
    """Power of the two-sided paired t-test with n pairs (noncentral t)."""
    df, nc = n - 1, effect / sd * n**0.5
    crit = stats.t.ppf(1 - ALPHA / 2, df)
    # lower tail P(T < -crit; nc) written as P(T > crit; -nc): scipy's nct.cdf returns NaN there for some nc
    return float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc))


def seeds_needed(effect: float, sd: float) -> int:
    n = 2
    while power(effect, sd, n) < POWER:
        n += 1
    return n


def mde(sd: float, n: int) -> float:
    """Smallest effect with 80% power at n pairs (the root of power(effect) = 80%)."""
    return float(optimize.brentq(lambda effect: power(effect, sd, n) - POWER, 0.0, 100 * sd, xtol=1e-12))


if __name__ == "__main__":
    for name, sd in RECORDED.items():
        print(f"{name}: sd of paired delta {sd:.4f}; 80%-power MDE with 3 seeds = {mde(sd, 3):.4f} nats, "
              f"with 10 = {mde(sd, 10):.4f}, with 30 = {mde(sd, 30):.4f}")
        for effect in (0.005, 0.01, 0.02, 0.05):
            print(f"   effect {effect:.3f} nats -> {seeds_needed(effect, sd)} paired seeds")
