"""The report's "Study" section: a study's table, its Pareto view and bars, links to every arm's runs.

Registered with :func:`tunelab.report.registry.section`; ``study`` is first in
:data:`tunelab.report.sections.ORDER`, so a study leads the report. ``tunelab report STUDY_DIR``
finds ``study.json`` (an evaluation of kind ``study``, see :mod:`tunelab.report.collect`) and the
arms' run directories below it; the study is read as its type, :class:`StudyResult`. matplotlib
loads only when a figure is drawn.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.report.collect import Evaluation, ReportData, Run, by_subject
from tunelab.report.html import esc, run_anchor, swatch, table
from tunelab.report.registry import section
from tunelab.report.render import Markup, Palette, fmt_int, fmt_seconds
from tunelab.study.results import StudyResult, metric_label
from tunelab.study.table import BETTER, FLAG, GROUPS, MUTED, WORSE, ArmRow, Cell, arm_rows, metric_groups

_CLASSES = {BETTER: "delta-pos", WORSE: "delta-neg", MUTED: "muted"}


@section("study", "Study", kinds=("study",))
def study_section(data: ReportData, palette: Palette) -> str | None:
    """Every study found: what it compared, its table (mean ± sd over seeds, ▲/▼ against the
    reference, flags), the Pareto view and per-metric bars, and links to each arm's runs."""
    evals = data.evals_of_kind("study")
    if not evals:
        return None
    parts = []
    for ev in by_subject(evals):
        if len(evals) > 1:
            parts.append(f"<h3>{esc(ev.subject)}</h3>")
        try:
            result = StudyResult.from_dict(ev.data, source=ev.path / ev.file)
        except (TunelabError, TypeError, ValueError, AttributeError, KeyError) as exc:
            # a study.json of another shape (hand-edited, another version): say so, draw the rest
            why = str(exc) if isinstance(exc, TunelabError) else f"{ev.path / ev.file}: {type(exc).__name__}: {exc}"
            parts.append(f'<p class="note error">skipped {esc(why)}</p>')
            continue
        parts.append(_study_html(ev, result, data))
    return "\n".join(parts)


def _study_html(ev: Evaluation, result: StudyResult, data: ReportData) -> str:
    from tunelab.report import plots
    from tunelab.study.plots import arm_colors, bars_figure, pareto_figure

    colors = arm_colors(result)
    rows = arm_rows(result)
    parts = [_meta(ev, result)]
    groups = metric_groups(result.metric_names())
    # task and safety side by side in the first table; privacy, cost (and anything else) below
    quality = {*GROUPS[0][1], *GROUPS[1][1]}
    first = [m for g in groups for m in g if m in quality or m.startswith("prefill_asr_k")]
    rest = [g for g in groups if not any(m in first for m in g)]
    links = _run_links(ev, result, data)
    for i, metrics in enumerate([first, *rest] if first else rest or [[]]):
        parts.append(_html_table(rows, metrics, colors, links if i == 0 else None, first=i == 0))
    parts.append(f'<p class="note">Mean ± sd over each arm\'s finished seeds (one seed: the value and its 95% CI). '
                 f"▲/▼: the paired difference from the reference arm <b>{esc(result.reference or '–')}</b> "
                 "(same seeds) has a 95% t interval excluding 0, green when better, red when worse. Rates in percent; "
                 "Δ: after − before fine-tuning, in percentage points. A red flag: a run's canary audit found "
                 "ε_LB above the ε its ledger spent, or another warning the study raised.</p>")
    figs = []
    for fig, alt in ((pareto_figure(result), "study: utility vs safety drift"), (bars_figure(result), "study: per-metric bars")):
        if fig is not None:
            figs.append(f"<figure>{plots.to_img(fig, alt)}</figure>")
    if figs:
        parts.append('<div class="figures">' + "".join(figs) + "</div>")
    parts.append(f'<p class="note">from <span class="path">{esc(ev.path / ev.file)}</span></p>')
    return "\n".join(parts)


