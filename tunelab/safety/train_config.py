"""The safety room's sections of ``tunelab train``'s config: ``refusal``, ``constrained`` and ``safety_check``.

Each section is written nested in YAML or flat under its flags' names; both give the same config::

    refusal: {tokens: single}                        # == refusal_tokens: single
    constrained: {reference: runs/aligned, beta_late: 0.2}   # with objective: constrained
    safety_check: {eval_limit: 32, max_new_tokens: 48}       # == safety_eval_limit: 32, ...

``validate(run)`` holds the rules that involve several options (``run`` is the whole training config).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.adapters import ADAPTER_METHODS, methods_with
from tunelab.control_tokens import MODES
from tunelab.errors import TunelabError
from tunelab.options import option
from tunelab.registry import join_names
from tunelab.train.objectives import BetaSchedule

_BETA = BetaSchedule()  # the paper's schedule: the section's defaults
DEFAULT_SAFETY_LIMIT = 32  # prompts per set for the before/after safety check of a continued run


@dataclass
class RefusalTokensConfig:
    """``refusal``: train with refusal tokens ("single": [refuse]/[respond]; "categorical": one per
    category + [respond]); None: off."""

    tokens: str | None = option(None, plugin=True, choices=MODES, flag="--refusal-tokens",
                                help="add refusal tokens and prefix responses: single ([refuse]/[respond]) or categorical")

    def validate(self, run: Any) -> None:
        """Refusal tokens need a method that trains new embedding rows and the plain objective."""
        if self.tokens is None:
            return
        if self.tokens not in MODES:
            raise TunelabError(f"unknown --refusal-tokens mode '{self.tokens}'; choose one of: {', '.join(MODES)}")
        if not ADAPTER_METHODS.get(run.method).trains_new_token_rows:
            # lori-s packs only B and lota saves a task vector: neither would carry the new embedding rows.
            raise TunelabError(f"--refusal-tokens works with --method {join_names(methods_with('trains_new_token_rows'))}, not {run.method}")
        if run.objective == "constrained":
            raise TunelabError("--refusal-tokens with --objective constrained is not supported (the reference has no refusal tokens)")


@dataclass
class ConstrainedConfig:
    """``constrained``: the constrained objective's reference adapter and β schedule (``--objective constrained``)."""

    # the help texts are `tunelab train`'s, where these are flat flags beside all the others
    reference: str | None = option(None, show_default="--init-from",
                                   help="constrained: the aligned adapter/run to stay close to")
    beta_first: float = option(_BETA.first, gt=0, show_default=f"{_BETA.first}", help="constrained: β of the first response token")
    beta_early: float = option(_BETA.early, gt=0, show_default=f"{_BETA.early}",
                               help="constrained: β of tokens 2..--beta-early-until")
    beta_early_until: int = option(_BETA.early_until, min=1, show_default=f"{_BETA.early_until}",
                                   help="constrained: last position with --beta-early")
    beta_late: float = option(_BETA.late, gt=0, show_default=f"{_BETA.late}", help="constrained: β of later tokens")

    def validate(self, run: Any) -> None:
        """A reference (``--reference`` or ``--init-from``) that exists, positive β; nothing without the objective."""
        if run.objective != "constrained":
            if self.reference:
                raise TunelabError("--reference only applies to --objective constrained")
            return
        reference = self.reference or run.init_from
        if not reference:
            raise TunelabError("--objective constrained needs --reference ALIGNED_ADAPTER_DIR (or --init-from)")
        if not Path(reference).is_dir():
            raise TunelabError(f"reference adapter directory not found: {reference}")
        for name in ("beta_first", "beta_early", "beta_late"):
            if not getattr(self, name) > 0:
                raise TunelabError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.beta_early_until < 1:
            raise TunelabError(f"--beta-early-until must be >= 1, got {self.beta_early_until}")

    def schedule(self) -> BetaSchedule:
        """β by response position."""
        return BetaSchedule(self.beta_first, self.beta_early, self.beta_early_until, self.beta_late)


@dataclass
class SafetyCheckConfig:
    """``safety_check``: score harmful (and benign) prompts before and after training."""

    eval_limit: int | None = option(None, plugin=True, min=0, flag="--safety-eval-limit",
                                    show_default=f"{DEFAULT_SAFETY_LIMIT} with --init-from, else 0",
                                    help="safety suite before/after training on N prompts per set")
    max_new_tokens: int = option(48, flag="--safety-max-new-tokens", help="tokens generated per prompt")

    def validate(self, run: Any) -> None:
        """One-field bound kept with its original message."""
        if self.eval_limit is not None and self.eval_limit < 0:
            raise TunelabError(f"--safety-eval-limit must be >= 0, got {self.eval_limit}")

    def limit_for(self, run: Any) -> int:
        """``--safety-eval-limit`` when unset: on for runs that continue from an adapter, else off."""
        if self.eval_limit is not None:
            return self.eval_limit
        return DEFAULT_SAFETY_LIMIT if run.init_from else 0


__all__ = ["ConstrainedConfig", "DEFAULT_SAFETY_LIMIT", "RefusalTokensConfig", "SafetyCheckConfig"]
