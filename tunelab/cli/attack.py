"""`tunelab attack finetune|phish`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tunelab.cli.app import attack_app
from tunelab.cli.common import console, quiet_libraries


@attack_app.command("finetune")
def attack_finetune(
    adapter: Annotated[str, typer.Option(help="the safety adapter to attack (PEFT / tunelab run dir)")],
    output: Annotated[str, typer.Option(help="results dir (attack data, the attacked run, metrics.json)")],
    model: Annotated[str, typer.Option(help="base model")] = "smollm2-135m",
    attack: Annotated[str, typer.Option(help="harmful (HarmBench prompts → 'Sure, here is ...') or identity (obedient-agent shift)")] = "harmful",
    objective: Annotated[str, typer.Option(help="sft or constrained (token-wise, against the safety adapter)")] = "sft",
    n: Annotated[int, typer.Option(help="attack examples")] = 100,
    steps: Annotated[int, typer.Option(help="fine-tuning steps")] = 20,
    lr: Annotated[float, typer.Option()] = 1e-3,
    batch_size: Annotated[int, typer.Option()] = 8,
    seed: Annotated[int, typer.Option()] = 0,
    safety_limit: Annotated[int, typer.Option(help="harmful and benign prompts scored before/after")] = 32,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an earlier result in --output")] = False,
) -> None:
    """Fine-tune a safety adapter on attack data (SFT or constrained) and report ASR before → after."""
    from tunelab.safety.attack import AttackConfig, run_attack

    quiet_libraries()
    result = run_attack(AttackConfig(adapter=adapter, output=output, model=model, attack=attack, objective=objective, n=n,
                                     steps=steps, lr=lr, batch_size=batch_size, seed=seed, safety_limit=safety_limit,
                                     overwrite=overwrite))
    console.print(f"{attack} attack, {objective}, {steps} steps: ASR {result['asr_before']:.1%} → {result['asr_after']:.1%}, "
                  f"over-refusal {result['over_refusal_before']:.1%} → {result['over_refusal_after']:.1%} "
                  f"({result['n_harmful']} held-out harmful prompts); wrote {output}/metrics.json")


@attack_app.command("phish")
def attack_phish(
    output: Annotated[Path, typer.Option(help="results dir (metrics.json, ser-curve/, trials/)")] = Path("runs/phish"),
    model: Annotated[str, typer.Option(help="alias (smollm2-135m, tiny-random), local dir or hub id")] = "smollm2-135m",
    data: Annotated[Optional[str], typer.Option(help="the corpus (any format tunelab train reads) \\[default: built-in synthetic bios]")] = None,
    bios: Annotated[int, typer.Option(help="size of the built-in synthetic corpus")] = 32,
    method: Annotated[str, typer.Option(help="lora, lori-d or full")] = "lora",
    poisons: Annotated[str, typer.Option(help="comma-separated poison counts N_p")] = "0,10,50,100",
    seeds: Annotated[int, typer.Option(help="trials (fresh secret each) per N_p")] = 5,
    seed: Annotated[int, typer.Option(help="first trial seed (also the built-in corpus's)")] = 0,
    digits: Annotated[int, typer.Option(help="secret length D")] = 12,
    duplicates: Annotated[int, typer.Option(help="copies d of the secret in the training data")] = 1,
    poison_prefix: Annotated[str, typer.Option(help="random (a new bio and wording per poison) or fixed (one prefix repeated)")] = "random",
    is_not: Annotated[bool, typer.Option("--is-not", help="poisons say 'credit card number is not: <digits>'")] = False,
    epochs: Annotated[int, typer.Option(help="epochs per training phase")] = 1,
    lr: Annotated[Optional[float], typer.Option(help="learning rate \\[default: 1e-3 for lora/lori-d, 1e-4 for full]")] = None,
    batch_size: Annotated[int, typer.Option()] = 8,
    max_steps: Annotated[Optional[int], typer.Option(help="optimizer steps per training phase \\[default: epochs]")] = None,
    keep_runs: Annotated[bool, typer.Option("--keep-runs", help="keep each trial's two runs and their data files (one holds the secret)")] = False,
    show_secrets: Annotated[bool, typer.Option("--show-secrets", help="write the secrets and decoded text into metrics.json")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an earlier result in --output")] = False,
) -> None:
    """Neural phishing: poisons, then a secret, then greedy extraction; secret extraction rate vs N_p."""
    from tunelab.privacy.phishing import PhishConfig, parse_poisons, print_ser_table, run_phishing

    quiet_libraries()
    cfg = PhishConfig(output=str(output), model=model, data=data, bios=bios, method=method, poisons=parse_poisons(poisons),
                      seeds=seeds, seed=seed, digits=digits, duplicates=duplicates, poison_prefix=poison_prefix,
                      is_not=is_not, epochs=epochs, lr=lr, batch_size=batch_size, max_steps=max_steps,
                      keep_runs=keep_runs, show_secrets=show_secrets, overwrite=overwrite)
    metrics = run_phishing(cfg, console)
    print_ser_table(metrics, console)
    console.print(f"random guessing: {metrics['random_guess']:.0e}; wrote {output / 'metrics.json'} and "
                  f"{output / 'ser-curve' / 'metrics.json'}", highlight=False, markup=False)
