"""The training loop: read, load, adapt, loop over micro-batches, write the run.

``fit(cfg, plugins, rule)`` is the whole of it. What varies lives outside the loop:

* the **adapter method** (``tunelab.adapters``) wraps and freezes the model and saves the result;
* the **update rule** (:mod:`tunelab.train.update_rules`) turns micro-batches into parameter
  updates (backprop + AdamW by default);
* **plug-ins** (:mod:`tunelab.train.plugins`) add data, tokens, loss terms, records and
  evaluations at fixed hooks — refusal tokens, the constrained objective's reference and the
  before/after safety check are plug-ins of ``tunelab.safety``, composed by
  :func:`tunelab.finetune.train`.

accelerate supplies devices, mixed precision and DDP; ``cfg.fsdp`` shards the model with
PyTorch FSDP2 instead (also on CPUs under ``torchrun``). Checkpoints are atomic and a resumed
run equals an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader

from tunelab.adapters import get_method
from tunelab.data import Collator, length_grouped_batches, read_rows, tokenize_records, validate_record
from tunelab.errors import TunelabError
from tunelab.models import load_model
from tunelab.train import distributed
from tunelab.train.calibration import dense_calibration
from tunelab.train.checkpoint import load_checkpoint, save_checkpoint
from tunelab.train.config import TrainConfig
from tunelab.train.objectives import CausalLMLoss, ConstrainedLoss, count_tokens
from tunelab.train.plugins import Plugin, Run, StepInfo, unclaimed_options
from tunelab.train.precision import cast_norm_outputs, prepare_for_bf16
from tunelab.train.run_dir import (MetricsLog, check_output_dir, open_output_dir, resolved_config, resumed_config,
                                   write_finished_run)
from tunelab.train.update_rules import AdamW, UpdateRule


def fit(cfg: TrainConfig, plugins: Sequence[Plugin] = (), rule: UpdateRule | None = None, *,
        stop_after_step: int | None = None, console: Console | None = None) -> Path:
    """Run one training job; return the output directory.

    ``stop_after_step`` ends the loop early right after that step's checkpoint, as if the
    process had been killed there (used to test ``--resume``).
    """
    plugins, rule = list(plugins), rule or AdamW()
    cfg = _check_rule(cfg, plugins, rule)
    run, resume_from, dropped = _open(cfg, plugins, rule, console)
    cfg, accelerator = run.cfg, run.accelerator
    net, loader, params, total_steps, norm_hooks = _assemble(run, rule)
    progress: dict[str, Any] = {"step": 0, "losses": [], "tokens": 0, "loss_tokens": 0, "train_seconds": 0.0}
    if resume_from is not None:
        trainable, rule_state, progress = load_checkpoint(resume_from)
        distributed.load_trainable(run, params, trainable)
        rule.load_state_dict(*rule_state)
        loader = accelerator.skip_first_batches(loader, progress["step"] * cfg.grad_accum)
        run.console.print(f"resuming {run.out} from step {progress['step']}/{total_steps}")

    def loss_fn(batch: dict[str, torch.Tensor], per_example: bool = False) -> torch.Tensor:
        if per_example:  # [B]; plug-in loss terms were refused for such rules in _check_rule
            return net(**batch, per_example=True)
        loss = net(**batch)
        for plugin in plugins:
            loss = plugin.loss(run, batch, loss)
        return loss

    def checkpoint() -> None:
        if progress["step"]:  # before the first step there is nothing to resume
            _checkpoint(run, params, rule, progress)

    log = MetricsLog(run.out, progress["step"] if resume_from else None, accelerator.is_main_process)
    run.log, run.total_steps = log, total_steps
    window = torch.zeros(4, dtype=torch.float64)  # loss sum, micro-batches, tokens, supervised tokens
    try:
        for plugin in plugins:
            plugin.on_loop_start(run, progress["step"])
        start = time.perf_counter() - progress["train_seconds"]
        net.train()
        with _progress_bar(run) as bar:
            task = bar.add_task("train", total=total_steps, completed=progress["step"], loss="", tps=0.0,
                                note=rule.progress_note())
            for batch in loader:
                with distributed.micro_batch(run, net, batch["input_ids"].shape[1]):
                    loss = rule.micro_step(loss_fn, batch)
                window += torch.tensor([loss.item(), 1.0, *count_tokens(batch)], dtype=torch.float64)
                if not accelerator.sync_gradients:
                    continue
                update = rule.step()
                info = _count_step(run, progress, window, update, time.perf_counter() - start, rule.logs_loss())
                bar.update(task, completed=info.step, loss="" if info.loss is None else f"loss {info.loss:.4f}",
                           tps=info.tokens / max(info.elapsed_s, 1e-9), note=rule.progress_note())
                if info.step % cfg.log_every == 0 or info.step == total_steps:
                    log.write(info)
                for plugin in plugins:
                    plugin.on_step(run, info)
                if run.stop_reason:  # a plug-in ended training after this step; the run finishes as usual
                    break
                if cfg.save_every and info.step % cfg.save_every == 0 and info.step < total_steps:
                    checkpoint()
                if stop_after_step is not None and info.step >= stop_after_step:
                    checkpoint()
                    return run.out
    except KeyboardInterrupt:
        checkpoint()
        run.console.print(f"interrupted at step {progress['step']}; continue with: tunelab train --output {run.out} --resume")
        raise
    finally:
        rule.finish()
        for handle in norm_hooks:
            handle.remove()
        log.close()

    distributed.gather_for_saving(run, net)
    if accelerator.is_main_process:
        write_finished_run(run, progress, dropped, plugins, rule.record())
    accelerator.wait_for_everyone()  # the other ranks return only once the run is written
    return run.out


def _check_rule(cfg: TrainConfig, plugins: list[Plugin], rule: UpdateRule) -> TrainConfig:
    """The rule is the one ``cfg.optimizer`` names and can work with the plug-ins; fill its default LR."""
    if rule.name != cfg.optimizer:
        raise TunelabError(f"--optimizer {cfg.optimizer} needs its update rule (this run was given '{rule.name}'): "
                           "train with tunelab.finetune.train, or pass rule= to fit")
    adds_loss = [type(p).__name__ for p in plugins if type(p).loss is not Plugin.loss]
    if rule.per_example and adds_loss:
        raise TunelabError(f"--optimizer {cfg.optimizer} clips per-example losses; plug-ins that add loss terms "
                           f"({', '.join(adds_loss)}) cannot be clipped that way")
    lr = rule.default_lr(cfg) if cfg.lr is None else None
    return dataclasses.replace(cfg, lr=lr) if lr is not None else cfg


def _open(cfg: TrainConfig, plugins: list[Plugin], rule: UpdateRule,
          console: Console | None) -> tuple[Run, Path | None, int]:
    """Check the config and output dir, load data, model and adapter, then open the output dir.

    Returns the run, the checkpoint to resume from, and how many records truncation dropped.
    Everything that can fail on bad input happens before the output dir is touched.
    """
    resume_from = check_output_dir(cfg)
    cfg = resolved_config(resumed_config(cfg))
    unclaimed = unclaimed_options(cfg, plugins)
    if unclaimed:
        raise TunelabError(f"option(s) {', '.join(unclaimed)} need their plug-ins: train with tunelab.finetune.train "
                           "(or pass the plug-ins to fit)")
    accelerator = distributed.accelerator(cfg)
    cfg = distributed.shared_seed(cfg, accelerator)
    run = Run(cfg, Path(cfg.output), console or Console(stderr=True), accelerator,
              resumed=resume_from is not None)
    dropped = _load(run, plugins)
    rule.prepare(run)
    open_output_dir(run)
    get_method(cfg.method).on_output_ready(run.prepared, run.out)
    if accelerator.is_main_process:
        for plugin in plugins:
            plugin.on_start(run)
    return run, resume_from, dropped


def _assemble(run: Run, rule: UpdateRule) -> tuple[torch.nn.Module, Any, dict[str, torch.nn.Parameter], int, list[Any]]:
    """The objective around the prepared model, the batches, devices/sharding and the update rule.

    Returns (net, loader, trainable params by name, optimizer steps, hooks to remove at the end).
    """
    cfg = run.cfg
    norm_hooks = []
    if cfg.bf16 and not cfg.fsdp:  # FSDP2 all-gathers one dtype per unit: the model stays fp32
        prepare_for_bf16(run.prepared.model)
        norm_hooks = cast_norm_outputs(run.prepared.model)
    net = ConstrainedLoss(run.prepared.model, cfg.beta_schedule()) if cfg.objective == "constrained" \
        else CausalLMLoss(run.prepared.model)
    batches, total_steps = rule.batches(run) or _plan(cfg, run, run.accelerator.num_processes)
    loader = DataLoader(range(len(run.examples)), batch_sampler=batches,
                        collate_fn=Collator(run.examples, run.tokenizer.pad_token_id))
    net, loader = distributed.prepare(run, net, loader)
    params = {n: p for n, p in run.prepared.model.named_parameters() if p.requires_grad}
    rule.setup(run, params, total_steps)
    return net, loader, params, total_steps, norm_hooks


def _count_step(run: Run, progress: dict[str, Any], window: torch.Tensor, update: dict[str, float | None],
                elapsed: float, log_loss: bool) -> StepInfo:
    """Fold one step's micro-batch window (summed over ranks: one collective) into ``progress``;
    the loss only where the rule allows it (``None`` otherwise)."""
    total = run.accelerator.reduce(window.to(run.accelerator.device), "sum").cpu()
    window.zero_()
    progress["step"] += 1
    loss = float(total[0] / total[1]) if log_loss else None
    loss = loss if loss is None or math.isfinite(loss) else None  # e.g. an empty Poisson batch
    if log_loss:
        progress["losses"].append(loss)
    progress["tokens"] += int(total[2])
    progress["loss_tokens"] += int(total[3])
    progress["train_seconds"] = elapsed
    return StepInfo(progress["step"], loss, update["lr"], update["grad_norm"], progress["tokens"], elapsed)


def _checkpoint(run: Run, params: dict[str, torch.nn.Parameter], rule: UpdateRule, progress: dict[str, Any]) -> None:
    """Gather the trainable weights and the rule's state (collectives under FSDP); rank 0 writes them."""
    trainable = distributed.trainable_state(run, params)
    rule_state = rule.state_dict()
    if run.accelerator.is_main_process:
        save_checkpoint(run.out, trainable, rule_state, progress)
    run.accelerator.wait_for_everyone()


