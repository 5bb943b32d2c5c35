"""`tunelab merge`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from tunelab.cli.app import app
from tunelab.cli.common import console, quiet_libraries, print_interference


@app.command()
def merge(
    adapters: Annotated[list[Path], typer.Argument(metavar="DIR...", help="adapter / LoTA run dirs to merge")],
    output: Annotated[Path, typer.Option(help="the merged adapter or model directory")],
    weights: Annotated[str, typer.Option(help="one weight per adapter, comma-separated, e.g. 0.5,0.5 (negative subtracts)")],
    method: Annotated[str, typer.Option(help="cat, linear, task-arithmetic, ties, dare-linear or dare-ties")] = "cat",
    density: Annotated[Optional[float], typer.Option(help="ties/dare: fraction kept, in (0, 1] \\[default: ties 0.2, dare 0.5]")] = None,
    seed: Annotated[int, typer.Option(help="dare: seed of the random drops")] = 0,
    to_model: Annotated[bool, typer.Option("--to-model", help="cat/linear: write base + ΔW as a model instead of a PEFT adapter")] = False,
    model: Annotated[Optional[str], typer.Option(help="base model \\[default: the one the adapters record]")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a non-empty --output")] = False,
    analyze: Annotated[bool, typer.Option("--analyze", help="also write OUTPUT/interference/metrics.json")] = False,
    tasks: Annotated[Optional[str], typer.Option(help="with --analyze: one task per adapter, comma-separated (`tunelab tasks list`)")] = None,
    limit: Annotated[int, typer.Option(help="examples per task for --tasks")] = 50,
) -> None:
    """Merge LoRA-family adapters and LoTA task vectors (cat, linear, task arithmetic, TIES, DARE)."""
    from tunelab.merge import merge_adapters, parse_weights

    quiet_libraries()
    out = merge_adapters(adapters, method, parse_weights(weights), output=output, density=density, to_model=to_model,
                         seed=seed, model=model, overwrite=overwrite, analyze=analyze,
                         tasks=tasks.split(",") if tasks else None, limit=limit, progress=True)
    run = json.loads((out / "tunelab.json").read_text())
    what = f"PEFT adapter of rank {run['rank']}" if run["output_kind"] == "peft" else "merged model"
    console.print(f"[green]done[/] {out}: {run['merge_method']} of {len(adapters)} adapters → {what}", highlight=False)
    if (out / "interference").is_dir():
        print_interference(out / "interference")
