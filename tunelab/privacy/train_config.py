"""The privacy room's sections of ``tunelab train``'s config: ``dp`` (private update rules) and ``canary``.

Each section is written nested in YAML or flat under its flags' names; both give the same config::

    dp: {noise_multiplier: 1.0, clip: 0.5}          # == noise_multiplier: 1.0 / --noise-multiplier 1.0
    canary: {count: 8, family: unigram}             # == canaries: 8, canary_family: unigram

``validate(run)`` holds the rules that involve several options (``run`` is the whole training
config: the section's rules depend on ``--optimizer``, ``--grad-accum``, ``--method``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from tunelab.adapters import ADAPTER_METHODS, methods_with
from tunelab.errors import TunelabError
from tunelab.options import option
from tunelab.privacy.canaries import FAMILIES, PREFIX_STYLES
from tunelab.registry import join_names
from tunelab.train.config import rule_names_with

NOISES = ("gaussian", "laplace")
ACCOUNTANTS = ("pld", "rdp")
DEFAULT_DELTA = 1e-5
TOKEN_ROWS = ("trained", "frozen")


@dataclass
class DPConfig:
    """``dp``: differential privacy of ``--optimizer dp-zo``/``dp-sgd``. ``--batch-size`` is the
    expected batch B of Poisson sampling (q = B/N)."""

    # the help texts are `tunelab train`'s, where these are flat flags beside all the others
    noise: str = option("gaussian", choices=NOISES, show_default="gaussian", help="DP noise: gaussian, or laplace (dp-zo)")
    clip: float = option(1.0, gt=0, show_default="1.0",
                         help="DP per-example clip C (dp-sgd: gradient norm; dp-zo: |projected gradient|)")
    target_epsilon: float | None = option(None, gt=0, help="DP: calibrate the noise to spend this ε over the run")
    target_delta: float | None = option(None, min=0, lt=1, show_default="1e-5",
                                        help="DP: δ of the guarantee (0 with laplace: pure ε-DP)")
    noise_multiplier: float | None = option(None, gt=0,
                                            help="DP: σ (gaussian) or b (laplace) in units of C, instead of --target-epsilon")
    accountant: str = option("pld", choices=ACCOUNTANTS, show_default="pld", help="DP accountant: pld or rdp (gaussian only)")
    physical_batch_size: int | None = option(None, min=1,
                                             help="DP: examples per forward pass (memory); --batch-size is the expected batch")
    log_private_metrics: bool = option(False, flag="--log-private-metrics",
                                       help="DP: log the training loss anyway (a side channel; noted in the ledger)")

    @property
    def delta(self) -> float:
        """The δ the run is accounted at."""
        return DEFAULT_DELTA if self.target_delta is None else self.target_delta

    def validate(self, run: Any) -> None:
        """Raise ``TunelabError`` for DP options that cannot work with ``run`` (the training config)."""
        if not run.private:
            for f in dataclasses.fields(self):
                if getattr(self, f.name) != f.default:
                    raise TunelabError(f"--{f.name.replace('_', '-')} only applies to --optimizer "
                                       f"{join_names(rule_names_with(run, 'private'))}")
            return
        opt = f"--optimizer {run.optimizer}"
        if self.noise not in NOISES:
            raise TunelabError(f"unknown noise '{self.noise}'; choose one of: {', '.join(NOISES)}")
        if self.accountant not in ACCOUNTANTS:
            raise TunelabError(f"unknown accountant '{self.accountant}'; choose one of: {', '.join(ACCOUNTANTS)}")
        if self.noise == "laplace" and run.optimizer == "dp-sgd":
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
        if run.grad_accum != 1:
            raise TunelabError(f"--grad-accum {run.grad_accum} with {opt} breaks Poisson sampling (each example joins "
                               "each step on its own coin): set the expected batch with --batch-size and bound memory "
                               "with --physical-batch-size")


@dataclass(frozen=True)
class CanaryConfig:
    """``canary``: plant ``count`` canaries of ``family`` with ``secret_len``-token secrets (0: off),
    half of them trained on by a fair coin; the run audits itself."""

    # the help texts are `tunelab train`'s, where these are flat flags beside all the others
    count: int = option(0, plugin=True, flag="--canaries",
                        help="privacy audit: plant M canaries (half trained on, by a fair coin) and audit the run at the end")
    family: str = option("random", choices=FAMILIES, flag="--canary-family", show_default="random",
                         help="random, unigram, unigram-corpus, bigram or new-token")
    secret_len: int = option(8, min=1, flag="--canary-secret-len", show_default="8", help="secret length in tokens")
    prefix: str = option("random", choices=PREFIX_STYLES, flag="--canary-prefix", show_default="random",
                         help="canary prompts: random words or data (prompts of --data)")
    new_token_rows: str = option("trained", choices=TOKEN_ROWS, flag="--canary-new-token-rows", show_default="trained",
                                 help="new-token: trained (like refusal tokens) or frozen")

    def validate(self, run: Any) -> None:
        """Options without ``--canaries`` are refused; with it, :meth:`check` (which raises)."""
        if not self.count:
            unused = [f for f in dataclasses.fields(self)[1:] if getattr(self, f.name) != f.default]
            if unused:
                raise TunelabError(f"{unused[0].metadata['flag']} only applies with --canaries M")
            return
        self.check(run.method)

    def check(self, method: str) -> str | None:
        """Raise for values that cannot work with ``method``; return a warning for ones that barely can."""
        if self.count < 2:
            raise TunelabError(f"--canaries must be >= 2 (members and non-members), got {self.count}")
        if self.family not in FAMILIES:
            raise TunelabError(f"unknown --canary-family '{self.family}'; choose one of: {', '.join(FAMILIES)}")
        if self.secret_len < 1:
            raise TunelabError(f"--canary-secret-len must be >= 1 token, got {self.secret_len}")
        if self.prefix not in PREFIX_STYLES:
            raise TunelabError(f"unknown --canary-prefix '{self.prefix}'; choose one of: {', '.join(PREFIX_STYLES)}")
        if self.new_token_rows not in TOKEN_ROWS:
            raise TunelabError(f"unknown --canary-new-token-rows '{self.new_token_rows}'; choose one of: {', '.join(TOKEN_ROWS)}")
        if self.family != "new-token":
            if self.new_token_rows != "trained":
                raise TunelabError("--canary-new-token-rows only applies to --canary-family new-token")
            return None
        if not ADAPTER_METHODS.get(method).trains_new_token_rows:
            # lori-s packs only B and lota saves a task vector: neither carries new embedding rows.
            raise TunelabError(f"new-token canaries work with --method {join_names(methods_with('trains_new_token_rows'))}, not {method}")
        if self.new_token_rows == "frozen":
            if ADAPTER_METHODS.get(method).full_model:
                raise TunelabError("--canary-new-token-rows frozen needs an adapter method: full fine-tuning trains every row")
            return ("new-token canaries with frozen embeddings: the new tokens' rows stay at their initial value "
                    "(the mean row), so members and non-members look alike to the model and the audit will be near "
                    "chance (the paper: TPR 0.74 → 0.05)")
        return None


__all__ = ["ACCOUNTANTS", "CanaryConfig", "DEFAULT_DELTA", "DPConfig", "NOISES", "TOKEN_ROWS"]
