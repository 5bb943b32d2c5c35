"""`tunelab generate` and `tunelab eval`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunelab.cli.app import app
from tunelab.cli.build import config_command
from tunelab.cli.common import console, quiet_libraries
from tunelab.errors import TunelabError
from tunelab.evaluate.config import EvalConfig, GenerateConfig

if TYPE_CHECKING:
    from tunelab.evaluate.results import EvalResult


def _generate(cfg: GenerateConfig) -> list[tuple[str, str, str | None]]:
    """Generate for every prompt; (prompt, output, opening control token or None) each."""
    from contextlib import nullcontext

    from tunelab.evaluate.generation import generate_ids
    from tunelab.evaluate.loading import load_with_adapter
    from tunelab.inspect.steering import steer_spec
    from tunelab.safety.refusal_tokens import check_control, control_tokens, refusal_control

    quiet_libraries()
    r = cfg.refusal
    check_control(r.refusal_threshold, r.refusal_bias, r.refusal_categories, r.refusal_temperature)
    prompts = list(cfg.prompt or [])
    if cfg.prompts_file is not None:
        from tunelab.files import read_text

        prompts += [line for line in read_text(cfg.prompts_file, "prompts file").splitlines() if line.strip()]
    if not prompts:
        raise TunelabError("no prompts: pass them as arguments or with --prompts-file")
    s = cfg.steering
    spec = steer_spec(s.steer, s.coeff, s.steer_layers, s.steer_positions, s.steer_mode)
    vector = spec.load() if spec else None
    lm, tokenizer = load_with_adapter(cfg.model, cfg.adapter)
    control = refusal_control(tokenizer, r.refusal_threshold, r.refusal_bias, r.refusal_categories, r.refusal_temperature)
    g = cfg.generation
    with spec.applied(lm, vector) if spec else nullcontext():
        ids = generate_ids(lm, tokenizer, prompts, max_new_tokens=g.max_new_tokens, batch_size=g.batch_size,
                           do_sample=g.sample, temperature=g.temperature, top_p=g.top_p, seed=cfg.seed, first_step=control)
    outputs = [tokenizer.decode(new, skip_special_tokens=True).strip() for new in ids]
    return list(zip(prompts, outputs, control_tokens(tokenizer, ids)))


def _show_generated(cfg: GenerateConfig, rows: list[tuple[str, str, str | None]]) -> None:
    for p, o, c in rows:
        shown = f"{c} {o}" if cfg.show_control and c else o
        console.print(f">>> {p}\n{shown}\n", highlight=False, markup=False)


config_command(
    app, "generate", GenerateConfig, _generate, show=_show_generated, skip=("bf16",),
    help="Generate text from a model with an optional adapter (and steering vector).",
    # generate's flags read as they always have: decoding options without help text
    overrides={"max_new_tokens": {"help": ""}, "temperature": {"help": ""}, "top_p": {"help": ""},
               "batch_size": {"help": ""}},
    order=["prompt", "model", "adapter", "prompts_file", "max_new_tokens", "sample", "temperature", "top_p", "seed",
           "batch_size", "refusal_threshold", "refusal_bias", "refusal_categories", "refusal_temperature",
           "show_control", "steer", "coeff", "steer_layers", "steer_positions", "steer_mode"],
)


def _evaluate(cfg: EvalConfig) -> EvalResult:
    from tunelab.eval_recipe import run_eval

    quiet_libraries()
    return run_eval(cfg)


def _show_eval(cfg: EvalConfig, result: EvalResult) -> None:
    from tunelab.evaluate.results import LmEvalResult, SafetyResult

    if isinstance(result, SafetyResult):
        iv = result.intervals
        console.print(f"safety ({result.judge} judge): ASR {result.asr:.1%} [{iv['asr'][0]:.0%}–{iv['asr'][1]:.0%}] and refusal rate "
                      f"{result.refusal_rate:.1%} on {result.n_harmful} harmful prompts ({result.harmful_set}); over-refusal "
                      f"{result.over_refusal:.1%} [{iv['over_refusal'][0]:.0%}–{iv['over_refusal'][1]:.0%}] on {result.n_benign} benign prompts",
                      highlight=False)
        if result.degenerate_rate is not None:
            console.print(f"degenerate answers (neither refusal nor compliance): {result.degenerate_rate:.1%} of the harmful; "
                          f"ASR among the fluent ones {result.asr_fluent:.1%}", highlight=False)
    elif isinstance(result, LmEvalResult):
        for name, metrics in result.results.items():
            shown = ", ".join(f"{m} {v:.3f}" for m, v in metrics.items())
            console.print(f"lm-eval {name}: {shown} on {result.n.get(name)} examples")
    else:
        shown = ", ".join(f"{name} {value:.3f}" for name, value in result.metrics.items())
        console.print(f"{result.task}: {shown} on {result.n} examples")
    if result.output_dir is not None:
        console.print(f"wrote {result.output_dir}/metrics.json and outputs.jsonl")


config_command(
    app, "eval", EvalConfig, _evaluate, show=_show_eval, config="eval.yaml; flags override it",
    help="Score a model (+ adapter) on a task (built-in, HumanEval or a file) or a suite (safety).",
    skip=("harmful_split", "benign_split"),
    overrides={
        "max_new_tokens": {"help": "default: the task's (safety 128)"},
        "sample": {"flag": "--sample/--greedy", "help": "sample instead of greedy decoding"},
        "temperature": {"show_default": "0.9"},
        "top_p": {"show_default": "0.6"},
        "batch_size": {"help": ""},
        "steer": {"help": "a steering vector (`tunelab inspect steer train`) applied while scoring"},
        "steer_positions": {"help": "all, prompt or last (generation tasks only)"},
        "steer_mode": {"help": "add or ablate"},
    },
    order=["model", "adapter", "task", "suite", "scorer", "limit", "seed", "max_new_tokens", "sample", "temperature",
           "top_p", "n_samples", "k", "batch_size", "bf16", "judge", "judge_threshold", "harmful_set",
           "harmful_prompts", "benign_prompts", "benign_limit", "lm_eval_include", "num_fewshot", "plain", "output",
           "refusal_threshold", "refusal_bias", "refusal_categories", "refusal_temperature", "steer", "coeff",
           "steer_layers", "steer_positions", "steer_mode"],
)
