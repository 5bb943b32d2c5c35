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
from tunelab.evaluate.results import EvalResult, LmEvalResult, SafetyResult, TaskResult  # noqa: F401 (registered for as_result)
from tunelab.layout import EVAL_FILE, EVAL_OUTPUTS
from tunelab.results import RunDir, as_result

# the config and its constants live in a light module (the CLI builds its flags from it at import)
from tunelab.evaluate.config import LM_EVAL_PREFIX, SPLITS, SUITES, EvalConfig  # noqa: E402,F401 (re-exported)


def _generation(cfg: EvalConfig, default_max_new_tokens: int) -> dict[str, Any]:
    return {"max_new_tokens": cfg.max_new_tokens or default_max_new_tokens, "do_sample": cfg.sample,
            "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed, "batch_size": cfg.batch_size,
            "bf16": cfg.bf16}


# A run gives its result dict, or a step that finishes it once the interventions are off (the
# safety suite generates under them and judges without them).
Run = Callable[[Any, Any], "dict[str, Any] | Callable[[], dict[str, Any]]"]


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
    from tunelab.evaluate.prompts import benign_prompts, harmful_prompts
    from tunelab.evaluate.safety import judge_safety, safety_answers

    harmful = harmful_prompts(cfg.harmful_prompts, cfg.limit, cfg.harmful_split if cfg.harmful_prompts is None else "all",
                              harmful_set=cfg.harmful_set)
    benign = benign_prompts(cfg.benign_prompts, cfg.benign_limit or cfg.limit, cfg.seed,
                            cfg.benign_split if cfg.benign_prompts is None else "all")
    judge = cfg.judging.make()
    harmful_set = "file" if cfg.harmful_prompts is not None else cfg.harmful_set

    def run(model: Any, tokenizer: Any) -> Callable[[], dict[str, Any]]:
        answers = safety_answers(model, tokenizer, harmful, benign, **_generation(cfg, 128),
                                 first_step=first_step_of(interventions, tokenizer))
        # judged once the interventions are off, so that the likelihood test's reference is free of them
        return lambda: judge_safety(answers, judge, nll_reference=_nll_reference(cfg, interventions, model, tokenizer),
                                    reference_name=cfg.model, harmful_set=harmful_set)

    return run


def _nll_reference(cfg: EvalConfig, interventions: Sequence[GenerationIntervention], model: Any,
                   tokenizer: Any) -> tuple[Any, Any] | None:
    """What the guard's likelihood test scores answers under: the base model ``cfg.model`` when the
    evaluated one differs from it, else None (a bare model's answers have nothing to be compared with).

    With an adapter that is ``cfg.model`` loaded on its own (:func:`reference_model`); with only
    interventions it is ``model`` itself, called once they are off.
    """
    if cfg.adapter is not None:
        reference, reference_tokenizer = reference_model(cfg.model)
        return reference.to(next(model.parameters()).device), reference_tokenizer
    return (model, tokenizer) if interventions else None


# The base models the likelihood test scores under, by name: a study measures many adapters of one
# base in one process and loads it once. One entry: another base replaces it.
_REFERENCES: dict[str, tuple[Any, Any]] = {}


def reference_model(name: str) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the base model ``name``, loaded at the first call and kept for the next."""
    if name not in _REFERENCES:
        from tunelab.models import load_model

        _REFERENCES.clear()
        _REFERENCES[name] = load_model(name)
    return _REFERENCES[name]


# (tunelab.evaluate.config registers "safety" → this module's _prepare_safety lazily: the config stays light)


def run_eval(cfg: EvalConfig, run_dir: RunDir | None = None, *, model: Any = None, tokenizer: Any = None,
             interventions: Sequence[GenerationIntervention] = ()) -> EvalResult:
    """Run the task or suite of ``cfg``; write it into ``run_dir``; return the typed result.

    ``run_eval(cfg, run_dir=None, *, model=None, tokenizer=None, interventions=()) ->
    TaskResult | LmEvalResult | SafetyResult`` (by what ``cfg`` runs). ``run_dir`` ``None`` is
    ``cfg.run_dir()`` (``--output``, else ``ADAPTER/eval/NAME``), and when that is ``None`` too
    nothing is written. The result carries the per-example ``records`` and the ``output_dir``
    it wrote to (neither is in ``metrics.json``). Pass ``model``/``tokenizer`` to reuse a loaded
    model (``cfg.model``/``adapter`` are then only recorded). ``interventions`` act while the
    model generates or is scored (refusal control, steering); :func:`tunelab.eval_recipe.run_eval`
    builds them from ``cfg``'s options. The safety suite judges once they are off; when an adapter
    or an intervention made the model differ from ``cfg.model``, the degenerate-text guard's
    likelihood test scores the answers under ``cfg.model`` (the result's ``guard_reference``).
    """
    cfg.validate()
    if cfg.asks_for_interventions() and not interventions:
        raise TunelabError("the config asks for refusal control or steering: build its interventions with "
                           "tunelab.eval_recipe.interventions_for(cfg), or call tunelab.eval_recipe.run_eval")
    if cfg.task is not None:
        prepare = _prepare_lm_eval if cfg.task.startswith(LM_EVAL_PREFIX) else _prepare_task
        run = prepare(cfg, interventions)
    else:
        run = SUITES.get(cfg.suite or "")(cfg, interventions)
    if model is None:
        from tunelab.evaluate.loading import load_with_adapter

        model, tokenizer = load_with_adapter(cfg.model, cfg.adapter)
    from tunelab.evaluate.generation import record_decoders

    started = time.perf_counter()
    with record_decoders() as decoders:
        with applied_all(interventions, model) as summaries:
            raw = run(model, tokenizer)
        if callable(raw):
            raw = raw()
    raw.update(summaries)  # e.g. "steering": what was applied
    # A slow fallback must show in the results, not just in a log line.
    raw.update({"model": cfg.model, "adapter": cfg.adapter, "decoder": "; ".join(sorted(decoders)) or None,
                "wall_time_s": time.perf_counter() - started, "config": cfg.to_dict()})
    result = _typed(raw)
    run_dir = cfg.run_dir() if run_dir is None else run_dir
    if run_dir is not None:
        _write(result, run_dir)
    return result


def _typed(raw: dict[str, Any]) -> EvalResult:
    """The run's dict as its result kind; the records move onto the result (not into ``metrics.json``)."""
    records = raw.get("records", [])
    result = as_result({k: v for k, v in raw.items() if k != "records"})
    if not isinstance(result, EvalResult):
        raise TunelabError(f"an evaluation returned a '{raw.get('kind')}' result, not task, lm-eval or safety")
    result.records = list(records)
    return result


def _write(result: EvalResult, run_dir: RunDir) -> None:
    """``outputs.jsonl`` (the records) then ``metrics.json`` (everything else) into ``run_dir``.

    ``metrics.json`` goes last: its presence marks a finished evaluation.
    """
    run_dir.open(marker_only=True)  # an old result must not pass for this one
    run_dir.write_text(EVAL_OUTPUTS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.records))
    result.write(run_dir, EVAL_FILE, indent=2)
    result.output_dir = str(run_dir.path)


def write_result(result: dict[str, Any], out: Path) -> None:
    """Write an evaluation's dict (``records`` included) into ``out`` as :func:`run_eval` does.

    For callers that score with :func:`~tunelab.evaluate.task_eval.evaluate_task` themselves (the
    demo, experiments).
    """
    _write(_typed(result), RunDir(out))
