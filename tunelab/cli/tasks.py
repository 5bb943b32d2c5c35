"""`tunelab tasks list|export`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.cli.app import tasks_app
from tunelab.cli.build import config_command
from tunelab.cli.common import console
from tunelab.options import option


@tasks_app.command("list")
def tasks_list() -> None:
    """List built-in tasks and the offline benchmarks (`tunelab eval --task NAME`)."""
    from tunelab.evaluate.benchmarks import BENCHMARKS
    from tunelab.tasks import TASKS

    for name, task in TASKS.items():
        console.print(f"{name:14s} {task.description}")
    for name, bench in BENCHMARKS.items():
        console.print(f"{name:14s} benchmark: {bench.description}")


@dataclass(kw_only=True)
class TaskExportConfig:
    """``tunelab tasks export``: a task's splits as JSONL."""

    name: str = option(flag="-", help="task name")
    output: Path = option(help="directory for train.jsonl and test.jsonl")
    n_train: int = option(1000)
    n_test: int = option(200)
    seed: int = option(0)


def _export(cfg: TaskExportConfig) -> dict[str, Path]:
    from tunelab.tasks import export_task

    return export_task(cfg.name, cfg.output, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed)


def _show_export(cfg: TaskExportConfig, paths: dict[str, Path]) -> None:
    console.print(f"wrote {paths['train']} ({cfg.n_train}) and {paths['test']} ({cfg.n_test})")


config_command(tasks_app, "export", TaskExportConfig, _export, show=_show_export,
               help="Write a task's train/test splits as JSONL for `tunelab train --data`.")
