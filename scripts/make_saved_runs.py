"""Write the saved set of run directories `tests/test_saved_runs.py` reads (tiny-random, ~5 min).

Every kind of result a current tunelab writes, made by the real commands on tiny-random, with the
large binary files dropped (weights stay only where they are a few KB). Re-run it when a result
kind is added; the test then records what the report renders from it:

    python scripts/make_saved_runs.py tests/data/saved_runs
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

KEEP_BYTES = 64_000  # larger binaries (model weights, checkpoints) are not part of the saved set


def tunelab(*args: str, cwd: Path) -> None:
    cmd = [sys.executable, "-m", "tunelab.cli", *args]
    print("$ tunelab", " ".join(args), flush=True)
    done = subprocess.run(cmd, cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def main(target: Path) -> None:
    work = target.with_name(target.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows = [{"prompt": f"What is {i} plus {i + 1}?", "response": str(2 * i + 1)} for i in range(24)]
    (work / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--model", "tiny-random", "--data", "qa.jsonl", "--rank", "4", "--alpha", "8", "--max-steps", "3",
              "--batch-size", "4", "--seed", "1", "--lr", "1e-2", "--save-every", "0", "--no-bf16"]
    tunelab("train", *common, "--method", "lora", "--output", "runs/lora", "--canaries", "20", cwd=work)
    tunelab("train", *common, "--method", "lori-d", "--output", "runs/lori-d", cwd=work)
    tunelab("train", *common, "--method", "lori-s", "--mask-from", "runs/lori-d", "--output", "runs/lori-s", cwd=work)
    tunelab("train", *common, "--method", "lota", "--output", "runs/lota", cwd=work)
    tunelab("train", *common, "--method", "lora", "--optimizer", "dp-zo", "--target-epsilon", "4", "--canaries", "10",
            "--output", "runs/dp-zo", cwd=work)
    gen = ["--model", "tiny-random", "--max-new-tokens", "4", "--limit", "4"]
    tunelab("eval", *gen, "--adapter", "runs/lora", "--task", "arithmetic", cwd=work)
    tunelab("eval", *gen, "--adapter", "runs/lori-s", "--task", "arithmetic", cwd=work)
    tunelab("eval", *gen, "--task", "arithmetic", "--output", "runs/base-arithmetic", cwd=work)
    tunelab("eval", *gen, "--adapter", "runs/lora", "--suite", "safety", "--benign-limit", "4", cwd=work)
    tunelab("audit", "privacy", "--model", "tiny-random", "runs/lora", "--output", "runs/lora/audit", cwd=work)
    tunelab("audit", "safety-depth", "--model", "tiny-random", "--adapter", "runs/lora", "--limit", "4", "--ks", "0,2",
            "--max-new-tokens", "4", "--output", "runs/lora/eval/depth", cwd=work)
    tunelab("merge", "runs/lora", "runs/lori-d", "--method", "cat", "--weights", "0.5,0.5", "--output", "runs/merged", "--analyze", cwd=work)
    tunelab("inspect", "heads", "--model", "tiny-random", "--task", "arc-easy", "--limit", "8", "--scores",
            "mean_output_norm_ln,random", "--fractions", "0,0.5", "--output", "runs/inspect/heads", cwd=work)
    tunelab("inspect", "prune", "--model", "tiny-random", "--methods", "dense,pp", "--ratios", "0.25", "--task", "arc-easy",
            "--limit", "8", "--ppl-limit", "4", "--calibration-limit", "4", "--safety-limit", "4", "--max-new-tokens", "4",
            "--skip", "0", "--output", "runs/inspect/prune", cwd=work)
    tunelab("audit", "multi-turn", "--task", "arc-easy", "--turns", "3", "--model", "tiny-random", "--limit", "6",
            "--layers", "1", "--output", "runs/inspect/multi-turn", cwd=work)
    pairs = [{"prompt": f"Say something about {w}.", "positive": f"I love {w}!", "negative": f"I hate {w}."}
             for w in ("cats", "rain", "tea", "maps", "jazz", "bread", "snow", "kites")]
    (work / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    tunelab("inspect", "steer", "train", "--model", "tiny-random", "--pairs", "pairs.jsonl", "--output", "runs/steer", cwd=work)
    tunelab("pretrain", "--arch", "moe", "--width", "32", "--depth", "2", "--heads", "2", "--experts", "4", "--top-k", "2",
            "--corpus", "pydoc", "--seq-len", "32", "--batch-size", "4", "--max-steps", "4", "--eval-every", "2",
            "--eval-batches", "1", "--output", "runs/pretrain", cwd=work)
    table = [{"N": n, "D": d, "loss": 1.7 + 400 / n ** 0.34 + 900 / d ** 0.28} for n in (1e5, 3e5, 1e6, 3e6) for d in (1e6, 3e6, 1e7, 3e7)]
    (work / "table.jsonl").write_text("".join(json.dumps(r) + "\n" for r in table))
    tunelab("scaling", "fit", "table.jsonl", "--params-column", "N", "--tokens-column", "D", "--loss-column", "loss",
            "--bootstrap", "20", "--max-starts", "8", "--workers", "1", "--output", "runs/scaling", cwd=work)
    runs = work / "runs"
    for path in sorted(runs.rglob("*")):
        if path.is_dir() and path.name in ("checkpoint", "tensorboard"):
            shutil.rmtree(path)
    for path in sorted(runs.rglob("*")):
        if path.is_file() and path.suffix in (".safetensors", ".bin", ".pt") and path.stat().st_size > KEEP_BYTES:
            path.unlink()
    shutil.rmtree(target, ignore_errors=True)
    shutil.move(str(runs), str(target))
    shutil.rmtree(work)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(f"wrote {target}: {sum(1 for p in target.rglob('*') if p.is_file())} files, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/data/saved_runs").resolve())
