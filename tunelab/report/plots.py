"""matplotlib figures rendered to base64 PNG ``<img>`` tags, so the report is one file.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly, never pyplot:
no global backend switch and no figure registry to leak into a caller's own plotting.
"""

from __future__ import annotations

import io
import math
from typing import Callable, Sequence

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, PercentFormatter

# defined where rooms can import them without matplotlib; still importable from here
from tunelab.report.render import BASE_COLOR, COLORS, Markup, Palette, png_img  # noqa: F401

DPI = 144  # drawn at 1.5x the displayed size, so text stays crisp on high-DPI screens
SCREEN_DPI = 96
STYLE = {
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.labelsize": 9.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e6e6e6",
    "grid.linewidth": 0.8,
    "axes.axisbelow": True,
    "legend.frameon": False,
    "legend.fontsize": 8.5,
}


def new_figure(width: float, height: float) -> Figure:
    """A Figure of ``width`` x ``height`` inches (displayed at 96 px per inch); call it, and
    draw on it, inside ``_styled`` so the report's rc style applies."""
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def to_img(fig: Figure, alt: str) -> Markup:
    """Render ``fig`` to an ``<img>`` with the PNG inline as a data: URI."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})  # no version stamp: stable output
    width = round(fig.get_figwidth() * SCREEN_DPI)
    return png_img(buf.getvalue(), alt, width)


def _styled(draw: Callable[[], Figure]) -> Figure:
    # rc settings apply when artists are created, so the whole drawing runs inside the context.
    with matplotlib.rc_context(STYLE):
        return draw()


def smooth(values: Sequence[float]) -> list[float]:
    """Debiased exponential moving average (TensorBoard's), stronger for longer curves."""
    n = len(values)
    weight = min(0.95, max(0.0, 1.0 - 8.0 / max(n, 1)))
    out, last, norm = [], 0.0, 0.0
    for v in values:
        last = weight * last + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(last / norm if norm else v)
    return out


def training_curves(curves: dict[str, dict[str, tuple[list[float], list[float]]]], palette: Palette) -> Markup | None:
    """Loss vs step for every run on one plot (raw faint, smoothed bold), lr and grad norm below.

    ``curves`` maps run name → {"loss"|"lr"|"grad_norm": (steps, values)}.
    """
    if not any(c.get("loss", ([], []))[1] for c in curves.values()):
        return None
    small = [k for k in ("lr", "grad_norm") if any(c.get(k, ([], []))[1] for c in curves.values())]

    def draw() -> Figure:
        fig = new_figure(10.5, 6.2 if small else 4.2)
        grid = fig.add_gridspec(2 if small else 1, max(1, len(small)), height_ratios=[2.2, 1] if small else None)
        ax = fig.add_subplot(grid[0, :])
        for name, c in curves.items():
            xs, ys = c.get("loss", ([], []))
            if not ys:
                continue
            color = palette(name)
            if len(ys) > 2:
                ax.plot(xs, ys, color=color, alpha=0.25, linewidth=1)
                ax.plot(xs, smooth(ys), color=color, linewidth=2, label=name)
            else:
                ax.plot(xs, ys, color=color, linewidth=2, marker="o", label=name)
        ax.set_title("training loss (faint: per step, bold: smoothed)")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(loc="upper right", ncols=min(4, len(curves)))
        for i, key in enumerate(small):
            sub = fig.add_subplot(grid[1, i])
            for j, (name, c) in enumerate(curves.items()):
                xs, ys = c.get(key, ([], []))
                if ys:
                    # Thinner lines for later runs keep identical schedules visible on top of each other.
                    sub.plot(xs, ys, color=palette(name), linewidth=max(0.8, 2.6 - 0.6 * j), label=name)
            sub.set_title({"lr": "learning rate", "grad_norm": "gradient norm (before clipping)"}[key])
            sub.set_xlabel("step")
            if key == "lr":
                sub.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
                lrs = [v for c in curves.values() for v in c.get("lr", ([], []))[1]]
                if lrs and min(lrs) > 0 and max(lrs) / min(lrs) > 5:
                    sub.set_yscale("log")  # runs with 1e-3 and 1e-2 share the panel
        return fig

    return to_img(_styled(draw), "training curves")


def grouped_bars(
    categories: list[str],
    groups: dict[str, list[float | None]],
    palette: Palette,
    *,
    title: str,
    ylabel: str = "",
    percent: bool = False,
    log: bool = False,
    value_format: Callable[[float], str] | None = None,
    height: float = 3.8,
) -> Markup | None:
    """A bar chart with one cluster per category and one coloured bar per group (run).

    ``groups`` maps a group name → one value per category (``None`` = no bar). Bars carry their
    value as a label, so the chart reads without the table.
    """
    if not categories or not any(v is not None for vals in groups.values() for v in vals):
        return None
    fmt = value_format or ((lambda v: f"{v:.0%}") if percent else _short_number)

    def draw() -> Figure:
        single = len(categories) == 1  # one cluster: name the bars on the x axis, no legend
        width = min(10.5, max(5.0, 1.6 + len(categories) * (0.45 * len(groups) + 0.6)))
        fig = new_figure(width, height)
        ax = fig.add_subplot()
        n = len(groups)
        bar_w = 0.8 if single else 0.8 / max(n, 1)
        for j, (name, vals) in enumerate(groups.items()):
            xs = [j] if single else [i - 0.4 + bar_w * (j + 0.5) for i in range(len(categories))]
            pts = [(x, v) for x, v in zip(xs, vals) if v is not None]
            if not pts:
                continue
            bars = ax.bar([p[0] for p in pts], [p[1] for p in pts], bar_w * (0.75 if single else 0.92), color=palette(name), label=name)
            ax.bar_label(bars, labels=[fmt(p[1]) for p in pts], fontsize=8, padding=2)
        if single:
            ax.set_xticks(range(n), list(groups), rotation=20 if sum(len(g) for g in groups) > 8 * width else 0)
        else:
            ax.set_xticks(range(len(categories)), categories)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(axis="x", visible=False)
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _short_number(v)))
            lo, hi = _value_range(groups)
            ax.set_ylim(lo / 2, hi * 4)  # head room for the value labels
        elif percent:
            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
            hi = _value_range(groups)[1]
            ax.set_ylim(0, 1.12 if hi > 0.5 else max(hi * 1.25, 0.05))
        else:
            ax.set_ylim(0, _value_range(groups)[1] * 1.15 or 1)
        if n > 1 and not single:
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return fig

    return to_img(_styled(draw), title)


