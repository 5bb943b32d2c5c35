"""`tunelab report`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.cli.app import app
from tunelab.cli.build import config_command
from tunelab.cli.common import console
from tunelab.options import option


@dataclass(kw_only=True)
class ReportConfig:
    """``tunelab report``: the runs to compare and the HTML file to write."""

    run_dirs: list[Path] = option(flag="-", metavar="RUN_DIR", help="run, eval or demo dirs, or parents holding several")
    output: Path = option(Path("report.html"), help="the HTML file to write")
    title: str | None = option(None, help="page title")


def _report(cfg: ReportConfig) -> Path:
    from tunelab.report import build_report

    return build_report(cfg.run_dirs, cfg.output, title=cfg.title)


config_command(app, "report", ReportConfig, _report,
               show=lambda cfg, path: console.print(str(path), highlight=False, markup=False, soft_wrap=True),
               help="Compare runs in one self-contained HTML file: curves, scores, safety, sizes.")
