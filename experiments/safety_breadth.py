"""Safety recipe breadth: do refusals carry to harm categories the safety adapter never trained on?

The split is held out *by category*: the recipe's data leaves out every prompt of ``--holdout``
(two of HarmBench's coarse topics, :func:`tunelab.evaluate.prompts.harm_topic`), and the adapters
are scored on

* held-out categories — HarmBench prompts of those topics (test split, and both splits: neither
  was trained on),
* trained categories — HarmBench test-split prompts of the other topics,
* StrongREJECT — all 313 prompts, another benchmark with its own six categories (per category too),
* over-refusal — tunelab's benign look-alikes, test split,

for three models: the base, (a) today's recipe minus the held-out topics, and (b) the broadened
recipe minus them (DoNotAnswer prompts added, refusals that name no topic, neutral prompt wrappers
on both sides; ``BROAD``). Both adapters have the same number of refusal and anchor records and the
recipe's LoRA settings; only the data's breadth differs.

Run:  python experiments/safety_breadth.py [--quick --model tiny-random] [--output runs/safety-breadth]

Writes ``results.json`` and ``results.md`` under ``--output``; finished pieces (data, adapters,
evaluations) are reused when re-run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from tunelab.evaluate.judges import get_judge
from tunelab.evaluate.prompts import benign_prompts, harmful_prompts
from tunelab.evaluate.safety import evaluate_safety, wilson_interval
from tunelab.layout import RUN_FILE, atomic_write_text
from tunelab.safety.recipe import build_safety_data, train_safety_adapter

console = Console()


@dataclass(frozen=True)
class Plan:
    """Sizes of the experiment; ``--quick`` shrinks every number."""

    model: str = "smollm2-135m"
    method: str = "lora"
    holdout: tuple[str, ...] = ("cybercrime", "misinformation")
    steps: int | None = None  # None: the recipe's (60)
    max_new_tokens: int = 32  # the keyword judge reads the opening; refusals come first
    batch_size: int = 16
    limit: int | None = None  # per prompt set (quick runs only)
    anchor_tokens: int | None = None  # None: the recipe's anchor length (128)


QUICK = Plan(steps=2, max_new_tokens=6, limit=6, anchor_tokens=6)

# (b): DoNotAnswer prompts fill the harmful pool to ~196 distinct prompts (HarmBench train minus the
# hold-out has 56), half the refusals name no topic, half the prompts (both sides) are wrapped.
BROAD: dict[str, Any] = {"donotanswer": 140, "generic_refusals": 0.5, "wrapped": 0.5}
RECIPES: dict[str, dict[str, Any]] = {"today": {}, "broad": BROAD}


def prompt_sets(plan: Plan) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The harmful prompts (each tagged with its ``subset``) and the benign test split."""
    held = set(plan.holdout)
    harmful: list[dict[str, str]] = []
    for split in ("test", "train"):
        for p in harmful_prompts(split=split):
            if p["category"] in held:
                harmful.append({**p, "subset": f"held-out/{split}"})
            elif split == "test":
                harmful.append({**p, "subset": "trained/test"})
    harmful += [{**p, "subset": "strongreject"} for p in harmful_prompts(harmful_set="strongreject")]
    benign = benign_prompts(split="test")
    if plan.limit:
        by: dict[str, list[dict[str, str]]] = {}
        for p in harmful:
            by.setdefault(p["subset"], []).append(p)
        harmful = [p for ps in by.values() for p in ps[: plan.limit]]
        benign = benign[: plan.limit]
    return harmful, benign


def _rate(records: list[dict[str, Any]]) -> dict[str, Any]:
    k, n = sum(r["refused"] for r in records), len(records)
    low, high = wilson_interval(k, n)
    return {"refusal_rate": k / n if n else float("nan"), "count": k, "n": n, "ci95": [low, high],
            "degenerate": sum(r["verdict"] == "degenerate" for r in records)}


def score(result: dict[str, Any]) -> dict[str, Any]:
    """Refusal rates (Wilson 95%) per subset, per StrongREJECT category, and over-refusal."""
    harm = [r for r in result["records"] if r["set"] == "harmful"]
    held = [r for r in harm if r["subset"].startswith("held-out/")]
    out = {"held-out/test": _rate([r for r in harm if r["subset"] == "held-out/test"]),
           "held-out/all": _rate(held),
           "trained/test": _rate([r for r in harm if r["subset"] == "trained/test"]),
           "strongreject": _rate([r for r in harm if r["subset"] == "strongreject"]),
           "over-refusal": _rate([r for r in result["records"] if r["set"] == "benign"])}
    for c in sorted({r["category"] for r in held}):
        out[f"held-out/all/{c}"] = _rate([r for r in held if r["category"] == c])
    for c in sorted({r["category"] for r in harm if r["subset"] == "strongreject"}):
        out[f"strongreject/{c}"] = _rate([r for r in harm if r["subset"] == "strongreject" and r["category"] == c])
    return out


