"""`tunelab scaling fit`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tunelab.cli.app import scaling_app
from tunelab.cli.common import console, quiet_libraries, comma_list


@scaling_app.command("fit")
def scaling_fit(
    table: Annotated[Optional[str], typer.Argument(metavar="TABLE", help="JSONL, JSON or CSV: one row per run or checkpoint")] = None,
    params_column: Annotated[Optional[str], typer.Option(help="the column holding N (parameters)")] = None,
    tokens_column: Annotated[Optional[str], typer.Option(help="the column holding D (training tokens)")] = None,
    loss_column: Annotated[Optional[str], typer.Option(help="the column holding the loss")] = None,
    size_columns: Annotated[Optional[str], typer.Option(help="the general form: one term per column, e.g. width,depth,tokens \\[default: N and D]")] = None,
    flops_column: Annotated[Optional[str], typer.Option(help="training FLOPs per row \\[default: counted from --width/--depth-column, else 6·N·D]")] = None,
    width_column: Annotated[Optional[str], typer.Option(help="count FLOPs per token (attention included) from width ...")] = None,
    depth_column: Annotated[Optional[str], typer.Option(help="... and depth (a dense Llama-style model)")] = None,
    head_dim: Annotated[Optional[int], typer.Option(help="counted FLOPs: head dim \\[default: 128]")] = None,
    queries_per_kv_head: Annotated[Optional[int], typer.Option(help="counted FLOPs: query heads per key/value head \\[default: 2]")] = None,
    ffn_mult: Annotated[Optional[float], typer.Option(help="counted FLOPs: gated MLP width ÷ model width \\[default: 4]")] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="counted FLOPs: training sequence length \\[default: 2048]")] = None,
    vocab_size: Annotated[Optional[int], typer.Option(help="counted FLOPs: vocabulary size \\[default: 50304]")] = None,
    delta: Annotated[Optional[float], typer.Option(help="Huber δ on log-loss residuals \\[default: 1e-3; Gemstones used 1e-4]")] = None,
    budget: Annotated[Optional[float], typer.Option(help="FLOPs budget for N*, D* \\[default: the largest compute in the table]")] = None,
    bootstrap: Annotated[Optional[int], typer.Option(help="bootstrap refits for the 95% CIs; 0: none \\[default: 200]")] = None,
    max_starts: Annotated[Optional[int], typer.Option(help="at most this many starts, drawn from the grid \\[default: the whole grid]")] = None,
    workers: Annotated[Optional[int], typer.Option(help="processes for the starts and refits \\[default: one per core, ≤ 8]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="bootstrap and start-sampling seed \\[default: 0]")] = None,
    output: Annotated[Optional[str], typer.Option(help="results dir \\[default: runs/scaling/TABLE-NAME]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="scaling.yaml; flags override it")] = None,
) -> None:
    """Fit a scaling law (approach 3, and approach 1 where FLOPs are known) to a table of runs; plots included."""
    from tunelab.configs import from_sources
    from tunelab.scaling.run import ScalingFitConfig, run_scaling_fit

    # No quiet_libraries(): this command never imports transformers, and importing it only to silence it costs seconds.
    cfg = from_sources(ScalingFitConfig, config, table=table, params_column=params_column, tokens_column=tokens_column,
                       loss_column=loss_column, size_columns=comma_list(size_columns, "--size-columns"),
                       flops_column=flops_column, width_column=width_column, depth_column=depth_column, head_dim=head_dim,
                       queries_per_kv_head=queries_per_kv_head, ffn_mult=ffn_mult, seq_len=seq_len, vocab_size=vocab_size,
                       delta=delta, budget=budget, bootstrap=bootstrap, max_starts=max_starts, workers=workers, seed=seed,
                       output=output)
    for line in _scaling_summary(run_scaling_fit(cfg)):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def _scaling_summary(r: dict) -> list[str]:
    """The lines `tunelab scaling fit` prints: the law with CIs, N*/D* at the budget, flags, approach 1."""
    def ci(v: object, fmt: str = ".3g") -> str:
        return f" [{v[0]:{fmt}}, {v[1]:{fmt}}]" if isinstance(v, list) and len(v) == 2 else ""

    law, cis = r["law"], r.get("ci") or {}
    lines = [f"{r['table']}: {r['rows']} rows, {law['formula']}, Huber δ = {r['delta']:g} on log loss "
             f"({r['starts']['converged']}/{r['starts']['n']} starts converged; objective {r['objective']:.6g}, "
             f"log-space R² {r['r2_log']:.4f})",
             f"  E = {law['E']:.4g}{ci(cis.get('E'), '.4g')}"]
    ci_terms = cis.get("terms") or [{} for _ in law["terms"]]
    for term, tci in zip(law["terms"], ci_terms):
        lines.append(f"  {term['column']}: A = {term['A']:.4g}{ci(tci.get('A'), '.4g')}, "
                     f"exponent = {term['alpha']:.4f}{ci(tci.get('alpha'), '.4f')}")
    if cis:
        lines.append(f"  (95% bootstrap intervals over {r['bootstrap']['n']} refits on resampled rows)")
    near = r.get("near_best") or {}
    if near.get("n", 0) > 1:
        spans = ", ".join(f"{t['column']} [{t['alpha'][0]:.4f}, {t['alpha'][1]:.4f}]" for t in near["terms"])
        lines.append(f"  {near['n']} end points within {near['within']:.1%} of the best objective; their exponents span {spans}")
    for opt in (r.get("optimal") or {}).values():
        if opt:
            lines.append(f"  compute-optimal at C = {opt['budget']:.3g} FLOPs (C = {opt['flops_per_param_token']:.3g}·N·D): "
                         f"N* = {opt['N']:.3g}{ci(opt.get('N_ci'))}, D* = {opt['D']:.3g}{ci(opt.get('D_ci'))}, "
                         f"{opt['tokens_per_param']:.1f} tokens/param, predicted loss {opt['loss']:.4f}")
    a1 = r.get("approach1")
    if a1:
        fits = [f"{name} ∝ C^{a1[name + '_fit']['exponent']:.3f}" for name in ("params", "tokens") if a1.get(name + "_fit")]
        lines.append(f"  approach 1 (FLOPs: {r['flops_source']}): {a1['n_hull']} points on the lower convex hull"
                     + (f"; {', '.join(fits)}" if fits else ""))
    if r["degenerate"]:
        lines.append("  DEGENERATE FIT: " + "; ".join(r["reasons"]))
    lines.append(f"wrote {r['output_dir']}/fit.json, metrics.json, {', '.join(r['figures'])} ({r['wall_time_s']:.0f} s)")
    return lines
