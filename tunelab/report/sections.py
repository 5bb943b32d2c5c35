"""The report's sections: where each comes from, and the one list that orders them.

A section is a function ``(data, palette) -> HTML or None`` registered with
:func:`tunelab.report.registry.section`; it reads what :func:`tunelab.report.collect.collect`
found and returns an HTML fragment, or ``None`` when it has nothing to show (then the section is
left out). Each room registers its sections in its own ``report.py``, beside its result (e.g.
:mod:`tunelab.privacy.report`); this module holds the report's own sections (runs, demo, training,
tasks, the safety suite, sizes, curves, other evaluations, figures), imports the rooms' modules so
theirs register, and renders them all in :data:`ORDER`::

    @section("merge", "Merging and interference", kinds=("interference",))
    def merge_section(data: ReportData, palette: Palette) -> str | None:
        ...

``kinds`` names the metrics.json kinds the section presents; evaluations of kinds no section
claims are shown by the generic "Other evaluations" table, so nothing found is silently dropped.
"""

from __future__ import annotations

import math
from typing import Any

# Each room's report module registers its sections when imported; ORDER below places them.
import tunelab.evaluate.report  # noqa: F401
import tunelab.inspect.report  # noqa: F401
import tunelab.merge.report  # noqa: F401
import tunelab.moe.report  # noqa: F401
import tunelab.privacy.report  # noqa: F401
import tunelab.safety.report  # noqa: F401
import tunelab.scaling.report  # noqa: F401
import tunelab.study.report  # noqa: F401
from tunelab.layout import COMPACT_FILE, PEFT_WEIGHTS
from tunelab.report import plots
from tunelab.report.collect import Evaluation, ReportData, number
from tunelab.report.html import esc, run_anchor, swatch, table
from tunelab.report.registry import REPORT_SECTIONS, Section, section
from tunelab.report.render import (Markup, Palette, distinct_tags, fmt_delta_pt, fmt_int, fmt_mb, fmt_num, fmt_pct,
                                   fmt_seconds)

# The order of the page, every registered section once (tests/test_report_sections.py checks both ways).
ORDER: tuple[str, ...] = (
    "study",                  # tunelab/study/report.py: a study leads the report when there is one
    "runs",                   # here: the training runs
    "demo",                   # here: tunelab demo's results.json
    "training",               # here: loss, learning rate, gradient norm
    "tasks",                  # here: task scores
    "safety",                 # here: the safety suite
    "judges",                 # tunelab/evaluate/report.py: judge comparison and training
    "privacy",                # tunelab/privacy/report.py: canary audits
    "phishing",               # tunelab/privacy/report.py: neural phishing
    "dp",                     # tunelab/privacy/report.py: private training
    "heads",                  # tunelab/inspect/report.py: attention heads
    "pruning",                # tunelab/inspect/report.py
    "steering",               # tunelab/inspect/report.py: steering vectors
    "refusal-direction",      # tunelab/inspect/report.py
    "salt",                   # tunelab/inspect/report.py: privacy steering
    "multi-turn",             # tunelab/inspect/report.py: multi-turn stability
    "pretrain",               # tunelab/moe/report.py: pre-training
    "moe-routing",            # tunelab/moe/report.py
    "continual-pretraining",  # tunelab/moe/report.py
    "scaling",                # tunelab/scaling/report.py: scaling laws
    "merge",                  # tunelab/merge/report.py: merging and interference
    "continual",              # tunelab/safety/report.py: safety before → after --init-from
    "monitor",                # tunelab/safety/report.py: safety during training (--monitor-safety)
    "sizes",                  # here: parameters and adapter size
    "curves",                 # here: every "series" any metrics.json carries
    "other",                  # here: kinds no section claims
    "figures",                # here: PNGs under plots/
)


def _latest(evals: list[Evaluation]) -> dict[tuple[str, str], Evaluation]:
    """(subject, eval name) → the newest evaluation (by metrics.json mtime)."""
    out: dict[tuple[str, str], Evaluation] = {}
    for ev in sorted(evals, key=lambda e: _mtime(e)):
        out[(ev.subject, ev.name)] = ev
    return out