def hbars(
    labels: list[str],
    groups: dict[str, list[float | None]],
    palette: Palette,
    *,
    title: str,
    xlabel: str = "",
    value_format: Callable[[float], str] | None = None,
) -> Markup | None:
    """Horizontal grouped bars: one row per label, one bar per group; the figure grows with the rows,
    so long labels (run · family · score) stay readable however many there are."""
    if not labels or not any(v is not None for vals in groups.values() for v in vals):
        return None
    fmt = value_format or _short_number

    def draw() -> Figure:
        n = len(groups)
        fig = new_figure(8.0, 1.0 + 0.28 * len(labels) * max(n, 1))
        ax = fig.add_subplot()
        bar_h = 0.8 / max(n, 1)
        for j, (name, vals) in enumerate(groups.items()):
            pts = [(i - 0.4 + bar_h * (j + 0.5), v) for i, v in enumerate(vals) if v is not None]
            bars = ax.barh([p[0] for p in pts], [p[1] for p in pts], bar_h * 0.92, color=palette(name), label=name)
            ax.bar_label(bars, labels=[fmt(p[1]) for p in pts], fontsize=8, padding=2)
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()  # first label on top, like the table
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(axis="y", visible=False)
        ax.set_xlim(0, _value_range(groups)[1] * 1.15 or 1)
        if n > 1:
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return fig

    return to_img(_styled(draw), title)


def line_chart(
    lines: list[tuple[str, str, list[float], list[float]]],
    *,
    title: str,
    xlabel: str = "",
    ylabel: str = "",
    logx: bool = False,
    logy: bool = False,
) -> Markup | None:
    """Several labelled x/y lines on one axis; ``lines`` = (label, colour, xs, ys)."""
    if not any(ys for _, _, _, ys in lines):
        return None

    def draw() -> Figure:
        fig = new_figure(7.5, 3.6)
        ax = fig.add_subplot()
        for label, color, xs, ys in lines:
            ax.plot(xs, ys, color=color, linewidth=1.8, marker="o" if len(ys) <= 12 else None, markersize=3.5, label=label)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        if len(lines) > 1:
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return fig

    return to_img(_styled(draw), title)


