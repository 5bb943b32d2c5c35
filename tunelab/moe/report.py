"""The moe room's report sections: pre-training, MoE routing and continual pre-training
(``tunelab pretrain``).

Registered with :func:`tunelab.report.registry.section`; where they render is the one order list,
:data:`tunelab.report.sections.ORDER`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.report.collect import Evaluation, ReportData, by_subject, number
from tunelab.report.html import esc, table
from tunelab.report.registry import section
from tunelab.report.render import Markup, Palette, eval_pngs, fmt_int, fmt_num, fmt_pct


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


@section("pretrain", "Pre-training", kinds=("pretrain",))
def pretrain_section(data: ReportData, palette: Palette) -> str | None:
    """``tunelab pretrain``: one row per run (size, router, tokens, held-out loss per distribution,
    speed) and the held-out curves of all runs on one chart per distribution."""
    from tunelab.report import plots  # matplotlib loads with the first figure, not with the room
    evals = by_subject(data.evals_of_kind("pretrain"))
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


@section("moe-routing", "MoE routing", kinds=("pretrain",))
def routing_section(data: ReportData, palette: Palette) -> str | None:
    """MoE routing diagnostics of ``tunelab pretrain`` runs: MRI per layer under evaluation and
    training routing, the router-gradient cosine to dense routing, expert-load histograms."""
    from tunelab.report import plots  # matplotlib loads with the first figure, not with the room
    evals = [e for e in by_subject(data.evals_of_kind("pretrain"))
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


@section("continual-pretraining", "Continual pre-training", kinds=("pretrain",))
def continual_pretrain_section(data: ReportData, palette: Palette) -> str | None:
    """Continual pre-training (``tunelab pretrain --init-from``): loss on the old and new text before
    and after, forgetting, and how many tokens changed expert."""
    evals = [e for e in by_subject(data.evals_of_kind("pretrain"))
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
