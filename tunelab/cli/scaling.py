"""`tunelab scaling fit`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunelab.cli.app import scaling_app
from tunelab.cli.common import console
from tunelab.cli.lazy import lazy_config_command

if TYPE_CHECKING:
    from tunelab.scaling.results import ScalingResult


def _load() -> dict:
    """The command's config and runner; imported only when `tunelab scaling fit` runs (numpy, scipy)."""
    from tunelab.scaling.run import ScalingFitConfig, run_scaling_fit

    # No quiet_libraries(): this command never imports transformers, and importing it only to silence it costs seconds.
    return dict(config_cls=ScalingFitConfig, run=run_scaling_fit, show=_show, config="scaling.yaml; flags override it",
                skip=("bootstrap_starts",))


def _show(cfg: object, result: ScalingResult) -> None:
    for line in _scaling_summary(result):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


lazy_config_command(scaling_app, "fit", load=_load,
                    help="Fit a scaling law (approach 3, and approach 1 where FLOPs are known) to a table of runs; plots included.")


def _scaling_summary(r: ScalingResult) -> list[str]:
    """The lines `tunelab scaling fit` prints: the law with CIs, N*/D* at the budget, flags, approach 1."""
    def ci(v: object, fmt: str = ".3g") -> str:
        return f" [{v[0]:{fmt}}, {v[1]:{fmt}}]" if isinstance(v, list) and len(v) == 2 else ""

    law, cis = r.law, r.ci or {}
    lines = [f"{r.table}: {r.rows} rows, {law['formula']}, Huber δ = {r.delta:g} on log loss "
             f"({r.starts['converged']}/{r.starts['n']} starts converged; objective {r.objective:.6g}, "
             f"log-space R² {r.r2_log:.4f})",
             f"  E = {law['E']:.4g}{ci(cis.get('E'), '.4g')}"]
    ci_terms = cis.get("terms") or [{} for _ in law["terms"]]
    for term, tci in zip(law["terms"], ci_terms):
        lines.append(f"  {term['column']}: A = {term['A']:.4g}{ci(tci.get('A'), '.4g')}, "
                     f"exponent = {term['alpha']:.4f}{ci(tci.get('alpha'), '.4f')}")
    if cis:
        lines.append(f"  (95% bootstrap intervals over {r.bootstrap['n']} refits on resampled rows)")
    near = r.near_best or {}
    if near.get("n", 0) > 1:
        spans = ", ".join(f"{t['column']} [{t['alpha'][0]:.4f}, {t['alpha'][1]:.4f}]" for t in near["terms"])
        lines.append(f"  {near['n']} end points within {near['within']:.1%} of the best objective; their exponents span {spans}")
    for opt in (r.optimal or {}).values():
        if opt:
            lines.append(f"  compute-optimal at C = {opt['budget']:.3g} FLOPs (C = {opt['flops_per_param_token']:.3g}·N·D): "
                         f"N* = {opt['N']:.3g}{ci(opt.get('N_ci'))}, D* = {opt['D']:.3g}{ci(opt.get('D_ci'))}, "
                         f"{opt['tokens_per_param']:.1f} tokens/param, predicted loss {opt['loss']:.4f}")
    a1 = r.approach1
    if a1:
        fits = [f"{name} ∝ C^{a1[name + '_fit']['exponent']:.3f}" for name in ("params", "tokens") if a1.get(name + "_fit")]
        lines.append(f"  approach 1 (FLOPs: {r.flops_source}): {a1['n_hull']} points on the lower convex hull"
                     + (f"; {', '.join(fits)}" if fits else ""))
    if r.degenerate:
        lines.append("  DEGENERATE FIT: " + "; ".join(r.reasons))
    lines.append(f"wrote {r.output_dir}/fit.json, metrics.json, {', '.join(r.figures)} ({r.wall_time_s:.0f} s)")
    return lines
