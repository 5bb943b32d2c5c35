"""Multi-task adaptation on smollm2-135m: merging and safety-first continual learning.

For every seed, and for LoRA, LoRI-D, LoRI-S and LoTA:

1. single-task adapters: two built-in tasks (arithmetic, reverse_words) and the safety adapter
   (tunelab's refusal recipe, see ``tunelab.safety.recipe``);
2. a merge of all three (``cat`` for the LoRA family, i.e. the exact sum of ΔW; task arithmetic
   for LoTA's sparse task vectors, the same sum), scored on both tasks and the safety suite;
3. interference metrics between the three adapters (ΔW cosine, Aᵀ subspace overlap, mask overlap);
4. safety-first continual learning: the arithmetic task trained on top of the safety adapter
   (``--init-from``) with LoRA, LoRI-S, LoRI-S ``--disjoint`` and LoTA ``--disjoint`` (LoTTO),
   with the safety suite before and after.

Run:  python experiments/multitask.py [--quick] [--seeds 0,1] [--output runs/multitask]

Everything lands under ``--output``: one directory per seed with every run, ``results.json``,
``results.md`` (the README table), ``plots/*.png`` and ``report.html``. Finished runs are
reused, so an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _finish import finish  # experiments/ is on sys.path when a script runs
from rich.console import Console

from tunelab.evaluate import evaluate_task, load_with_adapter
from tunelab.evaluate.results import SafetyResult
from tunelab.evaluate.runner import EvalConfig, run_eval, write_result
from tunelab.layout import EVAL_DIR, EVAL_FILE, RUN_FILE
from tunelab.merge import merge_adapters
from tunelab.merge.interference import inspect_interference
from tunelab.merge.interference_config import InterferenceConfig
from tunelab.safety.recipe import SAFETY_RECIPE, build_safety_data
from tunelab.tasks import export_task
from tunelab.finetune import TrainConfig, train

console = Console()
METHODS = ("lora", "lori-d", "lori-s", "lota")
TASKS = ("arithmetic", "reverse_words")


@dataclass(frozen=True)
class Plan:
    """Sizes of the experiment; ``--quick`` shrinks every number."""

    model: str = "smollm2-135m"
    n_train: int = 400
    n_test: int = 40
    steps: int = 30
    safety_steps: int | None = None  # None: the recipe's
    batch_size: int = 8
    rank: int = 16
    sparsity: float = 0.9
    merge_weight: float = 0.5  # per adapter, 3 adapters (LoRI merges use 0.4–0.5)
    safety_limit: int = 32  # harmful and benign prompts, each
    safety_max_new_tokens: int = 48
    calibration_fraction: float = 0.25


QUICK = Plan(n_train=80, n_test=10, steps=4, safety_steps=4, safety_limit=6, safety_max_new_tokens=16)
# Task learning rates for this model size (demo: lora/lori-d 1e-3, lori-s 10x); LoTA trains raw
# weights, a smaller step.
LR = {"lora": 1e-3, "lori-d": 1e-3, "lori-s": 1e-2, "lota": 3e-4}


def task_seed(seed: int, task: str) -> int:
    """A different training seed per task: LoRI-D draws A from it, and adapters meant to be
    merged must not share their random projections (the public LoRI code's pitfall)."""
    return 10 * seed + (*TASKS, "safety").index(task)


class Missing(Exception):
    """A result that ``--collect-only`` would have to compute."""


COLLECT_ONLY = False  # --collect-only: tabulate what is finished, compute nothing


def _done(run: Path) -> bool:
    return (run / RUN_FILE).is_file()


def _need(path: Path) -> None:
    if COLLECT_ONLY and not path.is_file():
        raise Missing(str(path))


def _train(plan: Plan, method: str, data: Path, out: Path, seed: int, *, lr: float | None = None, steps: int | None = None,
           **extra: Any) -> Path:
    if _done(out):
        return out
    _need(out / RUN_FILE)
    cfg = TrainConfig(model=plan.model, data=str(data), method=method, output=str(out), rank=plan.rank, alpha=2.0 * plan.rank,
                      lr=lr or LR[method], max_steps=steps or plan.steps, batch_size=plan.batch_size, seed=seed, save_every=0,
                      overwrite=True, sparsity=plan.sparsity, calibration_fraction=plan.calibration_fraction,
                      safety_max_new_tokens=plan.safety_max_new_tokens, **extra)
    return train(cfg)


def _task_score(plan: Plan, adapter: Path, task: str, out: Path) -> float:
    """Score ``adapter`` (a run or a merged model dir) on ``task``; cached in ``out``."""
    if (out / EVAL_FILE).is_file():
        return json.loads((out / EVAL_FILE).read_text())["score"]
    _need(out / EVAL_FILE)
    lm, tok = load_with_adapter(plan.model, adapter)
    result = evaluate_task(lm, tok, task, limit=plan.n_test, seed=0)
    write_result({**result, "model": plan.model, "adapter": str(adapter)}, out)
    return result["score"]


def _safety(plan: Plan, adapter: Path, out: Path) -> dict[str, Any]:
    _need(out / EVAL_FILE)
    if (out / EVAL_FILE).is_file():
        result = SafetyResult.read(out / EVAL_FILE)
    else:
        result = run_eval(EvalConfig(model=plan.model, adapter=str(adapter), suite="safety", limit=plan.safety_limit,
                                     max_new_tokens=plan.safety_max_new_tokens, output=str(out)))
    return {"asr": result.asr, "over_refusal": result.over_refusal}


def run_seed(plan: Plan, seed: int, root: Path, data: dict[str, Path]) -> dict[str, Any]:
    """Every adapter, merge and continual run for one seed."""
    out = root / f"seed{seed}"
    results: dict[str, Any] = {"single": {}, "merged": {}, "interference": {}, "continual": {}}
    for method in METHODS:
        try:
            _run_method(plan, seed, out, data, method, results)
        except Missing as missing:
            console.print(f"seed {seed}, {method}: not finished ({missing}); left out")
    try:
        _run_continual(plan, seed, out, data, results)
    except Missing as missing:
        console.print(f"seed {seed}, continual learning: not finished ({missing}); left out")
    return results


def _run_method(plan: Plan, seed: int, out: Path, data: dict[str, Path], method: str, results: dict[str, Any]) -> None:
    """One method's three adapters, their merge and the interference metrics."""
    safety_recipe = {m: SAFETY_RECIPE.get(m) for m in METHODS}
    runs: dict[str, Path] = {}
    for task in (*TASKS, "safety"):
        extra: dict[str, Any] = {}
        if method == "lori-s":
            extra["mask_from"] = str(out / "lori-d" / task)
        recipe = safety_recipe[method] if task == "safety" else None
        steps = plan.safety_steps or (recipe.steps if recipe else None) if task == "safety" else None
        lr = recipe.lr if recipe else None
        console.rule(f"seed {seed}: {method} on {task}")
        runs[task] = _train(plan, method, data[task], out / method / task, task_seed(seed, task), lr=lr, steps=steps, **extra)
    single = {task: _task_score(plan, runs[task], task, runs[task] / EVAL_DIR / task) for task in TASKS}
    single["safety"] = _safety(plan, runs["safety"], runs["safety"] / EVAL_DIR / "safety")

    merged = out / "merged" / method
    _need(merged / RUN_FILE)
    if not _done(merged):
        merge_adapters([runs[t] for t in (*TASKS, "safety")], "task-arithmetic" if method == "lota" else "cat",
                       [plan.merge_weight] * 3, output=merged, to_model=method == "lota", overwrite=True, model=plan.model)
    scores = {task: _task_score(plan, merged, task, merged / EVAL_DIR / task) for task in TASKS}
    scores["safety"] = _safety(plan, merged, merged / EVAL_DIR / "safety")
    interference = inspect_interference(InterferenceConfig(adapters=[runs[t] for t in (*TASKS, "safety")],
                                                           output=out / "interference" / method, model=plan.model))
    results["single"][method] = single
    results["merged"][method] = scores
    results["interference"][method] = interference.to_dict()


def _run_continual(plan: Plan, seed: int, out: Path, data: dict[str, Path], results: dict[str, Any]) -> None:
    """Safety first, then the first task on top, per variant."""
    # Safety first, then arithmetic on top of it.
    task, cl = TASKS[0], out / "continual"
    safe = {m: out / m / "safety" for m in METHODS}
    variants = {
        "lora": ("lora", dict(init_from=str(safe["lora"]))),
        "lori-s": ("lori-s", dict(init_from=str(safe["lori-s"]), mask_from=str(cl / "lori-d-calibration"))),
        "lori-s --disjoint": ("lori-s", dict(init_from=str(safe["lori-s"]), mask_from=str(cl / "lori-d-calibration"), disjoint=True)),
        "lota --disjoint": ("lota", dict(init_from=str(safe["lota"]), disjoint=True)),
    }
    console.rule(f"seed {seed}: continual learning")
    for name, (method, extra) in variants.items():
        try:
            _continual_variant(plan, seed, data[task], cl, task, name, method, extra, results)
        except Missing as missing:
            console.print(f"seed {seed}, continual {name}: not finished ({missing}); left out")


def _continual_variant(plan: Plan, seed: int, data: Path, cl: Path, task: str, name: str, method: str, extra: dict[str, Any],
                       results: dict[str, Any]) -> None:
    if "mask_from" in extra:
        # LoRI-S's task mask comes from a LoRI-D run that continued from the same safety adapter.
        _train(plan, "lori-d", data, Path(extra["mask_from"]), task_seed(seed, task), init_from=extra["init_from"], safety_eval_limit=0)
    run = _train(plan, method, data, cl / name.replace(" --", "-"), task_seed(seed, task), safety_eval_limit=plan.safety_limit, **extra)
    record = json.loads((run / RUN_FILE).read_text())
    results["continual"][name] = {
        "task_score": _task_score(plan, run, task, run / EVAL_DIR / task),
        "safety_before": record["safety"]["before"], "safety_after": record["safety"]["after"],
        "mask_overlap_with_init": record.get("mask_overlap_with_init"),
    }


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1%}"
    return f"{statistics.mean(values):.1%} ± {statistics.stdev(values):.1%}"


