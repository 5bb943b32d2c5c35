"""``tunelab scaling fit``: one config, one table in, fit.json + metrics.json + figures out."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.errors import TunelabError
from tunelab.options import check_fields, comma_list, option
from tunelab.layout import EVAL_FILE
from tunelab.results import RunDir
from tunelab.scaling.results import ScalingResult
from tunelab.scaling.approach1 import approach1
from tunelab.scaling.approach3 import (
    Law,
    bootstrap_laws,
    compute_optimal,
    default_workers,
    degeneracy,
    fit_law,
    grid_starts,
    log_r2,
    percentile_ci,
    subsample_starts,
)
from tunelab.scaling.flops import DenseShape, counted_flops
from tunelab.scaling.table import ColumnSpec, Table, read_table

FIT_FILE = "fit.json"
MAX_TERMS = 6


@dataclass
class ScalingFitConfig:
    """Everything ``tunelab scaling fit`` needs; ``validate`` runs before the table is read.

    The law's terms are ``size_columns`` if given (the general form, e.g. width, depth, tokens),
    else (``params_column``, ``tokens_column``). FLOPs for approach 1 and the budget come from
    ``flops_column``, else are counted from ``width_column`` × ``depth_column`` (attention
    included; shape constants below), else are 6·N·D.
    """

    table: str | None = option(None, flag="-", metavar="TABLE", help="JSONL, JSON or CSV: one row per run or checkpoint")
    params_column: str | None = option(None, help="the column holding N (parameters)")
    tokens_column: str | None = option(None, help="the column holding D (training tokens)")
    loss_column: str | None = option(None, help="the column holding the loss")
    size_columns: list[str] | None = option(None, parse=lambda text: comma_list(text, "--size-columns"), show_default="N and D",
                                            help="the general form: one term per column, e.g. width,depth,tokens")
    flops_column: str | None = option(None, show_default="counted from --width/--depth-column, else 6·N·D",
                                      help="training FLOPs per row")
    width_column: str | None = option(None, help="count FLOPs per token (attention included) from width ...")
    depth_column: str | None = option(None, help="... and depth (a dense Llama-style model)")
    head_dim: int = option(128, show_default="128", help="counted FLOPs: head dim")
    queries_per_kv_head: int = option(2, show_default="2", help="counted FLOPs: query heads per key/value head")
    ffn_mult: float = option(4.0, show_default="4", help="counted FLOPs: gated MLP width ÷ model width")
    seq_len: int = option(2048, show_default="2048", help="counted FLOPs: training sequence length")
    vocab_size: int = option(50304, show_default="50304", help="counted FLOPs: vocabulary size")
    delta: float = option(1e-3, gt=0, show_default="1e-3; Gemstones used 1e-4", help="Huber δ on log-loss residuals")
    budget: float | None = option(None, show_default="the largest compute in the table", help="FLOPs budget for N*, D*")
    bootstrap: int = option(200, min=0, why="0: no confidence intervals", show_default="200",
                            help="bootstrap refits for the 95% CIs; 0: none")
    bootstrap_starts: int = option(4, min=1, help="starts per bootstrap refit")  # no flag: YAML only
    max_starts: int | None = option(None, min=1, show_default="the whole grid",
                                    help="at most this many starts, drawn from the grid")
    workers: int | None = option(None, min=1, show_default="one per core, ≤ 8", help="processes for the starts and refits")
    seed: int = option(0, show_default="0", help="bootstrap and start-sampling seed")
    output: str | None = option(None, show_default="runs/scaling/TABLE-NAME", help="results dir")

    def validate(self) -> None:
        """Raise TunelabError for anything wrong that can be seen without reading the table."""
        if not self.table:
            raise TunelabError("give the table to fit: tunelab scaling fit TABLE --loss-column C ...")
        if not Path(self.table).exists():
            raise TunelabError(f"table not found: {self.table}")
        if Path(self.table).is_dir():
            raise TunelabError(f"{self.table}: a directory, not a table")
        if not self.loss_column:
            raise TunelabError("--loss-column is required (the column holding each run's loss)")
        if self.size_columns is None and not (self.params_column and self.tokens_column):
            raise TunelabError("give --params-column and --tokens-column (the law's N and D), or --size-columns")
        if self.size_columns is not None:
            if not self.size_columns or not all(c.strip() for c in self.size_columns):
                raise TunelabError("--size-columns needs one or more column names, e.g. width,depth,tokens")
            if len(set(self.size_columns)) != len(self.size_columns):
                raise TunelabError(f"--size-columns names a column twice: {','.join(self.size_columns)}")
            if len(self.size_columns) > MAX_TERMS:
                raise TunelabError(f"--size-columns: at most {MAX_TERMS} terms, got {len(self.size_columns)}")
        if self.loss_column in self.law_columns():
            raise TunelabError(f"the loss column '{self.loss_column}' is also one of the law's size columns")
        if (self.width_column is None) != (self.depth_column is None):
            raise TunelabError("--width-column and --depth-column go together (FLOPs are counted from both)")
        check_fields(self)  # one-field bounds from the fields' metadata
        if self.budget is not None and not (self.budget > 0 and math.isfinite(self.budget)):
            raise TunelabError(f"--budget must be a positive number of FLOPs, got {self.budget:g}")
        self.shape().check()

    def law_columns(self) -> list[str]:
        return list(self.size_columns) if self.size_columns else [c for c in (self.params_column, self.tokens_column) if c]

    def shape(self) -> DenseShape:
        return DenseShape(head_dim=self.head_dim, queries_per_kv_head=self.queries_per_kv_head, ffn_mult=self.ffn_mult,
                          seq_len=self.seq_len, vocab_size=self.vocab_size)

    def specs(self) -> list[ColumnSpec]:
        declared = [(self.loss_column, "--loss-column"), (self.params_column, "--params-column"),
                    (self.tokens_column, "--tokens-column"), (self.flops_column, "--flops-column"),
                    (self.width_column, "--width-column"), (self.depth_column, "--depth-column")]
        declared += [(c, "--size-columns") for c in self.size_columns or []]
        return [ColumnSpec(name, flag) for name, flag in declared if name]

    def output_dir(self) -> Path:
        return Path(self.output) if self.output else Path("runs") / "scaling" / Path(self.table or "table").stem

    def run_dir(self) -> RunDir:
        """The job's default :class:`~tunelab.results.RunDir` (``--output``, else ``runs/scaling/TABLE-NAME``).

        A fit writes over an earlier one in its directory (no ``--overwrite``, as always).
        """
        return RunDir(self.output_dir(), marker=EVAL_FILE, what="a finished fit")


def _flops(cfg: ScalingFitConfig, table: Table) -> tuple[np.ndarray | None, str | None]:
    """Training FLOPs per row and where they came from."""
    if cfg.flops_column:
        return table[cfg.flops_column], f"column '{cfg.flops_column}'"
    if cfg.width_column and cfg.depth_column and cfg.tokens_column:
        where = (lambda i: f"{table.path}:{table.lines[i]}" if table.lines[i] > 0 else f"{table.path}: row {-table.lines[i]}")
        return (counted_flops(table[cfg.width_column], table[cfg.depth_column], table[cfg.tokens_column], cfg.shape(), where),
                "counted per token, attention included")
    if cfg.params_column and cfg.tokens_column:
        return 6.0 * table[cfg.params_column] * table[cfg.tokens_column], "6·N·D"
    return None, None


def _ci_block(law: Law, boot: list[Law]) -> dict[str, Any]:
    """Percentile 95% intervals of E and of each term's A and exponent over the bootstrap laws."""
    if not boot:
        return {}
    terms = [{"column": c, "A": percentile_ci([b.A[j] for b in boot]), "alpha": percentile_ci([b.alpha[j] for b in boot])}
             for j, c in enumerate(law.columns)]
    out: dict[str, Any] = {"E": percentile_ci([b.E for b in boot]), "terms": terms}
    if len(law.columns) == 2:
        out.update(A=terms[0]["A"], B=terms[1]["A"], alpha=terms[0]["alpha"], beta=terms[1]["alpha"])
    return out


