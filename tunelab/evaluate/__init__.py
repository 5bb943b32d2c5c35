"""Evaluation: load a model with an optional adapter, generate, score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.evaluate.generation import generate
from tunelab.evaluate.loading import load_with_adapter
from tunelab.tasks import get_task


def evaluate_task(
    model: Any,
    tokenizer: Any,
    task_name: str,
    *,
    limit: int = 100,
    seed: int = 0,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    bf16: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Greedy-generate answers for ``limit`` test examples of a built-in task and score them."""
    task = get_task(task_name)
    examples = task.examples("test", limit, seed)
    outputs = generate(
        model, tokenizer, [ex["prompt"] for ex in examples],
        max_new_tokens=max_new_tokens, batch_size=batch_size, bf16=bf16, progress=progress,
    )
    scores = [task.score(out, ex["response"]) for out, ex in zip(outputs, examples)]
    records = [{**ex, "output": out, "score": s} for ex, out, s in zip(examples, outputs, scores)]
    return {"task": task_name, "n": len(scores), "accuracy": sum(scores) / len(scores), "records": records}


__all__ = ["evaluate_task", "generate", "load_with_adapter"]
