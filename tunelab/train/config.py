"""``TrainConfig``: everything one ``tunelab train`` run needs, from YAML and/or flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunelab.adapters import DEFAULT_TARGET_MODULES, METHODS, AdapterSettings
from tunelab.configs import from_sources
from tunelab.errors import TunelabError
from tunelab.train.objectives import OBJECTIVES, BetaSchedule

SCHEDULERS = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "zo", "dp-zo", "dp-sgd")
PRIVATE_OPTIMIZERS = ("dp-zo", "dp-sgd")
NOISES = ("gaussian", "laplace")
ACCOUNTANTS = ("pld", "rdp")
DEFAULT_DELTA = 1e-5
DP_OPTIONS = ("noise", "clip", "target_epsilon", "target_delta", "noise_multiplier", "accountant",
              "physical_batch_size", "log_private_metrics")
PLUGIN = {"plugin": True}


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
    # Options marked PLUGIN are implemented by training plug-ins (tunelab.finetune composes them);
    # fit() refuses a config that sets one that no given plug-in claims.
    safety_eval_limit: int | None = field(default=None, metadata=PLUGIN)  # harmful (and benign) prompts scored before/after; None: 32 with init_from, else 0
    safety_max_new_tokens: int = 48
    # objective: "sft", or "constrained" (token-wise constrained SFT against a reference adapter)
    objective: str = field(default="sft", metadata=PLUGIN)
    reference: str | None = None  # constrained: the aligned adapter/run; None: the --init-from one
    beta_first: float = 0.5  # β₁
    beta_early: float = 2.0  # β₂..β_{beta_early_until}
    beta_early_until: int = 5
    beta_late: float = 0.1  # β_t after that
    # refusal tokens: "single" ([refuse]/[respond]) or "categorical" (one per category + [respond]); None: off
    refusal_tokens: str | None = field(default=None, metadata=PLUGIN)
    # privacy audit: plant m canaries (0: off), half of them trained on by a fair coin; the run audits itself
    canaries: int = field(default=0, metadata=PLUGIN)
    canary_family: str = "random"  # random, unigram, unigram-corpus, bigram or new-token
    canary_secret_len: int = 8  # tokens
    canary_prefix: str = "random"  # random words, or "data": prompts of the data set
    canary_new_token_rows: str = "trained"  # new-token: rows trained like refusal tokens, or "frozen"
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
    # differential privacy (dp-zo, dp-sgd). --batch-size is the expected batch B of Poisson sampling (q = B/N)
    noise: str = "gaussian"  # gaussian, or laplace (dp-zo)
    clip: float = 1.0  # C: per-example clip (dp-sgd: gradient L2 norm; dp-zo: |projected gradient|)
    target_epsilon: float | None = None  # calibrate the noise to spend this ε over the run...
    target_delta: float | None = None  # ...at this δ (None: 1e-5; 0 with laplace: pure ε-DP)
    noise_multiplier: float | None = None  # ...or give the noise directly: σ (gaussian) or b (laplace), in units of C
    accountant: str = "pld"  # pld, or rdp (gaussian only)
    physical_batch_size: int | None = None  # DP: examples per forward (memory); None: --batch-size
    log_private_metrics: bool = False  # DP: log the training loss anyway (recorded in the ledger)
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
        if self.method not in METHODS:
            raise TunelabError(f"unknown method '{self.method}'; choose one of: {', '.join(METHODS)}")
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
        if self.mask_from and self.method != "lori-s":
            raise TunelabError(f"--mask-from only applies to --method lori-s, not {self.method}")
        if self.init_from and self.method == "full":
            raise TunelabError("--init-from applies to lora, lori-d, lori-s and lota, not full")
        if self.disjoint and (self.method not in ("lori-s", "lota") or not self.init_from):
            raise TunelabError("--disjoint needs --method lori-s or lota and --init-from RUN")
        if self.weight_decay and (self.method == "lota" or (self.method == "lori-s" and self.init_from)):
            raise TunelabError(f"--weight-decay must be 0 for {self.method}{' with --init-from' if self.method == 'lori-s' else ''}: "
                               "weight decay would move the entries outside the mask")
        if not 0.0 < self.calibration_fraction <= 1.0:
            raise TunelabError(f"--calibration-fraction must be in (0, 1], got {self.calibration_fraction}")
        if self.safety_eval_limit is not None and self.safety_eval_limit < 0:
            raise TunelabError(f"--safety-eval-limit must be >= 0, got {self.safety_eval_limit}")
        if self.lr is not None and self.lr <= 0:
            raise TunelabError(f"--lr must be > 0, got {self.lr}")
        self._validate_objective()
        self._validate_optimizer()

    @property
    def private(self) -> bool:
        """A differentially private run (dp-zo, dp-sgd)."""
        return self.optimizer in PRIVATE_OPTIMIZERS

    @property
    def delta(self) -> float:
        """The δ the run is accounted at."""
        return DEFAULT_DELTA if self.target_delta is None else self.target_delta

    def _validate_optimizer(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise TunelabError(f"unknown optimizer '{self.optimizer}'; choose one of: {', '.join(OPTIMIZERS)}")
        if self.zo_eps is not None and not self.zo_eps > 0:
            raise TunelabError(f"--zo-eps must be > 0, got {self.zo_eps}")
        if self.zo_eps is not None and self.optimizer not in ("zo", "dp-zo"):
            raise TunelabError(f"--zo-eps only applies to --optimizer zo or dp-zo, not {self.optimizer}")
        if self.optimizer != "adamw" and (self.fsdp or self.objective != "sft"):
            what = "--fsdp" if self.fsdp else f"--objective {self.objective}"
            raise TunelabError(f"--optimizer {self.optimizer} does not support {what}")
        if not self.private:
            for f in dataclasses.fields(self):
                if f.name in DP_OPTIONS and getattr(self, f.name) != f.default:
                    raise TunelabError(f"--{f.name.replace('_', '-')} only applies to --optimizer dp-zo or dp-sgd")
            return
        self._validate_privacy()

    def _validate_privacy(self) -> None:
        opt = f"--optimizer {self.optimizer}"
        if self.noise not in NOISES:
            raise TunelabError(f"unknown noise '{self.noise}'; choose one of: {', '.join(NOISES)}")
        if self.accountant not in ACCOUNTANTS:
            raise TunelabError(f"unknown accountant '{self.accountant}'; choose one of: {', '.join(ACCOUNTANTS)}")
        if self.noise == "laplace" and self.optimizer == "dp-sgd":
            raise TunelabError("--noise laplace applies to --optimizer dp-zo; dp-sgd adds Gaussian noise to a vector")
        if self.noise == "laplace" and self.accountant == "rdp":
            raise TunelabError("the RDP accountant cannot account for Poisson-sampled Laplace noise; use --accountant pld")
        if not self.clip > 0:
            raise TunelabError(f"--clip must be > 0, got {self.clip}")
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise TunelabError(f"--target-epsilon must be > 0, got {self.target_epsilon}")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise TunelabError(f"--noise-multiplier must be > 0, got {self.noise_multiplier}")
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise TunelabError(f"{opt} needs exactly one of --target-epsilon (the noise is calibrated to it) "
                               "or --noise-multiplier (the ε it spends is computed)")
        if self.target_delta is not None and not 0.0 <= self.target_delta < 1.0:
            raise TunelabError(f"--target-delta must be in [0, 1), got {self.target_delta}")
        if self.delta == 0.0 and self.noise == "gaussian":
            raise TunelabError("--target-delta 0 (pure ε-DP) needs --noise laplace: Gaussian noise gives no finite ε at δ = 0")
        if self.physical_batch_size is not None and self.physical_batch_size < 1:
            raise TunelabError(f"--physical-batch-size must be >= 1, got {self.physical_batch_size}")
        if self.grad_accum != 1:
            raise TunelabError(f"--grad-accum {self.grad_accum} with {opt} breaks Poisson sampling (each example joins "
                               "each step on its own coin): set the expected batch with --batch-size and bound memory "
                               "with --physical-batch-size")

    def plugin_options_set(self) -> list[str]:
        """Plug-in options (metadata ``PLUGIN``) this config sets to something other than off/default."""
        return [f.name for f in dataclasses.fields(self)
                if f.metadata.get("plugin") and getattr(self, f.name) not in (f.default, 0)]

    def _validate_objective(self) -> None:
        if self.objective not in OBJECTIVES:
            raise TunelabError(f"unknown objective '{self.objective}'; choose one of: {', '.join(OBJECTIVES)}")
        if self.objective != "constrained":
            if self.reference:
                raise TunelabError("--reference only applies to --objective constrained")
            return
        reference = self.reference or self.init_from
        if not reference:
            raise TunelabError("--objective constrained needs --reference ALIGNED_ADAPTER_DIR (or --init-from)")
        if not Path(reference).is_dir():
            raise TunelabError(f"reference adapter directory not found: {reference}")
        for name in ("beta_first", "beta_early", "beta_late"):
            if not getattr(self, name) > 0:
                raise TunelabError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.beta_early_until < 1:
            raise TunelabError(f"--beta-early-until must be >= 1, got {self.beta_early_until}")

    def beta_schedule(self) -> BetaSchedule:
        """The constrained objective's β by response position."""
        return BetaSchedule(self.beta_first, self.beta_early, self.beta_early_until, self.beta_late)

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
        return dataclasses.asdict(self)
