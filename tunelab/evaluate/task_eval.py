"""``evaluate_task``: score a model on one task of the registry (generated text, choices or code)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunelab.evaluate.generation import generate
from tunelab.evaluate.scorers import choice_loglikelihoods, get_scorer, pick_choice
from tunelab.evaluate.tasks import EvalTask, resolve_task


def evaluate_task(
    model: Any,
    tokenizer: Any,
    task: str | EvalTask,
    *,
    limit: int | None = 100,
    seed: int = 0,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    n_samples: int = 1,
    ks: Sequence[int] = (1,),
    bf16: bool = False,
    progress: bool = True,
    first_step: Any = None,
) -> dict[str, Any]:
    """Score ``model`` on ``limit`` examples of ``task``; greedy unless ``do_sample``.

    ``first_step`` (refusal-token control) applies to generated-text tasks.

    Returns ``{"kind": "task", "task", "scorer", "n", "score", "metrics", "records"}`` where
    ``score`` is the task's primary metric (accuracy, or pass@1 for code).
    """
    if isinstance(task, str):
        task = resolve_task(task)
    scorer = get_scorer(task.scorer)
    records = task.load(limit, seed)
    max_new = max_new_tokens or task.max_new_tokens
    if scorer.kind == "code":
        from tunelab.evaluate.humaneval import evaluate_humaneval

        # One completion per problem is greedy; several are sampled with temperature / top_p.
        result = evaluate_humaneval(model, tokenizer, problems=records, n_samples=n_samples, ks=ks,
                                    temperature=temperature, top_p=top_p, max_new_tokens=max_new, seed=seed,
                                    batch_size=batch_size, bf16=bf16, progress=progress)
        metrics = {k: v for k, v in result.items() if k.startswith("pass@")}
        out_records = result["records"]
        score = metrics.get("pass@1", next(iter(metrics.values())))
    elif scorer.kind == "choice":
        lls = choice_loglikelihoods(model, tokenizer, [r["prompt"] for r in records], [r["choices"] for r in records],
                                    chat=task.chat, batch_size=batch_size, bf16=bf16,
                                    option_prompts=[r.get("prompts") for r in records])
        out_records = []
        for r, ll in zip(records, lls):
            pred, pred_norm = pick_choice(ll, r["choices"]), pick_choice(ll, r["choices"], normalize=True)
            shown = {k: v for k, v in r.items() if k != "prompts"}  # one context per option is noise in outputs.jsonl
            out_records.append({**shown, "loglikelihoods": ll, "prediction": pred, "score": float(pred == r["answer"]),
                                "score_norm": float(pred_norm == r["answer"])})
        n = len(out_records)
        metrics = {"accuracy": sum(r["score"] for r in out_records) / n,
                   "accuracy_norm": sum(r["score_norm"] for r in out_records) / n}
        score = metrics["accuracy"]
    else:
        outputs = generate(model, tokenizer, [r["prompt"] for r in records], max_new_tokens=max_new,
                           batch_size=batch_size, do_sample=do_sample, temperature=temperature, top_p=top_p,
                           seed=seed, bf16=bf16, progress=progress, first_step=first_step)
        assert scorer.text is not None
        out_records = [{**r, "output": o, "score": scorer.text(o, r["response"])} for r, o in zip(records, outputs)]
        metrics = {"accuracy": sum(r["score"] for r in out_records) / len(out_records)}
        score = metrics["accuracy"]
    return {"kind": "task", "task": task.name, "scorer": task.scorer, "n": len(out_records), "score": score,
            "chat_template": task.chat, **metrics, "metrics": metrics, "records": out_records}


__all__ = ["evaluate_task"]
