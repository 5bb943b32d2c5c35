"""Helpers the command modules share: the consoles, library quieting, list parsing."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from rich.console import Console

from tunelab.errors import TunelabError


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


def comma_list(text: str | None, flag: str) -> list[str] | None:
    """``"q_proj, v_proj"`` → ``["q_proj", "v_proj"]``; an empty name is an error here, not a PEFT one later."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise TunelabError(f"{flag} has an empty name in '{text}'; give comma-separated names such as q_proj,v_proj")
    return names


def float_item(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise TunelabError(f"{flag}: '{text}' is not a number") from None


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
