"""`tunelab train`: fine-tune an adapter. The flags are ``tunelab.finetune.TrainConfig``'s fields:
the loop's (``tunelab.train.config``) and, flat, those of the plug-ins' sections."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from tunelab.cli.app import app
from tunelab.cli.common import comma_list, console, quiet_libraries
from tunelab.cli.lazy import lazy_config_command

# The flags as `tunelab train --help` has always listed them (the sections' flags sit among the loop's).
ORDER = ("model", "data", "method", "output", "mask_from", "sparsity", "mask_granularity", "init_from", "disjoint",
         "calibration_fraction", "safety_eval_limit", "monitor_safety", "monitor_prefill",
         "stop_on_refusal_drop", "rank", "alpha", "dropout", "target_modules", "lr", "epochs",
         "max_steps", "batch_size", "grad_accum", "max_length", "scheduler", "warmup_steps", "weight_decay", "grad_clip",
         "bf16", "seed", "save_every", "fsdp", "resume", "overwrite", "trust_remote_code", "objective", "reference",
         "beta_first", "beta_early", "beta_early_until", "beta_late", "refusal_tokens", "canaries", "canary_family",
         "canary_secret_len", "canary_prefix", "canary_new_token_rows", "optimizer", "zo_eps", "noise", "clip",
         "target_epsilon", "target_delta", "noise_multiplier", "accountant", "physical_batch_size", "log_private_metrics")
SWITCHES = ("disjoint", "monitor_prefill", "fsdp", "resume", "overwrite", "trust_remote_code", "log_private_metrics")


def _target_modules(text: str) -> list[str] | None:
    return comma_list(text, "--target-modules")


def _load() -> dict[str, Any]:
    from tunelab.finetune import TrainConfig, run_train

    return dict(config_cls=TrainConfig, run=run_train, show=_show, config="run.yaml; flags override it", order=ORDER,
                skip=("log_every", "max_new_tokens", "prompts"),  # YAML only (the safety check's and the monitor's)
                overrides={"target_modules": {"parse": _target_modules}})


def _around(values: dict[str, Any], proceed: Callable[[dict[str, Any]], Any]) -> Any:
    """Build, check and run the config as ``TrainConfig.from_sources`` always has.

    ``--resume --output DIR`` without ``--config`` reads DIR's saved config (flags still override
    it). ``TrainConfig.validate()`` runs the loop's rules, then each section's, whose "only applies
    with ..." rules come before the section's bounds; so the builder's blanket one-field pass
    (``proceed``) is not used here.
    """
    from tunelab.cli.build import build_config
    from tunelab.finetune import TrainConfig, run_train
    from tunelab.layout import CONFIG_FILE

    quiet_libraries()
    modules = values["target_modules"]
    given = {**values, "target_modules": None if modules is None else _target_modules(modules)}
    config, output = given.pop("config"), values["output"]
    if values["resume"] and output and config is None and (Path(output) / CONFIG_FILE).is_file():
        config = Path(output) / CONFIG_FILE
    cfg = build_config(TrainConfig, given, config)
    cfg.validate()
    record = run_train(cfg)
    _show(cfg, record)
    return record


def _show(cfg: Any, run: Any) -> None:
    """One summary line per run (from rank 0 under torchrun / accelerate launch), then DP, audit and safety."""
    if int(os.environ.get("RANK", "0")) != 0 or run is None:
        return
    loss = f"final loss {run.losses[-1]:.4f}, " if run.losses else ""
    console.print(f"[green]done[/] {run.output_dir}: {run.steps} steps, {loss}"
                  f"{run.trainable_params:,} trainable params, {run.tokens_per_s:.0f} tokens/s")
    if run.dp:
        from tunelab.privacy.dp import ledger_line

        console.print(ledger_line(run.dp), highlight=False)
    if run.privacy:
        from tunelab.privacy.plugin import summary_line

        console.print(summary_line(run.privacy), highlight=False)
    if run.safety:
        before, after = run.safety["before"], run.safety["after"]
        shown = f"{before['asr']:.1%} → " if before else ""
        console.print(f"safety: ASR {shown}{after['asr']:.1%}, over-refusal "
                      f"{(before['over_refusal'] if before else float('nan')):.1%} → {after['over_refusal']:.1%}")


lazy_config_command(app, "train", load=_load, around=_around, switches=SWITCHES,
                    help="Fine-tune a model with LoRA, LoRI-D, LoRI-S, LoTA or full fine-tuning (AdamW, zeroth-order, or DP).")
