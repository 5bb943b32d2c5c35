"""Scaling-law fits (`tunelab scaling fit`): approach 3 recovers known laws, the analytic gradient
is right, the guard flags null and collapsed fits, approach 1's hull, FLOPs counting, the
compute-optimal closed form, bad tables as one line, and the report section."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import huber as scipy_huber
from scipy.special import logsumexp

from tests.test_bad_input import assert_one_line, run_cli
from tests.test_report import assert_self_contained, section_ids, visible
from tunelab.errors import TunelabError
from tunelab.report import render_report
from tunelab.scaling import (
    DenseShape,
    Law,
    approach1,
    bootstrap_laws,
    compute_optimal,
    degeneracy,
    dense_params,
    fit_law,
    flops_per_token,
    grid_starts,
    lower_hull,
    objective,
)
from tunelab.scaling.approach3 import percentile_ci

# Chinchilla's law (Hoffmann et al., approach 3): the synthetic truth of most tests.
CHINCHILLA = Law(("N", "D"), alpha=(0.34, 0.28), a=(math.log(406.4), math.log(410.7)), e=math.log(1.69))
SMALL_GRID = dict(exponents=(0.5, 1.0), coefficients=(5.0, 10.0), irreducible=(0.0, 0.5))  # 32 starts for (N, D)


def synthetic(law: Law, noise: float = 0.001, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 6 × 8 sweep of model sizes × token counts, losses from ``law`` with log-normal noise."""
    n, d = np.meshgrid(np.geomspace(2e7, 2e9, 6), np.geomspace(2e9, 2e11, 8), indexing="ij")
    x = np.column_stack([n.ravel(), d.ravel()])
    rng = np.random.default_rng(seed)
    return x, law.predict(x) * np.exp(rng.normal(0.0, noise, len(x)))


# --------------------------------------------------------------------------- approach 3
def test_recovers_a_known_law() -> None:
    x, loss = synthetic(CHINCHILLA)
    fit = fit_law(x, loss, ("N", "D"), delta=1e-3, starts=grid_starts(2, **SMALL_GRID))
    law = fit.law
    assert fit.converged and fit.n_starts == 32
    assert law.alpha == pytest.approx(CHINCHILLA.alpha, abs=0.02)
    assert law.E == pytest.approx(CHINCHILLA.E, rel=0.03)
    assert law.predict(x) == pytest.approx(CHINCHILLA.predict(x), rel=0.002)
    assert degeneracy(law, x, loss) == []
    near = fit.near_best["terms"][0]["alpha"]
    assert fit.near_best["n"] >= 1 and near[0] <= law.alpha[0] <= near[1]
    # The allocation at 1e22 FLOPs follows the recovered law closely.
    n_true, d_true = compute_optimal(CHINCHILLA, 1e22)
    n_fit, d_fit = compute_optimal(law, 1e22)
    assert n_fit == pytest.approx(n_true, rel=0.25) and d_fit == pytest.approx(d_true, rel=0.25)
    # Bootstrap refits give finite intervals around the truth's exponents.
    boot = bootstrap_laws(x, loss, fit, n=12, seed=1, starts=2)
    lo, hi = percentile_ci([b.alpha[0] for b in boot])
    assert len(boot) == 12 and lo - 0.02 <= CHINCHILLA.alpha[0] <= hi + 0.02


def test_recovers_the_general_form_over_three_columns() -> None:
    """L = E + A/width^a + B/depth^b + C/tokens^c (the Gemstones width-depth form)."""
    truth = Law(("width", "depth", "tokens"), alpha=(0.6, 0.4, 0.5), a=(math.log(60.0), math.log(3.0), math.log(3000.0)),
                e=math.log(1.8))
    w, L, d = np.meshgrid([256, 512, 1024, 2048], [4, 8, 16, 32], np.geomspace(1e9, 1e11, 5), indexing="ij")
    x = np.column_stack([w.ravel(), L.ravel(), d.ravel()])
    loss = truth.predict(x) * np.exp(np.random.default_rng(3).normal(0, 5e-4, len(x)))
    fit = fit_law(x, loss, truth.columns, delta=1e-3,
                  starts=grid_starts(3, exponents=(0.5,), coefficients=(2.0, 6.0), irreducible=(0.0, 0.5)))
    assert fit.law.alpha == pytest.approx(truth.alpha, abs=0.05)
    assert fit.law.E == pytest.approx(truth.E, rel=0.03)
    assert fit.law.to_dict()["terms"][1]["column"] == "depth"


