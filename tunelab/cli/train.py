"""`tunelab train`: fine-tune an adapter (moved verbatim from cli.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from tunelab.cli.app import app
from tunelab.cli.common import console, quiet_libraries, comma_list


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

    quiet_libraries()
    if resume and output and config is None and (Path(output) / CONFIG_FILE).is_file():
        config = Path(output) / CONFIG_FILE
    cfg = TrainConfig.from_sources(
        config, model=model, data=data, method=method, output=output, mask_from=mask_from,
        sparsity=sparsity, mask_granularity=mask_granularity, init_from=init_from, disjoint=disjoint or None,
        calibration_fraction=calibration_fraction, safety_eval_limit=safety_eval_limit, rank=rank, alpha=alpha, dropout=dropout,
        target_modules=comma_list(target_modules, "--target-modules"), lr=lr, epochs=epochs,
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
