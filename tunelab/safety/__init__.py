"""Safety training and diagnostics: the refusal-adapter recipe, safety depth (per-token KL,
prefilling attack), recovery augmentation, refusal tokens (``tunelab.safety.refusal_tokens``).

This file only re-exports, lazily: the CLI imports the rooms' light config modules
(``tunelab.safety.configs``) without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunelab.safety.augment import augment_recovery, augment_recovery_file
    from tunelab.safety.depth import AFFIRMATIVE_OPENING, kl_profile, prefill_attack, run_safety_depth
    from tunelab.safety.recipe import SAFETY_DATA, SAFETY_RECIPE, SafetyRecipe, build_safety_data, train_safety_adapter

_EXPORTS = {
    "augment_recovery": "tunelab.safety.augment",
    "augment_recovery_file": "tunelab.safety.augment",
    "AFFIRMATIVE_OPENING": "tunelab.safety.depth",
    "kl_profile": "tunelab.safety.depth",
    "prefill_attack": "tunelab.safety.depth",
    "run_safety_depth": "tunelab.safety.depth",
    "SAFETY_DATA": "tunelab.safety.recipe",
    "SAFETY_RECIPE": "tunelab.safety.recipe",
    "SafetyRecipe": "tunelab.safety.recipe",
    "build_safety_data": "tunelab.safety.recipe",
    "train_safety_adapter": "tunelab.safety.recipe",
}


def __getattr__(name: str) -> Any:
    """The re-exported names, imported on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tunelab.safety' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = ["AFFIRMATIVE_OPENING", "SAFETY_DATA", "SAFETY_RECIPE", "SafetyRecipe", "augment_recovery", "augment_recovery_file",
           "build_safety_data", "kl_profile", "prefill_attack", "run_safety_depth", "train_safety_adapter"]
