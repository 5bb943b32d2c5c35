"""Evaluation: load a model with an optional adapter, generate, score, judge.

``evaluate_task`` (:mod:`tunelab.evaluate.task_eval`) scores a task from the registry
(``tunelab.evaluate.tasks``); ``run_eval`` (:mod:`tunelab.evaluate.runner`) is the ``tunelab eval``
command (tasks and suites, results written to disk). This file only re-exports.
"""

from __future__ import annotations

from tunelab.evaluate.generation import generate
from tunelab.evaluate.loading import load_with_adapter
from tunelab.evaluate.task_eval import evaluate_task
from tunelab.evaluate.tasks import EVAL_TASKS, EvalTask, resolve_task
from tunelab.evaluate.scorers import SCORERS

__all__ = [
    "EVAL_TASKS",
    "EvalTask",
    "SCORERS",
    "evaluate_task",
    "generate",
    "load_with_adapter",
    "resolve_task",
]
