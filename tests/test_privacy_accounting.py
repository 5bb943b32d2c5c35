"""Accounting on dp-accounting: the spec's calibration values, round trips, pure ε-DP, bad input."""

from __future__ import annotations

import pytest

from tunelab.errors import TunelabError
from tunelab.privacy.accounting import Ledger, calibrate_noise, pure_laplace_epsilon, spent_epsilon

Q, T, DELTA = 32 / 1000, 93, 1e-5  # N = 1000, B = 32, 3 epochs


@pytest.mark.parametrize("eps, sigma", [(1, 1.4986), (4, 0.7822), (8, 0.5988)])
def test_gaussian_calibration_matches_the_spec(eps, sigma):
    assert calibrate_noise("gaussian", Q, T, eps, DELTA) == pytest.approx(sigma, abs=1e-4)


@pytest.mark.parametrize("eps, b", [(1, 1.112), (4, 0.401)])
def test_laplace_calibration_matches_the_spec(eps, b):
    assert calibrate_noise("laplace", Q, T, eps, DELTA) == pytest.approx(b, abs=1e-3)


@pytest.mark.parametrize("mechanism", ["gaussian", "laplace"])
def test_calibrated_noise_spends_the_target(mechanism):
    noise = calibrate_noise(mechanism, Q, T, 4.0, DELTA)
    assert spent_epsilon(mechanism, Q, T, noise, DELTA) == pytest.approx(4.0, abs=1e-3)
    assert spent_epsilon(mechanism, Q, T, noise * 1.5, DELTA) < 4.0  # more noise, less ε


def test_rdp_is_looser_than_pld_and_refuses_laplace():
    sigma = calibrate_noise("gaussian", Q, T, 4.0, DELTA)
    assert spent_epsilon("gaussian", Q, T, sigma, DELTA, "rdp") > spent_epsilon("gaussian", Q, T, sigma, DELTA)
    with pytest.raises(TunelabError, match="RDP accountant cannot"):
        spent_epsilon("laplace", Q, T, 1.0, DELTA, "rdp")


def test_pure_laplace_closed_form_round_trip():
    b = calibrate_noise("laplace", Q, T, 1.0, 0.0)
    assert pure_laplace_epsilon(Q, T, b) == pytest.approx(1.0) == spent_epsilon("laplace", Q, T, b, 0.0)
    assert pure_laplace_epsilon(1.0, 1, 0.5) == pytest.approx(2.0)  # no sampling, one step: ε = 1/b


@pytest.mark.parametrize("call, fragment", [
    (lambda: calibrate_noise("gaussian", Q, T, 0.0, DELTA), "--target-epsilon must be > 0"),
    (lambda: calibrate_noise("gaussian", Q, T, 1.0, 0.0), "--target-delta must be in (0, 1)"),
    (lambda: calibrate_noise("uniform", Q, T, 1.0, DELTA), "unknown noise 'uniform'"),
    (lambda: calibrate_noise("gaussian", 1.5, T, 1.0, DELTA), "sampling rate"),
    (lambda: spent_epsilon("gaussian", Q, 0, 1.0, DELTA), ">= 1 step"),
    (lambda: spent_epsilon("gaussian", Q, T, 0.0, DELTA), "noise multiplier must be > 0"),
    (lambda: spent_epsilon("gaussian", Q, T, 1.0, DELTA, "moments"), "unknown accountant"),
])
def test_bad_input(call, fragment):
    with pytest.raises(TunelabError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_ledger_states_the_neighbouring_relation():
    record = Ledger("dp-sgd (gaussian)", Q, 32, 1000, 0.78, 1.0, T, "pld", DELTA, 4.0).as_dict()
    assert record["neighbouring"].startswith("add/remove") and record["private_metrics_logged"] is False


def test_targets_below_the_accountants_resolution_are_refused():
    with pytest.raises(TunelabError, match="below what the PLD accountant resolves"):
        calibrate_noise("gaussian", Q, T, 1e-4, DELTA)
    assert calibrate_noise("laplace", Q, T, 1e-4, 0.0) > 0  # the closed form has no resolution limit


def test_pld_refuses_noise_its_grid_cannot_hold():
    with pytest.raises(TunelabError, match="does not fit in memory"):
        spent_epsilon("gaussian", Q, T, 0.05, DELTA)
    with pytest.raises(TunelabError, match="out of the PLD accountant's reach"):
        calibrate_noise("gaussian", Q, T, 1000.0, DELTA)  # only σ < 0.3 spends that much
    assert spent_epsilon("gaussian", Q, T, 0.05, DELTA, "rdp") > 100  # RDP has no grid
