"""The scaling room's report section: scaling-law fits (``tunelab scaling fit``).

Registered with :func:`tunelab.report.registry.section`; where it renders is the one order list,
:data:`tunelab.report.sections.ORDER`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.report.collect import ReportData, by_subject, number
from tunelab.report.html import esc, table
from tunelab.report.registry import section
from tunelab.report.render import Palette, eval_pngs, fmt_ci, fmt_int, fmt_num, fmt_pct


def _sig(v: Any, digits: int = 4) -> str:
    """``digits`` significant digits, in e-notation from 10⁵ up (sizes, budgets, coefficients)."""
    n = number(v)
    return "–" if n is None else f"{n:.{digits}g}" if abs(n) >= 1e5 else fmt_num(n, digits)


def _fmt_ci(value: Any, ci: Any, digits: int = 4) -> str:
    """``0.2928 [0.2578, 0.3331]``; the interval left out when there is none."""
    return fmt_ci(value, ci, lambda v: _sig(v, digits))


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


@section("scaling", "Scaling laws", kinds=("scaling",))
def scaling_section(data: ReportData, palette: Palette) -> str | None:
    """``tunelab scaling fit``: the approach-3 law with bootstrap intervals, the degeneracy guard's
    verdict, the compute-optimal N*, D* at the budget, approach 1's hull and the fit's figures."""
    from tunelab.report import plots  # matplotlib loads with the first figure, not with the room
    evals = data.evals_of_kind("scaling")
    if not evals:
        return None
    parts = []
    for ev in by_subject(evals):
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
