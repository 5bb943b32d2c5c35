"""Build the report: collect the inputs, render every section in order, write one HTML file."""

from __future__ import annotations

import html as _html
import os
import platform
import shlex
from datetime import datetime
from pathlib import Path
from typing import Sequence

import tunelab
from tunelab.errors import TunelabError
from tunelab.layout import atomic_write_text
from tunelab.report.collect import ReportData, collect
from tunelab.report.html import esc, page, swatch
from tunelab.report.registry import Section
from tunelab.report.render import Palette
from tunelab.report.sections import SECTIONS

DEFAULT_TITLE = "tunelab report"


def render_report(paths: Sequence[str | os.PathLike[str]], title: str | None = None, *, now: datetime | None = None) -> str:
    """The report for the runs under ``paths`` as an HTML string (see :func:`build_report`)."""
    data = collect(paths)
    palette = _palette(data)
    now = now or datetime.now().astimezone()
    title = title or DEFAULT_TITLE
    rendered = []
    for section in SECTIONS:
        body = _render_section(section, data, palette)
        if body:
            rendered.append((section.key, section.title, body))
    return page(title, _header(data, palette, now), rendered, _footer(data, paths, now))


def build_report(paths: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], title: str | None = None) -> Path:
    """Write one self-contained HTML report comparing everything found under ``paths``; return
    its path.

    ``paths`` are run directories, evaluation directories, ``tunelab demo`` output directories
    or parents holding several of them (searched a few levels deep). Raises TunelabError if a
    path does not exist, nothing reportable is found, or ``output`` is a directory.
    """
    out = Path(output)
    if out.is_dir():
        raise TunelabError(f"{out} is a directory; --output takes a file name such as report.html")
    text = render_report(paths, title)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    return out


def _palette(data: ReportData) -> Palette:
    # Assign colours up front in display order so a run has the same colour in every figure.
    palette = Palette()
    for name in data.subjects():
        palette(name)
    for run in data.runs:
        palette(run.name)
    return palette


def _render_section(section: Section, data: ReportData, palette: Palette) -> str | None:
    # One broken section must not cost the whole report: show what went wrong in its place.
    try:
        return section.render(data, palette)
    except Exception as exc:  # noqa: BLE001 - reported on the page
        return f'<p class="error section-error">this section could not be drawn: {esc(type(exc).__name__)}: {esc(exc)}</p>'


def _header(data: ReportData, palette: Palette, now: datetime) -> str:
    runs = ", ".join(swatch(palette(r.name), r.name) for r in data.runs) or "none"
    counts = f"{len(data.runs)} training runs, {len(data.evals)} evaluations, {len(data.demos)} demo tables"
    return (
        f'<div class="meta">{esc(now.strftime("%Y-%m-%d %H:%M %Z"))} · tunelab <b>{esc(tunelab.__version__)}</b> · {esc(counts)}</div>\n'
        f'<div class="meta">runs: {runs}</div>'
    )


def _footer(data: ReportData, paths: Sequence[str | os.PathLike[str]], now: datetime) -> str:
    command = "tunelab report " + " ".join(shlex.quote(str(p)) for p in paths)
    notes = "".join(f"<li>{esc(n)}</li>" for n in data.notes)
    return (
        f"<p>Produced by <code>{_html.escape(command)}</code> on {esc(platform.node() or 'this machine')} "
        f"({esc(platform.machine())}, Python {esc(platform.python_version())}) at {esc(now.isoformat(timespec='seconds'))}. "
        "Every number comes from the files under the paths above (tunelab.json, metrics.jsonl, eval/*/metrics.json, results.json).</p>"
        + (f"<p>Notes:</p><ul>{notes}</ul>" if notes else "")
    )


__all__ = ["DEFAULT_TITLE", "build_report", "render_report"]
