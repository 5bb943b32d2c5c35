"""Safety training and diagnostics: the refusal-adapter recipe, safety depth (per-token KL,
prefilling attack), recovery augmentation, refusal tokens (``tunelab.safety.refusal_tokens``)."""

from tunelab.safety.augment import augment_recovery, augment_recovery_file
from tunelab.safety.depth import AFFIRMATIVE_OPENING, kl_profile, prefill_attack, run_safety_depth
from tunelab.safety.recipe import SAFETY_DATA, SAFETY_RECIPE, SafetyRecipe, build_safety_data, train_safety_adapter

__all__ = ["AFFIRMATIVE_OPENING", "SAFETY_DATA", "SAFETY_RECIPE", "SafetyRecipe", "augment_recovery", "augment_recovery_file",
           "build_safety_data", "kl_profile", "prefill_attack", "run_safety_depth", "train_safety_adapter"]
