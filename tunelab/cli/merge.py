"""`tunelab merge`: the flags are :class:`MergeConfig`'s fields."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.cli.app import app
from tunelab.cli.build import config_command
from tunelab.cli.common import console, print_interference, quiet_libraries
from tunelab.options import option


def _names(text: str) -> list[str] | None:
    return text.split(",") if text else None


@dataclass(kw_only=True)
class MergeConfig:
    """Everything ``tunelab merge`` needs (``tunelab.merge.merge_adapters`` checks the values)."""

    adapters: list[Path] = option(flag="-", metavar="DIR...", help="adapter / LoTA run dirs to merge")
    output: Path = option(help="the merged adapter or model directory")
    weights: str = option(help="one weight per adapter, comma-separated, e.g. 0.5,0.5 (negative subtracts)")
    method: str = option("cat", help="cat, linear, task-arithmetic, ties, dare-linear or dare-ties")
    density: float | None = option(None, show_default="ties 0.2, dare 0.5", help="ties/dare: fraction kept, in (0, 1]")
    seed: int = option(0, help="dare: seed of the random drops")
    to_model: bool = option(False, flag="--to-model", help="cat/linear: write base + ΔW as a model instead of a PEFT adapter")
    model: str | None = option(None, show_default="the one the adapters record", help="base model")
    overwrite: bool = option(False, flag="--overwrite", help="replace a non-empty --output")
    analyze: bool = option(False, flag="--analyze", help="also write OUTPUT/interference/metrics.json")
    tasks: list[str] | None = option(None, parse=_names,
                                     help="with --analyze: one task per adapter, comma-separated (`tunelab tasks list`)")
    limit: int = option(50, help="examples per task for --tasks")


def _run(cfg: MergeConfig) -> Path:
    from tunelab.merge import merge_adapters, parse_weights

    quiet_libraries()
    return merge_adapters(cfg.adapters, cfg.method, parse_weights(cfg.weights), output=cfg.output, density=cfg.density,
                          to_model=cfg.to_model, seed=cfg.seed, model=cfg.model, overwrite=cfg.overwrite,
                          analyze=cfg.analyze, tasks=cfg.tasks, limit=cfg.limit, progress=True)


def _show(cfg: MergeConfig, out: Path) -> None:
    run: dict[str, Any] = json.loads((out / "tunelab.json").read_text())
    what = f"PEFT adapter of rank {run['rank']}" if run["output_kind"] == "peft" else "merged model"
    console.print(f"[green]done[/] {out}: {run['merge_method']} of {len(cfg.adapters)} adapters → {what}", highlight=False)
    if (out / "interference").is_dir():
        print_interference(out / "interference")


config_command(app, "merge", MergeConfig, _run, show=_show,
               help="Merge LoRA-family adapters and LoTA task vectors (cat, linear, task arithmetic, TIES, DARE).")
