"""The inspect room's report sections: attention heads, pruning, steering vectors, the refusal
direction, SALT privacy steering and multi-turn stability.

Registered with :func:`tunelab.report.registry.section`; where they render is the one order list,
:data:`tunelab.report.sections.ORDER`.
"""

from __future__ import annotations

from typing import Any

from tunelab.report.collect import Evaluation, ReportData, by_subject, number
from tunelab.report.html import esc, swatch, table
from tunelab.report.registry import section
from tunelab.report.render import Palette, fmt_auroc, fmt_ci, fmt_int, fmt_num, fmt_pct, fmt_rate_ci


def _rows(ev: Evaluation) -> list[dict[str, Any]]:
    return [r for r in ev.data.get("rows") or [] if isinstance(r, dict)]


def _guarded(rows: list[dict[str, Any]]) -> bool:
    """Whether the rows' safety numbers came with the degenerate-text guard (a degenerate rate)."""
    return any(r.get("degenerate_rate") is not None for r in rows)


def _judged_by(rows: list[dict[str, Any]]) -> str:
    """Who judged the rows' answers, for a caption: the judge (keyword for rows that predate the
    option), whether the degenerate-text guard ran and the model its likelihood test scored under;
    empty when the rows measured no safety."""
    if not any(r.get("refusal_rate") is not None for r in rows):
        return ""  # no safety measured
    judges = list(dict.fromkeys(str(r["judge"]) for r in rows if r.get("judge"))) or ["keyword"]
    references = list(dict.fromkeys(str(r["guard_reference"]) for r in rows if r.get("guard_reference")))
    likelihood = f"; its likelihood test under the {', '.join(references)}" if references else ""
    guard = (f" with the degenerate-text guard (degenerate answers are neither compliance nor refusal{likelihood})"
             if _guarded(rows) else "")
    return f"Judge: {', '.join(judges)}{guard}."


@section("heads", "Attention heads", kinds=("heads",))
def heads_section(data: ReportData, palette: Palette) -> str | None:
    """``tunelab inspect heads``: accuracy vs % of heads zeroed per score against the random
    baseline, the largest share each score zeroes within 1 point, and per-(layer, head) maps."""
    from tunelab.report import plots  # matplotlib loads with the first figure, not with the room
    evals = data.evals_of_kind("heads")
    if not evals:
        return None
    parts = []
    for ev in by_subject(evals):
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


@section("pruning", "Pruning", kinds=("pruning",))
def pruning_section(data: ReportData, palette: Palette) -> str | None:
    """``tunelab inspect prune``: dense vs Probe Pruning vs Wanda-sp vs alignment-aware pruning —
    counted FLOPs saved, perplexity, benchmark accuracy and refusal rate at each ratio."""
    from tunelab.report import plots  # matplotlib loads with the first figure, not with the room
    evals = data.evals_of_kind("pruning")
    if not evals:
        return None
    parts = []
    for ev in by_subject(evals):
        rows = _rows(ev)
        guarded = _guarded(rows)  # results written before the guard have no degenerate rate
        body = [[str(r.get("method")), fmt_pct(r.get("ratio")), fmt_pct(r.get("flops_saved")), fmt_num(r.get("ppl"), 4),
                 fmt_pct(r.get("accuracy")), fmt_pct(r.get("refusal_rate")), fmt_pct(r.get("over_refusal")),
                 *([fmt_pct(r.get("degenerate_rate"))] if guarded else [])] for r in rows]
        d = ev.data
        parts.append(f"<h3>{esc(ev.subject)}</h3>")
        parts.append(table(["method", "target ratio", "FLOPs saved (counted)", "perplexity", f"accuracy ({d.get('task') or '–'})",
                            "refusal rate (harmful)", "over-refusal (benign)", *(["degenerate (harmful)"] if guarded else [])],
                           body, numeric=tuple(range(1, 8 if guarded else 7)),
                           caption=("FLOPs are the multiply-adds the pruned forward actually ran (probes included) over "
                                    f"the dense model's on the same inputs. {_judged_by(rows)}").rstrip()))
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


@section("steering", "Steering vectors", kinds=("steering",))
def steering_section(data: ReportData, palette: Palette) -> str | None:
    """``tunelab inspect steer train``: each vector's method, pairs and the layers where the contrast
    separates best on held-out pairs (the full curve is in the Curves section)."""
    evals = data.evals_of_kind("steering")
    if not evals:
        return None
    body = []
    for ev in by_subject(evals):
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