def _value_range(groups: dict[str, list[float | None]]) -> tuple[float, float]:
    vals = [v for vs in groups.values() for v in vs if v is not None]
    positive = [v for v in vals if v > 0] or [1.0]
    return min(positive), max(vals + [0.0])


def _short_number(v: float) -> str:
    """1234567 → 1.2M, 0.5 → 0.5: compact labels for bars and log axes."""
    if v == 0 or not math.isfinite(v):
        return "0"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def heatmap(
    labels: Sequence[str],
    matrix: Sequence[Sequence[float | None]],
    *,
    title: str,
    vmin: float = -1.0,
    vmax: float = 1.0,
    cmap: str = "RdBu_r",
) -> Markup | None:
    """A labelled square heatmap with each cell's value written in it (``None`` cells blank)."""
    n = len(labels)
    if n == 0 or not any(v is not None for row in matrix for v in row):
        return None

    def draw() -> Figure:
        import numpy as np

        side = min(7.5, max(3.4, 1.6 + 0.75 * n))
        fig = new_figure(side + 0.9, side)
        ax = fig.add_subplot()
        values = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix], dtype=float)
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_xticks(range(n), labels, rotation=30 if sum(len(x) for x in labels) > 6 * n else 0, ha="right")
        ax.set_yticks(range(n), labels)
        ax.grid(False)
        for i in range(n):
            for j in range(n):
                if not np.isnan(values[i, j]):
                    dark = abs(values[i, j] - (vmin + vmax) / 2) > 0.35 * (vmax - vmin)
                    ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
        ax.set_title(title)
        fig.colorbar(image, ax=ax, shrink=0.8)
        return fig

    return to_img(_styled(draw), title)


def roc_loglog(
    lines: list[tuple[str, str, str, list[float], list[float]]],
    *,
    title: str,
    floor: float = 1e-3,
) -> Markup | None:
    """ROC curves on log-log axes from ``floor`` to 1, with the chance diagonal.

    ``lines`` = (label, colour, linestyle, fprs, tprs). Log axes cannot show 0, so values below
    ``floor`` are drawn at ``floor``; the caller says so in its caption.
    """
    if not any(fprs and tprs for _, _, _, fprs, tprs in lines):
        return None

    def draw() -> Figure:
        fig = new_figure(6.4, 4.6)
        ax = fig.add_subplot()
        ax.plot([floor, 1.0], [floor, 1.0], color=BASE_COLOR, linewidth=1, linestyle=":", label="chance")
        for label, color, style, fprs, tprs in lines:
            xs = [max(x, floor) for x in fprs]
            ys = [max(y, floor) for y in tprs]
            # ROC curves are step functions of the threshold: draw them as steps, not slopes.
            ax.step(xs, ys, where="post", color=color, linestyle=style, linewidth=1.8, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(floor, 1.0)
        ax.set_ylim(floor, 1.05)
        percent = FuncFormatter(lambda v, _: f"{v * 100:g}%")  # 0.1%, 1%, 10%, 100%
        ax.xaxis.set_major_formatter(percent)
        ax.yaxis.set_major_formatter(percent)
        ax.set_title(title)
        ax.set_xlabel("false positive rate (non-members called members)")
        ax.set_ylabel("true positive rate (members found)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return fig

    return to_img(_styled(draw), title)


def grid_heatmap(
    matrix: Sequence[Sequence[float | None]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    cmap: str = "viridis",
    marked: Sequence[Sequence[bool]] | None = None,
) -> Markup | None:
    """A rows × columns heatmap without per-cell numbers (e.g. layers × heads); ``marked`` cells get
    a small cross (e.g. the heads a static mask zeroes)."""
    if not matrix or not any(v is not None for row in matrix for v in row):
        return None

    def draw() -> Figure:
        import numpy as np

        values = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix], dtype=float)
        rows, cols = values.shape
        fig = new_figure(min(7.5, 2.2 + 0.35 * cols), min(7.5, 1.4 + 0.16 * rows))
        ax = fig.add_subplot()
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto", interpolation="nearest")
        if marked is not None:
            ys, xs = np.nonzero(np.array(marked, dtype=bool))
            ax.scatter(xs, ys, marker="x", s=14, color="white", linewidths=1.0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(False)
        ax.set_title(title)
        fig.colorbar(image, ax=ax, shrink=0.8)
        return fig

    return to_img(_styled(draw), title)
