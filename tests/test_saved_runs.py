"""Run directories written by an earlier tunelab still load, and the report renders them the same.

``tests/data/saved/runs`` holds one run directory of every kind of result (made by
``scripts/make_saved_runs.py`` with the real commands on tiny-random; weights over 64 KB dropped).
The report over them is summarised — per section: its title, sub-headings, table headers,
figure count and captions — and compared with ``tests/data/saved/report_summary.json``. A
refactor that changes what a user sees fails here; an intended change regenerates the summary
with ``TUNELAB_UPDATE_GOLDEN=1`` and says so in its commit.
"""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

SAVED = Path(__file__).parent / "data" / "saved"
SUMMARY = SAVED / "report_summary.json"


class _Summary(HTMLParser):
    """Per ``<section id=...>``: h2/h3/h4 texts, <th> texts, <img> count, <figcaption> texts."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, dict[str, list]] = {}
        self.current: dict[str, list] | None = None
        self.capture: str | None = None
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self.current = {"headings": [], "table_headers": [], "figures": [], "images": [0]}
            self.sections[dict(attrs).get("id") or "?"] = self.current
        elif self.current is not None and tag == "img":
            self.current["images"][0] += 1
        elif self.current is not None and tag in ("h2", "h3", "h4", "th", "figcaption"):
            self.capture, self.text = tag, ""

    def handle_data(self, data: str) -> None:
        if self.capture:
            self.text += data

    def handle_endtag(self, tag: str) -> None:
        if self.capture == tag and self.current is not None:
            text = re.sub(r"\s+", " ", self.text).strip()
            key = {"th": "table_headers", "figcaption": "figures"}.get(tag, "headings")
            self.current[key].append(text)
            self.capture = None


def summarise(page: str) -> dict:
    parser = _Summary()
    parser.feed(page)
    return {"order": list(parser.sections), "sections": parser.sections}


@pytest.fixture(scope="module")
def summary() -> dict:
    from tunelab.report import render_report

    cwd = os.getcwd()
    os.chdir(SAVED)  # the runs name each other by the relative paths they were made with
    try:
        return summarise(render_report(["runs"]))
    finally:
        os.chdir(cwd)


def test_every_saved_metrics_file_is_read_by_the_report(summary: dict) -> None:
    from tunelab.report.collect import collect

    data = collect([SAVED / "runs"])
    assert not [n for n in data.notes if "skipped" in n or "malformed" in n], data.notes
    assert len(data.runs) >= 6 and len(data.evals) >= 10


def test_the_report_renders_the_saved_runs_as_before(summary: dict) -> None:
    if os.environ.get("TUNELAB_UPDATE_GOLDEN"):
        SUMMARY.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    golden = json.loads(SUMMARY.read_text())
    assert sorted(summary["sections"]) == sorted(golden["sections"]), "sections added or lost"
    for name, want in golden["sections"].items():
        assert summary["sections"][name] == want, f"section '{name}' renders differently"
    assert summary["order"] == golden["order"]