def _shown_token(token: str) -> str:
    """A token between curly quotes with control characters escaped (a newline shows as a backslash and n)."""
    return "‘" + repr(token)[1:-1] + "’"


@section("refusal-direction", "Refusal direction", kinds=("refusal-direction",))
def refusal_direction_section(data: ReportData, palette: Palette) -> str | None:
    """``tunelab inspect refusal-direction``: the selected candidate (position, layer, its three scores)
    and ASR / refusal rate / over-refusal / cross-entropy under ablation, addition and orthogonalisation."""
    from tunelab.report import plots  # matplotlib loads with the first figure, not with the room
    evals = data.evals_of_kind("refusal-direction")
    if not evals:
        return None
    parts = []
    for ev in by_subject(evals):
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
            guarded = _guarded(rows)  # results written before the guard have no degenerate rate
            body = [[str(r.get("intervention")), fmt_pct(r.get("asr")),
                     *([fmt_pct(r.get("asr_fluent")), fmt_pct(r.get("degenerate_rate"))] if guarded else []),
                     fmt_pct(r.get("refusal_rate")), fmt_pct(r.get("over_refusal")), fmt_num(r.get("ce"), 4)] for r in rows]
            parts.append(table(["intervention", "ASR (harmful)",
                                *(["ASR (fluent answers)", "degenerate (harmful)"] if guarded else []),
                                "refusal rate (harmful)", "over-refusal (benign)", "CE (held-out)"],
                               body, numeric=tuple(range(1, 7 if guarded else 5)),
                               caption=f"Held-out prompts. {_judged_by(rows)} Ablation removes the direction at every layer and "
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


@section("salt", "Privacy steering (SALT)", kinds=("salt",))
def salt_section(data: ReportData, palette: Palette) -> str | None:
    """``tunelab inspect salt``: leak rate of a private field and task accuracy vs the coefficient of
    a steering vector from leaky vs non-leaky answers, added at the last prompt token."""
    from tunelab.report import plots  # matplotlib loads with the first figure, not with the room
    evals = data.evals_of_kind("salt")
    if not evals:
        return None
    parts = []
    for ev in by_subject(evals):
        d, rows = ev.data, _rows(ev)
        layers = ", ".join(str(i) for i in d.get("layers") or []) or "–"
        parts.append(f"<h3>{esc(ev.subject)}</h3>")
        parts.append(f"<p>Steered layers {esc(layers)} ({esc(d.get('layer_source') or '–')}); "
                     f"{esc(fmt_int(d.get('n_test')))} held-out records, vector from {esc(fmt_int(d.get('n_train')))} "
                     f"{esc(d.get('pairs') or 'template')} contrast pairs (read: {esc(d.get('read') or '–')}). "
                     f"Baseline leak rate {esc(fmt_pct(d.get('baseline_leak')))}.</p>")
        body = [[fmt_num(r.get("coeff")), str(r.get("positions") or "last"), fmt_rate_ci(r.get("leak_rate"), r.get("leak_ci")),
                 "–" if number(r.get("leak_reduction")) is None else f"{number(r.get('leak_reduction')):+.0%}",
                 fmt_rate_ci(r.get("accuracy"), r.get("accuracy_ci"))] for r in rows]
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


def _with_ci(value: Any, ci: Any) -> str:
    """``49.0% [40.0%, 58.0%]``; the interval left out when there is none."""
    return fmt_ci(value, ci, fmt_pct)


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
        rows = [[f"layer {k}", fmt_auroc(v)] for k, v in probe.items()]
        rows.append(["turn index only (baseline)", fmt_auroc(d.get("baseline_auroc"))])
        reason = f" No AUROC: {d.get('probe_reason')}." if d.get("probe_reason") else ""
        parts.append(table(["probe (last prompt token's residual)", "AUROC"], rows, numeric=(1,),
                           caption="Does the next turn change the answer? Logistic regression, cross-validated with "
                                   f"folds grouped by question.{reason}"))
    return parts


@section("multi-turn", "Multi-turn stability", kinds=("multi-turn",))
def multiturn_section(data: ReportData, palette: Palette) -> str | None:
    """``tunelab audit multi-turn``: accuracy per turn under "Think again." against the two-state
    Markov chain's prediction, Acc∞, and the residual probe's AUROC per layer vs the turn index."""
    from tunelab.report import plots  # matplotlib loads with the first figure, not with the room
    evals = data.evals_of_kind("multi-turn")
    if not evals:
        return None
    parts = []
    for ev in by_subject(evals):
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
