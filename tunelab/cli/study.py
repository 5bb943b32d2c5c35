"""`tunelab study`."""

from __future__ import annotations

from typing import Any

from tunelab.cli.app import app
from tunelab.cli.build import config_command
from tunelab.cli.common import console, quiet_libraries
from tunelab.study.config import StudyConfig


def _study(cfg: StudyConfig) -> Any:
    from tunelab.study.run import run_study

    quiet_libraries()
    return run_study(cfg, console=console)


def _show(cfg: StudyConfig, result: Any) -> None:
    from tunelab.study.results import STUDY_FILE
    from tunelab.study.table import study_tables

    for table in study_tables(result):
        console.print(table)
    console.print(f"wrote {cfg.output}/{STUDY_FILE}, pareto.png and bars.png; "
                  f"`tunelab report {cfg.output}` renders the study with every arm's run", highlight=False)


config_command(app, "study", StudyConfig, _study, show=_show, skip=("train", "config_file"),
               config="the study spec (YAML); flags override it", config_argument="STUDY.yaml",
               help="Score one fine-tune per method on utility × safety drift × privacy leakage × cost, on one footing.")
