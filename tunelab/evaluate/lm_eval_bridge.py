"""Run lm-evaluation-harness tasks on a tunelab model + adapter.

lm-eval downloads its datasets from the Hugging Face Hub, which tunelab never does; so this
bridge is for tasks whose data you already have: your own task YAML (``--include-path DIR``)
pointing at local files, or a populated HF datasets cache. The model is whatever tunelab loads
— an alias such as ``smollm2-135m``, a LoRI-S run holding only its compact file, a full
fine-tune — handed to lm-eval's ``HFLM`` as an in-memory model, with the adapter merged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError


def lm_eval_model(model: Any, tokenizer: Any, batch_size: int = 8, max_length: int | None = None) -> Any:
    """Wrap a loaded model and tokenizer as an lm-eval ``HFLM`` (on the model's device)."""
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise TunelabError("lm-evaluation-harness is not installed: pip install 'tunelab[lm-eval]'") from None
    device = str(next(model.parameters()).device)
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, device=device)


def run_lm_eval(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    *,
    include_path: str | Path | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    apply_chat_template: bool = False,
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on ``tasks``; returns ``{"kind": "lm-eval", "results", "n", ...}``.

    ``results`` maps task → metric → value (lm-eval's ``"acc,none"`` keys shortened to ``acc``).
    """
    if not tasks:
        raise TunelabError("no lm-eval tasks given")
    if include_path is not None and not Path(include_path).is_dir():
        raise TunelabError(f"lm-eval include path not found: {include_path}")
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        raise TunelabError(f"unknown lm-eval task(s): {', '.join(unknown)} (add --include-path DIR for your own task YAML)")
    out = lm_eval.simple_evaluate(
        model=lm_eval_model(model, tokenizer, batch_size), tasks=list(tasks), task_manager=manager, limit=limit,
        num_fewshot=num_fewshot, apply_chat_template=apply_chat_template, log_samples=False, bootstrap_iters=0,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
    )
    results: dict[str, dict[str, float]] = {}
    for task, metrics in (out or {}).get("results", {}).items():
        results[task] = {k.split(",")[0]: v for k, v in metrics.items() 
                         if isinstance(v, (int, float)) and k.split(",")[0] not in ("alias", "sample_len")}
    n = {task: v.get("effective", v.get("original")) for task, v in (out or {}).get("n-samples", {}).items()}
    return {"kind": "lm-eval", "tasks": list(tasks), "results": results, "n": n, "records": []}
