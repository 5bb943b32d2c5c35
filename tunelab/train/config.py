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
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")() in ("AVX512", "AMX")) and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@dataclass
class TrainConfig:
    """One training run. Field names are the YAML keys and (with dashes) the CLI flags."""

    model: str = "smollm2-135m"
    data: str = ""
    method: str = "lora"
    output: str = ""
    # adapter
    rank: int = 32
    alpha: float = 64.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    mask_from: str | None = None
    sparsity: float = 0.9
    mask_granularity: str = "global"
    # continual learning / LoTA
    init_from: str | None = None  # continue from an earlier run (A frozen, B trained; lota: its weights)
    disjoint: bool = False  # lori-s/lota with init_from: the new mask avoids the earlier run's positions
    calibration_fraction: float = 0.1  # lota: share of the data for the dense calibration pass
    # objective: "sft", or "constrained" (token-wise constrained SFT against a reference adapter; its
    # reference and β are the constrained section of tunelab.finetune.TrainConfig). A plug-in option:
    # fit() refuses a config that sets one that no given plug-in claims.
    objective: str = option("sft", plugin=True, choices=OBJECTIVES,
                            help="sft, or constrained (token-wise constrained SFT against a reference adapter)")
    # optimisation
    lr: float | None = None  # None: the method's default
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 512
    scheduler: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    bf16: bool | None = None  # None: on where the hardware supports it
    seed: int | None = None  # None: a fresh random seed, recorded in the run
    fsdp: bool = False  # shard with PyTorch FSDP2 (under torchrun / accelerate launch)
    # update rule: adamw (backprop), zo (MeZO's zeroth-order SPSA), dp-zo or dp-sgd (differentially private)
    optimizer: str = "adamw"
    zo_eps: float | None = None  # zo/dp-zo perturbation φ; None: 1e-3 for full, 1e-2 for adapters
    # bookkeeping
    save_every: int = 50
    log_every: int = 1
    overwrite: bool = False
    resume: bool = False
    trust_remote_code: bool = False

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
        method = ADAPTER_METHODS.get(self.method)  # unknown → "unknown method 'x' (did you mean ...)"
        if self.scheduler not in SCHEDULERS:
            raise TunelabError(f"unknown scheduler '{self.scheduler}'; choose one of: {', '.join(SCHEDULERS)}")
        positive = {"batch_size": self.batch_size, "grad_accum": self.grad_accum, "max_length": self.max_length, "epochs": self.epochs, "rank": self.rank}
        for name, value in positive.items():
            if value < 1:
                raise TunelabError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.max_steps is not None and self.max_steps < 1:
            raise TunelabError(f"--max-steps must be >= 1, got {self.max_steps}")
        if not 0.0 <= self.sparsity < 1.0:
            raise TunelabError(f"--sparsity must be in [0, 1), got {self.sparsity}")
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
        if not 0.0 < self.calibration_fraction <= 1.0:
            raise TunelabError(f"--calibration-fraction must be in (0, 1], got {self.calibration_fraction}")
        if self.lr is not None and self.lr <= 0:
            raise TunelabError(f"--lr must be > 0, got {self.lr}")
        self._validate_objective()
        self._validate_optimizer()

    def _validate_optimizer(self) -> None:
        # the names come from the optimizer field's choices: tunelab.finetune's update-rule registry
        check_field(next(f for f in dataclasses.fields(self) if f.name == "optimizer"), self.optimizer)
        if self.zo_eps is not None and not self.zo_eps > 0:
            raise TunelabError(f"--zo-eps must be > 0, got {self.zo_eps}")
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

    def _validate_objective(self) -> None:
        if self.objective not in OBJECTIVES:
            raise TunelabError(f"unknown objective '{self.objective}'; choose one of: {', '.join(OBJECTIVES)}")

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
