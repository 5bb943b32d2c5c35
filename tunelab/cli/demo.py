"""`tunelab demo`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.cli.app import app
from tunelab.cli.build import config_command
from tunelab.cli.common import console, quiet_libraries
from tunelab.options import option


@dataclass
class DemoConfig:
    """``tunelab demo``: LoRA, LoRI-D and LoRI-S side by side on a built-in task."""

    quick: bool = option(False, flag="--quick", help="a much shorter run")
    output: Path = option(Path("runs/demo"), help="where the demo writes its runs and table")
    model: str = option("smollm2-135m")


def _demo(cfg: DemoConfig) -> Any:
    from tunelab.demo import run_demo

    quiet_libraries()
    return run_demo(cfg.output, quick=cfg.quick, model=cfg.model, console=console)


config_command(app, "demo", DemoConfig, _demo,
               help="Fine-tune LoRA, LoRI-D and LoRI-S side by side on a built-in task; print one table.")
