"""The fitter's figures: fit vs data, iso-loss contours with the compute-optimal frontier, the hull.

Drawn on ``matplotlib.figure.Figure`` with the Agg canvas, never pyplot (no global state).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tunelab.scaling.approach3 import Law, compute_optimal


def _figure(width: float, height: float, panels: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
    return fig, axes


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=110, metadata={"Software": None})


def _groups(x: np.ndarray) -> dict[tuple[float, ...], np.ndarray]:
    """Rows grouped by every size column but the last (for (N, D): one group per model size)."""
    keys = [tuple(row) for row in x[:, :-1]]
    out: dict[tuple[float, ...], list[int]] = {}
    for i, key in enumerate(keys):
        out.setdefault(key, []).append(i)
    return {k: np.array(v) for k, v in sorted(out.items())}


def plot_fit(law: Law, x: np.ndarray, loss: np.ndarray, path: Path, loss_name: str = "loss") -> None:
    """Left: loss vs the last size column per group with the law's curves; right: predicted vs observed."""
    from matplotlib import colormaps

    fig, (left, right) = _figure(11, 4.4, 2)
    groups = _groups(x)
    cmap = colormaps["viridis"]
    keys = list(groups)
    last = law.columns[-1]
    for i, key in enumerate(keys):
        idx = groups[key]
        color = cmap(i / max(1, len(keys) - 1))
        order = idx[np.argsort(x[idx, -1])]
        left.scatter(x[order, -1], loss[order], s=12, color=color, zorder=3)
        if len(keys) <= 40:
            grid = np.geomspace(x[order, -1].min(), x[order, -1].max(), 60)
            pts = np.column_stack([np.tile(np.asarray(key), (len(grid), 1)), grid]) if key else grid[:, None]
            label = ", ".join(f"{c}={v:.3g}" for c, v in zip(law.columns[:-1], key)) if len(keys) <= 8 else None
            left.plot(grid, law.predict(pts), color=color, linewidth=1.2, label=label)
    left.set_xscale("log")
    grouped = ", ".join(law.columns[:-1])
    left.set(xlabel=last, ylabel=loss_name,
             title=f"fit vs data: {len(keys)} groups by {grouped}, dark → light = small → large" if grouped else "fit vs data")
    if len(keys) <= 8 and len(law.columns) > 1:
        left.legend(fontsize=7)
    pred = law.predict(x)
    right.scatter(loss, pred, s=10, color="C0", alpha=0.7)
    lo, hi = float(min(loss.min(), pred.min())), float(max(loss.max(), pred.max()))
    right.plot([lo, hi], [lo, hi], color="black", linewidth=0.8, linestyle="--", label="y = x")
    right.set(xlabel=f"observed {loss_name}", ylabel="predicted", title=law.formula())
    right.legend(fontsize=8)
    _save(fig, path)


def plot_isoloss(law: Law, params: np.ndarray, tokens: np.ndarray, path: Path, budget: float,
                 flops_per_param_token: float = 6.0) -> None:
    """Iso-loss contours of L̂(N, D), iso-FLOP lines, the compute-optimal frontier and the runs."""
    fig, (ax,) = _figure(7.5, 5.6)
    n_lo, n_hi = np.log10(params.min()) - 0.5, np.log10(params.max()) + 1.0
    d_lo, d_hi = np.log10(tokens.min()) - 0.5, np.log10(tokens.max()) + 1.0
    nn, dd = np.meshgrid(np.logspace(n_lo, n_hi, 160), np.logspace(d_lo, d_hi, 160))
    surface = law.predict(np.column_stack([nn.ravel(), dd.ravel()])).reshape(nn.shape)
    levels = np.unique(np.quantile(surface, np.linspace(0.02, 0.9, 12)))
    contours = ax.contour(nn, dd, surface, levels=levels, cmap="viridis", linewidths=1.0)
    ax.clabel(contours, fontsize=7, fmt="%.2f")
    k = flops_per_param_token
    c_lo, c_hi = k * 10 ** (n_lo + d_lo), k * 10 ** (n_hi + d_hi)
    for c in np.logspace(np.log10(c_lo), np.log10(c_hi), 9)[1:-1]:
        n_line = np.logspace(n_lo, n_hi, 50)
        ax.plot(n_line, c / (k * n_line), color="grey", linewidth=0.6, linestyle=":")
    budgets = np.logspace(np.log10(c_lo), np.log10(c_hi), 100)
    n_opt, d_opt = compute_optimal(law, budgets, k)
    ax.plot(n_opt, d_opt, color="C3", linewidth=2, label="compute-optimal frontier")
    ax.scatter(params, tokens, s=10, color="black", zorder=3, label="runs")
    n_star, d_star = compute_optimal(law, budget, k)
    ax.scatter([n_star], [d_star], marker="*", s=160, color="C3", edgecolor="black", zorder=4,
               label=f"N*, D* at C = {budget:.3g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlim=(10 ** n_lo, 10 ** n_hi), ylim=(10 ** d_lo, 10 ** d_hi), xlabel=law.columns[0], ylabel=law.columns[1],
           title=f"iso-loss contours (dotted: C = {k:.3g}·N·D)")
    ax.legend(fontsize=8, loc="lower left")
    _save(fig, path)


def plot_hull(result: dict[str, Any], flops: np.ndarray, loss: np.ndarray, path: Path, flops_source: str) -> None:
    """Left: loss vs FLOPs with the lower convex hull; right: N and D of the hull points vs C."""
    has_sizes = "hull_params" in result and "hull_tokens" in result
    fig, axes = _figure(11 if has_sizes else 6.5, 4.4, 2 if has_sizes else 1)
    left = axes[0]
    left.scatter(flops, loss, s=10, color="#9a9a9a", label="runs")
    left.plot(result["hull_flops"], result["hull_loss"], color="black", linewidth=1.2, marker="x", label="lower convex hull")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set(xlabel=f"FLOPs ({flops_source})", ylabel="loss", title="approach 1: loss vs compute")
    left.legend(fontsize=8)
    if has_sizes:
        right = axes[1]
        hull_c = np.asarray(result["hull_flops"])
        grid = np.geomspace(hull_c.min(), hull_c.max(), 50) if len(hull_c) else hull_c
        for name, color in (("params", "C0"), ("tokens", "C1")):
            right.scatter(hull_c, result[f"hull_{name}"], color=color, s=18, zorder=3)
            fit = result.get(f"{name}_fit")
            if fit:
                right.plot(grid, fit["coefficient"] * grid ** fit["exponent"], color=color,
                           label=f"{name} ∝ C^{fit['exponent']:.3f}")
        right.set_xscale("log")
        right.set_yscale("log")
        right.set(xlabel="FLOPs", ylabel="size on the hull", title="optimal N and D vs compute")
        right.legend(fontsize=8)
    _save(fig, path)