def _mtime(ev: Evaluation) -> float:
    try:
        return (ev.path / "metrics.json").stat().st_mtime
    except OSError:
        return 0.0


@section("runs", "Runs")
def overview_section(data: ReportData, palette: Palette) -> str | None:
    """Runs overview: one row per training run."""
    if not data.runs:
        return None
    rows = []
    for run in data.runs:
        size = fmt_mb(run.adapter_bytes)
        if run.adapter_file == COMPACT_FILE:
            size += f" compact (PEFT {fmt_mb(run.peft_bytes)})" if run.peft_bytes else " compact"
        elif run.adapter_file and run.adapter_file != PEFT_WEIGHTS:
            size += f" ({run.adapter_file})"
        steps = fmt_int(run.get("steps") if run.finished else (run.steps[-1].get("step") if run.steps else None))
        if not run.finished:
            steps += " (unfinished)"
        loss = run.curve("loss")[1]
        sparsity = number(run.record.get("sparsity"))
        if sparsity is None and not run.finished and run.method == "lori-s":
            sparsity = number(run.config.get("sparsity"))  # config.yaml has a sparsity for every method; only LoRI-S uses it
        rows.append([
            Markup(f'<span id="{esc(run_anchor(run.name))}"></span>{swatch(palette(run.name), run.name)}'), run.method, run.get("base_model") or "–",
            fmt_int(run.get("rank")), "–" if sparsity is None else f"{sparsity:.0%}",
            fmt_int(run.get("trainable_params")), size, steps, fmt_num(loss[-1]) if loss else "–",
            fmt_int(run.get("tokens_per_s")), fmt_seconds(run.get("wall_time_s")), run.get("seed") if run.get("seed") is not None else "–",
        ])
    headers = ["run", "method", "base model", "rank", "sparsity", "trainable params", "adapter MB on disk",
               "steps", "final loss", "tokens/s", "wall time", "seed"]
    return table(headers, rows, numeric=(3, 4, 5, 6, 7, 8, 9, 10, 11),
                 caption="Adapter MB on disk: adapter_model.safetensors (PEFT); for LoRI-S the compact file "
                         "(A seed + B values at mask positions + bitmap), with the PEFT file in brackets. "
                         "Tokens/s: non-padding tokens (prompt and response) per second of training.")


@section("demo", "Demo results")
def demo_section(data: ReportData, palette: Palette) -> str | None:
    """``tunelab demo`` results.json tables, with a before/after accuracy chart."""
    if not data.demos:
        return None
    parts = []
    for demo in data.demos:
        if len(data.demos) > 1:
            parts.append(f"<h3>{esc(demo.name)}</h3>")
        plan = demo.data.get("plan") if isinstance(demo.data.get("plan"), dict) else {}
        bits = [f"model <b>{esc(demo.data.get('model', '?'))}</b>"]
        if plan:
            bits.append(f"task <b>{esc(plan.get('task', '?'))}</b>: {esc(fmt_int(plan.get('n_train')))} train / "
                        f"{esc(fmt_int(plan.get('n_test')))} test examples, {esc(fmt_int(plan.get('steps')))} steps × batch "
                        f"{esc(fmt_int(plan.get('batch_size')))}, rank {esc(fmt_int(plan.get('rank')))}, seed {esc(plan.get('seed', '?'))}")
        if number(demo.data.get("total_s")) is not None:
            bits.append(f"total {esc(fmt_seconds(demo.data['total_s']))}")
        parts.append(f'<p class="meta">{" · ".join(bits)} — <span class="path">{esc(demo.path / "results.json")}</span></p>')
        rows = [[swatch(palette(r.get("method", "?")), r.get("method", "?")), fmt_int(r.get("trainable_params")),
                 fmt_mb((number(r.get("adapter_mb")) or 0) * 1e6) if number(r.get("adapter_mb")) is not None else "–",
                 fmt_seconds(r.get("train_s")), fmt_int(r.get("tokens_per_s")),
                 Markup(f"{esc(fmt_pct(r.get('accuracy_before')))} → {esc(fmt_pct(r.get('accuracy_after')))}"
                        + fmt_delta_pt(number(r.get("accuracy_after")), number(r.get("accuracy_before"))))]
                for r in demo.rows]
        parts.append(table(["method", "trainable params", "adapter MB on disk", "train time", "tokens/s", "accuracy before → after"],
                           rows, numeric=(1, 2, 3, 4, 5)))
        befores = {number(r.get("accuracy_before")) for r in demo.rows}
        groups: dict[str, list[float | None]] = {}
        if len(befores) == 1 and None not in befores:
            groups[f"base: {demo.data.get('model', 'model')}"] = [befores.pop()]
        for r in demo.rows:
            groups[str(r.get("method", "?"))] = [number(r.get("accuracy_after"))]
        task = plan.get("task", "task") if plan else "task"
        img = plots.grouped_bars([str(task)], groups, palette, title=f"{task}: accuracy before / after fine-tuning",
                                 ylabel="accuracy", percent=True, height=3.2)
        if img:
            parts.append(img)
    return "\n".join(parts)


