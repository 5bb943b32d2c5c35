"""`tunelab attack finetune|phish`: commands made from their configs (options declared on the fields)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tunelab.cli.app import attack_app
from tunelab.cli.build import config_command
from tunelab.cli.common import console, quiet_libraries
from tunelab.privacy.phishing import PhishConfig
from tunelab.safety.attack import AttackConfig

if TYPE_CHECKING:
    from tunelab.privacy.results import PhishingResult
    from tunelab.safety.results import AttackResult


def _attack(cfg: AttackConfig) -> "AttackResult":
    from tunelab.safety.attack import run_attack

    quiet_libraries()
    return run_attack(cfg)


def _show_attack(cfg: AttackConfig, result: "AttackResult") -> None:
    console.print(f"{cfg.attack} attack, {cfg.objective}, {cfg.steps} steps: ASR {result.asr_before:.1%} → {result.asr_after:.1%}, "
                  f"over-refusal {result.over_refusal_before:.1%} → {result.over_refusal_after:.1%} "
                  f"({result.n_harmful} held-out harmful prompts); wrote {cfg.output}/metrics.json")


config_command(attack_app, "finetune", AttackConfig, _attack, show=_show_attack, skip=("method", "safety_max_new_tokens"),
               help="Fine-tune a safety adapter on attack data (SFT or constrained) and report ASR before → after.")


def _phish(cfg: PhishConfig) -> "PhishingResult":
    from tunelab.privacy.phishing import run_phishing

    quiet_libraries()
    return run_phishing(cfg, console=console)


def _show_phish(cfg: PhishConfig, result: "PhishingResult") -> None:
    from tunelab.privacy.phishing import print_ser_table

    print_ser_table(result, console)
    output = Path(cfg.output)
    console.print(f"random guessing: {result.random_guess:.0e}; wrote {output / 'metrics.json'} and "
                  f"{output / 'ser-curve' / 'metrics.json'}", highlight=False, markup=False)


config_command(attack_app, "phish", PhishConfig, _phish, show=_show_phish, skip=("rank", "alpha", "bf16"),
               help="Neural phishing: poisons, then a secret, then greedy extraction; secret extraction rate vs N_p.")
