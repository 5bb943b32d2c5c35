"""`tunelab report`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tunelab.cli.app import app
from tunelab.cli.common import console


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", help="run, eval or demo dirs, or parents holding several")],
    output: Annotated[Path, typer.Option(help="the HTML file to write")] = Path("report.html"),
    title: Annotated[Optional[str], typer.Option(help="page title")] = None,
) -> None:
    """Compare runs in one self-contained HTML file: curves, scores, safety, sizes."""
    from tunelab.report import build_report

    console.print(str(build_report(run_dirs, output, title=title)), highlight=False, markup=False, soft_wrap=True)
