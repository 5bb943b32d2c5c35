"""A run's output directory: refuse to clobber, resume from it, write the finished run.

``tunelab.json`` is written last: a directory without it is not a finished run.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

import tunelab
from tunelab.adapters import get_method
from tunelab.data import data_sha256
from tunelab.layout import CONFIG_FILE, METRICS_FILE, RUN_FILE, atomic_write_text
from tunelab.results import RunDir
from tunelab.train.checkpoint import CHECKPOINT_DIR, find_checkpoint
from tunelab.train.config import TrainConfig, bf16_supported
from tunelab.train.plugins import Plugin, Run, StepInfo


def versions() -> dict[str, str]:
    """Versions of the libraries a run's numbers depend on."""
    import accelerate
    import peft
    import transformers

    return {
        "tunelab": tunelab.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }


def run_dir(output: str | Path) -> RunDir:
    """A training run's :class:`~tunelab.results.RunDir`: ``tunelab.json`` is its finished marker."""
    return RunDir(Path(output), marker=RUN_FILE, what="a finished run")


def check_output_dir(cfg: TrainConfig) -> Path | None:
    """Refuse to clobber a finished run; return the checkpoint to resume from, if any."""
    return run_dir(cfg.output).check(overwrite=cfg.overwrite, resume=cfg.resume, checkpoint=find_checkpoint)


def resumed_config(cfg: TrainConfig) -> TrainConfig:
    """With ``resume``, the config the interrupted run saved (the flags only locate it)."""
    if not cfg.resume:
        return cfg
    check_output_dir(cfg)  # the errors for "nothing to resume" come before a missing config
    saved = type(cfg).from_sources(Path(cfg.output) / CONFIG_FILE)  # type(cfg): a recipe's config keeps its sections
    return type(cfg)(**{**saved.to_dict(), "resume": True})


def resolved_config(cfg: TrainConfig) -> TrainConfig:
    """Fill the ``None``s a run must pin down: seed, learning rate, bf16."""
    values = cfg.to_dict()
    if values["seed"] is None:
        values["seed"] = random.SystemRandom().randrange(2**31)
    if values["lr"] is None:
        values["lr"] = get_method(cfg.method).default_lr
    if values["bf16"] is None:
        values["bf16"] = bf16_supported()
    return type(cfg)(**values)


def open_output_dir(run: Run) -> None:
    """Create (or, with ``overwrite``, empty) the output dir and write the resolved config."""
    out = run.out
    run_dir(out).open(clear=run.cfg.overwrite and not run.resumed)
    config = {**run.cfg.to_dict(), "resume": False, "overwrite": False}
    atomic_write_text(out / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))


class MetricsLog:
    """``metrics.jsonl``: one row per logged step. A resumed run first drops the rows after its
    checkpoint (they were logged before the interruption and are trained again)."""

    def __init__(self, out: Path, resume_step: int | None, enabled: bool, tensorboard: bool = True) -> None:
        self.path = out / METRICS_FILE
        self.fh = None
        self.writer = None
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        else:
            self.path.write_text("")
        self.fh = self.path.open("a")
        self.writer = _tensorboard_writer(out) if tensorboard else None

    def write_row(self, row: dict[str, Any]) -> None:
        """Append one JSON row (it must carry ``"step"``, which resuming trims by)."""
        if self.fh is not None:
            self.fh.write(json.dumps(row) + "\n")
            self.fh.flush()

    def write(self, info: StepInfo) -> None:
        if self.fh is None:
            return
        self.write_row({"step": info.step, "loss": info.loss, "lr": info.lr, "grad_norm": info.grad_norm,
                        "tokens": info.tokens, "elapsed_s": round(info.elapsed_s, 3)})
        if self.writer:
            if info.loss is not None:
                self.writer.add_scalar("train/loss", info.loss, info.step)
            self.writer.add_scalar("train/lr", info.lr, info.step)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            if self.writer:
                self.writer.close()


def _tensorboard_writer(out: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"))


def write_finished_run(run: Run, progress: dict[str, Any], dropped: int, plugins: list[Plugin],
                       extra: dict[str, Any] | None = None) -> None:
    """Verify the method's invariants, write its artefacts, let plug-ins add to the record
    (after ``extra``: the update rule's entries), then write ``tunelab.json`` last."""
    cfg, out, prepared = run.cfg, run.out, run.prepared
    method = get_method(cfg.method)
    method.verify(prepared)
    staging = out / ".final-tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    method.save(prepared, run.tokenizer, staging)
    for item in staging.iterdir():
        os.replace(item, out / item.name)
    staging.rmdir()
    seconds = progress["train_seconds"]
    record = {
        "method": cfg.method,
        "base_model": cfg.model,
        **prepared.record,
        "target_modules": list(cfg.target_modules),
        "data": str(cfg.data),
        "data_sha256": data_sha256(cfg.data),
        "examples": len(run.examples),
        "examples_truncated_away": dropped,
        "seed": cfg.seed,
        "steps": progress["step"],
        "losses": progress["losses"],
        "trainable_params": method.trainable_parameters(prepared),
        "tokens": progress["tokens"],
        "loss_tokens": progress["loss_tokens"],
        "tokens_per_s": progress["tokens"] / seconds if seconds else None,
        "wall_time_s": seconds,
        "bf16": cfg.bf16,
        "processes": run.accelerator.num_processes,  # ranks that trained it (torchrun / accelerate launch)
        "versions": versions(),
        "config": cfg.to_dict(),
        **(extra or {}),
    }
    for plugin in plugins:
        plugin.on_finish(run, record)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    atomic_write_text(out / RUN_FILE, json.dumps(record, indent=2))
