"""Memory and step time of private training: dp-zo vs a forward-only pass vs Opacus dp-sgd vs plain backprop.

Each side is one ``tunelab.train.fit`` run of a few steps on smollm2-135m (same LoRA adapter, same
arithmetic examples, same physical batch), in a fresh child process so peak memory is its own. A
timing plug-in resets the kernel's peak-RSS mark (``/proc/self/clear_refs``) when the loop starts,
so model loading does not count; it reads the peak (VmHWM) and the step times at the end. The
forward-only side is a bench-local update rule whose step is one ``no_grad`` forward of the batch:
the memory any training must at least pay. DP runs draw Poisson batches of expected size B and
run them in physical chunks of at most B, so every side forwards at most B examples at once.

Prints peak RSS above the loaded model and step time per side, and the ratios the issue asks for:
dp-zo peak ≤ 1.2× forward-only, ≤ 0.5× Opacus dp-sgd.

    .venv/bin/python bench/private_memory.py [--model smollm2-135m] [--method lora] [--batch-size 16] [--steps 6] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SIDES = ("forward-only", "dp-zo", "dp-sgd", "adamw")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(side: str, model: str, method: str, batch_size: int, steps: int, data: str, out: str) -> dict[str, float]:
    """One side, in this process: train ``steps`` steps; return peak/base RSS (MiB) and step times (s)."""
    import torch

    # Every side imports what every other side does, so library code weighs the same in each peak.
    import tunelab.privacy.dp_sgd  # noqa: F401  (opacus)
    import tunelab.privacy.dp_zo  # noqa: F401  (dp-accounting)
    from tunelab.finetune import TrainConfig, rule_for
    from tunelab.train import AdamW, Plugin, fit

    class Meter(Plugin):
        def on_start(self, run):  # the model is loaded and adapted: measure from here
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark
            self.base = _status_kib("VmRSS")
            self.times = [time.perf_counter()]

        def on_step(self, run, info):
            self.times.append(time.perf_counter())

    class ForwardOnly(AdamW):
        """A no_grad forward of each batch and nothing else (bench-local)."""

        def micro_step(self, loss_fn, batch):
            with torch.no_grad():
                return loss_fn(batch).detach()

        def step(self):
            return {"lr": 0.0, "grad_norm": None}

    optimizer = "adamw" if side == "forward-only" else side
    extra = {"noise_multiplier": 1.0} if side.startswith("dp-") else {}
    cfg = TrainConfig(model=model, data=data, method=method, output=out, optimizer=optimizer,
                      batch_size=batch_size, max_steps=steps, seed=0, save_every=0, overwrite=True,
                      **extra)
    meter = Meter()
    fit(cfg, [meter], ForwardOnly() if side == "forward-only" else rule_for(cfg))
    gaps = [b - a for a, b in zip(meter.times, meter.times[1:])]
    return {"peak_mib": _status_kib("VmHWM") / 1024, "base_mib": meter.base / 1024,
            "step_s": statistics.median(gaps[1:] or gaps)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="tiny-random for a smoke run")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(child(args.child, args.model, args.method, args.batch_size, args.steps, args.data, args.out)))
        return 0

    from tunelab.tasks import TASKS

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        rows = TASKS["arithmetic"].examples("train", 8 * args.batch_size, seed=0)
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        for side in SIDES:
            cmd = [sys.executable, __file__, "--child", side, "--model", args.model, "--method", args.method, "--batch-size", str(args.batch_size),
                   "--steps", str(args.steps), "--data", str(data), "--out", str(Path(tmp) / side)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                sys.stderr.write(done.stderr[-3000:])
                return done.returncode
            results[side] = json.loads(done.stdout.strip().splitlines()[-1])

    import torch

    print(f"{args.model}, {args.method}, batch {args.batch_size} (DP: expected, Poisson; physical ≤ {args.batch_size}), "
          f"median of {args.steps - 1} steps; {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'side':<14}{'peak RSS MiB':>14}{'above model MiB':>17}{'step s':>9}")
    for side, r in results.items():
        print(f"{side:<14}{r['peak_mib']:>14.0f}{r['peak_mib'] - r['base_mib']:>17.0f}{r['step_s']:>9.2f}")
    fwd, zo, sgd, bp = (results[s] for s in SIDES)
    print(f"dp-zo peak / forward-only peak: {zo['peak_mib'] / fwd['peak_mib']:.2f}x (goal <= 1.2)")
    print(f"dp-zo peak / dp-sgd peak:       {zo['peak_mib'] / sgd['peak_mib']:.2f}x (goal <= 0.5)")
    print(f"step time dp-zo / forward-only: {zo['step_s'] / fwd['step_s']:.2f}x; dp-sgd / adamw: "
          f"{sgd['step_s'] / bp['step_s']:.2f}x; dp-sgd / dp-zo: {sgd['step_s'] / zo['step_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
