"""Inactive heads and alignment-aware pruning on smollm2-135m.

1. Head sweep (seeds/000, /003): on two benchmarks (ARC-Easy and PIQA, plain text, 0-shot), the
   accuracy with the heads each score flags zeroed per input, at 10/20/30% of heads, for all 15
   scores and random. Which score keeps accuracy within 1 point longest?
2. Pruning (seeds/002): the LoRI-S safety adapter (tunelab's recipe) merged into the model;
   dense vs Probe Pruning vs alignment-aware pruning (AAPP) vs Wanda-sp at 20/30/40%: counted
   FLOPs saved, perplexity on held-out text, ARC-Easy accuracy and the refusal rate on held-out
   HarmBench prompts (keyword judge) — does AAPP keep more refusals at matched compute?

Run:  python experiments/inspect_heads.py [--quick] [--output runs/inspect-heads]

Writes ``heads-<task>/`` and ``pruning/`` (each with metrics.json), ``results.json``,
``results.md`` (the README tables) and ``report.html`` under ``--output``; finished pieces are
reused when re-run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _finish import finish  # experiments/ is on sys.path when a script runs
from rich.console import Console

from tunelab.layout import EVAL_FILE

console = Console()


@dataclass(frozen=True)
class Plan:
    """Sizes of the experiment; ``--quick`` shrinks every number."""

    model: str = "smollm2-135m"
    head_tasks: tuple[str, ...] = ("arc-easy", "piqa")
    head_limit: int = 120
    fractions: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3)
    ratios: tuple[float, ...] = (0.2, 0.3, 0.4)
    methods: tuple[str, ...] = ("dense", "pp", "aapp", "wanda-sp")
    accuracy_limit: int = 100
    safety_limit: int = 32
    ppl_texts: int = 60
    calibration: int = 64
    safety_steps: int | None = None  # None: the recipe's
    max_new_tokens: int = 48
    skip: int = 3  # first layers never pruned
    bf16: bool = True


QUICK = Plan(model="tiny-random", head_tasks=("arc-easy",), head_limit=6, fractions=(0.0, 0.5), ratios=(0.3,),
             accuracy_limit=4, safety_limit=3, ppl_texts=4, calibration=4, safety_steps=2, bf16=False, skip=0)


def head_sweeps(plan: Plan, root: Path) -> dict[str, dict[str, Any]]:
    """One ``tunelab inspect heads`` run per task (plain text, 0-shot); reused when finished."""
    from tunelab.inspect.run import HeadsConfig, load_for_inspect, run_heads

    results, model, tokenizer = {}, None, None
    for task in plan.head_tasks:
        out = root / f"heads-{task}"
        if not (out / EVAL_FILE).is_file():
            if model is None:
                model, tokenizer = load_for_inspect(plan.model, None)
            console.print(f"head sweep on {task}: {plan.head_limit} questions, all scores × {plan.fractions}")
            run_heads(HeadsConfig(model=plan.model, task=task, limit=plan.head_limit, plain=True,
                                  fractions=list(plan.fractions), bf16=plan.bf16, output=str(out)), model=model, tokenizer=tokenizer)
        results[task] = json.loads((out / EVAL_FILE).read_text())
    return results


def heads_table(sweeps: dict[str, dict[str, Any]]) -> str:
    """Accuracy at each target fraction per score and task, and the largest % within 1 point."""
    tasks = list(sweeps)
    fractions = sorted({r["fraction"] for s in sweeps.values() for r in s["rows"] if r["fraction"] > 0})
    head = "| score | " + " | ".join(f"{t} {f:.0%}" for t in tasks for f in fractions) + " | " + \
        " | ".join(f"{t}: largest % within 1 pt" for t in tasks) + " |"
    lines = [head, "|" + "---|" * (1 + len(tasks) * (len(fractions) + 1))]
    base = "| (unablated) | " + " | ".join(f"{sweeps[t]['baseline_accuracy']:.3f}" for t in tasks for _ in fractions) + \
        " | " + " | ".join("" for _ in tasks) + " |"
    lines.append(base)
    scores = list(dict.fromkeys(r["score"] for s in sweeps.values() for r in s["rows"]))
    for score in scores:
        cells = []
        for t in tasks:
            by_f = {r["fraction"]: r for r in sweeps[t]["rows"] if r["score"] == score}
            cells += [f"{by_f[f]['accuracy']:.3f} ({by_f[f]['actual_pct']:.0f}%)" if f in by_f else "–" for f in fractions]
        cells += [f"{sweeps[t]['largest_within'].get(score, 0):.1f}" for t in tasks]
        lines.append(f"| {score} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def safety_adapter(plan: Plan, root: Path) -> Path:
    """The LoRI-S safety adapter of tunelab's recipe (its LoRI-D mask run first); reused when trained."""
    from tunelab.safety.recipe import train_safety_adapter

    out = root / "safe-s"
    if not (out / "tunelab.json").is_file():
        console.print("training the LoRI-S safety adapter (tunelab's safety recipe)")
        train_safety_adapter("lori-s", out, model=plan.model, steps=plan.safety_steps)
    return out


