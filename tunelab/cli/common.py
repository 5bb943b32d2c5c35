"""Helpers the command modules share: the consoles, library quieting, list parsing."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from tunelab.options import comma_list, float_item  # noqa: F401 (re-exported: the parsers moved to the options module)

if TYPE_CHECKING:
    from tunelab.merge.results import InterferenceResult


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


def print_interference(out_dir: Path, result: InterferenceResult | None = None) -> None:
    """Print an interference run's pairs and per-task drops (merge and inspect interference share it).

    ``result``: the job's typed result (``inspect interference``); ``None`` reads ``out_dir/metrics.json`` (merge's).
    """
    from tunelab.merge.results import InterferenceResult

    path = out_dir / "metrics.json"
    if result is None:
        result = InterferenceResult.read(path)

    def fmt(v: object) -> str:
        return "–" if v is None else f"{v:.3f}"

    for p in result.pairs:
        console.print(f"{p['a']} × {p['b']}: cos(ΔW) {fmt(p['cosine'])}, subspace overlap {fmt(p['subspace_overlap'])}, "
                      f"mask ∩/min {fmt(p['mask_intersection_over_min'])}", highlight=False, markup=False)
    for r in result.tasks or []:
        console.print(f"{r['task']}: {r['adapter']} alone {r['single']:.3f}, merged {r['merged']:.3f} (drop {r['drop']:+.3f})",
                      highlight=False, markup=False)
    console.print(f"wrote {path}", highlight=False, markup=False)
