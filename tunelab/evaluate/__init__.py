"""Evaluation: load a model with an optional adapter, generate, score, judge.

``evaluate_task`` (:mod:`tunelab.evaluate.task_eval`) scores a task from the registry
(``tunelab.evaluate.tasks``); ``run_eval`` (:mod:`tunelab.evaluate.runner`) is the ``tunelab eval``
command (tasks and suites, results written to disk). This file only re-exports, lazily: the
CLI imports the light config modules (:mod:`tunelab.evaluate.config`) without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunelab.evaluate.generation import generate
    from tunelab.evaluate.loading import load_with_adapter
    from tunelab.evaluate.scorers import SCORERS
    from tunelab.evaluate.task_eval import evaluate_task
    from tunelab.evaluate.tasks import EVAL_TASKS, EvalTask, resolve_task

_EXPORTS = {
    "generate": "tunelab.evaluate.generation",
    "load_with_adapter": "tunelab.evaluate.loading",
    "evaluate_task": "tunelab.evaluate.task_eval",
    "EVAL_TASKS": "tunelab.evaluate.tasks",
    "EvalTask": "tunelab.evaluate.tasks",
    "resolve_task": "tunelab.evaluate.tasks",
    "SCORERS": "tunelab.evaluate.scorers",
}


def __getattr__(name: str) -> Any:
    """The re-exported names, imported on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tunelab.evaluate' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = [
    "EVAL_TASKS",
    "EvalTask",
    "SCORERS",
    "evaluate_task",
    "generate",
    "load_with_adapter",
    "resolve_task",
]
