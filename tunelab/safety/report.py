"""The safety room's report section: runs continued ``--init-from`` an earlier adapter, with the
safety check's before → after numbers (``tunelab.json`` ``safety``).

(The safety suite's evaluations, kind ``safety``, are the report's own "Safety" section.)
Registered with :func:`tunelab.report.registry.section`; where it renders is the one order list,
:data:`tunelab.report.sections.ORDER`.
"""

from __future__ import annotations

from tunelab.report.collect import ReportData, number
from tunelab.report.html import swatch, table
from tunelab.report.registry import section
from tunelab.report.render import Palette, fmt_pct


@section("continual", "Continual learning: safety before → after")
def continual_section(data: ReportData, palette: Palette) -> str | None:
    """Runs trained ``--init-from`` an earlier adapter: safety before → after (tunelab.json ``safety``)."""
    from tunelab.report import plots  # matplotlib loads with the first figure, not with the room
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
