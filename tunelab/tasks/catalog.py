"""The built-in tasks by name (``TASKS``), lookup (``get_task``) and JSONL export (``export_task``)."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.layout import atomic_write_text
from tunelab.registry import Registry
from tunelab.tasks.arithmetic import ArithmeticTask
from tunelab.tasks.base import Task
from tunelab.tasks.reverse_words import ReverseWordsTask

# built-in task name → the task (kept in name order: the error lists them sorted)
TASKS: Registry[Task] = Registry("task", listing="built-in tasks: ")
TASKS.register("arithmetic", ArithmeticTask())
TASKS.register("reverse_words", ReverseWordsTask())


def get_task(name: str) -> Task:
    """Return the built-in task called ``name``; raise TunelabError listing the known ones."""
    return TASKS.get(name)


def export_task(
    name: str,
    out_dir: str | Path,
    n_train: int = 1000,
    n_test: int = 200,
    seed: int = 0,
) -> dict[str, Path]:
    """Write ``out_dir/train.jsonl`` and ``out_dir/test.jsonl`` for a built-in task.

    Each line is ``{"prompt": ..., "response": ...}``. Returns ``{"train": path, "test": path}``.
    """
    task = get_task(name)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TunelabError(f"cannot create output directory '{out}': {e}") from e
    paths: dict[str, Path] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        path = out / f"{split}.jsonl"
        records = task.examples(split, n, seed=seed)
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        paths[split] = path
    return paths


__all__ = ["TASKS", "export_task", "get_task"]