def _meta(ev: Evaluation, result: StudyResult) -> str:
    bits = [f"model <b>{esc(result.model or '?')}</b>", f"task <b>{esc(result.task or '?')}</b>"
            + (f" (scorer {esc(result.scorer)})" if result.scorer else "")]
    d = result.data
    if d.get("n_train") is not None or d.get("n_test") is not None:
        bits.append(f"{esc(fmt_int(d.get('n_train')))} train / {esc(fmt_int(d.get('n_test')))} test examples")
    budget = result.budget
    if budget:
        steps = f"{fmt_int(budget.get('max_steps'))} steps" if budget.get("max_steps") is not None else \
            f"{budget.get('epochs')} epochs" if budget.get("epochs") is not None else ""
        batch = f"batch {fmt_int(budget.get('batch_size'))}" if budget.get("batch_size") is not None else ""
        bits.append(esc(" × ".join(b for b in (steps, batch) if b)) or "")
    if result.seeds:
        bits.append(f"seeds {esc(', '.join(str(s) for s in result.seeds))} (paired)")
    canaries = result.canaries
    if isinstance(canaries, dict) and canaries.get("count") is not None:
        bits.append(f"{esc(fmt_int(canaries.get('count')))} canaries ({esc(fmt_int(canaries.get('members')))} inserted, "
                    "the same in every arm)")
    if result.wall_time_s is not None:
        bits.append(f"total {esc(fmt_seconds(result.wall_time_s))}")
    return '<p class="meta">' + " · ".join(b for b in bits if b) + "</p>"


def _cell_html(cell: Cell) -> Markup:
    text = esc(cell.text)
    if cell.tone == FLAG:
        return Markup(f'<b class="error">{text}</b>')
    if cell.tone == MUTED:
        text = f'<span class="muted">{text}</span>'
    if cell.marker:
        cls = _CLASSES.get(cell.tone, "")
        text += f' <span class="{cls}">{esc(cell.marker)}</span>' if cls else f" {esc(cell.marker)}"
    elif cell.tone == WORSE:
        text = f'<span class="delta-neg">{text}</span>'
    return Markup(text)


def _html_table(rows: list[ArmRow], metrics: list[str], colors: dict[str, str],
                links: dict[str, Markup] | None, *, first: bool) -> Markup:
    """One table of the study: the arms' anchors, flags and run links in the first."""
    show_flags = first and any(r.flags.text for r in rows)
    headers = ["arm", "seeds", *(metric_label(m) for m in metrics), *(["flags"] if show_flags else []),
               *(["runs"] if links else [])]
    body = []
    for r in rows:
        label = swatch(colors.get(r.arm, "#9a9a9a"), r.label)
        anchor = f'<span id="{esc(arm_anchor(r.arm))}"></span>' if first else ""
        line = [Markup(anchor + label), _cell_html(r.seeds),
                *(_cell_html(r.cells.get(m, Cell("–", tone=MUTED))) for m in metrics)]
        if show_flags:
            line.append(_cell_html(r.flags))
        if links:
            line.append(links.get(r.arm, Markup("–")))
        body.append(line)
    return table(headers, body, numeric=tuple(range(1, 2 + len(metrics))))


def arm_anchor(arm: str) -> str:
    """The element id of an arm's row in the Study section."""
    return "study-arm-" + run_anchor(arm).removeprefix("run-")


def _run_links(ev: Evaluation, result: StudyResult, data: ReportData) -> dict[str, Markup]:
    """arm → its runs, each a link to the run's row in the "Runs" section when the report collected
    it (the arms are ordinary run directories below the study's), else its path."""
    by_path: dict[Path, Run] = {}
    for run in data.runs:
        by_path[run.path.resolve()] = run
    out: dict[str, Markup] = {}
    for arm in dict.fromkeys(r.arm for r in result.runs):
        items = []
        for rec in result.runs_of(arm):
            if not rec.dir:
                continue
            run = by_path.get((ev.path / rec.dir).resolve())
            label = f"seed {rec.seed}"
            if run is not None:
                items.append(f'<a href="#{esc(run_anchor(run.name))}">{esc(label)}</a>')
            else:
                items.append(f'{esc(label)}: <span class="path">{esc(rec.dir)}</span>')
        if items:
            out[arm] = Markup(" · ".join(items))
    return out


__all__ = ["arm_anchor", "study_section"]
