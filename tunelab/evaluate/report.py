"""The "Judges" report section: ``tunelab judge compare`` (calibration card) and ``tunelab judge train``.

Registered with :func:`tunelab.report.registry.section`; placed by :data:`tunelab.report.sections.ORDER`.
"""

from __future__ import annotations

from typing import Any

from tunelab.report.collect import ReportData, by_subject, number
from tunelab.report.html import esc, table
from tunelab.report.registry import section
from tunelab.report.render import Palette, fmt_int, fmt_num, fmt_pct


def _compare(d: dict[str, Any]) -> str:
    judges = [j for j in d.get("judges") or [] if isinstance(j, dict)]
    pairs = [p for p in d.get("pairs") or [] if isinstance(p, dict)]
    parts = [table(["judge", "threshold", "refusal rate", "accuracy", "answers/s"],
                   [[j.get("name"), fmt_num(j.get("threshold")), fmt_pct(j.get("refusal_rate")),
                     fmt_pct(j.get("accuracy")) if number(j.get("accuracy")) is not None else "–",
                     fmt_num(j.get("answers_per_s"), 0)] for j in judges], numeric=(1, 2, 3, 4),
                   caption=f"{fmt_int(d.get('n'))} answers from {d.get('source')}; accuracy on the "
                           f"{fmt_int(d.get('labelled'))} labelled ones.")]
    if pairs:
        parts.append(table(["judges", "agreement", "Cohen's κ", "answers they disagree on"],
                           [[f"{p.get('a')} vs {p.get('b')}", fmt_pct(p.get("agreement")),
                             fmt_num(p.get("kappa"), 3) if number(p.get("kappa")) is not None else "– (undefined)",
                             fmt_int(p.get("disagree"))] for p in pairs], numeric=(1, 2, 3),
                           caption="κ = (agreement − chance agreement) / (1 − chance agreement), scikit-learn's cohen_kappa_score "
                                   "on the complied/refused verdicts."))
    shown = [x for x in d.get("disagreements") or [] if isinstance(x, dict)]
    if shown:
        names = [j.get("name") for j in judges]
        parts.append(table(["prompt", "response", *names],
                           [[x.get("prompt"), x.get("response"), *[(x.get("verdicts") or {}).get(n, "") for n in names]]
                            for x in shown], caption="Answers the judges disagree on (prompt and response cut to 80 characters)."))
    return "\n".join(parts)


def _train(d: dict[str, Any]) -> str:
    acc = d.get("accuracy") if isinstance(d.get("accuracy"), dict) else {}
    enc = d.get("encoder") if isinstance(d.get("encoder"), dict) else {}
    return table(["set", "n", "embedding judge", "keyword judge"],
                 [[name, fmt_int(a.get("n")), fmt_pct(a.get("embedding")), fmt_pct(a.get("keyword"))]
                  for name, a in acc.items() if isinstance(a, dict)], numeric=(1, 2, 3),
                 caption=f"Embedding judge {d.get('judge_dir')}: logistic regression over {enc.get('name')} embeddings, "
                         f"threshold {fmt_num(d.get('threshold'))}. 'train' is its own training data; the other sets are "
                         "held out by source or category (docs/judges.md).")


@section("judges", "Judges", kinds=("judge-compare", "judge-train"))
def judges_section(data: ReportData, palette: Palette) -> str | None:
    """Judge calibration: every judge on the same answers (refusal rates, agreement, κ, disagreements), and
    trained embedding judges' accuracy per held-out set."""
    evals = data.evals_of_kind("judge-compare", "judge-train")
    if not evals:
        return None
    parts = []
    for ev in by_subject(evals):
        title = "judge comparison" if ev.kind == "judge-compare" else "embedding judge training"
        parts.append(f"<h3>{esc(ev.subject)} — {title}</h3>")
        parts.append(_compare(ev.data) if ev.kind == "judge-compare" else _train(ev.data))
    return "\n".join(parts)
