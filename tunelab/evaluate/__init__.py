"""Evaluation: load a model with an optional adapter, generate, score, judge.

``evaluate_task`` (:mod:`tunelab.evaluate.task_eval`) scores a task from the registry
(``tunelab.evaluate.tasks``); ``run_eval`` (:mod:`tunelab.evaluate.runner`) is the ``tunelab eval``
command as a job (``run_eval(cfg, run_dir=None, *, model, tokenizer, interventions)``: tasks and
suites, results written to disk and returned typed, :mod:`tunelab.evaluate.results`). This file only re-exports, lazily (:func:`tunelab.registry.lazy_exports`): the
CLI imports the light config modules (:mod:`tunelab.evaluate.config`) without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunelab.registry import lazy_exports

if TYPE_CHECKING:
    from tunelab.evaluate.generation import generate
    from tunelab.evaluate.loading import load_with_adapter
    from tunelab.evaluate.scorers import SCORERS
    from tunelab.evaluate.task_eval import evaluate_task
    from tunelab.evaluate.tasks import EVAL_TASKS, EvalTask, resolve_task

__getattr__, __all__ = lazy_exports(__name__, {
    "tunelab.evaluate.generation": ("generate",),
    "tunelab.evaluate.loading": ("load_with_adapter",),
    "tunelab.evaluate.task_eval": ("evaluate_task",),
    "tunelab.evaluate.tasks": ("EVAL_TASKS", "EvalTask", "resolve_task"),
    "tunelab.evaluate.scorers": ("SCORERS",),
})