def pruning(plan: Plan, root: Path, adapter: Path) -> dict[str, Any]:
    """``tunelab inspect prune`` on the safety adapter (merged): every method × ratio."""
    from tunelab.inspect.run import PruneConfig, run_prune

    out = root / "pruning"
    if not (out / EVAL_FILE).is_file():
        console.print(f"pruning {plan.methods} at {plan.ratios} on {adapter}")
        run_prune(PruneConfig(model=plan.model, adapter=str(adapter), methods=list(plan.methods), ratios=list(plan.ratios),
                              task="arc-easy", limit=plan.accuracy_limit, plain=True, ppl_limit=plan.ppl_texts,
                              calibration_limit=plan.calibration, safety_limit=plan.safety_limit,
                              max_new_tokens=plan.max_new_tokens, skip=plan.skip, output=str(out)))
    return json.loads((out / EVAL_FILE).read_text())


def pruning_table(result: dict[str, Any]) -> str:
    """One row per (method, ratio): counted FLOPs saved, perplexity, accuracy, refusal and over-refusal."""
    lines = ["| method | target ratio | FLOPs saved (counted) | perplexity (SciQ paragraphs) | ARC-Easy acc | "
             "refusal rate (HarmBench test) | over-refusal (benign) |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['ratio']:.0%} | {r['flops_saved']:.1%} | {r['ppl']:.2f} | {r.get('accuracy', 0):.3f} | "
                     f"{r.get('refusal_rate', 0):.3f} | {r.get('over_refusal', 0):.3f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny-random and a handful of questions: a smoke test")
    parser.add_argument("--output", type=Path, default=Path("runs/inspect-heads"))
    parser.add_argument("--skip-pruning", action="store_true")
    args = parser.parse_args()
    plan = QUICK if args.quick else Plan()
    started = time.perf_counter()
    args.output.mkdir(parents=True, exist_ok=True)
    sweeps = head_sweeps(plan, args.output)
    md = "**Accuracy with inactive heads zeroed per input** (accuracy at target fraction, actual % zeroed in brackets)\n\n"
    md += heads_table(sweeps)
    summary: dict[str, Any] = {"plan": plan.__dict__, "heads": {t: {"baseline": s["baseline_accuracy"], "largest_within": s["largest_within"]}
                                                               for t, s in sweeps.items()}}
    figures = [args.output / f"heads-{t}" / "heads_accuracy.png" for t in sweeps]
    if not args.skip_pruning:
        result = pruning(plan, args.output, safety_adapter(plan, args.output))
        md += f"\n**Pruning the LoRI-S safety adapter (merged)** ({result['n']} ARC-Easy questions, {result['ppl_texts']} " \
              f"held-out paragraphs, {plan.safety_limit} harmful + {plan.safety_limit} benign prompts, keyword judge)\n\n"
        md += pruning_table(result)
        summary["pruning"] = result["rows"]
    return finish(args.output, summary, md, figures, f"{plan.model}: inactive heads and alignment-aware pruning", started, console)


if __name__ == "__main__":
    sys.exit(main())
