"""Figures of a pre-training run: loss curves, MRI per layer over time, expert loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def pretrain_figures(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> list[str]:
    """Write loss.png, mri.png (MoE) and load.png (MoE) into ``out``; return their names."""
    names = [_loss(out, rows)]
    if summary.get("arch") == "moe":
        names += [_mri(out, rows), _load(out, summary)]
    return names


def _loss(out: Path, rows: list[dict[str, Any]]) -> str:
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8, alpha=0.6, label="train")
    for name in (evals[0]["loss"] if evals else {}):
        ax.plot([r["step"] for r in evals], [r["loss"][name] for r in evals], marker="o", ms=3, label=f"held-out {name}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110)
    plt.close(fig)
    return "loss.png"


def _mri(out: Path, rows: list[dict[str, Any]]) -> str:
    evals = [r for r in rows if r["split"] == "eval" and r.get("mri")]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name in (evals[0]["mri"] if evals else {}):
        layers = len(evals[0]["mri"][name])
        for layer in range(layers):
            ax.plot([r["step"] for r in evals], [r["mri"][name][layer] for r in evals], lw=1,
                    label=f"{name} L{layer}" if layers <= 8 else None)
    ax.axhline(1.0, color="k", lw=0.6, ls=":")
    ax.set_xlabel("step")
    ax.set_ylabel("MRI (max load ÷ balanced)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "mri.png", dpi=110)
    plt.close(fig)
    return "mri.png"


def _load(out: Path, summary: dict[str, Any]) -> str:
    routing = summary.get("routing") or {}
    name = next(iter(routing), None)
    loads = routing[name]["eval"]["load"] if name else []
    fig, axes = plt.subplots(1, max(1, len(loads)), figsize=(1.6 * max(1, len(loads)) + 1, 2.6), sharey=True,
                             squeeze=False)
    for layer, (ax, load) in enumerate(zip(axes[0], loads)):
        total = sum(load) or 1
        ax.bar(range(len(load)), [x * len(load) / total for x in load])
        ax.axhline(1.0, color="k", lw=0.6, ls=":")
        ax.set_title(f"layer {layer}", fontsize=8)
        ax.set_xlabel("expert", fontsize=8)
    axes[0][0].set_ylabel(f"load ÷ balanced ({name})", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "load.png", dpi=110)
    plt.close(fig)
    return "load.png"