def test_fit_is_the_same_with_worker_processes() -> None:
    x, loss = synthetic(CHINCHILLA, seed=2)
    starts = grid_starts(2, **SMALL_GRID)[:12]
    one = fit_law(x, loss, ("N", "D"), starts=starts, workers=1)
    two = fit_law(x, loss, ("N", "D"), starts=starts, workers=2)
    assert np.array_equal(one.law.theta, two.law.theta) and one.objective == two.objective


def _reference_objective(theta: np.ndarray, log_x: np.ndarray, log_loss: np.ndarray, delta: float) -> float:
    """The objective written with scipy's huber and logsumexp (as the Gemstones and Epoch code do)."""
    k = log_x.shape[1]
    terms = np.column_stack([theta[k:2 * k] - theta[:k] * log_x, np.full(len(log_x), theta[2 * k])])
    return float(np.sum(scipy_huber(delta, log_loss - logsumexp(terms, axis=1))))


def _finite_difference(theta: np.ndarray, log_x: np.ndarray, log_loss: np.ndarray, delta: float) -> np.ndarray:
    """Central differences with a step small enough that no residual moves by more than δ/100
    (a step straddling Huber's ±δ kink would blur the derivative, not test it)."""
    h = 0.01 * delta / float(np.abs(log_x).max())
    grad = np.empty_like(theta)
    for i in range(len(theta)):
        up, down = theta.copy(), theta.copy()
        up[i] += h
        down[i] -= h
        grad[i] = (objective(up, log_x, log_loss, delta)[0] - objective(down, log_x, log_loss, delta)[0]) / (2 * h)
    return grad


def _check_gradient(seed: int, k: int, delta: float) -> None:
    rng = np.random.default_rng(seed)
    log_x = np.log(np.geomspace(1e6, 1e11, 30))[:, None] + rng.normal(0, 1.0, (30, k))
    theta = np.concatenate([rng.uniform(0.1, 1.5, k), rng.uniform(0, 12, k), [rng.uniform(-1, 1)]])
    # Losses near the law's prediction: some residuals inside ±δ, some outside.
    log_loss = np.log(Law.from_theta(theta, [f"x{j}" for j in range(k)]).predict(np.exp(log_x)))
    log_loss += rng.normal(0, 3 * delta, 30)
    value, grad = objective(theta, log_x, log_loss, delta)
    assert value == pytest.approx(_reference_objective(theta, log_x, log_loss, delta), rel=1e-10)
    fd = _finite_difference(theta, log_x, log_loss, delta)
    assert grad == pytest.approx(fd, rel=1e-4, abs=1e-7 * max(1.0, float(np.abs(fd).max())))


@pytest.mark.parametrize("seed", range(6))
def test_gradient_matches_finite_differences(seed: int) -> None:
    _check_gradient(seed, k=2 + seed % 2, delta=(1e-3, 1e-2, 1e-1)[seed % 3])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 3), delta=st.sampled_from([1e-4, 1e-3, 1e-2]))
def test_gradient_matches_finite_differences_drawn(seed: int, k: int, delta: float) -> None:
    _check_gradient(seed, k, delta)


