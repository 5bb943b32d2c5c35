"""The privacy room's report sections: canary audits, neural phishing, private (DP) training.

Registered with :func:`tunelab.report.registry.section`; where they render is the one order list,
:data:`tunelab.report.sections.ORDER`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tunelab.report.collect import Evaluation, ReportData, number
from tunelab.report.html import esc, swatch, table
from tunelab.report.registry import section
from tunelab.report.render import Markup, Palette, distinct_tags, fmt_auroc, fmt_int, fmt_num, fmt_pct, fmt_rate_ci

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


@section("privacy", "Privacy audit", kinds=("privacy-audit",))
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
    tags = distinct_tags(evals)
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


def _fmt_eps(value: float | None) -> str:
    """ε with two decimals (bounds are compared with their ceilings, so keep one precision)."""
    return "–" if value is None else f"{value:.2f}"


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
        return fmt_rate_ci(entry.get("tpr"), entry.get("ci"))
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
            fmt_auroc(r.values.get("auroc")), eps_cell,
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
    from tunelab.report import plots  # matplotlib loads with the first figure, not with the room
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
    from tunelab.report import plots  # matplotlib loads with the first figure, not with the room
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


@section("phishing", "Neural phishing", kinds=("phishing",))
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


_DP_PALETTE = {"ε_LB (audit)": "#1f77b4", "ε spent (ledger)": "#c8c8c8"}  # fixed: these bars are not runs


@section("dp", "Private training")
def dp_section(data: ReportData, palette: Palette) -> str | None:
    """The privacy ledger of every DP run, with its own canary audit beside the ε it spent.

    An audit's ε_LB above the ledger's ε contradicts the guarantee: it is flagged as a bug, not shown
    as a finding.
    """
    from tunelab.report import plots  # matplotlib loads with the first figure, not with the room
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