def _optimal(law: Law, boot: list[Law], budget: float, k: float) -> dict[str, Any] | None:
    """N*, D* and the predicted loss at ``budget`` for C = k·N·D, with bootstrap intervals."""
    if min(law.alpha) <= 0:
        return None
    n_star, d_star = compute_optimal(law, budget, k)
    stars = [compute_optimal(b, budget, k) for b in boot if min(b.alpha) > 0]
    return {"budget": budget, "flops_per_param_token": k, "N": n_star, "D": d_star, "tokens_per_param": d_star / n_star,
            "loss": float(law.predict(np.array([[n_star, d_star]]))[0]),
            "N_ci": percentile_ci([s[0] for s in stars]), "D_ci": percentile_ci([s[1] for s in stars])}


def run_scaling_fit(cfg: ScalingFitConfig, run_dir: RunDir | None = None) -> ScalingResult:
    """The ``tunelab scaling fit`` job: ``run_scaling_fit(cfg, run_dir=None) -> ScalingResult``.

    Fits approach 3 (and approach 1 where FLOPs are known) and writes ``fit.json``, the figures and
    ``metrics.json`` (last) into ``run_dir`` (``None``: ``cfg.run_dir()``); returns the result written.
    """
    cfg.validate()
    started = time.perf_counter()
    table = read_table(cfg.table, cfg.specs())  # type: ignore[arg-type]
    columns = cfg.law_columns()
    x, loss = table.take(columns), table[cfg.loss_column]  # type: ignore[index]
    if len(table) < 2 * len(columns) + 2:
        raise TunelabError(f"{cfg.table}: {len(table)} rows are too few for a law with {2 * len(columns) + 1} parameters "
                           f"(give at least {2 * len(columns) + 2})")
    flops, flops_source = _flops(cfg, table)
    workers = cfg.workers or default_workers()
    starts = subsample_starts(grid_starts(len(columns)), cfg.max_starts, cfg.seed)
    fit = fit_law(x, loss, columns, delta=cfg.delta, starts=starts, workers=workers)
    law = fit.law
    reasons = ([] if fit.converged else ["no start converged (L-BFGS-B): the best end point is shown"]) + degeneracy(law, x, loss)
    boot = bootstrap_laws(x, loss, fit, n=cfg.bootstrap, seed=cfg.seed, starts=cfg.bootstrap_starts, workers=workers)
    boot_degenerate = sum(1 for b in boot if degeneracy(b, x, loss)) / len(boot) if boot else None
    if boot_degenerate is not None and boot_degenerate > 0.5 and not reasons:
        reasons.append(f"the guard fires on {boot_degenerate:.0%} of the bootstrap refits: the fit is not stable")

    nd_law = bool(cfg.params_column and cfg.tokens_column and columns == [cfg.params_column, cfg.tokens_column])
    budget = cfg.budget if cfg.budget is not None else (float(flops.max()) if flops is not None else None)
    optimal: dict[str, Any] = {}
    if nd_law and budget is not None:
        optimal["6ND"] = _optimal(law, boot, budget, 6.0)
        if flops is not None and flops_source != "6·N·D":
            k = float(np.median(flops / (table[cfg.params_column] * table[cfg.tokens_column])))  # type: ignore[index]
            optimal["counted"] = _optimal(law, boot, budget, k)
    a1 = None
    if flops is not None:
        a1 = approach1(flops, loss, table[cfg.params_column] if cfg.params_column else None,
                       table[cfg.tokens_column] if cfg.tokens_column else None)

    run_dir = cfg.run_dir() if run_dir is None else run_dir
    out = run_dir.path
    run_dir.open()
    from tunelab.scaling.plots import plot_fit, plot_hull, plot_isoloss

    figures = ["fit.png"]
    plot_fit(law, x, loss, out / "fit.png", loss_name=cfg.loss_column or "loss")
    if nd_law and optimal.get("6ND"):
        plot_isoloss(law, x[:, 0], x[:, 1], out / "isoloss.png", budget, 6.0)  # type: ignore[arg-type]
        figures.append("isoloss.png")
    if a1 is not None:
        plot_hull(a1, flops, loss, out / "hull.png", flops_source or "")  # type: ignore[arg-type]
        figures.append("hull.png")

    fit_json = {"law": law.to_dict(), "ci": _ci_block(law, boot), "delta": cfg.delta, "objective": fit.objective,
                "degenerate": bool(reasons), "reasons": reasons, "optimal": optimal}
    result = {
        "kind": "scaling", "name": "scaling", "table": str(cfg.table), "rows": len(table), "loss_column": cfg.loss_column,
        "columns": columns, "nd_law": nd_law, **fit_json, "r2_log": log_r2(law, x, loss),
        "starts": {"n": fit.n_starts, "converged": fit.n_converged, "grid": "spec" if cfg.max_starts is None else
                   f"{len(starts)} drawn from the spec's grid"}, "near_best": fit.near_best,
        "bootstrap": {"n": len(boot), "starts": cfg.bootstrap_starts, "degenerate_fraction": boot_degenerate},
        "flops_source": flops_source, "budget": budget, "approach1": a1, "figures": figures,
        "wall_time_s": time.perf_counter() - started, "config": asdict(cfg), "output_dir": str(out),
    }
    run_dir.write_json(FIT_FILE, fit_json)
    typed = ScalingResult.from_dict(result)
    typed.write(run_dir, EVAL_FILE)
    return typed
