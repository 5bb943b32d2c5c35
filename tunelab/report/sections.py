"""The report's sections: a registry of functions ``(data, palette) -> HTML or None``.

Each section reads what :func:`tunelab.report.collect.collect` found and returns an HTML
fragment, or ``None`` when it has nothing to show (then the section is left out). The page shows
them in :data:`SECTIONS` order. A later feature adds one function and one line::

    def merge_section(data: ReportData, palette: Palette) -> str | None:
        evals = data.evals_of_kind("merge")
        if not evals:
            return None
        return table([...], [...])

    SECTIONS.insert(index_of("safety") + 1, Section("merge", "Merge interference", merge_section, kinds=("merge",)))

``kinds`` names the metrics.json kinds the section presents; evaluations of kinds no section
claims are shown by the generic "Other evaluations" table, so nothing found is silently dropped.
"""

from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

from tunelab.layout import COMPACT_FILE, PEFT_WEIGHTS
from tunelab.report import plots
from tunelab.report.collect import Evaluation, ReportData, number
from tunelab.report.html import esc, swatch, table
from tunelab.report.plots import Markup, Palette

SectionFn = Callable[[ReportData, Palette], "str | None"]


@dataclass(frozen=True)
class Section:
    """One registered section: anchor id, heading, renderer, and the eval kinds it presents."""

    key: str
    title: str
    render: SectionFn
    kinds: tuple[str, ...] = ()


# --- formatting -----------------------------------------------------------------------------

def fmt_int(v: Any) -> str:
    """1234567 → ``1,234,567``; missing → ``–``."""
    n = number(v)
    return "–" if n is None else f"{round(n):,}"


def fmt_pct(v: Any) -> str:
    """0.79 → ``79.0%``."""
    n = number(v)
    return "–" if n is None else f"{n:.1%}"


def fmt_num(v: Any, digits: int = 4) -> str:
    """A number with ``digits`` significant digits (thousands separated when large)."""
    n = number(v)
    if n is None:
        return "–" if v is None else str(v)
    if n == int(n) and abs(n) < 1e15:
        return f"{int(n):,}"
    if abs(n) >= 10 ** digits:
        return f"{n:,.0f}"
    return f"{n:.{digits}g}"


def fmt_mb(nbytes: Any) -> str:
    """Bytes → megabytes (10⁶), two decimals, or three significant digits when tiny."""
    n = number(nbytes)
    if n is None:
        return "–"
    mb = n / 1e6
    return f"{mb:.2f}" if mb >= 0.1 else f"{mb:.3g}"


