"""``tunelab report``: one self-contained HTML file comparing runs, evaluations and demo results.

    from tunelab.report import build_report
    build_report(["runs/demo"], "report.html")

:mod:`~tunelab.report.collect` finds and reads the inputs, :mod:`~tunelab.report.sections`
holds the registry of sections (add one function + one line there), :mod:`~tunelab.report.plots`
draws matplotlib figures as inline PNGs, :mod:`~tunelab.report.html` lays out the page and
:mod:`~tunelab.report.build` puts them together. This file only re-exports.
"""

from __future__ import annotations

from tunelab.report.build import DEFAULT_TITLE, build_report, render_report

__all__ = ["DEFAULT_TITLE", "build_report", "render_report"]
