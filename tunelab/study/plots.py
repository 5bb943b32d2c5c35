"""The study's figures: the Pareto view (utility vs safety drift, coloured by ε_LB) and per-metric bars.

matplotlib with the Agg canvas, never pyplot (no global backend, no figure registry), in the
report's style. :func:`pareto_figure` / :func:`bars_figure` build the figures (the report embeds
them); :func:`pareto_plot` / :func:`bars_plot` write them as PNGs. Every figure copes with missing
metrics (an arm without the axes' metrics is left out) and with one seed (no spread: the run's CI).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from tunelab.report.plots import DPI, STYLE
from tunelab.report.render import BASE_COLOR, COLORS
from tunelab.study.results import ArmSummary, StudyResult, higher_is_better, metric_label
from tunelab.study.table import arm_order, is_rate, summaries_of

BASE_ARM = "base"
BARS_COLUMNS = 4


def arm_colors(result: StudyResult) -> dict[str, str]:
    """One colour per arm, the same in both figures: grey for the base arm, tab10 for the rest."""
    out, i = {}, 0
    for arm in arm_order(result):
        if arm == BASE_ARM:
            out[arm] = BASE_COLOR
        else:
            out[arm] = COLORS[i % len(COLORS)]
            i += 1
    return out


def _epsilon(result: StudyResult, arm: str) -> float | None:
    """The ε a DP arm was trained at (its spec), else None."""
    for spec in result.arms:
        if isinstance(spec, dict) and spec.get("name") == arm:
            eps = spec.get("epsilon")
            if isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps):
                return float(eps)
    return None


def _point(result: StudyResult, summary: ArmSummary | None, name: str) -> tuple[float | None, list[float]]:
    """(mean, [below, above]) of ``name`` in an arm's summary: the sd, or with one seed the run's CI."""
    s = summary.metrics.get(name) if summary is not None else None
    if summary is None or s is None or s.mean is None:
        return None, [0.0, 0.0]
    return s.mean, list(_error(result, summary.arm, name, s.mean, s.sd, s.n))


def safety_axis(result: StudyResult) -> str | None:
    """The Pareto view's x metric: ``refusal_drift``, else ``asr`` (None when the study measured neither)."""
    measured = set(result.metric_names())
    return next((m for m in ("refusal_drift", "asr") if m in measured), None)


def pareto_figure(result: StudyResult) -> Figure | None:
    """Utility (y) against safety drift (x) per arm, mean ± sd over seeds (one seed: the run's 95% CIs); marker colour = mean ε_LB
    (colour bar; hollow: not audited), DP arms annotated with their ε, the base arm a grey square.
    None when no arm has both axes."""
    x_name = safety_axis(result)
    if x_name is None or "utility" not in result.metric_names():
        return None
    summaries, _ = summaries_of(result)
    by_arm = {s.arm: s for s in summaries}
    points = []
    for arm in arm_order(result):
        x, xerr = _point(result, by_arm.get(arm), x_name)
        if x is None and arm == BASE_ARM and x_name == "refusal_drift" and by_arm.get(arm) and by_arm[arm].n_seeds:
            x = 0.0  # the base model is the "before": it has drifted nowhere
        y, yerr = _point(result, by_arm.get(arm), "utility")
        if x is not None and y is not None:
            points.append((arm, x, xerr, y, yerr, _point(result, by_arm.get(arm), "epsilon_lb")[0]))
    if not points:
        return None

    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(7.5, 5.0), dpi=DPI, layout="constrained")
        ax = fig.add_subplot()
        eps_lbs = [p[5] for p in points if p[5] is not None]
        cmap = matplotlib.colormaps["viridis"]
        norm = matplotlib.colors.Normalize(vmin=min(eps_lbs, default=0.0), vmax=max(max(eps_lbs, default=1.0),
                                                                                       min(eps_lbs, default=0.0) + 1e-6))
        seen: dict[tuple[float, float], int] = {}  # arms at the same point: their labels stacked, not overprinted
        for arm, x, xerr, y, yerr, eps_lb in points:
            base = arm == BASE_ARM
            stack = seen.get((round(x, 4), round(y, 4)), 0)
            seen[(round(x, 4), round(y, 4))] = stack + 1
            ax.errorbar(x, y, xerr=[[xerr[0]], [xerr[1]]], yerr=[[yerr[0]], [yerr[1]]], fmt="none", ecolor="#999999", elinewidth=1, capsize=3,
                        zorder=1)
            face = BASE_COLOR if base else ("white" if eps_lb is None else cmap(norm(eps_lb)))
            ax.scatter([x], [y], s=90, marker="s" if base else "o", c=[face], edgecolors="#333333", linewidths=1.2, zorder=2)
            eps = _epsilon(result, arm)
            label = arm + (f"  (ε={eps:g})" if eps is not None else "")
            ax.annotate(label, (x, y), xytext=(6, 5 + 11 * stack), textcoords="offset points", fontsize=8.5,
                        fontweight="bold" if eps is not None or base else "normal")
        if eps_lbs:
            sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
            fig.colorbar(sm, ax=ax, label="ε_LB (canary audit; hollow: not audited)")
        ax.set_xlabel(metric_label(x_name) + (" (after − before; right is safer)" if x_name == "refusal_drift"
                                              else " (left is safer)"))
        ax.set_ylabel(metric_label("utility") + " (up is better)")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        if x_name == "refusal_drift":
            ax.axvline(0.0, color="#bbbbbb", linewidth=1, linestyle="--", zorder=0)
        seeds = max((s.n_seeds for s in summaries), default=0)
        ax.set_title(f"utility vs safety per arm ({'mean ± sd over ' + str(seeds) + ' seeds' if seeds > 1 else 'one seed, 95% CIs'};"
                     " square: base model)")
    return fig