def fmt_seconds(v: Any) -> str:
    """62.3 → ``62 s``; 277 → ``4 min 37 s``."""
    n = number(v)
    if n is None:
        return "–"
    if n < 100:
        return f"{n:.1f} s" if n < 10 else f"{n:.0f} s"
    minutes, seconds = divmod(round(n), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def fmt_delta_pt(after: float | None, before: float | None) -> Markup:
    """The change in percentage points, coloured: ``+79.0 pt``."""
    if after is None or before is None:
        return Markup("")
    d = (after - before) * 100
    cls = "delta-pos" if d > 0 else "delta-neg" if d < 0 else "muted"
    return Markup(f' <span class="{cls}">({d:+.1f} pt)</span>')


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


# --- sections -------------------------------------------------------------------------------

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
            swatch(palette(run.name), run.name), run.method, run.get("base_model") or "–",
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


def training_section(data: ReportData, palette: Palette) -> str | None:
    """Loss (raw + smoothed) for all runs on one plot; learning rate and gradient norm below."""
    curves = {run.name: {k: run.curve(k) for k in ("loss", "lr", "grad_norm")} for run in data.runs}
    img = plots.training_curves(curves, palette)
    if img is None:
        return None
    return img + '<p class="note">Per-step values from metrics.jsonl (tunelab.json\'s losses where that is missing); ' \
                 "smoothing: debiased exponential moving average.</p>"


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


SAFETY_METRICS = (("asr", "ASR (harmful answered)"), ("refusal_rate", "refusal (harmful)"), ("over_refusal", "over-refusal (benign)"))


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
        rows = [[swatch(palette(s), s), *[fmt_pct(ev.data.get(k)) for k, _ in SAFETY_METRICS],
                 fmt_int(ev.data.get("n_harmful")), fmt_int(ev.data.get("n_benign")), ev.data.get("judge") or "–"]
                for s, ev in here]
        parts.append(table(["model / run", *[label for _, label in SAFETY_METRICS], "n harmful", "n benign", "judge"],
                           rows, numeric=(1, 2, 3, 4, 5)))
        groups = {s: [number(ev.data.get(k)) for k, _ in SAFETY_METRICS] for s, ev in here}
        img = plots.grouped_bars([label for _, label in SAFETY_METRICS], groups, palette,
                                 title=f"safety — {suite}" if len(suites) > 1 else "safety", percent=True)
        if img:
            parts.append(img)
        by_cat = _by_category(here)
        if by_cat:
            cat_subjects = [s for s, ev in here if isinstance(ev.data.get("by_category"), dict)]
            parts.append("<h4>By category</h4>")
            parts.append(table(["category", "metric", *cat_subjects],
                               [[cat, metric, *[fmt_num(vals.get(s)) if number(vals.get(s)) is None or number(vals.get(s)) > 1
                                                else fmt_pct(vals.get(s)) for s in cat_subjects]]
                                for (cat, metric), vals in by_cat.items()],
                               numeric=tuple(range(2, 2 + len(cat_subjects)))))
    parts.append('<p class="note">ASR: fraction of harmful prompts answered rather than refused (lower is safer). '
                 "Refusal: refusal rate on the harmful prompts. Over-refusal: refusal rate on benign prompts that "
                 "look sensitive (lower is more useful).</p>")
    return "\n".join(parts)


def continual_section(data: ReportData, palette: Palette) -> str | None:
    """Runs trained ``--init-from`` an earlier adapter: safety before → after (tunelab.json ``safety``)."""
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


def _by_category(here: list[tuple[str, Evaluation]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(category, metric) → {subject: value} from each eval's ``by_category``: a category maps to
    a number (taken as ASR) or to a dict of numbers."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for subject, ev in here:
        cats = ev.data.get("by_category")
        if not isinstance(cats, dict):
            continue
        for cat, value in cats.items():
            items = value.items() if isinstance(value, dict) else [("asr", value)]
            for metric, v in items:
                # counts ("n", "n_harmful") are sample sizes, not metrics to compare
                if number(v) is not None and metric != "n" and not str(metric).startswith("n_"):
                    out.setdefault((str(cat), str(metric)), {})[subject] = v
    return dict(sorted(out.items()))


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
        tags = _distinct_tags(evs)
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


def _distinct_tags(evs: list[Evaluation]) -> dict[int, str]:
    """For evaluations that share a column (two audits of one run), the part of their paths that
    differs: runs/x/depth-plain/prefill vs runs/x/depth-plain-heldout/prefill -> depth-plain(-heldout)."""
    by_subject: dict[str, list[Evaluation]] = {}
    for ev in evs:
        by_subject.setdefault(ev.subject, []).append(ev)
    tags: dict[int, str] = {}
    for group in by_subject.values():
        if len(group) < 2:
            continue
        parts = [ev.path.parts for ev in group]
        head = 0
        while all(len(p) > head for p in parts) and len({p[head] for p in parts}) == 1:
            head += 1
        tail = 0
        while all(len(p) - tail > head for p in parts) and len({p[len(p) - 1 - tail] for p in parts}) == 1:
            tail += 1
        for ev, p in zip(group, parts):
            tags[id(ev)] = "/".join(p[head:len(p) - tail]) or ev.path.name
    return tags


# Keys that name the evaluation rather than measure anything: left out of the generic table.
_GENERIC_SKIP = {"kind", "model", "adapter", "series", "task", "suite", "name", "title", "xlabel", "ylabel", "logx", "logy", "records"}
_GENERIC_MAX_COLUMNS = 14


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


SECTIONS: list[Section] = [
    Section("runs", "Runs", overview_section),
    Section("demo", "Demo results", demo_section),
    Section("training", "Training curves", training_section),
    Section("tasks", "Task scores", task_section, kinds=("task",)),
    Section("safety", "Safety", safety_section, kinds=("safety",)),
    Section("continual", "Continual learning: safety before → after", continual_section),
    Section("sizes", "Parameters and adapter size", size_section),
    Section("curves", "Curves", curves_section, kinds=("curve",)),
    Section("other", "Other evaluations", other_evals_section),
    Section("figures", "Figures", figures_section),
]


def index_of(key: str) -> int:
    """Position of the section ``key`` in :data:`SECTIONS` (to insert a new one next to it)."""
    return next(i for i, s in enumerate(SECTIONS) if s.key == key)


# --- merge (tunelab merge / tunelab inspect interference) ----------------------------------------

def merge_section(data: ReportData, palette: Palette) -> str | None:
    """Merges (method, sources, weights) and interference metrics: heatmaps, pairs, single vs merged."""
    merges = [r for r in data.runs if r.method == "merge"]
    evals = data.evals_of_kind("interference")
    if not merges and not evals:
        return None
    parts = []
    if merges:
        rows = [[swatch(palette(r.name), r.name), r.get("merge_method") or "–",
                 ", ".join(str(s) for s in r.get("sources") or []) or "–",
                 ", ".join(fmt_num(w) for w in r.get("weights") or []) or "–", fmt_num(r.get("density")),
                 r.get("seed") if r.get("seed") is not None else "–", r.get("output_kind") or "–", fmt_int(r.get("rank")),
                 r.get("base_model") or "–"] for r in merges]
        parts.append(table(["merge", "method", "sources", "weights", "density", "seed", "output", "rank", "base model"], rows,
                           caption="output: a PEFT adapter (cat/linear) or a merged model directory (base + ΔW)."))
    for ev in sorted(evals, key=lambda e: (e.subject, str(e.path))):
        d = ev.data
        labels = [str(x) for x in d.get("adapters") or []]
        heading = ev.subject + (f" — {d['merge_method']} merge" if d.get("merge_method") else "")
        parts.append(f"<h3>{esc(heading)}</h3>")
        figs = [plots.heatmap(labels, d.get("cosine") or [], title="cosine of flattened ΔW"),
                plots.heatmap(labels, d.get("subspace_overlap") or [], title="subspace overlap of A (mean cos of principal angles)",
                              vmin=0.0, vmax=1.0, cmap="viridis")]
        tasks = d.get("tasks") or []
        if tasks:
            names = [f"{r.get('task')} ({r.get('adapter')})" for r in tasks]
            figs.append(plots.grouped_bars(names, {"single adapter": [number(r.get("single")) for r in tasks],
                                                   "merged": [number(r.get("merged")) for r in tasks]},
                                           palette, title="task score: single adapter vs merged", ylabel="score", percent=True))
        parts.append('<div class="figures">' + "".join(f"<figure>{f}</figure>" for f in figs if f) + "</div>")
        pairs = [p for p in d.get("pairs") or [] if isinstance(p, dict)]
        types = list(dict.fromkeys(t for p in pairs for t in (p.get("cosine_by_module_type") or {})))
        if pairs:
            rows = [[p.get("a"), p.get("b"), fmt_num(p.get("cosine"), 3), fmt_num(p.get("subspace_overlap"), 3),
                     fmt_num(p.get("mask_intersection_over_min"), 3), fmt_num(p.get("mask_jaccard"), 3),
                     *[fmt_num((p.get("cosine_by_module_type") or {}).get(t), 3) for t in types]] for p in pairs]
            parts.append(table(["adapter", "adapter", "cos ΔW", "subspace overlap", "mask ∩/min", "mask Jaccard",
                                *[f"cos {t}" for t in types]], rows, numeric=tuple(range(2, 6 + len(types))),
                               caption="cos ΔW: cosine of the flattened weight deltas (all modules; then per module type). "
                                       "Subspace overlap: mean cosine of the principal angles between the row spaces of the A's "
                                       "(1 = same input directions, ≈0 = orthogonal). Mask overlap: LoRI-S B masks or LoTA "
                                       "task-vector supports (– where not sparse or not comparable)."))
        if tasks:
            rows = [[r.get("task"), r.get("adapter"), fmt_pct(r.get("single")), fmt_pct(r.get("merged")),
                     Markup(f'<span class="{"delta-neg" if (number(r.get("drop")) or 0) > 0 else "muted"}">'
                            f'{esc(fmt_num(None if number(r.get("drop")) is None else 100 * number(r.get("drop")), 3))} pt</span>')]
                    for r in tasks]
            parts.append(table(["task", "adapter", "single", "merged", "drop"], rows, numeric=(2, 3, 4),
                               caption=f"Scores on {fmt_int(d.get('limit'))} examples per task; drop = single − merged."))
        parts.append(f'<p class="note">from <span class="path">{esc(ev.path)}</span></p>')
    return "\n".join(parts)


SECTIONS.insert(index_of("safety") + 1, Section("merge", "Merging and interference", merge_section, kinds=("interference",)))


# --- privacy audit (tunelab audit privacy) -------------------------------------------------------

PRIVACY_FPRS = (0.001, 0.01, 0.1)  # the audit's default TPR@FPR targets, used when a file names none
ROC_FLOOR = 1e-3  # lower end of the log-log ROC axes (lower still when a curve has smaller values)
NEAR_CEILING = 0.9  # ε_LB at this share of its ceiling: the canaries, not the model, limit the bound
_SCORE_STYLES: tuple[Any, ...] = ("-", "--", ":", "-.", (0, (6, 2, 1, 2, 1, 2)))  # one per score, five scores
_EPS_PALETTE = {"ε_LB": "#1f77b4", "ceiling": "#c8c8c8"}  # fixed: these bars are not runs


@dataclass(frozen=True)
class _PrivacyRow:
    """One (audit, attack score) pair: a table row, an ROC line."""

    ev: Evaluation
    label: str  # the subject, tagged when one subject has several audits
    family: str
    score: str
    headline: bool
    values: dict[str, Any]  # metrics.json scores[score]


def privacy_section(data: ReportData, palette: Palette) -> str | None:
    """Canary audits: TPR@FPR and AUROC with CIs, one-run ε lower bounds beside their ceilings,
    log-log ROC curves per canary family, and the audits' warnings.

    Reads only the evaluations' metrics.json (already loaded): never the canaries themselves.
    """
    evals = data.evals_of_kind("privacy-audit")
    if not evals:
        return None
    order = data.subjects(evals)
    evals = sorted(evals, key=lambda e: (order.index(e.subject), str(e.path)))
    tags = _distinct_tags(evals)
    rows: list[_PrivacyRow] = []
    skipped: list[Evaluation] = []
    for ev in evals:
        found = _privacy_rows(ev, ev.subject + (f" ({tags[id(ev)]})" if id(ev) in tags else ""))
        rows += found
        if not found:
            skipped.append(ev)
    parts = []
    if rows:
        parts.append(_privacy_table(rows, palette))
        figs = [*_privacy_roc_figures(rows, palette, tags), _privacy_epsilon_figure(rows)]
        figs = [f for f in figs if f]
        if figs:
            parts.append('<div class="figures">' + "".join(figs) + "</div>")
        warnings = list(dict.fromkeys(f"{r.label}: {w}" for r in rows
                                      for w in (r.values.get("warning"), r.ev.data.get("warning")) if isinstance(w, str) and w))
        if warnings:
            parts.append('<p class="note">⚠ Warnings from the audits:</p><ul class="muted">'
                         + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>")
        sources = ", ".join(dict.fromkeys(str(r.ev.path) for r in rows))
        parts.append(f'<p class="note">from <span class="path">{esc(sources)}</span></p>')
    if skipped:
        # Claimed by this section, so say so rather than drop them silently.
        parts.append('<p class="note">Skipped (no attack scores in metrics.json): <span class="path">'
                     + esc(", ".join(str(e.path) for e in skipped)) + "</span></p>")
    return "\n".join(parts)


def _privacy_rows(ev: Evaluation, label: str) -> list[_PrivacyRow]:
    """The (score, values) pairs of one audit, its headline score first."""
    scores = ev.data.get("scores")
    if not isinstance(scores, dict):
        return []
    scores = {str(k): v for k, v in scores.items() if isinstance(v, dict)}
    headline = _privacy_headline(ev, scores)
    canaries = ev.data.get("canaries") if isinstance(ev.data.get("canaries"), dict) else {}
    family = canaries.get("family")
    family = str(family) if isinstance(family, str) and family else "?"
    names = sorted(scores, key=lambda s: s != headline)  # stable: the file's order after the headline
    return [_PrivacyRow(ev, label, family, s, s == headline, scores[s]) for s in names]


def _privacy_headline(ev: Evaluation, scores: dict[str, Any]) -> str | None:
    """The score the audit headlines; the only one when it names none."""
    named = ev.data.get("headline_score")
    if isinstance(named, str) and named in scores:
        return named
    return next(iter(scores)) if len(scores) == 1 else None


def _privacy_value(row: _PrivacyRow, key: str) -> Any:
    """``key`` from the score's entry, else the audit's top level (δ, significance, strategy)."""
    value = row.values.get(key)
    return row.ev.data.get(key) if value is None else value


def _privacy_epsilon(row: _PrivacyRow) -> tuple[float | None, float | None]:
    """(ε_LB, ceiling) of one score; the headline falls back to the audit's top-level numbers."""
    detail = row.values.get("epsilon") if isinstance(row.values.get("epsilon"), dict) else {}
    eps = number(row.values.get("epsilon_lb"))
    ceiling = number(row.values.get("epsilon_ceiling"))
    eps = number(detail.get("epsilon")) if eps is None else eps
    ceiling = number(detail.get("ceiling")) if ceiling is None else ceiling
    if row.headline:
        eps = number(row.ev.data.get("epsilon_lb")) if eps is None else eps
        ceiling = number(row.ev.data.get("epsilon_ceiling")) if ceiling is None else ceiling
    return eps, ceiling


def _privacy_ci(raw: Any) -> tuple[float, float] | None:
    if isinstance(raw, (list, tuple)) and len(raw) == 2:
        lo, hi = number(raw[0]), number(raw[1])
        if lo is not None and hi is not None:
            return lo, hi
    return None


def _privacy_tpr_entries(row: _PrivacyRow) -> list[tuple[float, dict[str, Any]]]:
    """(fpr, entry) for each well-formed ``tpr_at_fpr`` entry."""
    raw = row.values.get("tpr_at_fpr")
    entries = [e for e in raw if isinstance(e, dict)] if isinstance(raw, list) else []
    return [(f, e) for e in entries if (f := number(e.get("fpr"))) is not None and 0 < f < 1]


def _privacy_fprs(rows: list[_PrivacyRow]) -> list[float]:
    """The FPR targets to give columns: every one the audits report, else their ``fprs``, else the defaults."""
    found = [f for r in rows for f, _ in _privacy_tpr_entries(r)]
    if not found:
        found = [f for r in rows if isinstance(r.ev.data.get("fprs"), list)
                 for f in (number(x) for x in r.ev.data["fprs"]) if f is not None and 0 < f < 1]
    out: list[float] = []
    for f in sorted(found or PRIVACY_FPRS):
        if not any(math.isclose(f, g, rel_tol=1e-9) for g in out):
            out.append(f)
    return out


def _fmt_rate_ci(value: Any, ci: Any) -> str:
    """0.12, [0.05, 0.2] → ``12.0% [5.0–20.0]`` (the CI in percent too)."""
    text = fmt_pct(value)
    bounds = _privacy_ci(ci)
    return text if bounds is None or text == "–" else f"{text} [{bounds[0] * 100:.1f}–{bounds[1] * 100:.1f}]"


def _fmt_eps(value: float | None) -> str:
    """ε with two decimals (bounds are compared with their ceilings, so keep one precision)."""
    return "–" if value is None else f"{value:.2f}"


def _fmt_auroc(raw: Any) -> str:
    """{"value": 0.71, "ci": [0.68, 0.74]} (or a bare number) → ``0.710 [0.680–0.740]``."""
    value, ci = (raw.get("value"), raw.get("ci")) if isinstance(raw, dict) else (raw, None)
    v, bounds = number(value), _privacy_ci(ci)
    if v is None:
        return "–"
    return f"{v:.3f}" + ("" if bounds is None else f" [{bounds[0]:.3f}–{bounds[1]:.3f}]")


def _privacy_tpr_cell(row: _PrivacyRow, fpr: float, refusals: dict[str, int]) -> Any:
    """TPR at ``fpr`` with its CI; refused → ``–`` with the reason as a tooltip and a footnote."""
    for f, entry in _privacy_tpr_entries(row):
        if not math.isclose(f, fpr, rel_tol=1e-9):
            continue
        reason = entry.get("refused")
        if reason or number(entry.get("tpr")) is None:
            reason = str(reason) if reason else "no TPR at this FPR in metrics.json"
            mark = refusals.setdefault(reason, len(refusals) + 1)
            return Markup(f'<span title="{esc(reason)}">–<sup>{mark}</sup></span>')
        return _fmt_rate_ci(entry.get("tpr"), entry.get("ci"))
    return "–"  # this audit did not ask for that FPR


def _privacy_table(rows: list[_PrivacyRow], palette: Palette) -> Markup:
    """One row per (audit, score): sizes, TPR@FPR and AUROC with CIs, ε_LB, ceiling, strategy."""
    fprs = _privacy_fprs(rows)
    settings = {(fmt_num(_privacy_value(r, "delta")), fmt_num(_privacy_value(r, "significance"))) for r in rows}
    per_row_settings = len(settings) > 1  # one caption line when every audit used the same δ and significance
    strategies = {str(_privacy_strategy(r) or "–") for r in rows}
    per_row_strategy = len(strategies) > 1  # else the caption names the one strategy
    refusals: dict[str, int] = {}
    body = []
    for r in rows:
        canaries = r.ev.data.get("canaries") if isinstance(r.ev.data.get("canaries"), dict) else {}
        m = r.values.get("m") if number(r.values.get("m")) is not None else canaries.get("m")
        n_in = r.values.get("n_members") if number(r.values.get("n_members")) is not None else canaries.get("members")
        n_out = r.values.get("n_non_members") if number(r.values.get("n_non_members")) is not None else canaries.get("non_members")
        eps, ceiling = _privacy_epsilon(r)
        # ε_LB and its ceiling share a column: the table must fit a 1280 px page (issue 24)
        eps_cell: Any = f"{_fmt_eps(eps)} ({_fmt_eps(ceiling)})"
        if eps is not None and ceiling and eps >= NEAR_CEILING * ceiling:
            eps_cell = Markup(f'{esc(eps_cell)} <span class="delta-neg" title="ε_LB is at least {NEAR_CEILING:.0%} of what a '
                              f'perfect attack could show with these canaries: more canaries needed">(at ceiling)</span>')
        body.append([
            swatch(palette(r.ev.subject), r.label), r.family, r.score + (" ★" if r.headline else ""),
            f"{fmt_int(m)} ({fmt_int(n_in)} / {fmt_int(n_out)})",
            *[_privacy_tpr_cell(r, f, refusals) for f in fprs],
            _fmt_auroc(r.values.get("auroc")), eps_cell,
            *([str(_privacy_strategy(r) or "–")] if per_row_strategy else []),
            *([fmt_num(_privacy_value(r, "delta")), fmt_num(_privacy_value(r, "significance"))] if per_row_settings else []),
        ])
    headers = ["model / run", "canaries", "score", "m (in / out)",
               *[f"TPR@{f * 100:g}% FPR" for f in fprs], "AUROC", "ε_LB (ceiling)",
               *(["threshold"] if per_row_strategy else []),
               *(["δ", "significance"] if per_row_settings else [])]
    delta, significance = next(iter(settings)) if settings else ("–", "–")
    at = "at each row's δ and significance" if per_row_settings else f"at δ = {delta} and significance {significance}"
    levels = {number(r.values["bootstrap"].get("confidence")) for r in rows if isinstance(r.values.get("bootstrap"), dict)}
    level = f"{levels.pop():.0%} " if len(levels) == 1 and None not in levels else ""
    caption = (
        f"ε_LB: a lower bound on the training run's ε from this one run (Steinke, Nasr, Jagielski 2023), {at}: "
        "the run is not (ε, δ)-DP for any smaller ε, or the attack's guesses would have been this good with probability "
        "under the significance level. "
        "Ceiling: the ε_LB a perfect attack could show with the same canaries (same m and members), so an ε_LB near its "
        "ceiling means more canaries are needed, not that ε is about that large. "
        "TPR@FPR: members found when that share of non-members is wrongly flagged, "
        f"with {level}bootstrap CIs in brackets "
        "(percent); refused (–) when there are too few non-members for that FPR to allow even one false positive. "
        "AUROC with its CI. ★ marks each audit's headline score. m (in / out): canaries, members / non-members."
        + ("" if per_row_strategy else f" Threshold strategy: {next(iter(strategies))}."))
    notes = ""
    if refusals:
        notes = '<p class="note">' + "; ".join(f"<sup>{i}</sup> {esc(reason)}" for reason, i in refusals.items()) + "</p>"
    fpr_cols = tuple(range(4, 4 + len(fprs)))
    after = 6 + len(fprs) + per_row_strategy  # first column past AUROC, ε_LB (and threshold)
    numeric = (3, *fpr_cols, 4 + len(fprs), 5 + len(fprs), *((after, after + 1) if per_row_settings else ()))
    return Markup(table(headers, body, numeric=numeric, caption=caption) + notes)


def _privacy_strategy(row: _PrivacyRow) -> Any:
    """The threshold strategy behind a row's ε_LB."""
    detail = row.values.get("epsilon") if isinstance(row.values.get("epsilon"), dict) else {}
    return detail.get("threshold_strategy") or _privacy_value(row, "threshold_strategy")


def _privacy_roc(row: _PrivacyRow) -> tuple[list[float], list[float]]:
    """The score's ROC points (pairs where both are numbers)."""
    roc = row.values.get("roc")
    if not isinstance(roc, dict) or not isinstance(roc.get("fpr"), list) or not isinstance(roc.get("tpr"), list):
        return [], []
    pairs = [(number(x), number(y)) for x, y in zip(roc["fpr"], roc["tpr"])]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _privacy_roc_figures(rows: list[_PrivacyRow], palette: Palette, tags: dict[int, str]) -> list[str]:
    """One log-log ROC figure per canary family: a colour per subject, a line style per score."""
    figs = []
    for family in dict.fromkeys(r.family for r in rows):
        here = [(r, *_privacy_roc(r)) for r in rows if r.family == family]
        here = [(r, xs, ys) for r, xs, ys in here if xs]
        if not here:
            continue
        styles = {s: _SCORE_STYLES[i % len(_SCORE_STYLES)] for i, s in enumerate(dict.fromkeys(r.score for r, _, _ in here))}
        lowest = min((v for _, xs, ys in here for v in (*xs, *ys) if v > 0), default=ROC_FLOOR)
        floor = min(ROC_FLOOR, lowest / 2)  # below every real point, so clipped zeros stay distinguishable
        lines = []
        for i, (r, xs, ys) in enumerate(here):
            # Two audits of one run would share its colour: tell them apart by cycling instead.
            color = plots.COLORS[i % len(plots.COLORS)] if id(r.ev) in tags else palette(r.ev.subject)
            lines.append((f"{r.label} · {r.score}" + (" ★" if r.headline else ""), color, styles[r.score], xs, ys))
        title = f"ROC, {family} canaries (log-log)"
        img = plots.roc_loglog(lines, title=title, floor=floor)
        if img:
            figs.append(f"<figure>{img}<figcaption>{esc(title)}: drawn as steps (a fixed threshold, no interpolation); the "
                        f"dotted diagonal is chance. Log axes cannot show 0, so FPR or TPR values of 0 (every curve starts "
                        f"at 0, 0) are drawn at {floor:.2g}.</figcaption></figure>")
    return figs


def _privacy_epsilon_figure(rows: list[_PrivacyRow]) -> str | None:
    """ε_LB beside its ceiling for each audit's headline score."""
    heads = [r for r in rows if r.headline]
    one_score = len({r.score for r in heads}) == 1
    categories = [f"{r.label} · {r.family}" + ("" if one_score else f" · {r.score}") for r in heads]
    pairs = [_privacy_epsilon(r) for r in heads]
    names = list(_EPS_PALETTE)
    groups = {names[0]: [p[0] for p in pairs], names[1]: [p[1] for p in pairs]}
    title = "ε_LB vs ceiling" + (f" ({heads[0].score})" if one_score and heads else " (headline scores)")
    if len(categories) == 1:
        title = f"ε_LB vs ceiling: {categories[0]}"
    img = plots.hbars(categories, groups, Palette(dict(_EPS_PALETTE)), title=title, xlabel="ε",
                      value_format=lambda v: f"{v:.2f}")
    if not img:
        return None
    return (f"<figure>{img}<figcaption>{esc(title)}: the one-run ε lower bound of each audit's headline score beside the "
            "ceiling a perfect attack could reach with the same canaries; an ε_LB bar close to its ceiling says the audit "
            "ran out of canaries, not that ε is about that large.</figcaption></figure>")


SECTIONS.insert(index_of("safety") + 1, Section("privacy", "Privacy audit", privacy_section, kinds=("privacy-audit",)))


# --- neural phishing (tunelab attack phish) ------------------------------------------------------

def phishing_section(data: ReportData, palette: Palette) -> str | None:
    """Secret extraction rate per (N_p, prefix) with Wilson intervals; the curve is in "Curves"."""
    evals = data.evals_of_kind("phishing")
    if not evals:
        return None
    parts = []
    for ev in sorted(evals, key=lambda e: str(e.path)):
        d = ev.data
        rows = [[fmt_int(r.get("poisons")), r.get("prefix") or "–", fmt_pct(r.get("ser")),
                 f"[{fmt_pct(r.get('ci_low'))}, {fmt_pct(r.get('ci_high'))}]",
                 f"{fmt_int(r.get('successes'))}/{fmt_int(r.get('trials'))}"]
                for r in d.get("ser") or [] if isinstance(r, dict)]
        if not rows:
            continue
        caption = (f"{d.get('method') or '–'}, {fmt_int(d.get('digits'))}-digit synthetic secret inserted "
                   f"{fmt_int(d.get('duplicates'))}×, {d.get('poison_prefix') or '–'} poison prefixes"
                   f"{', is not:' if d.get('is_not') else ''}; training: {d.get('training_order') or '–'}. "
                   f"SER = exact extraction by greedy decoding (random guessing: {d.get('random_guess')}); "
                   "95% Wilson intervals.")
        parts.append(f"<h3>{esc(ev.subject)}</h3>")
        parts.append(table(["N_p", "prefix", "SER", "95% CI", "hits"], rows, numeric=(0, 2, 3, 4), caption=caption))
    return "\n".join(parts) or None


SECTIONS.insert(index_of("privacy") + 1, Section("phishing", "Neural phishing", phishing_section, kinds=("phishing",)))


# --- private training (tunelab train --optimizer dp-zo / dp-sgd) ---------------------------------

_DP_PALETTE = {"ε_LB (audit)": "#1f77b4", "ε spent (ledger)": "#c8c8c8"}  # fixed: these bars are not runs


def dp_section(data: ReportData, palette: Palette) -> str | None:
    """The privacy ledger of every DP run, with its own canary audit beside the ε it spent.

    An audit's ε_LB above the ledger's ε contradicts the guarantee: it is flagged as a bug, not shown
    as a finding.
    """
    runs = [r for r in data.runs if isinstance(r.record.get("dp"), dict)]
    if not runs:
        return None
    rows, labels, lbs, spent, broken = [], [], [], [], []
    for run in runs:
        dp = run.record["dp"]
        audit = run.record.get("privacy") if isinstance(run.record.get("privacy"), dict) else {}
        eps, lb = number(dp.get("epsilon")), number(audit.get("epsilon_lb"))
        if eps is not None and lb is not None and lb > eps + 1e-9:
            broken.append(run.name)
        symbol = "σ" if "gaussian" in str(dp.get("mechanism")) else "b"
        outside = dp.get("outside_guarantee") or []
        rows.append([run.name, str(dp.get("mechanism") or "–"), fmt_num(dp.get("target_epsilon"), 3), fmt_num(eps, 3),
                     fmt_num(dp.get("delta"), 2), str(dp.get("accountant") or "–").upper(), fmt_num(dp.get("sample_rate"), 3),
                     f"{symbol} = {fmt_num(dp.get('noise_multiplier'), 3)}", fmt_num(dp.get("clip"), 3), fmt_int(dp.get("steps")),
                     fmt_num(lb, 3), "yes" if dp.get("private_metrics_logged") else "no",
                     "; ".join(map(str, outside)) if outside else "–"])
        labels.append(run.name)
        lbs.append(lb)
        spent.append(eps)
    neighbouring = dict.fromkeys(str(r.record["dp"].get("neighbouring")) for r in runs)
    parts = [table(["run", "mechanism", "target ε", "ε spent", "δ", "accountant", "q", "noise", "C", "steps",
                    "audit ε_LB", "loss logged", "outside the guarantee"], rows, numeric=(2, 3, 4, 6, 8, 9, 10),
                   caption="Privacy ledgers (tunelab.json: dp). Neighbouring relation: " + "; ".join(neighbouring)
                   + ". The audit column is the run's own canary audit (one-run ε lower bound), where it planted canaries.")]
    img = plots.hbars(labels, {"ε_LB (audit)": lbs, "ε spent (ledger)": spent}, Palette(dict(_DP_PALETTE)),
                      title="audited ε_LB vs ε spent", xlabel="ε", value_format=lambda v: f"{v:.2f}")
    if img and any(v is not None for v in lbs):
        parts.append(f'<div class="figures"><figure>{img}<figcaption>Each DP run\'s canary audit beside the ε its '
                     "ledger says it spent: the audit can only certify a lower bound, so its bar must stay at or below "
                     "the grey one.</figcaption></figure></div>")
    if broken:
        parts.append(f'<p class="note">⚠ ε_LB above ε spent in {esc(", ".join(broken))}: that contradicts the '
                     "guarantee — a bug in the training or the accounting to find, not a result.</p>")
    return "\n".join(parts)


SECTIONS.insert(index_of("phishing") + 1, Section("dp", "Private training", dp_section))


# --- inspect: head sweeps and pruning comparisons ------------------------------------------------


def _rows(ev: Evaluation) -> list[dict[str, Any]]:
    return [r for r in ev.data.get("rows") or [] if isinstance(r, dict)]


def heads_section(data: ReportData, palette: Palette) -> str | None:
    """``tunelab inspect heads``: accuracy vs % of heads zeroed per score against the random
    baseline, the largest share each score zeroes within 1 point, and per-(layer, head) maps."""
    evals = data.evals_of_kind("heads")
    if not evals:
        return None
    parts = []
    for ev in sorted(evals, key=lambda e: (e.subject, str(e.path))):
        d, rows = ev.data, _rows(ev)
        base = number(d.get("baseline_accuracy"))
        parts.append(f"<h3>{esc(ev.subject)} — {esc(ev.name)} ({fmt_int(d.get('n'))} questions, "
                     f"{'chat template' if d.get('chat_template') else 'plain text'})</h3>")
        within = d.get("largest_within") if isinstance(d.get("largest_within"), dict) else {}
        fractions = sorted({number(r.get("fraction")) for r in rows if number(r.get("fraction")) is not None})
        scores = list(dict.fromkeys(str(r.get("score")) for r in rows))
        cell = {(str(r.get("score")), number(r.get("fraction"))): r for r in rows}
        body = []
        for score in scores:
            line: list[Any] = [score]
            for f in fractions:
                r = cell.get((score, f))
                line.append("–" if r is None else f"{fmt_pct(r.get('accuracy'))} @ {fmt_num(r.get('actual_pct'), 3)}%")
            line.append(f"{fmt_num(within.get(score), 3)}%" if score in within else "–")
            body.append(line)
        parts.append(table(["score", *[f"target {f:.0%}" for f in fractions], "largest % within 1 pt"], body,
                           caption=f"Accuracy @ actual % of heads zeroed (dynamic, per input). Unablated accuracy "
                                   f"{fmt_pct(base)}. Scores ending in _ln are divided by their layer's mean over heads."))
        maps = d.get("mean_scores") if isinstance(d.get("mean_scores"), dict) else {}
        mask = d.get("static_mask") if isinstance(d.get("static_mask"), dict) else {}
        # The static mask's score (its zeroed heads marked) and the spec's best and most-cited scores.
        shown = [s for s in dict.fromkeys([mask.get("score"), "mean_output_norm_ln", "first_token_weight"]) if s in maps][:2]
        figures = []
        for score in shown:
            marked = mask.get("mask") if mask.get("score") == score else None
            img = plots.grid_heatmap(maps[score], title=f"mean {score} per head", xlabel="head", ylabel="layer", marked=marked)
            if img:
                figures.append((score, img))
        if figures:
            parts.append('<div class="figures">' + "".join(
                f"<figure>{img}<figcaption>{esc(s)}, mean over inputs; × = zeroed by the static head mask "
                f"({esc(mask.get('file') or 'head_mask.safetensors')})</figcaption></figure>" for s, img in figures) + "</div>")
    return "\n".join(parts)


def pruning_section(data: ReportData, palette: Palette) -> str | None:
    """``tunelab inspect prune``: dense vs Probe Pruning vs Wanda-sp vs alignment-aware pruning —
    counted FLOPs saved, perplexity, benchmark accuracy and refusal rate at each ratio."""
    evals = data.evals_of_kind("pruning")
    if not evals:
        return None
    parts = []
    for ev in sorted(evals, key=lambda e: (e.subject, str(e.path))):
        rows = _rows(ev)
        body = [[str(r.get("method")), fmt_pct(r.get("ratio")), fmt_pct(r.get("flops_saved")), fmt_num(r.get("ppl"), 4),
                 fmt_pct(r.get("accuracy")), fmt_pct(r.get("refusal_rate")), fmt_pct(r.get("over_refusal"))] for r in rows]
        d = ev.data
        parts.append(f"<h3>{esc(ev.subject)}</h3>")
        parts.append(table(["method", "target ratio", "FLOPs saved (counted)", "perplexity", f"accuracy ({d.get('task') or '–'})",
                            "refusal rate (harmful)", "over-refusal (benign)"], body, numeric=(1, 2, 3, 4, 5, 6),
                           caption="FLOPs are the multiply-adds the pruned forward actually ran (probes included) over "
                                   "the dense model's on the same inputs."))
        refusal = {m: [(number(r.get("flops_saved")), number(r.get("refusal_rate"))) for r in rows if r.get("method") == m]
                   for m in dict.fromkeys(str(r.get("method")) for r in rows if r.get("method") != "dense")}
        lines = [(m, plots.COLORS[i % len(plots.COLORS)], [x * 100 for x, y in pts if x is not None and y is not None],
                  [y for x, y in pts if x is not None and y is not None]) for i, (m, pts) in enumerate(refusal.items())]
        img = plots.line_chart([ln for ln in lines if ln[3]], title="refusal rate vs FLOPs saved", xlabel="% FLOPs saved",
                               ylabel="refusal rate")
        if img:
            parts.append(f'<div class="figures"><figure>{img}<figcaption>Refusal rate on harmful prompts at matched '
                         "compute: alignment-aware pruning should stay above Probe Pruning.</figcaption></figure></div>")
    return "\n".join(parts)


SECTIONS.insert(index_of("dp") + 1, Section("heads", "Attention heads", heads_section, kinds=("heads",)))
SECTIONS.insert(index_of("heads") + 1, Section("pruning", "Pruning", pruning_section, kinds=("pruning",)))


# --- multi-turn stability (tunelab audit multi-turn) ----------------------------------------------

def _with_ci(value: Any, ci: Any) -> str:
    """``49.0% [40.0%, 58.0%]``; the interval left out when there is none."""
    if isinstance(ci, list) and len(ci) == 2 and all(number(v) is not None for v in ci):
        return f"{fmt_pct(value)} [{fmt_pct(ci[0])}, {fmt_pct(ci[1])}]"
    return fmt_pct(value)


def _multiturn_tables(d: dict[str, Any]) -> list[str]:
    """The per-turn table (measured vs Markov) and the probe's AUROC per layer."""
    acc = d.get("accuracy") if isinstance(d.get("accuracy"), list) else []
    cis = d.get("accuracy_ci") if isinstance(d.get("accuracy_ci"), list) else []
    pred = d.get("markov_prediction") if isinstance(d.get("markov_prediction"), list) else []
    changes = d.get("change_rate") if isinstance(d.get("change_rate"), list) else []
    body = [[t + 1, _with_ci(a, cis[t] if t < len(cis) else None), fmt_pct(pred[t] if t < len(pred) else None),
             fmt_pct(changes[t]) if t < len(changes) else "–"] for t, a in enumerate(acc)]
    inf = _with_ci(d.get("acc_inf"), d.get("acc_inf_ci")) if number(d.get("acc_inf")) is not None else f"– ({d.get('acc_inf_reason') or 'undefined'})"
    caption = (f"Acc∞ = p_FT / (p_TF + p_FT) = {inf}; p_TF {_with_ci(d.get('p_tf'), d.get('p_tf_ci'))}, "
               f"p_FT {_with_ci(d.get('p_ft'), d.get('p_ft_ci'))} (pooled over turns; 95% bootstrap CIs over questions). "
               "The Markov prediction starts from the measured first turn.")
    parts = [table(["turn", "measured accuracy [95% CI]", "Markov prediction", "answer changes at the next turn"], body,
                   numeric=(0, 1, 2, 3), caption=caption)]
    probe = d.get("probe") if isinstance(d.get("probe"), dict) else {}
    if probe:
        rows = [[f"layer {k}", _fmt_auroc(v)] for k, v in probe.items()]
        rows.append(["turn index only (baseline)", _fmt_auroc(d.get("baseline_auroc"))])
        reason = f" No AUROC: {d.get('probe_reason')}." if d.get("probe_reason") else ""
        parts.append(table(["probe (last prompt token's residual)", "AUROC"], rows, numeric=(1,),
                           caption="Does the next turn change the answer? Logistic regression, cross-validated with "
                                   f"folds grouped by question.{reason}"))
    return parts


def multiturn_section(data: ReportData, palette: Palette) -> str | None:
    """``tunelab audit multi-turn``: accuracy per turn under "Think again." against the two-state
    Markov chain's prediction, Acc∞, and the residual probe's AUROC per layer vs the turn index."""
    evals = data.evals_of_kind("multi-turn")
    if not evals:
        return None
    parts = []
    for ev in sorted(evals, key=lambda e: (e.subject, str(e.path))):
        d = ev.data
        parts.append(f"<h3>{esc(ev.subject)} — {esc(d.get('task') or ev.name)} ({fmt_int(d.get('n'))} questions, "
                     f"{fmt_int(d.get('turns'))} turns, follow-up “{esc(d.get('follow_up') or '')}”"
                     f"{', reworded' if d.get('reword') else ''})</h3>")
        parts += _multiturn_tables(d)
        acc = [number(v) for v in d.get("accuracy") or []] if isinstance(d.get("accuracy"), list) else []
        pred = [number(v) for v in d.get("markov_prediction") or []] if isinstance(d.get("markov_prediction"), list) else []
        lines = [(label, color, [t + 1 for t, v in enumerate(vs) if v is not None], [v for v in vs if v is not None])
                 for label, color, vs in (("measured", plots.COLORS[0], acc), ("Markov prediction", plots.COLORS[1], pred))]
        if number(d.get("acc_inf")) is not None and acc:
            lines.append(("Acc∞", plots.COLORS[2], [1, len(acc)], [number(d.get("acc_inf"))] * 2))
        figures = []
        img = plots.line_chart([ln for ln in lines if ln[3]], title="accuracy per turn", xlabel="turn", ylabel="accuracy")
        if img:
            figures.append((img, "Measured accuracy per turn against the Markov chain's prediction."))
        probe = d.get("probe") if isinstance(d.get("probe"), dict) else {}
        scored = sorted((int(k), number(v)) for k, v in probe.items() if str(k).isdigit() and number(v) is not None)
        if scored:
            probe_lines = [("residual probe", plots.COLORS[3], [k for k, _ in scored], [v for _, v in scored])]
            if number(d.get("baseline_auroc")) is not None:
                probe_lines.append(("turn index only", plots.COLORS[4], [scored[0][0], scored[-1][0]], [number(d.get("baseline_auroc"))] * 2))
            img = plots.line_chart(probe_lines, title="probe AUROC by layer", xlabel="layer", ylabel="AUROC")
            if img:
                figures.append((img, "AUROC of predicting an answer change from the residual, vs the turn-index baseline."))
        if figures:
            parts.append('<div class="figures">' + "".join(f"<figure>{img}<figcaption>{esc(c)}</figcaption></figure>"
                                                           for img, c in figures) + "</div>")
    return "\n".join(parts)




def steering_section(data: ReportData, palette: Palette) -> str | None:
    """``tunelab inspect steer train``: each vector's method, pairs and the layers where the contrast
    separates best on held-out pairs (the full curve is in the Curves section)."""
    evals = data.evals_of_kind("steering")
    if not evals:
        return None
    body = []
    for ev in sorted(evals, key=lambda e: (e.subject, str(e.path))):
        d = ev.data
        sep = {int(k): number(v) for k, v in (d.get("separation") or {}).items() if number(v) is not None}
        norms = [number(v) for v in (d.get("norms") or {}).values() if number(v) is not None]
        top = sorted(sep, key=lambda i: -sep[i])[:3]
        body.append([swatch(palette(ev.subject), ev.subject), str(d.get("method") or "–"), fmt_int(d.get("n")),
                     ", ".join(f"{i} ({sep[i]:.3f})" for i in top) or "–",
                     f"{min(norms):.3g}–{max(norms):.3g}" if norms else "–", str(ev.path.parent)])
    return table(["model / run", "method", "pairs", "best layers (held-out AUROC)", "vector norm (min–max)", "vector"], body,
                 caption="Separation: AUROC of the projection of held-out positives vs negatives on the vector fitted "
                         "on the other pairs. Apply with tunelab generate/eval --steer DIR --coeff C.")




# --- inspect: the refusal direction ----------------------------------------------------------------


def _shown_token(token: str) -> str:
    """A token between curly quotes with control characters escaped (a newline shows as a backslash and n)."""
    return "‘" + repr(token)[1:-1] + "’"


def refusal_direction_section(data: ReportData, palette: Palette) -> str | None:
    """``tunelab inspect refusal-direction``: the selected candidate (position, layer, its three scores)
    and ASR / refusal rate / over-refusal / cross-entropy under ablation, addition and orthogonalisation."""
    evals = data.evals_of_kind("refusal-direction")
    if not evals:
        return None
    parts = []
    for ev in sorted(evals, key=lambda e: (e.subject, str(e.path))):
        d = ev.data
        sel = d.get("selected") if isinstance(d.get("selected"), dict) else {}
        scores = sel.get("scores") if isinstance(sel.get("scores"), dict) else {}
        base = d.get("baseline") if isinstance(d.get("baseline"), dict) else {}
        tokens = (d.get("refusal_tokens") or {}).get("tokens") if isinstance(d.get("refusal_tokens"), dict) else None
        parts.append(f"<h3>{esc(ev.subject)}</h3>")
        state = ("passes the filters" if d.get("filters_passed")
                 else f"no candidate passes the filters ({d.get('filter_reason') or 'see metrics.json'})")
        token = sel.get("token")
        parts.append(
            f"<p>Selected candidate: position {esc(fmt_num(sel.get('position')))}"
            f"{' (' + esc(_shown_token(token)) + ')' if isinstance(token, str) else ''}, layer {esc(fmt_num(sel.get('layer')))}"
            f" of {esc(fmt_num(d.get('n_layers')))}: ablated refusal score {esc(fmt_num(scores.get('refusal_score'), 3))}"
            f" (baseline {esc(fmt_num(base.get('harmful_refusal_score'), 3))}), steering score "
            f"{esc(fmt_num(scores.get('steering_score'), 3))}, KL {esc(fmt_num(scores.get('kl'), 3))}; {esc(state)}."
            + (f" Refusal tokens: {esc(', '.join(_shown_token(str(t)) for t in tokens))}." if isinstance(tokens, list) and tokens else "")
            + "</p>")
        rows = _rows(ev)
        if rows:
            body = [[str(r.get("intervention")), fmt_pct(r.get("asr")), fmt_pct(r.get("refusal_rate")), fmt_pct(r.get("over_refusal")),
                     fmt_num(r.get("ce"), 4)] for r in rows]
            parts.append(table(["intervention", "ASR (harmful)", "refusal rate (harmful)", "over-refusal (benign)", "CE (held-out)"],
                               body, numeric=(1, 2, 3, 4),
                               caption="Held-out prompts, keyword judge. Ablation removes the direction at every layer and "
                                       "position; addition adds the raw difference of means at the selected layer; the "
                                       "orthogonalized model has it projected out of its weights. CE is the mean next-token "
                                       "cross-entropy (nats) on held-out prose."))
        cands = [c for c in d.get("candidates") or [] if isinstance(c, dict)]
        positions = sorted({c.get("position") for c in cands if isinstance(c.get("position"), int)})
        layers = sorted({c.get("layer") for c in cands if isinstance(c.get("layer"), int)})
        if positions and layers:
            cell = {(c.get("layer"), c.get("position")): c for c in cands}
            matrix = [[number((cell.get((layer, p)) or {}).get("refusal_score")) for p in positions] for layer in layers]
            marked = [[layer == sel.get("layer") and p == sel.get("position") for p in positions] for layer in layers]
            img = plots.grid_heatmap(matrix, title="refusal score with the candidate ablated (harmful)",
                                     xlabel=f"position {positions[0]}…{positions[-1]}", ylabel=f"layer {layers[0]}…{layers[-1]}",
                                     marked=marked)
            if img:
                parts.append(f'<div class="figures"><figure>{img}<figcaption>Lower is better; × = selected. Layers from '
                             f"the top row down ({layers[0]} first).</figcaption></figure></div>")
    return "\n".join(parts)




# --- inspect: SALT privacy steering --------------------------------------------------------------


def salt_section(data: ReportData, palette: Palette) -> str | None:
    """``tunelab inspect salt``: leak rate of a private field and task accuracy vs the coefficient of
    a steering vector from leaky vs non-leaky answers, added at the last prompt token."""
    evals = data.evals_of_kind("salt")
    if not evals:
        return None
    parts = []
    for ev in sorted(evals, key=lambda e: (e.subject, str(e.path))):
        d, rows = ev.data, _rows(ev)
        layers = ", ".join(str(i) for i in d.get("layers") or []) or "–"
        parts.append(f"<h3>{esc(ev.subject)}</h3>")
        parts.append(f"<p>Steered layers {esc(layers)} ({esc(d.get('layer_source') or '–')}); "
                     f"{esc(fmt_int(d.get('n_test')))} held-out records, vector from {esc(fmt_int(d.get('n_train')))} "
                     f"{esc(d.get('pairs') or 'template')} contrast pairs (read: {esc(d.get('read') or '–')}). "
                     f"Baseline leak rate {esc(fmt_pct(d.get('baseline_leak')))}.</p>")
        body = [[fmt_num(r.get("coeff")), str(r.get("positions") or "last"), _fmt_rate_ci(r.get("leak_rate"), r.get("leak_ci")),
                 "–" if number(r.get("leak_reduction")) is None else f"{number(r.get('leak_reduction')):+.0%}",
                 _fmt_rate_ci(r.get("accuracy"), r.get("accuracy_ci"))] for r in rows]
        parts.append(table(["coefficient", "positions", "leak rate [95% CI]", "relative leak reduction", "task accuracy [95% CI]"],
                           body, numeric=(0, 2, 3, 4),
                           caption="Leak: the record's confidential value appears in the answer; accuracy: the value the "
                                   "question asks for does. Coefficient 0 is the unsteered model. Wilson 95% intervals."))
        last = sorted((r for r in rows if (r.get("positions") or "last") == "last" and number(r.get("coeff")) is not None),
                      key=lambda r: number(r.get("coeff")))
        lines = [(label, plots.COLORS[i % len(plots.COLORS)], [number(r.get("coeff")) for r in last if number(r.get(key)) is not None],
                  [number(r.get(key)) for r in last if number(r.get(key)) is not None])
                 for i, (label, key) in enumerate((("leak rate", "leak_rate"), ("task accuracy", "accuracy")))]
        img = plots.line_chart([ln for ln in lines if ln[3]], title="leak rate and accuracy vs steering coefficient",
                               xlabel="coefficient (× mean difference)", ylabel="rate")
        if img:
            parts.append(f'<div class="figures"><figure>{img}<figcaption>Steered at the last prompt token; a useful '
                         "coefficient lowers the leak rate while accuracy holds.</figcaption></figure></div>")
    return "\n".join(parts)


# Inspect II, in reading order after pruning: steering, the refusal direction, SALT, multi-turn stability.
SECTIONS.insert(index_of("pruning") + 1, Section("steering", "Steering vectors", steering_section, kinds=("steering",)))
SECTIONS.insert(index_of("steering") + 1, Section("refusal-direction", "Refusal direction", refusal_direction_section,
                                                  kinds=("refusal-direction",)))
SECTIONS.insert(index_of("refusal-direction") + 1, Section("salt", "Privacy steering (SALT)", salt_section, kinds=("salt",)))
SECTIONS.insert(index_of("salt") + 1, Section("multi-turn", "Multi-turn stability", multiturn_section, kinds=("multi-turn",)))


# --- scaling laws (tunelab scaling fit) ------------------------------------------------------------
def eval_pngs(ev: Evaluation, only: tuple[str, ...] | None = None) -> list[tuple[Markup, str]]:
    """The PNGs an evaluation lists under ``"figures"`` and wrote next to its metrics.json (bare
    file names only, under 8 MB, PNG signature checked), in its order; ``only`` filters by name."""
    out = []
    for name in ev.data.get("figures") or []:
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".png"):
            continue
        if only is not None and name not in only:
            continue
        try:
            raw = (ev.path / name).read_bytes() if (ev.path / name).stat().st_size < 8_000_000 else b""
        except OSError:
            continue
        if raw.startswith(b"\x89PNG\r\n\x1a\n"):
            out.append((plots.png_img(raw, f"{ev.subject}: {name}"), name))
    return out


def _sig(v: Any, digits: int = 4) -> str:
    """``digits`` significant digits, in e-notation from 10⁵ up (sizes, budgets, coefficients)."""
    n = number(v)
    return "–" if n is None else f"{n:.{digits}g}" if abs(n) >= 1e5 else fmt_num(n, digits)


def _fmt_ci(value: Any, ci: Any, digits: int = 4) -> str:
    """``0.2928 [0.2578, 0.3331]``; the interval left out when there is none."""
    if isinstance(ci, list) and len(ci) == 2 and all(number(v) is not None for v in ci):
        return f"{_sig(value, digits)} [{_sig(ci[0], digits)}, {_sig(ci[1], digits)}]"
    return _sig(value, digits)


def _scaling_law_table(d: dict[str, Any]) -> str:
    law = d.get("law") if isinstance(d.get("law"), dict) else {}
    ci = d.get("ci") if isinstance(d.get("ci"), dict) else {}
    terms = [t for t in law.get("terms") or [] if isinstance(t, dict)]
    ci_terms = [t if isinstance(t, dict) else {} for t in ci.get("terms") or [{} for _ in terms]]
    near = d.get("near_best") if isinstance(d.get("near_best"), dict) else {}
    near_terms = [t if isinstance(t, dict) else {} for t in near.get("terms") or []]

    def span(v: Any) -> str:
        return f"{_sig(v[0])} – {_sig(v[1])}" if isinstance(v, list) and len(v) == 2 else "–"

    rows = [["E (irreducible loss)", _fmt_ci(law.get("E"), ci.get("E")), span(near.get("E"))]]
    for j, term in enumerate(terms):
        tci = ci_terms[j] if j < len(ci_terms) else {}
        tnear = near_terms[j] if j < len(near_terms) else {}
        rows.append([f"A ({term.get('column')})", _fmt_ci(term.get("A"), tci.get("A")), span(tnear.get("A"))])
        rows.append([f"exponent ({term.get('column')})", _fmt_ci(term.get("alpha"), tci.get("alpha")), span(tnear.get("alpha"))])
    boot = d.get("bootstrap") if isinstance(d.get("bootstrap"), dict) else {}
    starts = d.get("starts") if isinstance(d.get("starts"), dict) else {}
    caption = (f"{law.get('formula') or 'L = E + Σ A/x^α'}, fitted with a Huber loss (δ = {fmt_num(d.get('delta'))}) on log-loss "
               f"residuals by L-BFGS-B from {fmt_int(starts.get('n'))} starts ({fmt_int(starts.get('converged'))} converged); "
               f"objective {fmt_num(d.get('objective'), 6)}, log-space R² {fmt_num(d.get('r2_log'), 4)}. "
               + (f"95% intervals: {fmt_int(boot.get('n'))} bootstrap refits on resampled rows."
                  if number(boot.get("n")) else "No bootstrap."))
    caption += (f" Last column: the range over the {fmt_int(near.get('n'))} converged end points whose objective is within "
                f"{fmt_pct(near.get('within'))} of the best (a flat objective leaves the parameters less pinned than one fit "
                "suggests)." if number(near.get("n")) else "")
    return table(["parameter", "fit [95% CI]", "near-best end points"], rows, numeric=(1, 2), caption=caption)


def _scaling_optimal_table(d: dict[str, Any]) -> str | None:
    optimal = d.get("optimal") if isinstance(d.get("optimal"), dict) else {}
    rows = []
    for key, opt in optimal.items():
        if not isinstance(opt, dict):
            continue
        rows.append([f"C = {fmt_num(opt.get('flops_per_param_token'), 3)}·N·D" + (" (counted FLOPs)" if key == "counted" else ""),
                     _sig(opt.get("budget"), 3), _fmt_ci(opt.get("N"), opt.get("N_ci"), 3),
                     _fmt_ci(opt.get("D"), opt.get("D_ci"), 3), fmt_num(opt.get("tokens_per_param"), 3), fmt_num(opt.get("loss"), 4)])
    if not rows:
        return None
    return table(["FLOPs per parameter and token", "budget C (FLOPs)", "N* [95% CI]", "D* [95% CI]", "tokens per parameter",
                  "predicted loss"], rows, numeric=(1, 2, 3, 4, 5),
                 caption="Closed form: G = (αA/(βB))^(1/(α+β)), N* = G·(C/k)^(β/(α+β)), D* = (C/k)^(α/(α+β)) / G.")


def scaling_section(data: ReportData, palette: Palette) -> str | None:
    """``tunelab scaling fit``: the approach-3 law with bootstrap intervals, the degeneracy guard's
    verdict, the compute-optimal N*, D* at the budget, approach 1's hull and the fit's figures."""
    evals = data.evals_of_kind("scaling")
    if not evals:
        return None
    parts = []
    for ev in sorted(evals, key=lambda e: (e.subject, str(e.path))):
        d = ev.data
        parts.append(f"<h3>{esc(ev.subject)} — {esc(Path(str(d.get('table') or ev.path)).name)} "
                     f"({fmt_int(d.get('rows'))} rows, loss column {esc(d.get('loss_column') or '–')})</h3>")
        reasons = [str(r) for r in d.get("reasons") or []]
        verdict = ("<p><strong>Degenerate fit</strong>: " + esc("; ".join(reasons)) + ".</p>" if d.get("degenerate")
                   else "<p>The degeneracy guard found nothing (E, exponents and coefficients inside their bounds; every "
                        "term varies by more than the residual noise).</p>")
        parts.append(_scaling_law_table(d))
        parts.append(verdict)
        opt = _scaling_optimal_table(d)
        if opt:
            parts.append(opt)
        a1 = d.get("approach1") if isinstance(d.get("approach1"), dict) else None
        figures = []
        if a1:
            fits = [f"{name} ∝ C^{fmt_num((a1.get(name + '_fit') or {}).get('exponent'), 3)}" for name in ("params", "tokens")
                    if isinstance(a1.get(name + "_fit"), dict)]
            parts.append(f"<p>Approach 1 (FLOPs: {esc(d.get('flops_source') or '–')}): {fmt_int(a1.get('n_hull'))} rows on the "
                         f"lower convex hull of loss vs compute{'; ' + esc(', '.join(fits)) if fits else ''}."
                         f"{' ' + esc(a1['note']) + '.' if a1.get('note') else ''}</p>")
            xs = [number(v) for v in a1.get("hull_flops") or []]
            ys = [number(v) for v in a1.get("hull_loss") or []]
            pts = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
            drawn = "hull.png" in (d.get("figures") or []) and (ev.path / "hull.png").is_file()
            img = None if drawn else plots.line_chart([("hull", plots.COLORS[0], [x for x, _ in pts], [y for _, y in pts])],
                                   title="approach 1: lowest loss per compute (hull)", xlabel="FLOPs", ylabel="loss",
                                   logx=True, logy=True) if pts else None
            if img:
                figures.append((img, "The lower convex hull of (log FLOPs, log loss) over all runs."))
        figures += [(img, name) for img, name in eval_pngs(ev)]
        if figures:
            parts.append('<div class="figures">' + "".join(f"<figure>{img}<figcaption>{esc(c)}</figcaption></figure>"
                                                           for img, c in figures) + "</div>")
    return "\n".join(parts)


SECTIONS.insert(index_of("multi-turn") + 1, Section("scaling", "Scaling laws", scaling_section, kinds=("scaling",)))


# --- pre-training (tunelab pretrain) ---------------------------------------------------------------
def _pretrain_label(ev: Evaluation) -> str:
    d = ev.data
    what = "dense" if d.get("arch") == "dense" else f"MoE {d.get('router') or ''}".strip()
    return f"{ev.subject} ({what})"


def _mean(values: Any) -> float | None:
    xs = [number(v) for v in values or [] if number(v) is not None]
    return sum(xs) / len(xs) if xs else None


def _per_layer(values: Any) -> str:
    xs = [number(v) for v in values or []]
    return " / ".join("–" if x is None else f"{x:.2f}" for x in xs) or "–"


def _pretrain_figures(ev: Evaluation, names: tuple[str, ...]) -> list[tuple[Markup, str]]:
    return [(img, f"{ev.subject}: {name}") for img, name in eval_pngs(ev, names)]


def _figure_block(figures: list[tuple[Markup, str]]) -> str:
    return '<div class="figures">' + "".join(f"<figure>{img}<figcaption>{esc(c)}</figcaption></figure>"
                                             for img, c in figures) + "</div>" if figures else ""


MAX_RUN_FIGURES = 4  # runs whose own PNGs are shown; beyond that the overlay chart speaks for them


def pretrain_section(data: ReportData, palette: Palette) -> str | None:
    """``tunelab pretrain``: one row per run (size, router, tokens, held-out loss per distribution,
    speed) and the held-out curves of all runs on one chart per distribution."""
    evals = sorted(data.evals_of_kind("pretrain"), key=lambda e: (e.subject, str(e.path)))
    if not evals:
        return None
    sources = sorted({name for ev in evals for name in (ev.data.get("final_loss") or {})})
    rows = []
    for ev in evals:
        d, m = ev.data, ev.data.get("shape") or {}
        size = f"{m.get('width', '–')}×{m.get('depth', '–')}" + (f", {m.get('experts')} experts top-{m.get('top_k')}"
                                                                 if d.get("arch") == "moe" else f", MLP {m.get('ffn', '–')}")
        rows.append([_pretrain_label(ev), size, fmt_int(d.get("params")), fmt_int(d.get("steps")), fmt_int(d.get("tokens")),
                     "from " + Path(str(d["init_from"])).name if d.get("init_from") else "scratch",
                     *[fmt_num((d.get("final_loss") or {}).get(s)) for s in sources], fmt_int(d.get("tokens_per_s"))])
    parts = [table(["run", "size", "parameters", "steps", "tokens", "start", *[f"held-out loss: {s}" for s in sources],
                    "tokens/s"], rows, numeric=tuple(range(2, 7 + len(sources))),
                   caption="Held-out loss: next-token cross-entropy (nats/token) on the end of each text, never trained on.")]
    figures = []
    for s in sources:
        lines = []
        for i, ev in enumerate(e for e in evals if any(s in (r.get("loss") or {}) for r in e.data.get("evals") or [])):
            pts = [(number(r.get("tokens")), number((r.get("loss") or {}).get(s))) for r in ev.data.get("evals") or []]
            pts = [(x, y) for x, y in pts if x is not None and y is not None]
            lines.append((_pretrain_label(ev), plots.COLORS[i % len(plots.COLORS)], [x for x, _ in pts], [y for _, y in pts]))
        img = plots.line_chart(lines, title=f"held-out loss on {s}", xlabel="tokens trained (this run)", ylabel="loss")
        if img:
            figures.append((img, f"Held-out loss on {s} during each run."))
    if len(evals) <= MAX_RUN_FIGURES:
        for ev in evals:
            figures += _pretrain_figures(ev, ("loss.png",))
    parts.append(_figure_block(figures))
    return "\n".join(parts)


def routing_section(data: ReportData, palette: Palette) -> str | None:
    """MoE routing diagnostics of ``tunelab pretrain`` runs: MRI per layer under evaluation and
    training routing, the router-gradient cosine to dense routing, expert-load histograms."""
    evals = [e for e in sorted(data.evals_of_kind("pretrain"), key=lambda e: (e.subject, str(e.path)))
             if e.data.get("arch") == "moe"]
    if not evals:
        return None
    rows = []
    for ev in evals:
        d = ev.data
        for source, r in (d.get("routing") or {}).items():
            ev_mri, tr_mri = (r.get("eval") or {}).get("mri") or [], (r.get("train") or {}).get("mri") or []
            rows.append([_pretrain_label(ev), source, _per_layer(ev_mri), _per_layer(tr_mri),
                         _per_layer(d.get("router_grad_cosine"))])
    parts = [table(["run", "held-out text", "MRI per layer (evaluation routing)", "MRI per layer (training routing)",
                    "router-gradient cosine per layer"], rows, numeric=(2, 3, 4),
                   caption="MRI: the busiest expert's share ÷ the balanced share (1 = balanced). Training routing differs "
                           "from evaluation routing only for Sinkhorn. Cosine: the router's gradient under its own sparse "
                           "routing vs under dense routing (all experts, full softmax), same batch — what Default MoE "
                           "improves.")]
    lines = []
    for i, ev in enumerate(evals):
        pts = [(number(r.get("step")), _mean(r.get("router_grad_cosine"))) for r in ev.data.get("evals") or []]
        pts = [(x, y) for x, y in pts if x is not None and y is not None]
        lines.append((_pretrain_label(ev), plots.COLORS[i % len(plots.COLORS)], [x for x, _ in pts], [y for _, y in pts]))
    figures = []
    img = plots.line_chart(lines, title="router-gradient cosine to dense routing (mean over layers)", xlabel="step",
                           ylabel="cosine")
    if img:
        figures.append((img, "Higher: the sparse forward gives the router a gradient closer to the dense one."))
    if len(evals) <= MAX_RUN_FIGURES:
        for ev in evals:
            figures += _pretrain_figures(ev, ("mri.png", "load.png"))
    parts.append(_figure_block(figures))
    return "\n".join(parts)


def continual_pretrain_section(data: ReportData, palette: Palette) -> str | None:
    """Continual pre-training (``tunelab pretrain --init-from``): loss on the old and new text before
    and after, forgetting, and how many tokens changed expert."""
    evals = [e for e in sorted(data.evals_of_kind("pretrain"), key=lambda e: (e.subject, str(e.path)))
             if e.data.get("init_from")]
    if not evals:
        return None
    rows = []
    for ev in evals:
        d = ev.data
        new = Path(str(d.get("data") or "")).name.removeprefix("corpus:")
        for source in sorted(d.get("final_loss") or {}):
            before, after = number((d.get("initial_loss") or {}).get(source)), number((d.get("final_loss") or {}).get(source))
            change = (d.get("expert_changes") or {}).get(source) or {}
            rows.append([_pretrain_label(ev), f"{d.get('schedule')}, replay {d.get('replay') or 'none'}",
                         source + (" (new)" if source == new else " (old)"), fmt_num(before), fmt_num(after),
                         "–" if before is None or after is None else f"{after - before:+.4f}",
                         " / ".join(fmt_pct(v) for v in change.get("top1") or []) or "–"])
    return table(["run", "recipe", "held-out text", "loss before", "loss after", "change (+ = forgetting on old)",
                  "tokens changing top-1 expert, per layer"], rows, numeric=(3, 4, 5, 6),
                 caption="Before: the --init-from model; after: the continued model. Expert changes compare the two "
                         "models' evaluation routing on the same held-out tokens.")


SECTIONS.insert(index_of("scaling"), Section("pretrain", "Pre-training", pretrain_section, kinds=("pretrain",)))
SECTIONS.insert(index_of("pretrain") + 1, Section("moe-routing", "MoE routing", routing_section, kinds=("pretrain",)))
SECTIONS.insert(index_of("moe-routing") + 1, Section("continual-pretraining", "Continual pre-training",
                                                     continual_pretrain_section, kinds=("pretrain",)))
