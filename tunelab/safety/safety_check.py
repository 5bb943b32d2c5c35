"""The before/after safety check of a continued run, as a training plug-in.

A run that continues from a safety adapter (``--init-from``) scores the safety suite on that
adapter before training and on the result after it; ``tunelab.json`` keeps the headline numbers
under ``safety: {before, after}`` (``null`` when the check is off).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.layout import EVAL_DIR, EVAL_FILE
from tunelab.safety.train_config import DEFAULT_SAFETY_LIMIT, SafetyCheckConfig
from tunelab.train.plugins import Plugin, Run

SAFETY_SUMMARY = ("asr", "refusal_rate", "over_refusal", "intervals", "n_harmful", "n_benign", "judge")


def safety_summary(model: str, check: SafetyCheckConfig, adapter: str | Path, out: Path,
                   reuse: bool = False) -> dict[str, Any]:
    """Run the safety suite on ``model`` + ``adapter`` (or, with ``reuse``, read a finished
    one from ``out``); keep its headline numbers."""
    from tunelab.evaluate.results import SafetyResult
    from tunelab.evaluate.runner import EvalConfig, run_eval

    if reuse and (out / EVAL_FILE).is_file():
        result = SafetyResult.read(out / EVAL_FILE)
    else:
        result = run_eval(EvalConfig(model=model, adapter=str(adapter), suite="safety", limit=check.eval_limit,
                                     max_new_tokens=check.max_new_tokens, output=str(out)))
    return {key: getattr(result, key) for key in SAFETY_SUMMARY}


class SafetyCheck(Plugin):
    """Scores the ``--init-from`` adapter before training and the result after it (section ``safety_check``)."""

    claims = ("safety_eval_limit",)

    def __init__(self, check: SafetyCheckConfig | None = None) -> None:
        self.check = check or SafetyCheckConfig()
        self.before: dict[str, Any] | None = None

    def on_start(self, run: Run) -> None:
        cfg, limit = run.cfg, self.check.eval_limit
        if limit and cfg.init_from:
            run.console.print(f"safety before training (the --init-from adapter, {limit} prompts per set)")
            # a resumed run already scored the --init-from adapter before its interruption
            self.before = safety_summary(cfg.model, self.check, cfg.init_from, run.out / EVAL_DIR / "safety-before",
                                         reuse=run.resumed)

    def on_finish(self, run: Run, record: dict[str, Any]) -> None:
        limit = self.check.eval_limit
        record["safety"] = None
        if limit:
            run.console.print(f"safety after training ({limit} prompts per set)")
            record["safety"] = {"before": self.before,
                                "after": safety_summary(run.cfg.model, self.check, run.out, run.out / EVAL_DIR / "safety")}


__all__ = ["DEFAULT_SAFETY_LIMIT", "SAFETY_SUMMARY", "SafetyCheck", "safety_summary"]
