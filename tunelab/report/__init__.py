"""``tunelab report``: one self-contained HTML file comparing runs, evaluations and demo results.

    from tunelab.report import build_report
    build_report(["runs/demo"], "report.html")

:mod:`~tunelab.report.collect` finds and reads the inputs; each room registers its sections in
its own ``report.py`` with :func:`~tunelab.report.registry.section`, and
:mod:`~tunelab.report.sections` holds the report's own sections and the one ``ORDER`` list;
:mod:`~tunelab.report.render` and :mod:`~tunelab.report.html` are what sections share,
:mod:`~tunelab.report.plots` draws matplotlib figures as inline PNGs, and
:mod:`~tunelab.report.build` puts them together. This file only re-exports.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_TITLE", "build_report", "render_report"]


def __getattr__(name: str) -> Any:
    # Loaded on first use (PEP 562): a room importing tunelab.report.registry must not load every
    # room's sections and matplotlib with it.
    if name in __all__:
        from tunelab.report import build

        return getattr(build, name)
    raise AttributeError(f"module 'tunelab.report' has no attribute {name!r}")