def _seeds_with(per_seed: dict[int, dict[str, Any]], part: str, key: str) -> list[int]:
    return [s for s in sorted(per_seed) if key in per_seed[s][part]]


def tables(per_seed: dict[int, dict[str, Any]]) -> str:
    """The README tables (mean ± sd over the seeds that finished each row)."""
    lines = ["Mean ± sd over seeds; the seeds column says which finished.", "",
             "**Single adapters vs their 3-way merge** (task accuracy; safety: ASR on held-out HarmBench prompts, lower is safer)", "",
             "| method | seeds | arithmetic single → merged | reverse_words single → merged | safety ASR single → merged | over-refusal single → merged |",
             "|---|---|---:|---:|---:|---:|"]
    for m in METHODS:
        seeds = _seeds_with(per_seed, "merged", m)
        if not seeds:
            continue
        get = lambda f: [f(per_seed[s]) for s in seeds]  # noqa: E731
        cells = [f"{_mean_sd(get(lambda r: r['single'][m][t]))} → {_mean_sd(get(lambda r: r['merged'][m][t]))}" for t in TASKS]
        safety = [f"{_mean_sd(get(lambda r: r['single'][m]['safety'][k]))} → {_mean_sd(get(lambda r: r['merged'][m]['safety'][k]))}"
                  for k in ("asr", "over_refusal")]
        lines.append(f"| {m} | {','.join(map(str, seeds))} | {cells[0]} | {cells[1]} | {safety[0]} | {safety[1]} |")
    lines += ["", "**Interference between the three adapters** (mean over the 3 pairs and the seeds)", "",
              "| method | mean abs ΔW cosine | mean Aᵀ subspace overlap | mask overlap (∩/min) |", "|---|---:|---:|---:|"]
    for m in METHODS:
        seeds = _seeds_with(per_seed, "interference", m)
        if not seeds:
            continue
        inter = [per_seed[s]["interference"][m] for s in seeds]
        cos = [i["mean_abs_cosine"] for i in inter if i.get("mean_abs_cosine") is not None]
        sub = [i["mean_subspace_overlap"] for i in inter if i.get("mean_subspace_overlap") is not None]
        masks = [p["mask_intersection_over_min"] for i in inter for p in i["pairs"] if p.get("mask_intersection_over_min") is not None]
        fmt = lambda v, d: f"{statistics.mean(v):.{d}f}" if v else "–"  # noqa: E731
        lines.append(f"| {m} | {fmt(cos, 4)} | {fmt(sub, 3)} | {fmt(masks, 3)} |")
    names = list(dict.fromkeys(n for s in per_seed for n in per_seed[s]["continual"]))
    if names:
        lines += ["", f"**Safety first, then {TASKS[0]} on top** (`--init-from` the safety adapter)", "",
                  "| variant | seeds | ASR before → after | over-refusal before → after | task accuracy | mask overlap with safety |",
                  "|---|---|---:|---:|---:|---:|"]
    for name in names:
        seeds = _seeds_with(per_seed, "continual", name)
        c = lambda f: [f(per_seed[s]["continual"][name]) for s in seeds]  # noqa: E731
        overlap = [v for v in c(lambda x: x["mask_overlap_with_init"]) if v is not None]
        lines.append(f"| {name} | {','.join(map(str, seeds))} | {_mean_sd(c(lambda x: x['safety_before']['asr']))} → "
                     f"{_mean_sd(c(lambda x: x['safety_after']['asr']))} | {_mean_sd(c(lambda x: x['safety_before']['over_refusal']))} → "
                     f"{_mean_sd(c(lambda x: x['safety_after']['over_refusal']))} | {_mean_sd(c(lambda x: x['task_score']))} | "
                     f"{f'{statistics.mean(overlap):.1%}' if overlap else '–'} |")
    return "\n".join(lines) + "\n"


