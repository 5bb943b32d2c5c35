"""``tunelab train`` as a recipe: a :class:`~tunelab.train.TrainConfig` → the plug-ins its options
need → :func:`tunelab.train.fit`.

The loop in ``tunelab.train`` knows nothing of safety or privacy; this module composes it with the
plug-ins of those rooms, the way a torchtune recipe composes library parts. Use :func:`train`
for a run as the CLI does it; use ``fit`` with your own plug-ins and update rule to go further.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from rich.console import Console

from tunelab.train import Plugin, TrainConfig, fit
from tunelab.train.run_dir import resumed_config
from tunelab.train.update_rules import UpdateRule


def plugins_for(cfg: TrainConfig) -> list[Plugin]:
    """The plug-ins ``cfg``'s options ask for, in hook order; raises for options that cannot work."""
    from tunelab.safety.safety_check import SafetyCheck

    plugins: list[Plugin] = []
    if cfg.refusal_tokens:
        from tunelab.safety.refusal_tokens import RefusalTokensPlugin

        plugins.append(RefusalTokensPlugin(cfg))
    if cfg.objective == "constrained":
        from tunelab.safety.constrained import ReferenceLogprobs

        plugins.append(ReferenceLogprobs())
    from tunelab.privacy.plugin import CanaryPlugin, canary_spec

    spec = canary_spec(cfg)
    if spec is not None:
        plugins.append(CanaryPlugin(spec))
    plugins.append(SafetyCheck())
    return plugins


# --optimizer name → its update rule, imported only when used (opacus is heavy to import)
RULES = {
    "adamw": "tunelab.train.update_rules:AdamW",
    "zo": "tunelab.train.zo:ZO",
    "dp-zo": "tunelab.privacy.dp_zo:DPZO",
    "dp-sgd": "tunelab.privacy.dp_sgd:DPSGD",
}


def rule_for(cfg: TrainConfig) -> UpdateRule:
    """The update rule ``cfg.optimizer`` names."""
    module, name = RULES[cfg.optimizer].split(":")
    return getattr(importlib.import_module(module), name)()


def train(cfg: TrainConfig, *, stop_after_step: int | None = None, console: Console | None = None) -> Path:
    """Run one ``tunelab train`` job with the plug-ins its options need; return the output directory."""
    from tunelab.safety.safety_check import default_limit

    cfg = resumed_config(cfg)
    if cfg.safety_eval_limit is None:
        cfg = TrainConfig(**{**cfg.to_dict(), "safety_eval_limit": default_limit(cfg)})
    return fit(cfg, plugins_for(cfg), rule_for(cfg), stop_after_step=stop_after_step, console=console)


__all__ = ["TrainConfig", "plugins_for", "rule_for", "train"]