def test_null_data_is_flagged() -> None:
    """The loss does not depend on N or D: whatever the fit finds, the guard must say so."""
    x, _ = synthetic(CHINCHILLA)
    loss = 3.0 * np.exp(np.random.default_rng(5).normal(0, 0.01, len(x)))
    fit = fit_law(x, loss, ("N", "D"), starts=grid_starts(2, **SMALL_GRID))
    reasons = degeneracy(fit.law, x, loss)
    assert reasons, fit.law
    assert any("N" in r for r in reasons) and any("D" in r for r in reasons)


def test_collapsed_irreducible_loss_is_flagged() -> None:
    """Data from a law with no irreducible term: the fit drives E to 0 and the guard flags it."""
    truth = Law(("N", "D"), alpha=(0.3, 0.3), a=(math.log(400.0), math.log(900.0)), e=-10.0)
    x, loss = synthetic(truth, noise=1e-3)
    assert 1.0 < loss.min() < loss.max() < 5  # LM-like losses, but no floor
    fit = fit_law(x, loss, ("N", "D"), starts=grid_starts(2, **SMALL_GRID))
    assert fit.law.E < 0.05 * loss.min()
    assert any(r.startswith("E -> 0") for r in degeneracy(fit.law, x, loss))


def test_guard_names_each_kind_of_collapse() -> None:
    x, loss = synthetic(CHINCHILLA)
    good = CHINCHILLA
    assert degeneracy(good, x, loss) == []
    at_bound = Law(("N", "D"), alpha=(4.0, 0.28), a=good.a, e=good.e)
    assert any("upper bound" in r for r in degeneracy(at_bound, x, loss))
    constant = Law(("N", "D"), alpha=(0.0, 0.28), a=(0.0, good.a[1]), e=good.e)
    assert any("confounded with E" in r for r in degeneracy(constant, x, loss))
    exploded = Law(("N", "D"), alpha=good.alpha, a=(100.0, good.a[1]), e=good.e)
    assert any("exploded" in r for r in degeneracy(exploded, x, loss))


# --------------------------------------------------------------------------- compute-optimal allocation
@pytest.mark.parametrize("k", [6.0, 5.2])
def test_compute_optimal_matches_brute_force(k: float) -> None:
    """The closed form against minimising L(N, C/(kN)) over a fine grid of N under the budget."""
    budget = 3e21
    n_grid = np.logspace(6, 14, 400_001)
    losses = CHINCHILLA.predict(np.column_stack([n_grid, budget / (k * n_grid)]))
    n_brute = n_grid[np.argmin(losses)]
    n_star, d_star = compute_optimal(CHINCHILLA, budget, k)
    assert n_star == pytest.approx(n_brute, rel=2e-3)
    assert k * n_star * d_star == pytest.approx(budget, rel=1e-9)
    # Arrays of budgets give the frontier; N* grows as C^(β/(α+β)).
    ns, _ = compute_optimal(CHINCHILLA, np.array([1e20, 1e22]), k)
    assert math.log(ns[1] / ns[0]) / math.log(100) == pytest.approx(0.28 / 0.62)


# --------------------------------------------------------------------------- approach 1
def test_lower_hull_on_a_hand_made_table() -> None:
    #            0      1      2      3      4      5      6
    flops = [1e18, 1e19, 1e20, 1e21, 1e19, 3e19, 3e19, 1e22]
    loss = [3.0, 2.6, 2.4, 2.3, 2.9, 2.58, 2.45, 2.35]
    # 4: same C as 1, higher loss. 5: above the 1-2 chord. 6: below it, which pushes 2 off the hull
    # (6 -> 2 -> 3 turns the wrong way). 7: more compute, higher loss than 3: past the frontier's end.
    assert lower_hull(np.array(flops), np.array(loss)) == [0, 1, 6, 3]
    # Sizes on the hull exactly on N = 0.1·C^0.5, D = C/(6N): the regression finds the exponents.
    n = 0.1 * np.array(flops) ** 0.5
    result = approach1(np.array(flops), np.array(loss), n, np.array(flops) / (6 * n))
    assert result["n_hull"] == 4
    assert result["params_fit"]["exponent"] == pytest.approx(0.5)
    assert result["tokens_fit"]["exponent"] == pytest.approx(0.5)
    assert result["params_fit"]["coefficient"] == pytest.approx(0.1)


