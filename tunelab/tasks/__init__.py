"""Built-in fine-tuning tasks: registry, lookup and JSONL export (:mod:`tunelab.tasks.catalog`).

This file only re-exports."""

from __future__ import annotations

from tunelab.tasks.base import SCORERS, Task, score_exact, score_numeric
from tunelab.tasks.catalog import TASKS, export_task, get_task

__all__ = [
    "SCORERS",
    "TASKS",
    "Task",
    "export_task",
    "get_task",
    "score_exact",
    "score_numeric",
]
