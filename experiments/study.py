"""One study on smollm2-135m: every method scored on utility × safety drift × privacy leakage × cost.

Arms (issue 25, point 9): lora, lori-d, lori-s, lota, full, dp-sgd@ε=4, dp-zo@ε=4, and a
safety-first pair — LoRA and LoRI-S ``--disjoint`` continued from tunelab's safety adapters
(``lora+safety``, ``lori-s+safety``: the study trains them once) — on the built-in ``reverse_words`` task,
3 paired seeds, one shared canary set in every arm, the safety-drift monitor in every arm.

Run:  python experiments/study.py [--quick] [--seeds 0,1,2] [--jobs 2] [--output runs/exp-study]

Everything lands under ``--output``: the study directory (``study/``: the two safety adapters,
``study.json``, every arm × seed as a run dir, ``pareto.png``, ``bars.png``), ``results.md`` (the
docs table) and ``report.html``. Finished work is reused: an interrupted experiment continues.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _finish import finish  # experiments/ is on sys.path when a script runs
from rich.console import Console

from tunelab.study.config import StudyConfig
from tunelab.study.results import StudyResult, higher_is_better, metric_label
from tunelab.study.run import run_study

console = Console()

# Learning rates for 135M and 40 steps (the demo's for lora/lori-d/lori-s; LoTA trains raw weights,
# full fine-tuning all of them: smaller steps); DP-SGD as LoRA; DP-ZO: MeZO-like on the adapter.
ARMS = [
    {"name": "lora", "method": "lora", "lr": 1e-3},
    {"name": "lori-d", "method": "lori-d", "lr": 1e-3},
    {"name": "lori-s", "method": "lori-s", "lr": 1e-2},
    {"name": "lota", "method": "lota", "lr": 3e-4},
    {"name": "full", "method": "full", "lr": 5e-5},
    {"name": "dp-sgd@4", "optimizer": "dp-sgd", "target_epsilon": 4, "lr": 1e-3},
    {"name": "dp-zo@4", "optimizer": "dp-zo", "target_epsilon": 4, "lr": 1e-4},
]
SUMMARY = ("utility", "forgetting", "asr", "refusal", "over_refusal", "refusal_drift", "prefill_asr_k5", "epsilon_lb",
           "epsilon", "auroc", "wall_time_s", "peak_rss_mb", "adapter_bytes")


def _fmt(name: str, mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "—"
    rate = name in ("utility", "forgetting", "asr", "refusal", "over_refusal", "refusal_drift", "prefill_asr_k5")
    scale, unit = (100.0, "") if rate else (1.0, "")
    fmt = ".1f" if rate or name in ("epsilon_lb", "epsilon", "peak_rss_mb", "wall_time_s") else ".3g"
    if name == "adapter_bytes":
        return f"{mean / 1e6:.2f} MB"
    text = f"{mean * scale:{fmt}}{unit}"
    return text if sd is None else f"{text} ± {sd * scale:{fmt}}"


def table(result: StudyResult) -> str:
    """The docs table: mean ± sd over seeds per arm, and the paired differences vs the reference."""
    names = [m for m in SUMMARY if m in result.metric_names()]
    head = "| arm | seeds | " + " | ".join(metric_label(m) for m in names) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(names)]
    for s in result.summary:
        cells = [_fmt(m, s.metrics[m].mean, s.metrics[m].sd) if m in s.metrics else "—" for m in names]
        lines.append(f"| {s.arm} | {s.n_seeds} | " + " | ".join(cells) + " |")
    lines += ["", f"Paired differences vs `{result.reference}` (mean [95% t interval] over seeds; ▲/▼: the interval excludes 0):", "",
              "| arm | " + " | ".join(metric_label(m) for m in names[:7]) + " |", "|---|" + "---:|" * 7]
    for p in result.paired:
        cells = []
        for m in names[:7]:
            d = p.metrics.get(m)
            if d is None or d.mean is None:
                cells.append("—")
                continue
            ci = "" if d.ci95 is None else f" [{d.ci95[0] * 100:+.1f}, {d.ci95[1] * 100:+.1f}]"
            mark = ""
            if d.ci95 is not None and (d.ci95[0] > 0 or d.ci95[1] < 0):
                better = higher_is_better(m)
                mark = " ▲" if (d.mean > 0) == bool(better) else " ▼"
            cells.append(f"{d.mean * 100:+.1f}{ci}{mark}")
        lines.append(f"| {p.arm} | " + " | ".join(cells) + " |")
    flags = [f"{r.arm} seed {r.seed}: {f}" for r in result.runs for f in r.flags]
    failed = [f"{r.arm} seed {r.seed}: {r.error}" for r in result.runs if r.status != "done"]
    if flags:
        lines += ["", "Flags: " + "; ".join(flags)]
    if failed:
        lines += ["", "Failed: " + "; ".join(failed)]
    return "\n".join(lines) + "\n"


def monitor_figure(result: StudyResult, root: Path, path: Path) -> Path | None:
    """Refusal rate vs step for every training arm (mean over seeds), from each run's safety monitor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tunelab.safety.monitor import MonitorRecord
    from tunelab.train.record import TrainRecord

    curves: dict[str, dict[int, list[float]]] = {}
    for run in result.runs:
        if run.dir is None or run.arm == "base" or run.status != "done":
            continue
        record = TrainRecord.read(root / run.dir)
        if not record.safety_monitor:
            continue
        for point in MonitorRecord.from_dict(record.safety_monitor).series:
            curves.setdefault(run.arm, {}).setdefault(point.step, []).append(point.refusal_rate)
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
    for arm, by_step in curves.items():
        steps = sorted(by_step)
        ax.plot(steps, [100 * sum(by_step[s]) / len(by_step[s]) for s in steps], marker="o", label=arm)
    ax.set_xlabel("training step")
    ax.set_ylabel("refusal on 16 held-out HarmBench prompts (%)")
    ax.set_title("safety-drift monitor: refusal during training (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--output", type=Path, default=Path("runs/exp-study"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    root = args.output
    quick = args.quick
    arms = [*ARMS,
            {"name": "lora+safety", "lr": 1e-3},        # LoRA continued from tunelab's LoRA safety adapter
            {"name": "lori-s+safety", "lr": 1e-2}]      # LoRI-S --disjoint from the LoRI-S safety adapter
    cfg = StudyConfig(
        model=args.model, task="reverse_words", n_train=80 if quick else 600, arms=arms,
        seeds=[int(s) for s in args.seeds.split(",")], reference="lora", max_steps=4 if quick else 40, batch_size=8,
        max_length=128, utility_limit=10 if quick else 80, forgetting_limit=10 if quick else 80,
        safety_limit=6 if quick else 24, max_new_tokens=16 if quick else 48, prefill_k=[5], canaries=8 if quick else 32,
        monitor_safety=2 if quick else 20, train={"rank": 16, "alpha": 32.0}, jobs=args.jobs, output=str(root / "study"))
    result = run_study(cfg, console=console)
    md = (f"tunelab study on {args.model}, task reverse_words ({cfg.n_train} train / {cfg.utility_limit} held-out), "
          f"{cfg.max_steps} steps × batch {cfg.batch_size}, seeds {cfg.seeds}, {cfg.canaries} shared canaries, "
          f"{cfg.safety_limit} held-out HarmBench + {cfg.safety_limit} benign prompts, monitor every {cfg.monitor_safety} steps, "
          f"--jobs {cfg.jobs}\n\n" + table(result))
    figures = [root / "study" / "pareto.png", root / "study" / "bars.png"]
    monitor = monitor_figure(result, root / "study", root / "study" / "monitor.png")
    figures += [monitor] if monitor else []
    return finish(root, {"study": str(root / "study" / "study.json")}, md, figures,
                  f"tunelab study — {args.model}", started, console)


if __name__ == "__main__":
    sys.exit(main())
