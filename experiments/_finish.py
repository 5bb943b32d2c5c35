"""The last step every experiment script shares: results on disk, the report, a summary printed."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from tunelab.layout import atomic_write_text


def finish(root: Path, summary: dict[str, Any], md: str, figures: list[Path], title: str, started: float, console: Console) -> int:
    """Write ``results.json`` (``summary`` plus wall time) and ``results.md``, build ``report.html``, print the tables."""
    from tunelab.report import build_report

    wall_s = time.perf_counter() - started
    atomic_write_text(root / "results.json", json.dumps({**summary, "wall_s": wall_s}, indent=2, default=str))
    atomic_write_text(root / "results.md", md)
    report = build_report([root], root / "report.html", title=title)
    console.print(md, markup=False, highlight=False)
    console.print(f"wrote {root / 'results.md'}, {', '.join(map(str, figures))} and {report} ({wall_s / 60:.1f} min)")
    return 0