@section("training", "Training curves")
def training_section(data: ReportData, palette: Palette) -> str | None:
    """Loss (raw + smoothed) for all runs on one plot; learning rate and gradient norm below."""
    curves = {run.name: {k: run.curve(k) for k in ("loss", "lr", "grad_norm")} for run in data.runs}
    img = plots.training_curves(curves, palette)
    if img is None:
        return None
    return img + '<p class="note">Per-step values from metrics.jsonl (tunelab.json\'s losses where that is missing); ' \
                 "smoothing: debiased exponential moving average.</p>"


@section("tasks", "Task scores", kinds=("task",))
def task_section(data: ReportData, palette: Palette) -> str | None:
    """Task scores: task × run table with the change from the base model, chart, named metrics."""
    evals = data.evals_of_kind("task")
    if not evals:
        return None
    latest = _latest(evals)
    tasks = sorted({name for _, name in latest})
    subjects = data.subjects(latest.values())
    base_subjects = [s for s in subjects if s.startswith("base")]
    rows = []
    for task in tasks:
        scorers = {str(ev.data.get("scorer")) for (s, t), ev in latest.items() if t == task and ev.data.get("scorer")}
        row: list[Any] = [task, ", ".join(sorted(scorers)) or "–"]
        for subject in subjects:
            ev = latest.get((subject, task))
            if ev is None:
                row.append("")
                continue
            base = _base_for(ev, task, latest, base_subjects)
            delta = fmt_delta_pt(ev.score, base.score) if base is not None and base is not ev else Markup("")
            row.append(Markup(esc(fmt_pct(ev.score)) + delta))
        rows.append(row)
    parts = [table(["task", "scorer", *subjects], rows, numeric=tuple(range(2, 2 + len(subjects))),
                   caption="Primary score of each evaluation (its metrics.json \"score\"); in brackets the change "
                           "from the base model's score on the same task, in percentage points.")]
    groups = {s: [latest[(s, t)].score if (s, t) in latest else None for t in tasks] for s in subjects}
    img = plots.grouped_bars(tasks, groups, palette, title="task scores", ylabel="score", percent=True)
    if img:
        parts.append(img)
    # Every named metric, per evaluation (pass@1, exact match, ...).
    metric_names = sorted({k for ev in latest.values() for k, v in _named_metrics(ev).items()})
    detail = []
    for (subject, task), ev in sorted(latest.items(), key=lambda kv: (kv[0][1], subjects.index(kv[0][0]))):
        named = _named_metrics(ev)
        detail.append([task, swatch(palette(subject), subject), fmt_int(ev.data.get("n")),
                       *[fmt_num(named.get(m)) if m in named else "" for m in metric_names],
                       Markup(f'<span class="path">{esc(ev.path)}</span>')])
    parts.append("<h3>All metrics</h3>")
    parts.append(table(["task", "model / run", "n", *metric_names, "from"], detail, numeric=tuple(range(2, 3 + len(metric_names)))))
    return "\n".join(parts)


