"""`tunelab tasks list|export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.app import tasks_app
from tunelab.cli.common import console


@tasks_app.command("list")
def tasks_list() -> None:
    """List built-in tasks and the offline benchmarks (`tunelab eval --task NAME`)."""
    from tunelab.evaluate.benchmarks import BENCHMARKS
    from tunelab.tasks import TASKS

    for name, task in TASKS.items():
        console.print(f"{name:14s} {task.description}")
    for name, bench in BENCHMARKS.items():
        console.print(f"{name:14s} benchmark: {bench.description}")


@tasks_app.command("export")
def tasks_export(
    name: Annotated[str, typer.Argument(help="task name")],
    output: Annotated[Path, typer.Option(help="directory for train.jsonl and test.jsonl")],
    n_train: Annotated[int, typer.Option()] = 1000,
    n_test: Annotated[int, typer.Option()] = 200,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write a task's train/test splits as JSONL for `tunelab train --data`."""
    from tunelab.tasks import export_task

    paths = export_task(name, output, n_train=n_train, n_test=n_test, seed=seed)
    console.print(f"wrote {paths['train']} ({n_train}) and {paths['test']} ({n_test})")
