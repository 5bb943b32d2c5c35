"""The study's table: one row per arm, one column per metric, mean ± sd over seeds, markers where an
arm differs from the reference beyond noise, and a loud flag where a run's audit contradicts its ledger.

:func:`arm_rows` builds the cells once (plain text plus a tone); the terminal's rich tables
(:func:`study_table`, :func:`study_tables`) and the report's HTML table (:mod:`tunelab.study.report`)
both draw from it, so they say the same thing. rich is imported inside the functions that draw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunelab.study.results import (ArmSummary, Measure, PairedDiff, RunRecord, Spread, StudyResult, higher_is_better,
                                   metric_label)
from tunelab.study.summary import summarize

if TYPE_CHECKING:
    from rich.table import Table

WIDTH = 120  # the terminal width the tables are packed for
BETTER, WORSE, FLAG, MUTED = "better", "worse", "flag", "muted"

# Rates in [0, 1], shown in percent (prefill ASR at every k too); drifts are differences of rates.
RATES = {"utility", "forgetting", "asr", "refusal", "over_refusal", "tpr_at_1pct_fpr"}
DRIFTS = {"asr_drift", "refusal_drift"}
# Columns grouped by axis; consecutive groups share a table while it fits in WIDTH.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("task", ("utility", "forgetting")),
    ("safety", ("asr", "refusal", "over_refusal", "asr_drift", "refusal_drift")),
    ("privacy", ("epsilon_lb", "epsilon", "tpr_at_1pct_fpr", "auroc")),
    ("cost", ("wall_time_s", "tokens_per_s", "peak_rss_mb", "peak_cuda_mb", "trainable_params", "adapter_bytes")),
)
FLAG_WORDS = (("epsilon_lb", "ε_LB"), ("epsilon", "ε"))


@dataclass
class Cell:
    """One table cell: its text, a ▲/▼ marker against the reference, and how loud it is."""

    text: str
    marker: str = ""
    tone: str = ""  # "", better, worse, flag, muted


@dataclass
class ArmRow:
    """One arm's row."""

    arm: str
    label: str  # the arm's name, with its ε for DP arms and "(reference)" / "(no training)"
    seeds: Cell
    cells: dict[str, Cell] = field(default_factory=dict)
    flags: Cell = field(default_factory=lambda: Cell(""))
    runs: list[RunRecord] = field(default_factory=list)


def is_rate(name: str) -> bool:
    return name in RATES or name.startswith("prefill_asr_k")


def fmt_value(name: str, v: float | None) -> str:
    """One value of metric ``name`` in its unit (percent for rates, pt for drifts, MB for bytes)."""
    if v is None:
        return "–"
    if is_rate(name):
        return f"{v * 100:.1f}%"
    if name in DRIFTS:
        return f"{_pt(v):+.1f} pt"
    if name == "wall_time_s":
        return f"{v:.0f} s" if v >= 10 else f"{v:.1f} s"
    if name == "adapter_bytes":
        mb = v / 1e6
        return f"{mb:.2f} MB" if mb >= 0.1 else f"{mb:.3g} MB"
    if name in ("trainable_params", "peak_rss_mb", "peak_cuda_mb", "tokens_per_s") and abs(v) >= 100:
        return f"{v:,.0f}"
    if name in ("epsilon", "epsilon_lb"):
        return f"{v:.2f}"
    if name == "auroc":
        return f"{v:.3f}"
    return f"{v:.3g}"


def _pt(v: float) -> float:
    """A rate difference in percentage points, without a "-0.0"."""
    return round(v * 100, 1) + 0.0


def _fmt_sd(name: str, sd: float) -> str:
    if is_rate(name) or name in DRIFTS:
        return f"{sd * 100:.1f}"  # in percentage points, the mean's unit
    if name == "adapter_bytes":
        return f"{sd / 1e6:.2f}"
    if name in ("epsilon", "epsilon_lb", "auroc", "wall_time_s"):
        return fmt_value(name, sd).removesuffix(" s")
    return f"{sd:,.0f}" if abs(sd) >= 100 else f"{sd:.2g}"


def fmt_spread(name: str, s: Spread) -> str:
    """``mean ± sd`` (``81.0% ± 2.1``, ``+5.0 ± 2.1 pt``, ``2.31 ± 0.4``); the mean alone without an sd."""
    if s.mean is None:
        return "–"
    if s.sd is None:
        return fmt_value(name, s.mean)
    if name in DRIFTS:
        return f"{_pt(s.mean):+.1f} ± {s.sd * 100:.1f} pt"
    for unit in (" s", " MB"):  # the unit once, after the spread
        mean = fmt_value(name, s.mean)
        if mean.endswith(unit):
            return f"{mean.removesuffix(unit)} ± {_fmt_sd(name, s.sd)}{unit}"
    return f"{fmt_value(name, s.mean)} ± {_fmt_sd(name, s.sd)}"


