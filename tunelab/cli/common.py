"""Helpers the command modules share: the consoles, library quieting, list parsing."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from rich.console import Console

from tunelab.options import comma_list, float_item  # noqa: F401 (re-exported: the parsers moved to the options module)


console = Console()
err = Console(stderr=True)


def quiet_libraries() -> None:
    """Silence transformers' progress bars and a meaningless PEFT deprecation warning."""
    # Library progress bars/warnings drown our own output; errors still surface.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    # PEFT still calls a transformers 5.x deprecated alias; the warning means nothing to a user.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    transformers.utils.logging.disable_progress_bar()


def print_interference(out_dir: Path) -> None:
    """Print an interference run's pairs and per-task drops (merge and inspect interference share it)."""
    data = json.loads((out_dir / "metrics.json").read_text())

    def fmt(v: object) -> str:
        return "–" if v is None else f"{v:.3f}"

    for p in data["pairs"]:
        console.print(f"{p['a']} × {p['b']}: cos(ΔW) {fmt(p['cosine'])}, subspace overlap {fmt(p['subspace_overlap'])}, "
                      f"mask ∩/min {fmt(p['mask_intersection_over_min'])}", highlight=False, markup=False)
    for r in data.get("tasks") or []:
        console.print(f"{r['task']}: {r['adapter']} alone {r['single']:.3f}, merged {r['merged']:.3f} (drop {r['drop']:+.3f})",
                      highlight=False, markup=False)
    console.print(f"wrote {out_dir / 'metrics.json'}", highlight=False, markup=False)