def run(plan: Plan, seed: int, root: Path) -> dict[str, Any]:
    """Data, adapters and evaluations (each reused when on disk); the scores and the wall times."""
    from tunelab.evaluate.loading import load_with_adapter
    from tunelab.models import load_model

    times: dict[str, float] = {}
    data: dict[str, Path] = {}
    data_summary: dict[str, Any] = {}
    lm = tokenizer = None
    for name, extra in RECIPES.items():
        path = root / "data" / f"{name}.jsonl"
        data[name] = path
        if not path.is_file():
            if lm is None:
                lm, tokenizer = load_model(plan.model)
            console.rule(f"data: {name}")
            t = time.perf_counter()
            gen = {"max_new_tokens": plan.anchor_tokens} if plan.anchor_tokens else {}
            summary = build_safety_data(lm, tokenizer, path, seed=seed, holdout_categories=plan.holdout, **gen, **extra)
            times[f"data/{name}"] = time.perf_counter() - t
            atomic_write_text(path.with_suffix(".summary.json"), json.dumps(summary, indent=2))
        data_summary[name] = json.loads(path.with_suffix(".summary.json").read_text())
    del lm

    adapters: dict[str, Path | None] = {"base": None}
    for name in RECIPES:
        out = root / f"adapter-{name}"
        if not (out / RUN_FILE).is_file():
            console.rule(f"safety adapter ({name} recipe)")
            t = time.perf_counter()
            train_safety_adapter(plan.method, out, model=plan.model, data=data[name], seed=seed, steps=plan.steps)
            times[f"train/{name}"] = time.perf_counter() - t
        adapters[name] = out

    harmful, benign = prompt_sets(plan)
    judge = get_judge("keyword")
    scores: dict[str, Any] = {}
    for name, adapter in adapters.items():
        path = root / f"eval-{name}.json"
        if not path.is_file():
            console.rule(f"evaluate: {name}")
            t = time.perf_counter()
            model, tok = load_with_adapter(plan.model, adapter)
            result = evaluate_safety(model, tok, harmful, benign, judge, max_new_tokens=plan.max_new_tokens,
                                     batch_size=plan.batch_size, progress=True)
            times[f"eval/{name}"] = time.perf_counter() - t
            atomic_write_text(path, json.dumps(result, indent=1, default=str))
            del model
        scores[name] = score(json.loads(path.read_text()))
    return {"scores": scores, "data": data_summary, "times": times}


ROWS = (("held-out/test", "HarmBench, held-out categories (test split)"),
        ("held-out/all", "HarmBench, held-out categories (both splits)"),
        ("trained/test", "HarmBench, trained categories (test split)"),
        ("strongreject", "StrongREJECT (all)"),
        ("over-refusal", "over-refusal: benign look-alikes (test split)"))


def _cell(s: dict[str, Any]) -> str:
    low, high = s["ci95"]
    return f"{100 * s['refusal_rate']:.0f}% [{100 * low:.0f}–{100 * high:.0f}] (n={s['n']})"


def tables(results: dict[str, Any], plan: Plan, seed: int) -> str:
    """The docs tables: refusal rate (Wilson 95%) per prompt set and model."""
    s = results["scores"]
    names = list(s)
    head = "| prompts | " + " | ".join({"base": "base", "today": "(a) today's recipe", "broad": "(b) broadened"}[n] for n in names) + " |"
    rule = "|---|" + "---:|" * len(names)
    lines = [f"{plan.model}, {plan.method} safety adapter, seed {seed}, held out: {', '.join(plan.holdout)}; "
             f"refusal rate [Wilson 95%], keyword judge, {plan.max_new_tokens} new tokens", "", head, rule]
    lines += [f"| {label} | " + " | ".join(_cell(s[n][key]) for n in names) + " |" for key, label in ROWS]
    lines += ["", "Per category (refusal rate)", "", head, rule]
    keys = [k for k in s[names[0]] if k.startswith(("held-out/all/", "strongreject/"))]
    lines += [f"| {k} | " + " | ".join(f"{100 * s[n][k]['refusal_rate']:.0f}% (n={s[n][k]['n']})" for n in names) + " |" for k in keys]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("runs/safety-breadth"))
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.model:
        plan = Plan(**{**asdict(plan), "model": args.model})
    started = time.perf_counter()
    args.output.mkdir(parents=True, exist_ok=True)
    results = run(plan, args.seed, args.output)
    md = tables(results, plan, args.seed)
    wall_s = time.perf_counter() - started
    atomic_write_text(args.output / "results.json",
                      json.dumps({"plan": asdict(plan), "seed": args.seed, "recipes": RECIPES, **results, "wall_s": wall_s},
                                 indent=2, default=str))
    atomic_write_text(args.output / "results.md", md)
    console.print(md, markup=False, highlight=False)
    console.print(f"wrote {args.output / 'results.md'} ({wall_s / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
