"""The config of ``tunelab audit privacy`` and the name lists it checks against.

Light on purpose (no torch, no scipy): the CLI builds the command's flags from
:class:`PrivacyAuditConfig` when it is imported. The run is a job (:class:`tunelab.results.Job`),
``run_privacy_audit(cfg, run_dir=None) -> PrivacyAuditResult`` (:mod:`tunelab.privacy.audit_run`);
a config built in Python (no CLI) works the same::

    result = run_privacy_audit(PrivacyAuditConfig(run="runs/canary-run", scores=["secret_loss", "min_k"]))
    result.epsilon_lb, result.epsilon_ceiling     # also in runs/canary-run/eval/privacy/metrics.json
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.layout import EVAL_DIR
from tunelab.options import check_fields, comma_list, float_item, option
from tunelab.registry import Registry
from tunelab.results import RunDir

DEFAULT_FPRS: tuple[float, ...] = (0.001, 0.01, 0.1)  # the FPRs of TPR@FPR (tunelab.privacy.audit)
# membership score name → ``ScoreInputs -> float`` (tunelab.privacy.scores implements them; lazy, so
# this module stays light for the CLI)
SCORES: Registry[Any] = Registry("membership score", listing="choose from ")
for _name in ("secret_loss", "sequence_loss", "min_k", "zlib", "reference"):
    SCORES.register(_name, f"tunelab.privacy.scores:score_{_name}")
del _name
STRATEGIES = ("bonferroni", "split")  # how the ε lower bound's threshold is chosen
PRIVACY_DIR = "privacy"  # RUN/eval/privacy/
DEFAULT_OUTPUT = "runs/privacy-audit"  # without a run


def _scores(text: str) -> list[str]:
    return comma_list(text, "--score") or []


def _fprs(text: str) -> list[float]:
    return [float_item(item, "--fpr") for item in comma_list(text, "--fpr") or []]


@dataclass
class PrivacyAuditConfig:
    """One privacy audit. ``run``: a run dir with canaries; or ``adapter``/``model`` + ``canaries``.

    A caller sets either ``run`` (a run that trained with ``--canaries``: model, adapter and canary
    file default to the run's) or ``canaries`` (a canary file) with ``model`` and/or ``adapter``.
    ``scores`` are the membership scores (the first is the headline), ``fprs`` / ``delta`` /
    ``significance`` / ``threshold_strategy`` / ``bootstrap_samples`` / ``seed`` shape the audit and
    ``output`` the directory (:meth:`output_dir`). ``show_secrets`` is for the CLI's printer only.
    """

    run: str | None = option(None, flag="-", help="a run that trained with --canaries")
    model: str | None = option(None, help="base model", show_default="the run's")
    adapter: str | None = option(None, help="adapter / run dir to audit", show_default="RUN")
    canaries: str | None = option(None, help="canary file: a tunelab canary set, or records with a boolean 'member'",
                                  show_default="RUN/canaries.json")
    scores: list[str] = option(default_factory=lambda: ["secret_loss"], flag="--score", parse=_scores,
                               help="comma-separated: secret_loss, sequence_loss, min_k, zlib, reference "
                                    "(the first is the headline)")
    fprs: list[float] = option(default_factory=lambda: list(DEFAULT_FPRS), flag="--fpr", parse=_fprs,
                               help="comma-separated FPRs for TPR@FPR")
    delta: float = option(1e-5, help="δ of the one-run ε lower bound")
    significance: float = option(0.05, help="significance of the ε lower bound")
    threshold_strategy: str = option("bonferroni", choices=STRATEGIES,
                                     help="bonferroni (over candidate thresholds) or split (choose on half, bound on the other)")
    bootstrap_samples: int = option(1000, help="bootstrap resamples for the CIs; 0: no CIs")
    k: float = 20.0  # Min-K% (no flag)
    batch_size: int = option(32, min=1)
    bf16: bool | None = None  # None: where the hardware has it (no flag)
    seed: int = option(0, help="bootstrap and split seed")
    output: str | None = option(None, help="directory for metrics.json and scores.jsonl",
                                show_default="RUN/eval/privacy")  # or runs/privacy-audit without a run
    show_secrets: bool = option(False, flag="--show-secrets",
                                help="also print every canary with its secret and membership")

    def validate(self) -> None:
        """Raise ``TunelabError`` (one line) for values that cannot work, before any model is loaded."""
        if self.run is None and (self.adapter is None and self.model is None or self.canaries is None):
            raise TunelabError("nothing to audit: pass a run dir that trained with --canaries, "
                               "or --model/--adapter with --canaries FILE")
        if self.run is not None and not Path(self.run).is_dir():
            raise TunelabError(f"run directory not found: {self.run}")
        self.scores = [s.replace("-", "_") for s in self.scores]
        unknown = [s for s in self.scores if s not in SCORES]
        if unknown or not self.scores:
            raise TunelabError(f"unknown score '{unknown[0] if unknown else ''}'; choose from {', '.join(SCORES)}")
        for f in self.fprs:
            if not (isinstance(f, float) and 0.0 < f < 1.0):
                raise TunelabError(f"--fpr must be in (0, 1), got {f}")
        if not 0.0 < self.delta < 1.0:
            raise TunelabError(f"--delta must be in (0, 1), got {self.delta}")
        if not 0.0 < self.significance < 1.0:
            raise TunelabError(f"--significance must be in (0, 1), got {self.significance}")
        check_fields(self)  # --threshold-strategy's choices, --batch-size >= 1
        if self.bootstrap_samples != 0 and self.bootstrap_samples < 2:
            raise TunelabError(f"--bootstrap-samples must be 0 (no CIs) or >= 2, got {self.bootstrap_samples}")
        if not 0.0 < self.k <= 100.0:
            raise TunelabError(f"--k (Min-K%) must be in (0, 100], got {self.k}")

    def output_dir(self) -> Path:
        """``output``; else ``RUN/eval/privacy`` for a run, else ``runs/privacy-audit``."""
        if self.output:
            return Path(self.output)
        return Path(self.run) / EVAL_DIR / PRIVACY_DIR if self.run else Path(DEFAULT_OUTPUT)

    def run_dir(self) -> RunDir:
        """:meth:`output_dir` as the job's :class:`RunDir` (no overwrite rule: a rerun writes over the files)."""
        return RunDir(self.output_dir(), what="a privacy audit")


__all__ = ["DEFAULT_FPRS", "DEFAULT_OUTPUT", "PRIVACY_DIR", "SCORES", "STRATEGIES", "PrivacyAuditConfig"]