def fmt_measure(name: str, m: Measure) -> str:
    """One run's figure with its interval: ``81.0% [75.0, 86.0]``, ``0.81 [0.75, 0.86]``."""
    text = fmt_value(name, m.value)
    if m.value is None or not isinstance(m.ci95, (list, tuple)) or len(m.ci95) != 2 or None in m.ci95:
        return text
    lo, hi = float(m.ci95[0]), float(m.ci95[1])
    if is_rate(name):
        return f"{text} [{lo * 100:.1f}, {hi * 100:.1f}]"
    if name in DRIFTS:
        return f"{text} [{_pt(lo):+.1f}, {_pt(hi):+.1f}]"
    return f"{text} [{fmt_value(name, lo)}, {fmt_value(name, hi)}]"


def fmt_flag(flag: str) -> str:
    """``"epsilon_lb > epsilon"`` → ``"ε_LB > ε"``."""
    for word, symbol in FLAG_WORDS:
        flag = flag.replace(word, symbol)
    return flag


def summaries_of(result: StudyResult) -> tuple[list[ArmSummary], list[PairedDiff]]:
    """The study's own summary and paired differences; computed from its runs when it has none."""
    if result.summary:
        return result.summary, result.paired
    return summarize(result.runs, arm_order(result), result.reference or "")


def arm_order(result: StudyResult) -> list[str]:
    """The arms in the study's order (those only the runs name, after)."""
    return list(dict.fromkeys([*result.arm_names(), *(r.arm for r in result.runs)]))


def arm_rows(result: StudyResult) -> list[ArmRow]:
    """Every arm's cells, for every metric in ``result.metric_names()``."""
    summaries, paired = summaries_of(result)
    by_arm = {s.arm: s for s in summaries}
    diffs = {p.arm: p for p in paired}
    specs = {a.get("name"): a for a in result.arms if isinstance(a, dict)}
    metrics = result.metric_names()
    rows = []
    for arm in arm_order(result):
        runs = result.runs_of(arm)
        done = [r for r in runs if r.status == "done"]
        summary = by_arm.get(arm) or ArmSummary(arm=arm)
        row = ArmRow(arm=arm, label=_arm_label(arm, specs.get(arm, {}), result.reference), seeds=_seeds_cell(runs),
                     runs=runs)
        for name in metrics:
            s = summary.metrics.get(name)
            if s is None or s.mean is None:
                cell = Cell("–", tone=MUTED)
            elif s.n == 1 and len(done) >= 1:
                # One seed: no spread to show, so show the run's own interval.
                run = next((r for r in done if name in r.metrics), None)
                cell = Cell(fmt_measure(name, run.metrics[name]) if run else fmt_spread(name, s))
            else:
                cell = Cell(fmt_spread(name, s))
            d = diffs.get(arm)
            diff = d.metrics.get(name) if d is not None else None
            if diff is not None and diff.ci95 is not None and diff.mean is not None and (diff.ci95[0] > 0 or diff.ci95[1] < 0):
                up = diff.mean > 0
                better = higher_is_better(name)
                cell.marker = "▲" if up else "▼"
                cell.tone = "" if better is None else BETTER if up == better else WORSE
            row.cells[name] = cell
        row.flags = _flags_cell(runs)
        rows.append(row)
    return rows


def _arm_label(arm: str, spec: dict[str, Any], reference: str | None) -> str:
    label = arm
    eps = spec.get("epsilon")
    if isinstance(eps, (int, float)) and not isinstance(eps, bool):
        label += f" (ε={eps:g})"
    if arm == reference:
        label += " (reference)"
    elif arm == "base":
        label += " (no training)"
    return label


def _seeds_cell(runs: list[RunRecord]) -> Cell:
    done = sum(r.status == "done" for r in runs)
    failed = sum(r.status == "failed" for r in runs)
    text = f"{done}/{len(runs)}" + (f" ({failed} failed)" if failed else "")
    return Cell(text, tone=WORSE if failed else "")


def _flags_cell(runs: list[RunRecord]) -> Cell:
    """Every run's flags (with its seed), loud; a safety-monitor stop, quiet."""
    seeds: dict[str, list[str]] = {}
    for r in runs:
        for f in r.flags:
            seeds.setdefault(fmt_flag(f), []).append(str(r.seed))
    if seeds:
        return Cell("⚠ " + "; ".join(f"{f} (seed{'s' if len(ss) > 1 else ''} {', '.join(ss)})" for f, ss in seeds.items()),
                    tone=FLAG)
    stopped = [str(r.seed) for r in runs if r.stopped]
    if stopped:
        return Cell(f"stopped early (seed {', '.join(stopped)})", tone=MUTED)
    return Cell("")


def _group(name: str) -> int:
    if name.startswith("prefill_asr_k"):
        return 1
    return next((i for i, (_, names) in enumerate(GROUPS) if name in names), len(GROUPS))


def axis_of(name: str) -> str:
    """The axis a metric is on: task, safety, privacy, cost or other."""
    i = _group(name)
    return GROUPS[i][0] if i < len(GROUPS) else "other"