def bars_figure(result: StudyResult) -> Figure | None:
    """Small multiples: one panel per metric, one bar per arm (mean), error bars = sd over seeds, or
    the run's 95% CI with one seed. None when nothing was measured."""
    metrics = result.metric_names()
    if not metrics:
        return None
    summaries, _ = summaries_of(result)
    by_arm = {s.arm: s for s in summaries}
    arms = arm_order(result)
    colors = arm_colors(result)
    cols = min(BARS_COLUMNS, len(metrics))
    nrows = math.ceil(len(metrics) / cols)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(2.9 * cols, 0.6 + 2.5 * nrows), dpi=DPI, layout="constrained")
        for i, name in enumerate(metrics):
            ax = fig.add_subplot(nrows, cols, i + 1)
            xs, heights, lows, highs, cs = [], [], [], [], []
            for j, arm in enumerate(arms):
                s = by_arm.get(arm).metrics.get(name) if by_arm.get(arm) else None
                if s is None or s.mean is None:
                    continue
                lo, hi = _error(result, arm, name, s.mean, s.sd, s.n)
                xs.append(j)
                heights.append(s.mean)
                lows.append(lo)
                highs.append(hi)
                cs.append(colors[arm])
            if xs:
                ax.bar(xs, heights, color=cs, width=0.75)
                ax.errorbar(xs, heights, yerr=[lows, highs], fmt="none", ecolor="#333333", elinewidth=1, capsize=2)
            ax.set_xticks(range(len(arms)), arms, rotation=45, ha="right", fontsize=7.5)
            better = higher_is_better(name)
            ax.set_title(metric_label(name) + {True: " ↑", False: " ↓", None: ""}[better], fontsize=9.5)
            if is_rate(name) or name.endswith("_drift"):
                ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
            if name in ("trainable_params", "adapter_bytes") and heights and min(heights) > 0:
                ax.set_yscale("log")
        fig.suptitle("per-metric means (error bars: sd over seeds; one seed: its 95% CI)", fontsize=10)
    return fig


def _error(result: StudyResult, arm: str, name: str, mean: float, sd: float | None, n: int) -> tuple[float, float]:
    """(below, above) the mean: the sd, or with one seed the run's own interval, or nothing."""
    if sd is not None:
        return sd, sd
    if n == 1:
        for run in result.runs_of(arm):
            m = run.metrics.get(name)
            if run.status == "done" and m is not None and isinstance(m.ci95, (list, tuple)) and len(m.ci95) == 2 \
                    and None not in m.ci95:
                return max(0.0, mean - float(m.ci95[0])), max(0.0, float(m.ci95[1]) - mean)
    return 0.0, 0.0


def _save(fig: Figure | None, path: str | Path) -> Path | None:
    if fig is None:
        return None
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, format="png", dpi=DPI, metadata={"Software": None})
    return out


def pareto_plot(result: StudyResult, path: str | Path) -> Path | None:
    """Write :func:`pareto_figure` as a PNG at ``path``; None (nothing written) when no arm has utility and a safety axis."""
    return _save(pareto_figure(result), path)


def bars_plot(result: StudyResult, path: str | Path) -> Path | None:
    """Write :func:`bars_figure` as a PNG at ``path``; None (nothing written) when nothing was measured."""
    return _save(bars_figure(result), path)


__all__ = ["arm_colors", "bars_figure", "bars_plot", "pareto_figure", "pareto_plot", "safety_axis"]
