"""What report sections share: HTML-safe strings, run colours, number formats, embedded PNGs.

Any room may import this (it sits in the ``core`` layer, see :mod:`tunelab.layers`) to write its
report section beside its result: it loads neither the rest of the report nor matplotlib. Figures
come from :mod:`tunelab.report.plots`, which a section imports inside its function so matplotlib
loads with the first figure drawn. Tables and escaping are in :mod:`tunelab.report.html`.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tunelab.report.collect import Evaluation, number

BASE_COLOR = "#9a9a9a"
# tab10 without its grey (kept for base models)
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]


class Markup(str):
    """A string of HTML that must not be escaped again."""


@dataclass
class Palette:
    """One colour per subject (run, base model, ...), the same in every figure."""

    assigned: dict[str, str] = field(default_factory=dict)

    def __call__(self, name: str) -> str:
        """The colour for ``name``; base models are grey, others cycle through tab10."""
        if name not in self.assigned:
            if name.startswith("base"):
                self.assigned[name] = BASE_COLOR
            else:
                used = sum(1 for n in self.assigned if not n.startswith("base"))
                self.assigned[name] = COLORS[used % len(COLORS)]
        return self.assigned[name]


def png_img(data: bytes, alt: str, width: int | None = None) -> Markup:
    """An ``<img>`` tag embedding PNG bytes."""
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    size = f' width="{width}"' if width else ""
    return Markup(f'<img class="plot" src="{uri}" alt="{html.escape(alt)}"{size}>')


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


def distinct_tags(evs: list[Evaluation]) -> dict[int, str]:
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


def _ci_bounds(raw: Any) -> tuple[float, float] | None:
    if isinstance(raw, (list, tuple)) and len(raw) == 2:
        lo, hi = number(raw[0]), number(raw[1])
        if lo is not None and hi is not None:
            return lo, hi
    return None


def fmt_ci(value: Any, ci: Any, fmt: Callable[[Any], str]) -> str:
    """``fmt(value) [fmt(lo), fmt(hi)]`` (e.g. ``49.0% [40.0%, 58.0%]``); the interval left out when
    ``ci`` is not two numbers."""
    bounds = _ci_bounds(ci)
    return fmt(value) if bounds is None else f"{fmt(value)} [{fmt(bounds[0])}, {fmt(bounds[1])}]"


def fmt_rate_ci(value: Any, ci: Any) -> str:
    """0.12, [0.05, 0.2] → ``12.0% [5.0–20.0]`` (the CI in percent too)."""
    text = fmt_pct(value)
    bounds = _ci_bounds(ci)
    return text if bounds is None or text == "–" else f"{text} [{bounds[0] * 100:.1f}–{bounds[1] * 100:.1f}]"


def fmt_auroc(raw: Any) -> str:
    """{"value": 0.71, "ci": [0.68, 0.74]} (or a bare number) → ``0.710 [0.680–0.740]``."""
    value, ci = (raw.get("value"), raw.get("ci")) if isinstance(raw, dict) else (raw, None)
    v, bounds = number(value), _ci_bounds(ci)
    if v is None:
        return "–"
    return f"{v:.3f}" + ("" if bounds is None else f" [{bounds[0]:.3f}–{bounds[1]:.3f}]")


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
            out.append((png_img(raw, f"{ev.subject}: {name}"), name))
    return out
