"""`tunelab demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.app import app
from tunelab.cli.common import console, quiet_libraries


@app.command()
def demo(
    quick: Annotated[bool, typer.Option("--quick", help="a much shorter run")] = False,
    output: Annotated[Path, typer.Option(help="where the demo writes its runs and table")] = Path("runs/demo"),
    model: Annotated[str, typer.Option()] = "smollm2-135m",
) -> None:
    """Fine-tune LoRA, LoRI-D and LoRI-S side by side on a built-in task; print one table."""
    from tunelab.demo import run_demo

    quiet_libraries()
    run_demo(output, quick=quick, model=model, console=console)
