"""The merge room's report section: merges and their interference metrics (``tunelab merge``,
``tunelab inspect interference``).

Registered with :func:`tunelab.report.registry.section`; where it renders is the one order list,
:data:`tunelab.report.sections.ORDER`.
"""

from __future__ import annotations

from tunelab.report.collect import ReportData, by_subject, number
from tunelab.report.html import esc, swatch, table
from tunelab.report.registry import section
from tunelab.report.render import Markup, Palette, fmt_int, fmt_num, fmt_pct


@section("merge", "Merging and interference", kinds=("interference",))
def merge_section(data: ReportData, palette: Palette) -> str | None:
    """Merges (method, sources, weights) and interference metrics: heatmaps, pairs, single vs merged."""
    from tunelab.report import plots  # matplotlib loads with the first figure, not with the room
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
    for ev in by_subject(evals):
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
