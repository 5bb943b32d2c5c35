"""The safety room's report sections: runs continued ``--init-from`` an earlier adapter, with the
safety check's before → after numbers (``tunelab.json`` ``safety``), and the safety-drift monitor's
curves (``metrics.jsonl`` rows with a ``"monitor"`` object, ``--monitor-safety K``).

(The safety suite's evaluations, kind ``safety``, are the report's own "Safety" section.)
Registered with :func:`tunelab.report.registry.section`; where it renders is the one order list,
:data:`tunelab.report.sections.ORDER`.
"""

from __future__ import annotations

from typing import Any, Sequence

from tunelab.report.collect import ReportData, Run, number
from tunelab.report.html import swatch, table
from tunelab.report.registry import section
from tunelab.report.render import Markup, Palette, fmt_pct, fmt_seconds


@section("continual", "Continual learning: safety before → after")
def continual_section(data: ReportData, palette: Palette) -> str | None:
    """Runs trained ``--init-from`` an earlier adapter: safety before → after (tunelab.json ``safety``)."""
    from tunelab.report import plots  # matplotlib loads with the first figure, not with the room
    runs = [r for r in data.runs if isinstance(r.record.get("safety"), dict) and r.record["safety"].get("after")]
    if not runs:
        return None
    rows, asr, over = [], {}, {}
    for r in runs:
        before, after = r.record["safety"].get("before") or {}, r.record["safety"]["after"]
        mask = r.record.get("mask_overlap_with_init")
        rows.append([swatch(palette(r.name), r.name), r.method, "yes" if r.record.get("disjoint") else "no",
                     "–" if mask is None else fmt_pct(mask), fmt_pct(before.get("asr")), fmt_pct(after.get("asr")),
                     fmt_pct(before.get("over_refusal")), fmt_pct(after.get("over_refusal"))])
        asr[r.name] = [number(before.get("asr")), number(after.get("asr"))]
        over[r.name] = [number(before.get("over_refusal")), number(after.get("over_refusal"))]
    parts = [table(["run", "method", "disjoint", "mask overlap with earlier", "ASR before", "ASR after",
                    "over-refusal before", "over-refusal after"], rows, numeric=(3, 4, 5, 6, 7))]
    for title, groups in (("ASR before → after continued training", asr), ("over-refusal before → after", over)):
        img = plots.grouped_bars(["before (earlier adapter)", "after"], groups, palette, title=title, percent=True)
        if img:
            parts.append(img)
    parts.append('<p class="note">Each run continued from an earlier adapter (<code>--init-from</code>); "before" is that '
                 "adapter alone, \"after\" the continued run, both on the same held-out safety prompts.</p>")
    return "\n".join(parts)


# (key in a monitor row, label, line style) of the curves drawn per run
MONITOR_CURVES: tuple[tuple[str, str, str], ...] = (
    ("refusal_rate", "refusal (harmful)", "-"), ("over_refusal", "over-refusal (benign)", "--"),
    ("prefill_asr", "prefill ASR@5", ":"),
)


def monitor_series(run: Run) -> list[dict[str, Any]]:
    """A run's monitor measurements, by step: metrics.jsonl's rows (unfinished runs too), else tunelab.json's series."""
    rows = [{"step": r["step"], **r["monitor"]} for r in run.steps if isinstance(r.get("monitor"), dict) and "step" in r]
    if not rows:
        entry = run.record.get("safety_monitor")
        rows = list(entry.get("series") or []) if isinstance(entry, dict) else []
    by_step = {int(r["step"]): r for r in rows}  # a step measured twice (resumed): the later row
    return [by_step[s] for s in sorted(by_step)]


def monitor_plot(runs: Sequence[tuple[str, list[dict[str, Any]], int | None]], palette: Palette) -> Markup | None:
    """Refusal, over-refusal (and prefill ASR) against the step for every run on one axis;
    ``runs`` = (name, series, step it was stopped at or None). A study passes all its arms."""
    import matplotlib

    from tunelab.report import plots

    if not any(series for _, series, _ in runs):
        return None
    used = [c for c in MONITOR_CURVES if any(number(r.get(c[0])) is not None for _, series, _ in runs for r in series)]

    def draw() -> Any:
        fig = plots.new_figure(10.5, 4.2)
        ax = fig.add_subplot()
        for name, series, stopped in runs:
            color = palette(name)
            for key, label, style in used:
                points = [(r["step"], number(r.get(key))) for r in series if number(r.get(key)) is not None]
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, linestyle=style, color=color, linewidth=1.8, marker="o" if len(xs) <= 30 else None,
                            markersize=3, label=f"{name}: {label}" if len(runs) > 1 else label)
            if stopped is not None:
                ax.axvline(stopped, color=color, linewidth=1, alpha=0.6)
        ax.set_ylim(-0.03, 1.03)
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set_title("safety during training (fixed held-out prompts; thin vertical line: stopped there)")
        ax.set_xlabel("step")
        ax.set_ylabel("rate")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return fig

    with matplotlib.rc_context(plots.STYLE):  # the report's style, as plots' own figures get it
        fig = draw()
    return plots.to_img(fig, "safety during training")


@section("monitor", "Safety during training")
def monitor_section(data: ReportData, palette: Palette) -> str | None:
    """Runs trained with ``--monitor-safety K``: refusal / over-refusal (/ prefill ASR) vs step, all on one plot."""
    runs = [(r, monitor_series(r)) for r in data.runs]
    runs = [(r, series) for r, series in runs if series]
    if not runs:
        return None
    rows, lines = [], []
    for r, series in runs:
        entry = r.record.get("safety_monitor") if isinstance(r.record.get("safety_monitor"), dict) else {}
        stopped = entry.get("stopped") if isinstance(entry.get("stopped"), dict) else None
        first, last = series[0], series[-1]
        low = min(series, key=lambda row: number(row.get("refusal_rate")) or 0.0)
        rows.append([swatch(palette(r.name), r.name), r.method, f"{first['step']}–{last['step']}", len(series),
                     fmt_pct(first.get("refusal_rate")), fmt_pct(last.get("refusal_rate")),
                     f"{fmt_pct(low.get('refusal_rate'))} (step {low['step']})",
                     fmt_pct(first.get("over_refusal")), fmt_pct(last.get("over_refusal")),
                     f"step {stopped['step']}, kept {stopped['best_step']}" if stopped else "–",
                     fmt_seconds(entry.get("seconds")) if entry else "–"])
        lines.append((r.name, series, stopped["step"] if stopped else None))
    parts = [table(["run", "method", "steps", "measurements", "refusal first", "refusal last", "refusal lowest",
                    "over-refusal first", "over-refusal last", "stopped", "monitor time"], rows,
                   numeric=(3, 4, 5, 6, 7, 8, 10))]
    img = monitor_plot(lines, palette)
    if img:
        parts.append(img)
    parts.append('<p class="note">Measured during training by <code>--monitor-safety K</code> on a small fixed set '
                 "(HarmBench test-split prompts and benign look-alikes; greedy, short answers, keyword judge): "
                 "solid = refusal rate on harmful prompts, dashed = over-refusal on benign ones, dotted = prefill ASR "
                 "at k = 5 (<code>--monitor-prefill</code>). Small sets move in large steps (1/16 = 6 points).</p>")
    return "\n".join(parts)