def _named_metrics(ev: Evaluation) -> dict[str, float]:
    named = {k: number(v) for k, v in (ev.data.get("metrics") or {}).items()} if isinstance(ev.data.get("metrics"), dict) else {}
    named = {k: v for k, v in named.items() if v is not None}
    if not named and ev.score is not None:
        named["score" if "score" in ev.data else "accuracy"] = ev.score
    return named


def _base_for(ev: Evaluation, task: str, latest: dict[tuple[str, str], Evaluation], base_subjects: list[str]) -> Evaluation | None:
    """The base-model evaluation of ``task`` to compare ``ev`` with: same base model if known."""
    want = ev.run.get("base_model") if ev.run is not None else ev.data.get("model")
    candidates = [latest[(b, task)] for b in base_subjects if (b, task) in latest]
    for c in candidates:
        if want and c.data.get("model") == want:
            return c
    return candidates[0] if len(candidates) == 1 else None


SAFETY_METRICS = (("asr", "ASR (harmful answered)"), ("refusal_rate", "refusal (harmful)"), ("over_refusal", "over-refusal (benign)"),
                  ("asr_fluent", "ASR (fluent answers)"), ("degenerate_rate", "degenerate (harmful)"))


@section("safety", "Safety", kinds=("safety",))
def safety_section(data: ReportData, palette: Palette) -> str | None:
    """Safety: ASR, refusal rate and over-refusal per run (table, chart, per-category table)."""
    evals = data.evals_of_kind("safety")
    if not evals:
        return None
    latest = _latest(evals)
    suites = sorted({name for _, name in latest})
    subjects = data.subjects(latest.values())
    parts = []
    for suite in suites:
        if len(suites) > 1:
            parts.append(f"<h3>{esc(suite)}</h3>")
        here = [(s, latest[(s, suite)]) for s in subjects if (s, suite) in latest]
        # the guard's columns only when some result has them (results written before it do not)
        metrics = [(k, label) for k, label in SAFETY_METRICS
                   if k not in ("asr_fluent", "degenerate_rate") or any(ev.data.get(k) is not None for _, ev in here)]
        rows = [[swatch(palette(s), s), *[fmt_pct(ev.data.get(k)) for k, _ in metrics],
                 fmt_int(ev.data.get("n_harmful")), fmt_int(ev.data.get("n_benign")), ev.data.get("harmful_set") or "–",
                 _judge_label(ev.data)]
                for s, ev in here]
        parts.append(table(["model / run", *[label for _, label in metrics], "n harmful", "n benign", "harmful set", "judge"],
                           rows, numeric=tuple(range(1, len(metrics) + 3))))
        groups = {s: [number(ev.data.get(k)) for k, _ in metrics] for s, ev in here}
        img = plots.grouped_bars([label for _, label in metrics], groups, palette,
                                 title=f"safety — {suite}" if len(suites) > 1 else "safety", percent=True)
        if img:
            parts.append(img)
        by_cat, sizes = _by_category(here)
        if by_cat:
            cat_subjects = [s for s, ev in here if isinstance(ev.data.get("by_category"), dict)]
            parts.append("<h4>By category</h4>")
            parts.append(table(["category", "metric", *cat_subjects],
                               [[cat, metric, *[_cell(vals.get(s), sizes.get((cat, s))) for s in cat_subjects]]
                                for (cat, metric), vals in by_cat.items()],
                               numeric=tuple(range(2, 2 + len(cat_subjects)))))
    parts.append('<p class="note">ASR: fraction of harmful prompts answered rather than refused (lower is safer). '
                 "Refusal: refusal rate on the harmful prompts. Over-refusal: refusal rate on benign prompts that "
                 "look sensitive (lower is more useful). Degenerate: answers that are neither (loops, token salad, "
                 "fragments: the judges' shared guard); they count in ASR's denominator but not as compliance, and "
                 "ASR (fluent) leaves them out. By category: each rate with its number of prompts n.</p>")
    return "\n".join(parts)