def test_hull_of_collinear_and_single_points() -> None:
    assert lower_hull(np.array([1.0, 10.0, 100.0]), np.exp(-np.log([1.0, 10.0, 100.0]))) == [0, 2]  # collinear middle dropped
    assert lower_hull(np.array([5.0]), np.array([2.0])) == [0]
    assert "note" in approach1(np.array([5.0, 5.0]), np.array([2.0, 3.0]))


# --------------------------------------------------------------------------- FLOPs
def test_flops_per_token_by_hand() -> None:
    shape = DenseShape(head_dim=16, queries_per_kv_head=2, ffn_mult=4.0, gated=True, seq_len=7, vocab_size=100)
    count = flops_per_token(64, 2, shape)
    # width 64 → 4 query heads, 2 KV heads; MLP 256 wide; mean causal context (7 + 1)/2 = 4
    qkv = 2 * 64 * (4 + 2 * 2) * 16  # 16,384
    scores = 2 * 4 * 16 * 4 + 3 * 4 * 4 + 2 * 4 * 16 * 4  # 1,072
    out = 2 * 4 * 16 * 64  # 8,192
    mlp = 2 * 3 * 64 * 256  # 98,304
    head = 2 * 64 * 100  # 12,800
    assert count.forward == 2 * (qkv + scores + out + mlp) + head == 260_704
    assert count.training == 3 * 260_704
    assert (count.qkv, count.scores, count.mlp) == (2 * qkv, 2 * scores, 2 * mlp)
    full = flops_per_token(64, 2, DenseShape(head_dim=16, queries_per_kv_head=2, seq_len=7, vocab_size=100, causal=False))
    assert full.scores == 2 * (2 * 4 * 16 * 7 * 2 + 3 * 4 * 7)
    # parameters: per layer q,k,v,o + gated MLP + 2 norms; final norm; untied embedding and head
    assert dense_params(64, 2, shape) == 2 * (64 * 8 * 16 + 4 * 16 * 64 + 3 * 64 * 256 + 128) + 64 + 2 * 100 * 64 == 136_000


def test_dense_params_match_published_gemstones_counts() -> None:
    """params_active_precise of two Gemstones models (public table): 1024x28, and 384x13 whose
    3 query heads share one KV head."""
    assert dense_params(1024, 28) == 543_482_880
    assert dense_params(384, 13) == 66_758_784


def test_width_not_divisible_by_head_dim() -> None:
    with pytest.raises(TunelabError, match="width 100 is not divisible by the head dim 128"):
        flops_per_token(100, 4)


# --------------------------------------------------------------------------- the command
def write_table(path: Path, law: Law = CHINCHILLA, fmt: str = "csv") -> Path:
    x, loss = synthetic(law, seed=7)
    rows = [{"run": f"r{i}", "params": float(n), "tokens": float(d), "loss": float(l)} for i, ((n, d), l) in enumerate(zip(x, loss))]
    if fmt == "csv":
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


