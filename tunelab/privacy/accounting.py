"""Privacy accounting for DP training, on Google's dp-accounting (no hand-written accountant).

A DP run is ``steps`` compositions of a Poisson-subsampled mechanism (sampling rate ``q = B/N``)
that adds noise to a clipped sum: Gaussian ``N(0, (σC)²)`` (DP-SGD, Gaussian DP-ZO) or Laplace
``Lap(bC)`` (Laplace DP-ZO). ``noise`` is σ or b in units of the clip norm C. The neighbouring
relation is **add/remove one example** (sensitivity C); replace-one would need 2C and is not mixed
in.

* :func:`spent_epsilon`: ε after ``steps`` at ``delta``: PLD (default) or RDP. Laplace at
  ``delta = 0`` (pure ε-DP) uses the closed form ``ε = T · log(1 + q(e^{1/b} − 1))``: PLD returns
  inf there and RDP rejects subsampled Laplace.
* :func:`calibrate_noise`: the smallest σ or b that spends at most ``target_epsilon`` at ``delta``
  (``dp_accounting.calibrate_dp_mechanism``); a target the steps cannot reach is a one-line error.
* :class:`Ledger`: what a run records in ``tunelab.json``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from tunelab.errors import TunelabError
from tunelab.privacy.train_config import ACCOUNTANTS
from tunelab.privacy.train_config import NOISES as MECHANISMS

NEIGHBOURING = "add/remove one example (sensitivity C)"
PLD_RESOLUTION = 1e-4  # dp-accounting's default value_discretization_interval
MIN_EPSILON = 10 * PLD_RESOLUTION  # smaller targets come back as numerically meaningless noise levels
# Below this noise (σ or b, in units of C) PLD's grid outgrows memory (σ = 0.05 at q = 0.03, T = 158
# asks for TiBs; 0.1 takes 17 s) while ε is already in the hundreds: such runs are refused for PLD.
PLD_MIN_NOISE = 0.3


def _check(mechanism: str, q: float, steps: int, accountant: str) -> None:
    if mechanism not in MECHANISMS:
        raise TunelabError(f"unknown noise '{mechanism}'; choose one of: {', '.join(MECHANISMS)}")
    if accountant not in ACCOUNTANTS:
        raise TunelabError(f"unknown accountant '{accountant}'; choose one of: {', '.join(ACCOUNTANTS)}")
    if not 0.0 < q <= 1.0:
        raise TunelabError(f"sampling rate q = batch/N must be in (0, 1], got {q}")
    if steps < 1:
        raise TunelabError(f"DP training needs >= 1 step, got {steps}")


def dp_event(mechanism: str, q: float, steps: int, noise: float) -> Any:
    """The dp-accounting event of ``steps`` Poisson-sampled Gaussian/Laplace steps."""
    import dp_accounting

    inner = dp_accounting.GaussianDpEvent(noise) if mechanism == "gaussian" else dp_accounting.LaplaceDpEvent(noise)
    return dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, inner), steps)


def _accountant(name: str, mechanism: str) -> Any:
    from dp_accounting import pld, rdp

    if name == "rdp":
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)  # per-order convergence chatter, not errors
        if mechanism == "laplace":
            raise TunelabError("the RDP accountant cannot account for Poisson-sampled Laplace noise; use --accountant pld")
        return rdp.RdpAccountant()
    return pld.PLDAccountant()


def pure_laplace_epsilon(q: float, steps: int, noise: float) -> float:
    """Pure ε-DP (δ = 0) of ``steps`` Poisson-sampled Laplace steps with scale ``noise``·C."""
    return steps * math.log1p(q * math.expm1(1.0 / noise))


def spent_epsilon(mechanism: str, q: float, steps: int, noise: float, delta: float, accountant: str = "pld") -> float:
    """ε spent after ``steps`` at ``delta`` (add/remove neighbours)."""
    _check(mechanism, q, steps, accountant)
    if not noise > 0:
        raise TunelabError(f"the noise multiplier must be > 0, got {noise}")
    if delta == 0.0 and mechanism == "laplace":
        return pure_laplace_epsilon(q, steps, noise)
    if not 0.0 < delta < 1.0:
        raise TunelabError(f"δ must be in (0, 1) for {mechanism} noise, got {delta}")
    if accountant == "pld" and noise < PLD_MIN_NOISE:
        raise TunelabError(f"noise multiplier {noise:g} < {PLD_MIN_NOISE:g}: ε would be in the tens or more and the PLD "
                           "accountant's grid for it does not fit in memory; use more noise, or --accountant rdp (gaussian)")
    acc = _accountant(accountant, mechanism)
    acc.compose(dp_event(mechanism, q, steps, noise))
    return float(acc.get_epsilon(delta))


def calibrate_noise(mechanism: str, q: float, steps: int, target_epsilon: float, delta: float,
                    accountant: str = "pld") -> float:
    """The noise multiplier (σ or b, in units of C) that spends ``target_epsilon`` at ``delta``."""
    import dp_accounting

    _check(mechanism, q, steps, accountant)
    if not target_epsilon > 0:
        raise TunelabError(f"--target-epsilon must be > 0, got {target_epsilon}")
    if target_epsilon < MIN_EPSILON and not (delta == 0.0 and mechanism == "laplace"):
        raise TunelabError(f"--target-epsilon {target_epsilon:g} is below what the {accountant.upper()} accountant resolves "
                           f"(PLD discretises the privacy loss in steps of {PLD_RESOLUTION:g}); use ε ≥ {MIN_EPSILON:g}")
    if delta == 0.0 and mechanism == "laplace":
        # closed form inverted: e^{1/b} = 1 + (e^{ε/T} − 1)/q
        return 1.0 / math.log1p(math.expm1(target_epsilon / steps) / q)
    if not 0.0 < delta < 1.0:
        raise TunelabError(f"--target-delta must be in (0, 1) for {mechanism} noise, got {delta}")
    out_of_reach = (f"(ε={target_epsilon:g}, δ={delta:g}) is out of the {accountant.upper()} accountant's reach with "
                    f"{steps} steps at q={q:g} for {mechanism} noise")
    try:
        # PLD's search starts at PLD_MIN_NOISE: a target only smaller noise reaches has no bracket (→ out of reach)
        bracket = dp_accounting.LowerEndpointAndGuess(PLD_MIN_NOISE, 1.0) if accountant == "pld" else None
        noise = float(dp_accounting.calibrate_dp_mechanism(
            lambda: _accountant(accountant, mechanism), lambda s: dp_event(mechanism, q, steps, s), target_epsilon, delta,
            bracket_interval=bracket))
    except (ValueError, dp_accounting.mechanism_calibration.NoBracketIntervalFoundError) as exc:  # no bracket reaches it
        hint = (f"PLD searches noise ≥ {PLD_MIN_NOISE:g} only: for a target this large use --accountant rdp"
                if accountant == "pld" else "use fewer steps or another target")
        raise TunelabError(f"{out_of_reach}: {hint}") from None
    spent = spent_epsilon(mechanism, q, steps, noise, delta, accountant)
    if not spent <= target_epsilon * (1 + 1e-3):  # the search ended where discretisation cannot certify the target
        raise TunelabError(f"{out_of_reach}: the closest noise ({noise:.4g}) spends ε = {spent:.4g}; "
                           "use fewer steps or a larger target")
    return noise


@dataclass(frozen=True)
class Ledger:
    """A DP run's privacy record (``tunelab.json``: ``dp``)."""

    mechanism: str
    sample_rate: float  # q: Poisson sampling rate, B/N
    expected_batch_size: int
    examples: int
    noise_multiplier: float  # σ (gaussian) or b (laplace), in units of clip
    clip: float
    steps: int
    accountant: str
    delta: float
    epsilon: float  # spent over ``steps``
    target_epsilon: float | None = None
    neighbouring: str = NEIGHBOURING
    private_metrics_logged: bool = False  # the training loss was logged (a side channel the ε does not cover)
    outside_guarantee: tuple[str, ...] = ()  # what else shaped the run (e.g. a mask from a non-private run)
    randomness: str = "noise and sampling from OS entropy, not recorded"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


__all__ = ["ACCOUNTANTS", "MECHANISMS", "NEIGHBOURING", "Ledger", "calibrate_noise", "dp_event", "pure_laplace_epsilon",
           "spent_epsilon"]