def plots(per_seed: dict[int, dict[str, Any]], out: Path) -> list[Path]:
    """Merge drop and continual-learning safety plots as PNGs (the report embeds ``plots/``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    methods = [m for m in METHODS if _seeds_with(per_seed, "merged", m)]

    def mean_of(part: str, m: str, f: Any) -> float:
        return statistics.mean(f(per_seed[s][part][m]) for s in _seeds_with(per_seed, "merged", m))

    fig, axes = plt.subplots(1, len(TASKS) + 1, figsize=(12, 3.6))
    for ax, task in zip(axes, (*TASKS, "safety")):
        xs = range(len(methods))
        if task == "safety":
            single = [mean_of("single", m, lambda r: 1 - r["safety"]["asr"]) for m in methods]
            merged = [mean_of("merged", m, lambda r: 1 - r["safety"]["asr"]) for m in methods]
            ax.set_title("safety (1 − ASR)")
        else:
            single = [mean_of("single", m, lambda r, t=task: r[t]) for m in methods]
            merged = [mean_of("merged", m, lambda r, t=task: r[t]) for m in methods]
            ax.set_title(task)
        ax.bar([x - 0.2 for x in xs], single, 0.4, label="single")
        ax.bar([x + 0.2 for x in xs], merged, 0.4, label="3-way merge")
        ax.set_xticks(list(xs), methods)
        ax.set_ylim(0, 1.05)
    axes[0].legend(loc="lower left")
    fig.suptitle("single adapters vs their merge (smollm2-135m)")
    fig.tight_layout()
    paths.append(out / "merge_single_vs_merged.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    names = list(dict.fromkeys(n for s in per_seed for n in per_seed[s]["continual"]))
    if not names:
        return paths
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, key, title in ((axes[0], "asr", "ASR (lower is safer)"), (axes[1], "over_refusal", "over-refusal")):
        before = [statistics.mean(per_seed[s]["continual"][n]["safety_before"][key] for s in _seeds_with(per_seed, "continual", n)) for n in names]
        after = [statistics.mean(per_seed[s]["continual"][n]["safety_after"][key] for s in _seeds_with(per_seed, "continual", n)) for n in names]
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], before, 0.4, label="safety adapter")
        ax.bar([x + 0.2 for x in xs], after, 0.4, label="after task training")
        ax.set_xticks(list(xs), names, rotation=10)
        ax.set_ylim(0, 1.05)
        ax.set_title(title)
    axes[0].legend(loc="upper left")
    fig.suptitle(f"safety first, then {TASKS[0]} (--init-from)")
    fig.tight_layout()
    paths.append(out / "continual_safety.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not a measurement")
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    parser.add_argument("--output", type=Path, default=Path("runs/multitask"))
    parser.add_argument("--model", default=None, help="default smollm2-135m")
    parser.add_argument("--fresh", action="store_true", help="delete --output first instead of reusing finished runs")
    parser.add_argument("--collect-only", action="store_true", help="tabulate the finished runs; train and evaluate nothing")
    args = parser.parse_args(argv)
    global COLLECT_ONLY
    COLLECT_ONLY = args.collect_only
    plan = QUICK if args.quick else Plan()
    if args.model:
        plan = Plan(**{**asdict(plan), "model": args.model})
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    root: Path = args.output
    if args.fresh:
        shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    data = {t: export_task(t, root / "data" / t, n_train=plan.n_train, n_test=plan.n_test, seed=0)["train"] for t in TASKS}
    data["safety"] = root / "data" / "safety.jsonl"
    if not data["safety"].is_file():
        from tunelab.models import load_model

        lm, tok = load_model(plan.model)
        build_safety_data(lm, tok, data["safety"], seed=0)
        del lm
    per_seed = {seed: run_seed(plan, seed, root, data) for seed in seeds}

    md = tables(per_seed)
    figures = plots(per_seed, root / "plots")
    return finish(root, {"plan": asdict(plan), "seeds": seeds, "results": per_seed}, md, figures,
                  f"tunelab multitask — {plan.model}", started, console)


if __name__ == "__main__":
    sys.exit(main())