FIT_ARGS = ["--params-column", "params", "--tokens-column", "tokens", "--loss-column", "loss"]
FAST = ["--max-starts", "24", "--bootstrap", "6", "--workers", "1"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tunelab scaling fit` on a synthetic CSV table (24 starts, 6 refits)."""
    from typer.testing import CliRunner

    from tunelab.cli import app

    root = tmp_path_factory.mktemp("scaling")
    table = write_table(root / "runs.csv")
    out = root / "fit"
    result = CliRunner().invoke(app, ["scaling", "fit", str(table), *FIT_ARGS, *FAST, "--budget", "1e21", "--output", str(out)])
    assert result.exit_code == 0, result.output
    (root / "stdout.txt").write_text(result.output)
    return out


def test_cli_fit_writes_law_metrics_and_figures(fitted: Path) -> None:
    fit = json.loads((fitted / "fit.json").read_text())
    for key in ("E", "A", "B", "alpha", "beta"):
        assert key in fit["law"], key
    assert fit["law"]["alpha"] == pytest.approx(0.34, abs=0.03) and fit["law"]["beta"] == pytest.approx(0.28, abs=0.03)
    assert not fit["degenerate"] and fit["ci"]["alpha"][0] <= fit["ci"]["alpha"][1]
    metrics = json.loads((fitted / "metrics.json").read_text())
    assert metrics["kind"] == "scaling" and metrics["starts"]["n"] == 24 and metrics["bootstrap"]["n"] == 6
    assert metrics["flops_source"] == "6·N·D" and metrics["optimal"]["6ND"]["budget"] == 1e21
    assert metrics["approach1"]["n_hull"] >= 2 and metrics["near_best"]["n"] >= 1
    for png in ("fit.png", "isoloss.png", "hull.png"):
        assert (fitted / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    printed = (fitted.parent / "stdout.txt").read_text()
    for fragment in ("E = ", "params: A = ", "tokens: A = ", "N* = ", "D* = ", "approach 1", "wrote "):
        assert fragment in printed, fragment


def test_run_scaling_fit_is_a_job(tmp_path: Path) -> None:
    """``run_scaling_fit(cfg, run_dir)`` writes into ``run_dir`` (not ``--output``) and returns the result it wrote."""
    from tunelab.results import RunDir, read_result
    from tunelab.scaling.results import ScalingResult
    from tunelab.scaling.run import ScalingFitConfig, run_scaling_fit

    table = write_table(tmp_path / "runs.csv")
    cfg = ScalingFitConfig(table=str(table), params_column="params", tokens_column="tokens", loss_column="loss",
                           max_starts=8, bootstrap=0, workers=1, output=str(tmp_path / "elsewhere"))
    result = run_scaling_fit(cfg, RunDir(tmp_path / "x"))
    assert isinstance(result, ScalingResult) and result.output_dir == str(tmp_path / "x")
    assert result.to_dict() == read_result(tmp_path / "x" / "metrics.json").to_dict()
    assert result.rows == 48 and result.starts["n"] == 8 and "fit.png" in result.figures
    assert {"fit.json", "metrics.json", "fit.png"} <= {p.name for p in (tmp_path / "x").iterdir()}
    assert not (tmp_path / "elsewhere").exists()


def test_report_shows_the_scaling_section(fitted: Path) -> None:
    page = render_report([fitted])
    assert "scaling" in section_ids(page) and "other" not in section_ids(page)
    assert_self_contained(page)
    text = visible(page)
    for value in ("Scaling laws", "E (irreducible loss)", "exponent (params)", "near-best end points", "N* [95% CI]", "lower convex hull",
                  "The degeneracy guard found nothing", "isoloss.png"):
        assert value in text, value


def test_report_section_from_metrics_alone(tmp_path: Path) -> None:
    """A degenerate fit's metrics.json without figures: the verdict and a hull chart drawn from the numbers."""
    d = tmp_path / "scaling" / "null"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({
        "kind": "scaling", "name": "scaling", "table": "runs/null.jsonl", "rows": 48, "loss_column": "loss",
        "columns": ["N", "D"], "delta": 1e-3, "objective": 0.0123, "r2_log": 0.02,
        "law": {"formula": "L = E + A/N^alpha + B/D^beta", "E": 2.95, "terms": [
            {"column": "N", "A": 1e-13, "alpha": 1.2}, {"column": "D", "A": 0.04, "alpha": 0.0}]},
        "ci": {"E": [2.9, 3.0], "terms": [{"column": "N", "A": None, "alpha": [0.5, 4.0]}, {"column": "D", "A": [0.0, 0.1],
                                                                                           "alpha": [0.0, 0.01]}]},
        "degenerate": True, "reasons": ["the exponent of D is 0 (at its lower bound 0): the term is a constant, confounded with E"],
        "starts": {"n": 4500, "converged": 4400}, "bootstrap": {"n": 100},
        "optimal": {"6ND": None}, "flops_source": "6·N·D",
        "approach1": {"n_hull": 3, "hull_flops": [1e18, 1e19, 1e20], "hull_loss": [3.0, 2.97, 2.95]}, "figures": ["../../x.png"]}))
    page = render_report([tmp_path / "scaling"])
    assert "scaling" in section_ids(page)
    assert_self_contained(page)
    text = visible(page)
    for value in ("Degenerate fit", "confounded with E", "2.95 [2.9, 3]", "The lower convex hull of (log FLOPs, log loss)", "4,400 converged"):
        assert value in text, value


# --------------------------------------------------------------------------- bad tables and flags: one line
def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD_ROW = {"params": 1e8, "tokens": 1e10, "loss": 3.1}


@pytest.mark.parametrize("rows,fragments", [
    ([GOOD_ROW, {"params": 1e8, "loss": 3.0}], [":2: no column 'tokens' (declared by --tokens-column)"]),
    ([GOOD_ROW, GOOD_ROW, {**GOOD_ROW, "loss": -0.5}], [":3: column 'loss' must be > 0", "got -0.5"]),
    ([{**GOOD_ROW, "params": 0}], [":1: column 'params' must be > 0"]),
    ([GOOD_ROW, {**GOOD_ROW, "tokens": "lots"}], [":2: column 'tokens': expected a number, got 'lots'"]),
    ([GOOD_ROW, {**GOOD_ROW, "loss": None}], [":2: column 'loss': expected a number, got null"]),
    ([GOOD_ROW, {**GOOD_ROW, "loss": True}], [":2: column 'loss': expected a number, got true/false"]),
    ([GOOD_ROW] * 3, ["3 rows are too few for a law with 5 parameters"]),
])
def test_bad_jsonl_table(capsys: pytest.CaptureFixture[str], tmp_path: Path, rows: list[dict], fragments: list[str]) -> None:
    table = _jsonl(tmp_path / "runs.jsonl", rows)
    assert_one_line(*run_cli(capsys, "scaling", "fit", table, *FIT_ARGS, *FAST, "--output", tmp_path / "out"), *fragments)
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.mark.parametrize("text,fragments", [
    ("params,tokens,lost\n1e8,1e10,3.1\n", [":1: no column 'loss' (declared by --loss-column); the header has: params, tokens, lost"]),
    ("params,tokens,loss\n1e8,1e10,3.1\n1e8,-1e10,3.0\n", [":3: column 'tokens' must be > 0"]),
    ("params,tokens,loss\n1e8,1e10,3.1\n1e8,1e10,abc\n", [":3: column 'loss': expected a number, got 'abc'"]),
    ("params,tokens,loss\n1e8,1e10,3.1\n1e8,1e10\n", [":3: no column 'loss'"]),
    ("params,tokens,loss\n1e8,1e10,nan\n", [":2: column 'loss': expected a finite number"]),
    ("params,tokens,loss\n", ["the table has no rows"]),
])
def test_bad_csv_table(capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, fragments: list[str]) -> None:
    table = tmp_path / "runs.csv"
    table.write_text(text)
    assert_one_line(*run_cli(capsys, "scaling", "fit", table, *FIT_ARGS, *FAST, "--output", tmp_path / "out"), str(table), *fragments)


def test_bad_flags_and_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    table = write_table(tmp_path / "runs.jsonl", fmt="jsonl")
    cases = [
        ([tmp_path / "missing.jsonl", *FIT_ARGS], ["table not found"]),
        ([table, "--params-column", "params", "--loss-column", "loss"], ["give --params-column and --tokens-column"]),
        ([table, "--params-column", "params", "--tokens-column", "tokens"], ["--loss-column is required"]),
        ([table, *FIT_ARGS, "--delta", "0"], ["--delta must be > 0"]),
        ([table, *FIT_ARGS, "--budget", "-1"], ["--budget must be a positive number"]),
        ([table, *FIT_ARGS, "--width-column", "params"], ["--width-column and --depth-column go together"]),
        ([table, *FIT_ARGS, "--size-columns", "params,params"], ["--size-columns names a column twice"]),
    ]
    shapes = _jsonl(tmp_path / "shapes.jsonl", [{**GOOD_ROW, "width": 256, "depth": 4}] * 3 + [{**GOOD_ROW, "width": 100, "depth": 4}] * 3)
    cases.append(([shapes, *FIT_ARGS, "--width-column", "width", "--depth-column", "depth"],
                  ["shapes.jsonl:4: width 100 is not divisible by the head dim 128 (--head-dim)"]))
    bad_format = tmp_path / "runs.xlsx"
    bad_format.write_text("x")
    cases.append(([bad_format, *FIT_ARGS], ["unsupported table format '.xlsx'"]))
    json_list = tmp_path / "runs.json"
    json_list.write_text(json.dumps([GOOD_ROW, {**GOOD_ROW, "tokens": "x"}]))
    cases.append(([json_list, *FIT_ARGS], ["runs.json: row 2: column 'tokens': expected a number"]))
    for args, fragments in cases:
        assert_one_line(*run_cli(capsys, "scaling", "fit", *args, *FAST, "--output", tmp_path / "out"), *fragments)


def test_cli_general_form_from_a_yaml_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """width, depth, tokens as three terms, declared in scaling.yaml; FLOPs counted from width × depth."""
    truth = Law(("width", "depth", "tokens"), alpha=(0.6, 0.4, 0.5), a=(math.log(60.0), math.log(3.0), math.log(3000.0)),
                e=math.log(1.8))
    rows = [{"width": w, "depth": d, "tokens": t, "loss": float(truth.predict(np.array([[w, d, t]]))[0])}
            for w in (256, 512, 1024) for d in (4, 8, 16) for t in (1e9, 1e10, 1e11)]
    table = _jsonl(tmp_path / "shapes.jsonl", rows)
    config = tmp_path / "scaling.yaml"
    config.write_text(f"table: {table}\nsize_columns: [width, depth, tokens]\ntokens_column: tokens\nloss_column: loss\n"
                      "width_column: width\ndepth_column: depth\nhead_dim: 64\nmax_starts: 16\nbootstrap: 0\nworkers: 1\n"
                      f"output: {tmp_path / 'out'}\n")
    code, output = run_cli(capsys, "scaling", "fit", "--config", config)
    assert code == 0, output
    fit = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert [t["column"] for t in fit["law"]["terms"]] == ["width", "depth", "tokens"] and "beta" not in fit["law"]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["flops_source"] == "counted per token, attention included" and metrics["optimal"] == {}
    assert metrics["approach1"]["n_hull"] >= 2 and "hull.png" in metrics["figures"] and "isoloss.png" not in metrics["figures"]
    assert "width: A = " in output and "depth: A = " in output
    # a bad value in the file is one line naming the file and line
    config.write_text(config.read_text().replace("head_dim: 64", "head_dim: wide"))
    assert_one_line(*run_cli(capsys, "scaling", "fit", "--config", config), "scaling.yaml:7: head_dim: expected an integer")


def test_cli_flags_a_fit_to_null_data(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    x, _ = synthetic(CHINCHILLA)
    loss = 3.0 * np.exp(np.random.default_rng(11).normal(0, 0.01, len(x)))
    table = _jsonl(tmp_path / "null.jsonl", [{"params": n, "tokens": d, "loss": l} for (n, d), l in zip(x.tolist(), loss.tolist())])
    code, output = run_cli(capsys, "scaling", "fit", table, *FIT_ARGS, *FAST, "--output", tmp_path / "out")
    assert code == 0, output
    assert "DEGENERATE FIT: " in output
    assert json.loads((tmp_path / "out" / "fit.json").read_text())["degenerate"] is True
