"""``TrainConfig``: the loop and the adapter of one training run, from YAML and/or flags.

The options of plug-ins and private update rules (DP, canaries, refusal tokens, the constrained
objective's reference and β, the safety check) are sections their own rooms declare;
``tunelab.finetune.TrainConfig`` is this config with those sections (what ``tunelab train`` takes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunelab.adapters import ADAPTER_METHODS, DEFAULT_TARGET_MODULES, AdapterSettings, methods_with
from tunelab.configs import from_sources
from tunelab.errors import TunelabError
from tunelab.options import check_field, meta, option
from tunelab.registry import join_names
from tunelab.train.objectives import OBJECTIVES, BetaSchedule

SCHEDULERS = ("constant", "linear", "cosine")


def rule_class(cfg: Any) -> Any:
    """The update-rule class ``cfg.optimizer`` names, from the registry the config's ``optimizer``
    field takes its choices from (``tunelab.finetune.RULES``: the one list of rules, which this
    layer may not import); ``None`` for a config without one (the loop's own)."""
    rules = meta(next(f for f in dataclasses.fields(cfg) if f.name == "optimizer"), "choices")
    return rules.get(cfg.optimizer) if rules is not None and hasattr(rules, "get") else None


def rule_names_with(cfg: Any, capability: str) -> tuple[str, ...]:
    """The optimizer names of ``cfg``'s rule registry whose ``capability`` is true, in registry order."""
    rules = meta(next(f for f in dataclasses.fields(cfg) if f.name == "optimizer"), "choices")
    return tuple(name for name, cls in rules.items() if getattr(cls, capability)) if rules is not None else ()


def bf16_supported() -> bool:
    """bf16 autocast pays off: a CUDA GPU with bf16, or a CPU with AVX512-BF16/AMX."""
    from tunelab.models import cpu_bf16_native

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_bf16_native()


@dataclass
class TrainConfig:
    """One training run. Field names are the YAML keys and (with dashes) the CLI flags."""

    model: str = option("smollm2-135m", help="alias (smollm2-135m, tiny-random), local dir or hub id")
    data: str = option("", help="JSONL/CSV/Parquet file or saved HF dataset dir")
    method: str = option("lora", choices=ADAPTER_METHODS, help="lora, lori-d, lori-s, lota or full")
    output: str = option("", help="run directory")
    # adapter
    rank: int = option(32, min=1)
    alpha: float = option(64.0)
    dropout: float = option(0.0)
    target_modules: list[str] = option(default_factory=lambda: list(DEFAULT_TARGET_MODULES), help="comma-separated module names")
    mask_from: str | None = option(None, help="lori-s: the lori-d run to take the mask from")
    sparsity: float = option(0.9, min=0, lt=1, help="lori-s: fraction of B held at zero")
    mask_granularity: str = option("global", help="lori-s/lota: global, layer or matrix top-k")
    # continual learning / LoTA
    init_from: str | None = option(None, help="continue from an earlier run (A frozen, B trained; lota: its weights)")
    disjoint: bool = option(False, flag="--disjoint",
                            help="lori-s/lota with --init-from: keep the new mask off the earlier run's positions")
    calibration_fraction: float = option(0.1, gt=0, max=1, show_default="0.1",
                                         help="lota: share of the data for the dense calibration pass")
    # objective: "sft", or "constrained" (token-wise constrained SFT against a reference adapter; its
    # reference and β are the constrained section of tunelab.finetune.TrainConfig). A plug-in option:
    # fit() refuses a config that sets one that no given plug-in claims.
    objective: str = option("sft", plugin=True, choices=OBJECTIVES, show_default="sft",
                            help="sft or constrained (token-wise constrained SFT)")
    # optimisation
    lr: float | None = option(None, gt=0, help="default: the method's (lora 2e-4, lori-d 5e-5, lori-s 5e-4)")
    epochs: int = option(1, min=1)
    max_steps: int | None = option(None, min=1, help="overrides --epochs")
    batch_size: int = option(8, min=1)
    grad_accum: int = option(1, min=1, help="gradient accumulation steps")
    max_length: int = option(512, min=1, help="truncate examples to this many tokens")
    scheduler: str = option("constant", choices=SCHEDULERS, help="constant, linear or cosine")
    warmup_steps: int = option(0)
    weight_decay: float = option(0.0)
    grad_clip: float = option(1.0, help="max grad norm; 0 disables")
    bf16: bool | None = option(None, flag="--bf16/--no-bf16", help="bf16 autocast (default: on if the hardware has it)")
    seed: int | None = option(None, help="default: fresh random seed (recorded)")
    fsdp: bool = option(False, flag="--fsdp",
                        help="shard with PyTorch FSDP2 (launch with torchrun --nproc_per_node N -m tunelab.cli train ...)")
    # update rule: adamw (backprop), zo (MeZO's zeroth-order SPSA), dp-zo or dp-sgd (differentially private)
    optimizer: str = option("adamw", show_default="adamw",
                            help="adamw, zo (MeZO zeroth-order), dp-zo or dp-sgd (differentially private)")
    zo_eps: float | None = option(None, gt=0, show_default="1e-3 full, 1e-2 adapters", help="zo/dp-zo perturbation φ")
    # bookkeeping
    save_every: int = option(50, help="checkpoint every N steps; 0 disables")
    log_every: int = option(1, help="steps per logged loss")  # no flag: YAML only
    overwrite: bool = option(False, flag="--overwrite", help="replace a finished run in --output")
    resume: bool = option(False, flag="--resume", help="continue the run in --output from its last checkpoint")
    trust_remote_code: bool = option(False, flag="--trust-remote-code")

    @classmethod
    def from_sources(cls, yaml_path: str | Path | None = None, **overrides: Any) -> "TrainConfig":
        """Defaults, then a YAML file, then explicit overrides (``None`` values are ignored)."""
        return from_sources(cls, yaml_path, **overrides)

    def validate(self) -> None:
        """Raise ``TunelabError`` for values that cannot work."""
        if not self.data:
            raise TunelabError("no training data: pass --data FILE (or 'data:' in the config)")
        if not self.output:
            raise TunelabError("no output directory: pass --output DIR (or 'output:' in the config)")
        self._check_own_fields()  # one-field rules (bounds, choices: an unknown method gets did-you-mean)
        method = ADAPTER_METHODS.get(self.method)
        if self.mask_from and not method.needs_mask_from:
            raise TunelabError(f"--mask-from only applies to --method {join_names(methods_with('needs_mask_from'))}, not {self.method}")
        if self.init_from and not method.supports_init_from:
            raise TunelabError(f"--init-from applies to {join_names(methods_with('supports_init_from'), 'and')}, not {self.method}")
        if self.disjoint and (not method.supports_disjoint or not self.init_from):
            raise TunelabError(f"--disjoint needs --method {join_names(methods_with('supports_disjoint'))} and --init-from RUN")
        if self.weight_decay and not method.weight_decay_applies(bool(self.init_from)):
            with_init = " with --init-from" if method.frozen_entries == "with init_from" else ""
            raise TunelabError(f"--weight-decay must be 0 for {self.method}{with_init}: "
                               "weight decay would move the entries outside the mask")
        self._validate_optimizer()

    def _check_own_fields(self) -> None:
        """The loop's one-field rules; the sections' own are checked with the section (after its
        "only applies with ..." rules), so not recursed into here."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                continue
            try:
                check_field(f, value)
            except TunelabError as exc:  # these messages have always shown a float as Python does ("got 1.0")
                if not isinstance(value, float) or ", got " not in str(exc):
                    raise
                raise TunelabError(f"{str(exc).rsplit(', got ', 1)[0]}, got {value}") from None

    def _validate_optimizer(self) -> None:
        # the optimizer's names (tunelab.finetune's update-rule registry, the field's choices) and
        # --zo-eps > 0 are the fields' metadata, checked by _check_own_fields
        rule = rule_class(self)
        if rule is None:  # the loop's own config: no registry, so nothing to ask of the rule
            return
        if self.zo_eps is not None and not rule.zeroth_order:
            raise TunelabError(f"--zo-eps only applies to --optimizer {join_names(rule_names_with(self, 'zeroth_order'))}, "
                               f"not {self.optimizer}")
        if not rule.supports_fsdp_and_objectives and (self.fsdp or self.objective != "sft"):
            what = "--fsdp" if self.fsdp else f"--objective {self.objective}"
            raise TunelabError(f"--optimizer {self.optimizer} does not support {what}")

    def plugin_options_set(self) -> list[str]:
        """Plug-in options (``option(plugin=True)``) this config sets to something other than off/default."""
        return [f.name for f in dataclasses.fields(self)
                if meta(f, "plugin") and getattr(self, f.name) not in (f.default, 0)]

    def beta_schedule(self) -> BetaSchedule:
        """The constrained objective's β by response position (here the defaults; a config with a
        constrained section gives its own)."""
        return BetaSchedule()

    def adapter_settings(self) -> AdapterSettings:
        return AdapterSettings(
            method=self.method,
            rank=self.rank,
            alpha=self.alpha,
            dropout=self.dropout,
            target_modules=tuple(self.target_modules),
            seed=self.seed,
            sparsity=self.sparsity,
            mask_granularity=self.mask_granularity,
            mask_from=self.mask_from,
            base_model=self.model,
            init_from=self.init_from,
            disjoint=self.disjoint,
            calibration_fraction=self.calibration_fraction,
        )

    def to_dict(self) -> dict[str, Any]:
        """The config as saved in a run (``config.yaml``, ``tunelab.json``'s ``config``)."""
        return dataclasses.asdict(self)
