"""``tunelab eval``: one config object, a task or a suite, results written next to the adapter.

Output directory (``--output``, or ``ADAPTER/eval/<task-or-suite>`` when an adapter run is
given): ``metrics.json`` (everything but the per-example records, plus the resolved config) and
``outputs.jsonl`` (one record per prompt with the model's output and its score or verdict).
``metrics.json`` also records the ``decoder`` that generated the outputs: ``"tunelab"`` (the
batched loop), ``"hf-generate: <reason>"`` (the slower fallback), or null when tunelab's
generation did not run (multiple-choice tasks; lm-eval, which generates through its own harness).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.evaluate.intervention import GenerationIntervention, applied_all, first_step_of
from tunelab.evaluate.results import LmEvalResult, SafetyResult, TaskResult  # noqa: F401 (registered for as_result)
from tunelab.layout import EVAL_DIR, EVAL_OUTPUTS, atomic_write_text
from tunelab.results import RunDir, as_result

# the config and its constants live in a light module (the CLI builds its flags from it at import)
from tunelab.evaluate.config import LM_EVAL_PREFIX, SPLITS, SUITES, EvalConfig  # noqa: E402,F401 (re-exported)


def _generation(cfg: EvalConfig, default_max_new_tokens: int) -> dict[str, Any]:
    return {"max_new_tokens": cfg.max_new_tokens or default_max_new_tokens, "do_sample": cfg.sample,
            "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed, "batch_size": cfg.batch_size,
            "bf16": cfg.bf16}


Run = Callable[[Any, Any], dict[str, Any]]


def _prepare_task(cfg: EvalConfig, interventions: Sequence[GenerationIntervention]) -> Run:
    from tunelab.evaluate.task_eval import evaluate_task
    from tunelab.evaluate.tasks import resolve_task

    task = resolve_task(cfg.task or "", cfg.scorer, shots=cfg.num_fewshot, chat=not cfg.plain)
    for intervention in interventions:
        intervention.check_task(task.name, task.scorer)
    return lambda model, tokenizer: evaluate_task(
        model, tokenizer, task, limit=cfg.limit, seed=cfg.seed, batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens, do_sample=cfg.sample, temperature=cfg.temperature, top_p=cfg.top_p,
        n_samples=cfg.n_samples, ks=cfg.ks, bf16=cfg.bf16, first_step=first_step_of(interventions, tokenizer))


def _prepare_lm_eval(cfg: EvalConfig, interventions: Sequence[GenerationIntervention]) -> Run:
    from tunelab.evaluate.lm_eval_bridge import run_lm_eval

    tasks = [t for t in (cfg.task or "").removeprefix(LM_EVAL_PREFIX).split(",") if t]
    return lambda model, tokenizer: run_lm_eval(
        model, tokenizer, tasks, include_path=cfg.lm_eval_include, limit=cfg.limit, num_fewshot=cfg.num_fewshot,
        batch_size=cfg.batch_size, seed=cfg.seed)


def _prepare_safety(cfg: EvalConfig, interventions: Sequence[GenerationIntervention]) -> Run:
    from tunelab.evaluate.judges import get_judge
    from tunelab.evaluate.prompts import benign_prompts, harmful_prompts
    from tunelab.evaluate.safety import evaluate_safety

    harmful = harmful_prompts(cfg.harmful_prompts, cfg.limit, cfg.harmful_split if cfg.harmful_prompts is None else "all")
    benign = benign_prompts(cfg.benign_prompts, cfg.benign_limit or cfg.limit, cfg.seed,
                            cfg.benign_split if cfg.benign_prompts is None else "all")
    judge = get_judge(cfg.judge, cfg.judge_threshold)
    return lambda model, tokenizer: evaluate_safety(model, tokenizer, harmful, benign, judge, **_generation(cfg, 128),
                                                    first_step=first_step_of(interventions, tokenizer))


# A suite is one line here: name → a function that reads and checks its inputs (before any
# model is loaded) and returns the run.
SUITE_RUNNERS: dict[str, Callable[[EvalConfig, Sequence[GenerationIntervention]], Run]] = {"safety": _prepare_safety}


def run_eval(cfg: EvalConfig, model: Any = None, tokenizer: Any = None,
             interventions: Sequence[GenerationIntervention] = ()) -> dict[str, Any]:
    """Run the task or suite of ``cfg``; write results when there is an output dir; return them.

    Pass ``model``/``tokenizer`` to reuse a loaded model (``cfg.model``/``adapter`` are then
    only recorded). ``interventions`` act while the model generates or is scored (refusal control,
    steering); :func:`tunelab.eval_recipe.run_eval` builds them from ``cfg``'s options.
    """
    cfg.validate()
    if cfg.asks_for_interventions() and not interventions:
        raise TunelabError("the config asks for refusal control or steering: build its interventions with "
                           "tunelab.eval_recipe.interventions_for(cfg), or call tunelab.eval_recipe.run_eval")
    if cfg.task is not None:
        prepare = _prepare_lm_eval if cfg.task.startswith(LM_EVAL_PREFIX) else _prepare_task
        run = prepare(cfg, interventions)
    else:
        run = SUITE_RUNNERS[cfg.suite or ""](cfg, interventions)
    if model is None:
        from tunelab.evaluate.loading import load_with_adapter

        model, tokenizer = load_with_adapter(cfg.model, cfg.adapter)
    from tunelab.evaluate.generation import record_decoders

    started = time.perf_counter()
    with record_decoders() as decoders, applied_all(interventions, model) as summaries:
        result = run(model, tokenizer)
    result.update(summaries)  # e.g. "steering": what was applied
    # A slow fallback must show in the results, not just in a log line.
    result.update({"model": cfg.model, "adapter": cfg.adapter, "decoder": "; ".join(sorted(decoders)) or None,
                   "wall_time_s": time.perf_counter() - started, "config": cfg.to_dict()})
    out = cfg.output_dir()
    if out is not None:
        write_result(result, out)
        result["output_dir"] = str(out)
    return result


def write_result(result: dict[str, Any], out: Path) -> None:
    """``outputs.jsonl`` (the records) then ``metrics.json`` (everything else) into ``out``.

    ``metrics.json`` goes last: its presence marks a finished evaluation.
    """
    RunDir(out).open(marker_only=True)  # an old result must not pass for this one
    atomic_write_text(out / EVAL_OUTPUTS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.get("records", [])))
    as_result({k: v for k, v in result.items() if k != "records"}).write(out, indent=2)