def _load(run: Run, plugins: list[Plugin]) -> int:
    """Data, model and adapter, with the plug-ins' hooks; return how many records truncation dropped."""
    cfg = run.cfg
    rows = read_rows(cfg.data)
    run.chats = [validate_record(row, where) for where, row in rows]
    for plugin in plugins:
        run.chats = plugin.on_data(run, rows, run.chats)
    run.model, run.tokenizer = load_model(cfg.model, trust_remote_code=cfg.trust_remote_code)
    run.settings = cfg.adapter_settings()
    for plugin in plugins:
        plugin.on_model(run)
    run.examples, dropped = tokenize_records(run.chats, run.tokenizer, cfg.max_length)
    if not run.examples:
        raise TunelabError(f"{cfg.data}: every record lost its response to --max-length {cfg.max_length}")
    torch.manual_seed(cfg.seed)
    run.settings.calibrate = dense_calibration(cfg, run.examples, run.tokenizer.pad_token_id,
                                               run.accelerator.device, run.console)
    run.settings.resume_dir = str(run.out) if run.resumed else None
    run.prepared = get_method(cfg.method).prepare(run.model, run.settings)
    torch.manual_seed(cfg.seed)  # a calibration pass must not shift the run's RNG stream
    for plugin in plugins:
        plugin.on_prepared(run)
    return dropped


def _plan(cfg: TrainConfig, run: Run, world: int) -> tuple[list[list[int]], int]:
    """One flat, seeded list of micro-batches over all epochs (resuming = skipping a prefix),
    and the number of optimizer steps."""
    lengths = [len(ex.input_ids) for ex in run.examples]
    micro_per_step = cfg.grad_accum * world
    steps_per_epoch = max(1, len(length_grouped_batches(lengths, cfg.batch_size, cfg.seed, 0)) // micro_per_step)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    batches = [b for epoch in range(epochs) for b in length_grouped_batches(lengths, cfg.batch_size, cfg.seed, epoch)]
    return batches[: total_steps * micro_per_step], total_steps


def _progress_bar(run: Run) -> Progress:
    return Progress(
        TextColumn(f"[bold]{run.cfg.method}[/]"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"), TextColumn("{task.fields[tps]:.0f} tok/s"), TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=run.console, disable=not run.accelerator.is_main_process,
    )