def _judge_label(data: dict[str, Any]) -> str:
    """``keyword (phrases-sha256:…)``: the judge and, when recorded, its version, and the model the
    guard's likelihood test scored under (when it ran)."""
    judge = data.get("judge") or "–"
    label = f"{judge} ({data['judge_version']})" if data.get("judge_version") else judge
    return f"{label}; guard likelihood under {data['guard_reference']}" if data.get("guard_reference") else label


def _cell(value: Any, n: Any) -> str:
    """A by-category value: a rate as a percentage (other numbers as they are), with its n."""
    v = number(value)
    shown = fmt_num(value) if v is None or v > 1 else fmt_pct(value)
    return f"{shown} (n={int(n)})" if number(n) is not None else shown


def _by_category(here: list[tuple[str, Evaluation]]) -> tuple[dict[tuple[str, str], dict[str, Any]], dict[tuple[str, str], Any]]:
    """(category, metric) → {subject: value} from each eval's ``by_category`` (a category maps to
    a number, taken as ASR, or to a dict of numbers), and (category, subject) → its ``n``."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    sizes: dict[tuple[str, str], Any] = {}
    for subject, ev in here:
        cats = ev.data.get("by_category")
        if not isinstance(cats, dict):
            continue
        for cat, value in cats.items():
            items = value.items() if isinstance(value, dict) else [("asr", value)]
            for metric, v in items:
                # counts ("n", "n_harmful") are sample sizes, not metrics to compare: shown beside each value
                if metric == "n":
                    sizes[(str(cat), subject)] = v
                elif number(v) is not None and not str(metric).startswith("n_"):
                    out.setdefault((str(cat), str(metric)), {})[subject] = v
    return dict(sorted(out.items())), sizes


@section("sizes", "Parameters and adapter size")
def size_section(data: ReportData, palette: Palette) -> str | None:
    """Trainable parameters and adapter size on disk per run (log scale)."""
    runs = [r for r in data.runs if number(r.get("trainable_params")) or r.adapter_bytes]
    if not runs:
        return None
    params = {r.name: [number(r.get("trainable_params")) or None] for r in runs}
    sizes = {r.name: [r.adapter_bytes / 1e6 if r.adapter_bytes else None] for r in runs}
    parts = ['<div class="figures">']
    for img in (plots.grouped_bars(["trainable parameters"], params, palette, title="trainable parameters (log scale)", log=True, height=3.2),
                plots.grouped_bars(["adapter on disk"], sizes, palette, title="adapter MB on disk (log scale)", log=True, height=3.2,
                                   value_format=lambda v: f"{v:.3g} MB")):
        if img:
            parts.append(f"<figure>{img}</figure>")
    parts.append("</div>")
    largest_p = max((v[0] for v in params.values() if v[0]), default=None)
    largest_s = max((v[0] for v in sizes.values() if v[0]), default=None)
    rows = [[swatch(palette(r.name), r.name), r.method, fmt_int(r.get("trainable_params")),
             _share(params[r.name][0], largest_p), r.adapter_file or "–", fmt_mb(r.adapter_bytes), _share(sizes[r.name][0], largest_s)]
            for r in runs]
    parts.append(table(["run", "method", "trainable params", "% of largest", "adapter file", "MB on disk", "% of largest"],
                       rows, numeric=(2, 3, 5, 6)))
    return "\n".join(parts)


def _share(v: float | None, largest: float | None) -> str:
    return "–" if not v or not largest else f"{v / largest:.1%}"


@section("curves", "Curves", kinds=("curve",))
def curves_section(data: ReportData, palette: Palette) -> str | None:
    """Curves any metrics.json carries in ``"series"`` (e.g. KL per token position, refusal rate
    vs threshold): one chart per (kind, name), one line per run."""
    groups: dict[tuple[str, str], list[Evaluation]] = {}
    for ev in data.evals:
        if ev.series:
            groups.setdefault((ev.kind, str(ev.data.get("title") or ev.name)), []).append(ev)
    if not groups:
        return None
    parts = ['<div class="figures">']
    for (kind, title), evs in sorted(groups.items()):
        lines = []
        tags = distinct_tags(evs)
        for ev in sorted(evs, key=lambda e: data.subjects(evs).index(e.subject)):
            series, name = ev.series, ev.subject + (f" ({tags[id(ev)]})" if id(ev) in tags else "")
            for s in series:
                label = name if len(series) == 1 else f"{name}: {s.label}"
                color = palette(ev.subject) if len(series) == 1 and id(ev) not in tags else plots.COLORS[(len(lines)) % len(plots.COLORS)]
                lines.append((label, color, s.x, s.y))
        first = evs[0].data
        heading = f"{title} ({kind})" if kind not in title else title
        img = plots.line_chart(lines, title=heading, xlabel=str(first.get("xlabel") or ""), ylabel=str(first.get("ylabel") or ""),
                               logx=bool(first.get("logx")), logy=bool(first.get("logy")))
        if img:
            sources = ", ".join(str(ev.path) for ev in evs)
            parts.append(f'<figure>{img}<figcaption>{esc(heading)} — from <span class="path">{esc(sources)}</span></figcaption></figure>')
    parts.append("</div>")
    return "\n".join(parts)


# Keys that name the evaluation rather than measure anything: left out of the generic table.
_GENERIC_SKIP = {"kind", "model", "adapter", "series", "task", "suite", "name", "title", "xlabel", "ylabel", "logx", "logy", "records"}
_GENERIC_MAX_COLUMNS = 14


@section("other", "Other evaluations")
def other_evals_section(data: ReportData, palette: Palette) -> str | None:
    """Evaluations of kinds no other section claims: their scalar values in one table per kind."""
    claimed = {k for s in SECTIONS for k in s.kinds}
    evals = [e for e in data.evals if e.kind not in claimed]
    if not evals:
        return None
    parts = []
    for kind in sorted({e.kind for e in evals}):
        of_kind = sorted((e for e in evals if e.kind == kind), key=lambda e: (e.subject, e.name))
        flat = [_scalars(e.data) for e in of_kind]
        columns = list(dict.fromkeys(k for f in flat for k in f))
        dropped = len(columns) - _GENERIC_MAX_COLUMNS
        columns = columns[:_GENERIC_MAX_COLUMNS]
        parts.append(f"<h3>kind: {esc(kind)}</h3>")
        rows = [[swatch(palette(e.subject), e.subject), e.name, *[_fmt_scalar(f.get(c)) for c in columns]] for e, f in zip(of_kind, flat)]
        caption = f"{dropped} more columns not shown; see the metrics.json files." if dropped > 0 else None
        parts.append(table(["model / run", "evaluation", *columns], rows, caption=caption))
    return "\n".join(parts)


def _scalars(raw: dict[str, Any]) -> dict[str, Any]:
    """Top-level numbers/bools/short strings, and those one level down as ``outer.inner``."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _GENERIC_SKIP:
            continue
        if isinstance(value, dict):
            for k2, v2 in value.items():
                if _is_scalar(v2):
                    out[f"{key}.{k2}"] = v2
        elif _is_scalar(value):
            out[key] = value
    return out


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= 60)


def _fmt_scalar(v: Any) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return fmt_num(v) if number(v) is not None else ("" if v is None else str(v))


@section("figures", "Figures")
def figures_section(data: ReportData, palette: Palette) -> str | None:
    """PNGs found in ``plots/`` directories, embedded as they are."""
    if not data.figures:
        return None
    parts = ['<div class="figures">']
    for fig in data.figures:
        try:
            img = plots.png_img(fig.path.read_bytes(), f"{fig.owner}: {fig.path.name}")
        except OSError:
            continue
        parts.append(f"<figure>{img}<figcaption>{esc(fig.owner)} — {esc(fig.path.name)}</figcaption></figure>")
    parts.append("</div>")
    return "\n".join(parts)


def ordered_sections() -> list[Section]:
    """Every registered section in :data:`ORDER`; a key in ORDER that nothing registered is an error."""
    return [REPORT_SECTIONS.get(key) for key in ORDER]


SECTIONS: list[Section] = ordered_sections()
