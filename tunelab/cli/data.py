"""`tunelab data safety-recipe|augment-recovery`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tunelab.cli.app import data_app
from tunelab.cli.common import console, quiet_libraries
from tunelab.errors import TunelabError


@data_app.command("safety-recipe")
def data_safety_recipe(
    output: Annotated[Path, typer.Option(help="the JSONL file to write")] = Path("runs/safety/data.jsonl"),
    model: Annotated[str, typer.Option(help="the model that answers the benign anchor prompts")] = "smollm2-135m",
    n_harmful: Annotated[Optional[int], typer.Option(help="harmful→refusal records (train-split HarmBench, cycled) \\[default: 196]")] = None,
    n_benign: Annotated[Optional[int], typer.Option(help="benign anchor prompts answered by the model \\[default: 120]")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="anchor answer length \\[default: 128]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="generation batch size \\[default: 16]")] = None,
) -> None:
    """Refusals for harmful train prompts + the model's own answers to benign ones, as JSONL for `tunelab train`."""
    from tunelab.models import load_model
    from tunelab.safety.recipe import SAFETY_DATA, benign_train_pool, check_counts, build_safety_data, check_output_path

    quiet_libraries()
    counts = {"n_harmful": SAFETY_DATA.n_harmful if n_harmful is None else n_harmful,
              "n_benign": SAFETY_DATA.n_benign if n_benign is None else n_benign}
    gen = {"max_new_tokens": SAFETY_DATA.max_new_tokens if max_new_tokens is None else max_new_tokens,
           "batch_size": SAFETY_DATA.batch_size if batch_size is None else batch_size}
    if gen["max_new_tokens"] < 1 or gen["batch_size"] < 1:
        raise TunelabError("--max-new-tokens and --batch-size must be >= 1")
    check_counts(counts["n_harmful"], counts["n_benign"], len(benign_train_pool()))  # before the model loads
    check_output_path(output)
    lm, tokenizer = load_model(model)
    summary = build_safety_data(lm, tokenizer, output, seed=seed, **counts, **gen)
    console.print(f"wrote {summary['output']}: {summary['n_harmful']} harmful→refusal + {summary['n_benign']} benign-anchor "
                  f"records ({summary['n_benign_dropped']} anchors dropped as empty or refusing)", highlight=False)


@data_app.command("augment-recovery")
def data_augment_recovery(
    data: Annotated[Path, typer.Option(help="safety data (e.g. from `tunelab data safety-recipe`)")],
    output: Annotated[Path, typer.Option(help="the JSONL file to write")],
    model: Annotated[str, typer.Option(help="whose tokenizer counts the prefix tokens")] = "smollm2-135m",
    p: Annotated[float, typer.Option("--p", help="probability that a harmful record gets a compliant prefix + recovery")] = 0.5,
    max_prefix: Annotated[int, typer.Option(help="longest prefix, in tokens")] = 100,
    seed: Annotated[int, typer.Option()] = 0,
    all_records: Annotated[bool, typer.Option("--all-records", help="augment every record, not only source=harmful-refusal")] = False,
) -> None:
    """Safety-recovery augmentation: (prompt, neutral compliant prefix masked from the loss, recovery refusal)."""
    from transformers import AutoTokenizer

    from tunelab.models import ALIASES, load_model
    from tunelab.safety.augment import augment_recovery_file

    quiet_libraries()
    if not 0.0 <= p <= 1.0:
        raise TunelabError(f"--p must be in [0, 1], got {p}")
    if max_prefix < 1:
        raise TunelabError(f"--max-prefix must be >= 1, got {max_prefix}")
    if not data.exists():
        raise TunelabError(f"data file not found: {data}")
    # Only the tokenizer is needed; an alias goes through load_model (it knows where the files are).
    tokenizer = load_model(model)[1] if model in ALIASES else AutoTokenizer.from_pretrained(model)
    summary = augment_recovery_file(data, output, tokenizer, p=p, max_prefix=max_prefix, seed=seed, all_records=all_records)
    console.print(f"wrote {summary['output']}: {summary['augmented']} of {summary['eligible']} harmful records got a prefix + "
                  f"recovery, {summary['records'] - summary['augmented']} passed through", highlight=False)
