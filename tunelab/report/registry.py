"""The registry of report sections, and the ``@section`` decorator a room adds its own with.

A room writes its section beside its result, in its own ``report.py``, and registers it::

    from tunelab.report.registry import section

    @section("merge", "Merging and interference", kinds=("interference",))
    def merge_section(data: ReportData, palette: Palette) -> str | None:
        ...

This module sits in the ``core`` layer (see :mod:`tunelab.layers`), so any room may import it
without importing the report. Where a section renders is not decided here: the page follows the
one list :data:`tunelab.report.sections.ORDER`, which names every registered key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

from tunelab.registry import Registry
from tunelab.report.collect import ReportData
from tunelab.report.render import Palette

SectionFn = Callable[[ReportData, Palette], "str | None"]
F = TypeVar("F", bound=SectionFn)


@dataclass(frozen=True)
class Section:
    """One registered section: anchor id, heading, renderer, and the eval kinds it presents."""

    key: str
    title: str
    render: SectionFn
    kinds: tuple[str, ...] = ()


REPORT_SECTIONS: Registry[Section] = Registry("report section")


def section(key: str, title: str, *, kinds: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Register the decorated ``render(data, palette) -> HTML | None`` as the section ``key``
    headed ``title``; ``kinds`` are the metrics.json kinds it presents (the "Other evaluations"
    table shows the kinds no section claims). Returns the function unchanged."""
    def register(render: F) -> F:
        REPORT_SECTIONS.register(key, Section(key, title, render, tuple(kinds)))
        return render

    return register


__all__ = ["REPORT_SECTIONS", "Section", "SectionFn", "section"]
