"""`tunelab merge`: the flags are :class:`~tunelab.merge.config.MergeConfig`'s fields; :func:`~tunelab.merge.run.run_merge` runs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.cli.app import app
from tunelab.cli.build import config_command
from tunelab.cli.common import console, print_interference, quiet_libraries
from tunelab.merge.config import MergeConfig


def _run(cfg: MergeConfig) -> Path:
    from tunelab.merge.run import run_merge

    quiet_libraries()
    return run_merge(cfg, progress=True)


def _show(cfg: MergeConfig, out: Path) -> None:
    run: dict[str, Any] = json.loads((out / "tunelab.json").read_text())
    what = f"PEFT adapter of rank {run['rank']}" if run["output_kind"] == "peft" else "merged model"
    console.print(f"[green]done[/] {out}: {run['merge_method']} of {len(cfg.adapters)} adapters → {what}", highlight=False)
    if (out / "interference").is_dir():
        print_interference(out / "interference")


config_command(app, "merge", MergeConfig, _run, show=_show,
               help="Merge LoRA-family adapters and LoTA task vectors (cat, linear, task arithmetic, TIES, DARE).")
