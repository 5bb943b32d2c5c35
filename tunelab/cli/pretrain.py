"""`tunelab pretrain`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tunelab.cli.app import app
from tunelab.cli.common import quiet_libraries
from tunelab.errors import TunelabError


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
    quiet_libraries()
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
