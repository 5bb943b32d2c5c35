"""Safety training and diagnostics: the refusal-adapter recipe, safety depth (per-token KL,
prefilling attack), recovery augmentation, refusal tokens (``tunelab.safety.refusal_tokens``), the
safety-drift monitor of training runs (``tunelab.safety.monitor``).

This file only re-exports, lazily (:func:`tunelab.registry.lazy_exports`): the CLI imports the rooms' light config modules
(``tunelab.safety.configs``) without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunelab.registry import lazy_exports

if TYPE_CHECKING:
    from tunelab.safety.augment import augment_recovery, augment_recovery_file
    from tunelab.safety.depth import AFFIRMATIVE_OPENING, kl_profile, prefill_attack, run_safety_depth
    from tunelab.safety.monitor import MonitorRecord, SafetyMonitor, SafetyMonitorConfig, measure_safety
    from tunelab.safety.recipe import SAFETY_DATA, SAFETY_RECIPE, SafetyRecipe, build_safety_data, train_safety_adapter

__getattr__, __all__ = lazy_exports(__name__, {
    "tunelab.safety.augment": ("augment_recovery", "augment_recovery_file"),
    "tunelab.safety.depth": ("AFFIRMATIVE_OPENING", "kl_profile", "prefill_attack", "run_safety_depth"),
    "tunelab.safety.monitor": ("MonitorRecord", "SafetyMonitor", "SafetyMonitorConfig", "measure_safety"),
    "tunelab.safety.recipe": ("SAFETY_DATA", "SAFETY_RECIPE", "SafetyRecipe", "build_safety_data", "train_safety_adapter"),
})
