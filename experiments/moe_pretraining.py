"""Pre-training experiments at tiny scale on 2 CPU cores: (a) Default MoE vs top-k, (b) continual
pre-training of MoEs vs a FLOP-matched dense model, (c) a mini-Gemstones sweep fitted with
approaches 1 and 3. (d), the fitter on the published Gemstones table, is scaling_gemstones.py.

Every run is one `tunelab pretrain` command (printed in the log), two at a time with one thread
each; a finished run (its metrics.json exists) is not run again, so the script resumes. All
models are byte-level; the corpora are the built-in `kjv` (King James Bible, ~4.1M bytes) and
`pydoc` (Python's help topics, ~0.44M bytes).

(a) kjv, width 64 × 4 layers, 8 experts, top-2, gates not renormalised, Switch aux 0.01, no
    z-loss (the Default MoE authors' setup), 1,000 steps of 16 × 128 tokens, seeds 0-2 paired
    (same init, same batches): top-k vs Default MoE (β = 0.9) forward and straight-through.
(a′) the same two routers (top-k, Default MoE forward) as the README's commands run them: Mixtral's
    renormalised gates, aux 0.01 + z-loss 0.001, 16 × 256 bytes, 1,000 steps, seeds 0-2.
(b) base on kjv (1,000 steps, 16 × 128) for top-k+aux+z, Sinkhorn and a dense model with the MoE's
    active MLP width; then 1,000 steps on pydoc (8 × 128) three ways: constant LR at the base's
    final LR without replay; re-warm + re-decay without replay; re-warm + re-decay + 5% kjv replay.
(c) dense widths 32/64/128 × depths 2/4/6 on kjv at a constant LR after warm-up (Gemstones "hot"),
    1,000 steps of 16 × 128 tokens, held-out loss every 100 steps (10 token counts per model).

Run:  python experiments/moe_pretraining.py [--parts a,a2,b,c] [--seeds 0,1,2] [--jobs 2] [--output runs/moe-pretraining]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console

console = Console()
BASE = ["--width", "64", "--depth", "4", "--experts", "8", "--top-k", "2", "--seq-len", "128", "--max-steps", "1000",
        "--eval-every", "100"]
A_VARIANTS = {"topk": ["--router", "topk"], "default": ["--router", "default"],
              "default-st": ["--router", "default", "--default-mode", "straight-through"]}
B_ARCHS = {"topk": ["--arch", "moe", "--router", "topk"], "sinkhorn": ["--arch", "moe", "--router", "sinkhorn"],
           "dense": ["--arch", "dense", "--ffn", "256"]}
B_CPT = {"constant": ["--schedule", "constant", "--lr", "1e-4", "--replay", "corpus:kjv:0"],
         "rewarm": ["--schedule", "rewarm", "--replay", "corpus:kjv:0"],
         "rewarm-replay": ["--schedule", "rewarm", "--replay", "corpus:kjv:0.05"]}
C_WIDTHS, C_DEPTHS = (32, 64, 128), (2, 4, 6)


def plan(parts: str, seeds: list[int], root: Path) -> list[list[tuple[Path, list[str]]]]:
    """Waves of (output dir, flags); runs inside a wave are independent."""
    waves: list[list[tuple[Path, list[str]]]] = [[], []]
    for s in seeds:
        if "a2" in parts.split(","):
            for name in ("topk", "default"):
                waves[0].append((root / "a2" / f"{name}-s{s}", ["--arch", "moe", "--router", name, "--width", "64",
                                 "--depth", "4", "--experts", "8", "--top-k", "2", "--max-steps", "1000",
                                 "--eval-every", "100", "--corpus", "kjv", "--seed", str(s)]))
        if "a" in parts.split(","):
            for name, flags in A_VARIANTS.items():
                waves[0].append((root / "a" / f"{name}-s{s}", ["--arch", "moe", *BASE, *flags, "--no-renormalize",
                                 "--aux-loss-coef", "0.01", "--z-loss-coef", "0", "--corpus", "kjv", "--seed", str(s)]))
        if "b" in parts.split(","):
            for arch, flags in B_ARCHS.items():
                base = root / "b" / f"{arch}-s{s}"
                waves[0].append((base, [*BASE, *flags, "--corpus", "kjv", "--seed", str(s)]))
                for recipe, cflags in B_CPT.items():
                    waves[1].append((root / "b" / f"{arch}-s{s}-{recipe}",
                                     ["--init-from", str(base), "--corpus", "pydoc", "--seq-len", "128", "--batch-size", "8",
                                      "--max-steps", "1000", "--eval-every", "100", *cflags, "--seed", str(s)]))
    if "c" in parts.split(","):
        for w in C_WIDTHS:
            for d in C_DEPTHS:
                waves[0].append((root / "c" / f"w{w}-d{d}", ["--arch", "dense", "--width", str(w), "--depth", str(d),
                                 "--ffn", str(4 * w), "--seq-len", "128", "--max-steps", "1000", "--eval-every", "100",
                                 "--schedule", "constant", "--warmup-steps", "20", "--corpus", "kjv", "--seed", "0"]))
    return waves


def run_one(out: Path, flags: list[str]) -> tuple[Path, int]:
    if (out / "metrics.json").is_file():
        return out, 0
    cmd = [sys.executable, "-m", "tunelab.cli", "pretrain", *flags, "--output", str(out), "--overwrite"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "w") as log:
        log.write("tunelab pretrain " + " ".join(flags) + f" --output {out}\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    console.print(f"{'ok  ' if rc == 0 else 'FAIL'} {out} ({(time.perf_counter() - started) / 60:.1f} min)")
    return out, rc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="a,a2,b,c")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--output", default="runs/moe-pretraining")
    ap.add_argument("--summarize-only", action="store_true")
    args = ap.parse_args()
    root = Path(args.output)
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    if not args.summarize_only:
        failed = []
        for wave in plan(args.parts, seeds, root):
            with ThreadPoolExecutor(args.jobs) as pool:
                failed += [out for out, rc in pool.map(lambda r: run_one(*r), wave) if rc]
        if failed:
            console.print(f"failed: {', '.join(map(str, failed))} (see their .log)")
            return 1
    from moe_summary import summarize  # experiments/ is on sys.path when a script runs

    return summarize(root, args.parts, seeds, started, console)


if __name__ == "__main__":
    sys.exit(main())