def metric_groups(metrics: list[str]) -> list[list[str]]:
    """``metrics`` split by axis (task, safety, privacy, cost, other), order kept; empty groups dropped."""
    out: list[list[str]] = [[] for _ in range(len(GROUPS) + 1)]
    for name in metrics:
        out[_group(name)].append(name)
    return [g for g in out if g]


def _width(rows: list[ArmRow], name: str) -> int:
    cells = [len(r.cells[name].text) + (2 if r.cells[name].marker else 0) for r in rows]
    return max([len(metric_label(name)), *cells]) + 3  # rich's padding and the column rule


def study_tables(result: StudyResult, width: int = WIDTH) -> list["Table"]:
    """The study as rich tables that each fit ``width`` columns: the metrics packed by axis (task and
    safety, privacy, cost, ...), the arm and its seeds in every table, the flags (when a run has
    any) in the first table with room for them, else in one of their own."""
    rows = arm_rows(result)
    fixed = max([len("arm"), *(len(r.label) for r in rows)]) + 3 + max([5, *(len(r.seeds.text) for r in rows)]) + 3 + 4
    flag_w = max([0, *(len(r.flags.text) + 3 for r in rows)])
    tables: list[list[str]] = []
    current: list[str] = []
    used = fixed
    for group in metric_groups(result.metric_names()):
        need = sum(_width(rows, m) for m in group)
        if current and used + need > width:
            tables.append(current)
            current, used = [], fixed
        for m in group:
            w = _width(rows, m)
            if current and used + w > width:  # one axis too wide on its own: split it
                tables.append(current)
                current, used = [], fixed
            current.append(m)
            used += w
    if current or not tables:
        tables.append(current)
    # The flags go in the first table with room for them, else in a table of their own (never cut).
    widths = [fixed + sum(_width(rows, m) for m in t) for t in tables]
    at = next((i for i, w in enumerate(widths) if w + flag_w <= width), None) if flag_w else None
    if flag_w and at is None:
        tables.append([])
        at = len(tables) - 1
    return [_rich_table(result, rows, metrics, flags=i == at, caption=i == len(tables) - 1, first=i == 0)
            for i, metrics in enumerate(tables)]


def study_table(result: StudyResult, metrics: list[str] | None = None) -> "Table":
    """One rich table: a row per arm, a column per metric (``result.metric_names()`` unless given),
    cells mean ± sd (one seed: the value and its CI), ▲/▼ where the paired difference from the
    reference excludes 0 (green when better, red when worse), and a red flag column when a run
    carries flags. Wider than a terminal for a full study: :func:`study_tables` splits it."""
    return _rich_table(result, arm_rows(result), result.metric_names() if metrics is None else metrics, flags=True,
                       caption=True)


_STYLES = {BETTER: "green", WORSE: "red", MUTED: "dim", FLAG: "bold white on red"}


def _rich_table(result: StudyResult, rows: list[ArmRow], metrics: list[str], *, flags: bool, caption: bool,
                first: bool = True) -> "Table":
    from rich.table import Table
    from rich.text import Text

    def text(cell: Cell) -> Text:
        loud = cell.tone in (MUTED, FLAG) or (cell.tone == WORSE and not cell.marker)  # e.g. "2/3 (1 failed)"
        out = Text(cell.text, style=_STYLES.get(cell.tone, "") if loud else "")
        if cell.marker:
            out.append(" " + cell.marker, style=_STYLES.get(cell.tone, "bold"))
        return out

    show_flags = flags and any(r.flags.text for r in rows)
    title = f"study {result.name}" if result.name else "study"
    if result.model or result.task:
        title += f" — {result.model or '?'} on {result.task or '?'}"
    if not first:  # the study's name once; the later tables say which axes they hold
        title = " · ".join(dict.fromkeys(axis_of(m) for m in metrics)) or "flags"
    note = (f"mean ± sd over seeds (one seed: the value [95% CI]); ▲/▼: the paired difference from "
               f"{result.reference} excludes 0 (green better, red worse)") if result.reference else \
        "mean ± sd over seeds (one seed: the value [95% CI])"
    table = Table(title=title, caption=note if caption else None, caption_justify="left", header_style="bold")
    table.add_column("arm", no_wrap=True)
    table.add_column("seeds", justify="right", no_wrap=True)
    for m in metrics:
        table.add_column(metric_label(m), justify="right", no_wrap=True)
    if show_flags:
        table.add_column("flags", style="bold red")
    for r in rows:
        cells = [text(r.cells.get(m, Cell("–", tone=MUTED))) for m in metrics]
        extra = [text(r.flags)] if show_flags else []
        table.add_row(Text(r.label, style="bold" if r.arm == result.reference else ""), text(r.seeds), *cells, *extra)
    return table


__all__ = ["ArmRow", "Cell", "arm_rows", "fmt_measure", "fmt_spread", "fmt_value", "metric_groups", "study_table",
           "study_tables", "summaries_of"]
