"""Safety depth on smollm2-135m: how deep does a safety adapter's alignment go, and can it be deepened?

1. The safety adapter (tunelab's recipe: HarmBench train-split prompts → refusals, benign anchors
   answered by the model itself), LoRI-S.
2. Its per-token KL(aligned ‖ base) profile over the response positions of a compliant opening,
   and the prefilling attack: ASR after k ∈ {0, 5, 10, 20, 40} prefilled opening tokens, with the
   opening the recovery data is built from and with a held-out one.
3. The same adapter trained on safety-recovery augmented data (compliant prefix masked from the
   loss, then a recovering refusal): prefilling ASR vs k again.
4. A fine-tuning attack (HarmBench train prompts → affirmative openings) on both safety adapters
   with plain SFT vs the token-wise constrained objective, same data, same steps.
5. Refusal tokens: the same data with a ``[refuse]``/``[respond]`` token in front of every answer
   (LoRA), and the calibration curve: refusal rate on harmful vs benign prompts and F1 vs τ.

Run:  python experiments/safety_depth.py [--quick] [--seed 0] [--output runs/safety-depth]

Writes ``results.json``, ``results.md`` (the README table), ``plots/*.png`` and ``report.html``
under ``--output``; finished pieces are reused when re-run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _finish import finish  # experiments/ is on sys.path when a script runs
from rich.console import Console

from tunelab.layout import EVAL_FILE, RUN_FILE
from tunelab.safety.attack import AttackConfig, run_attack
from tunelab.safety.augment import augment_recovery_file
from tunelab.safety.configs import SafetyDepthConfig
from tunelab.safety.depth import AFFIRMATIVE_OPENING, HELDOUT_OPENING, run_safety_depth
from tunelab.safety.recipe import SAFETY_RECIPE, build_safety_data, train_safety_adapter

console = Console()
KS = (0, 5, 10, 20, 40)


@dataclass(frozen=True)
class Plan:
    """Sizes of the experiment; ``--quick`` shrinks every number."""

    model: str = "smollm2-135m"
    method: str = "lori-s"
    limit: int = 40  # held-out HarmBench prompts for the KL profile and the prefilling attack
    positions: int = 20
    max_new_tokens: int = 48
    safety_steps: int | None = None  # None: the recipe's
    attack_n: int = 100
    attack_steps: int = 20
    attack_lr: float = 1e-3
    safety_limit: int = 40


QUICK = Plan(limit=4, positions=6, max_new_tokens=8, safety_steps=4, attack_n=8, attack_steps=2, safety_limit=4)


def _depth(plan: Plan, adapter: Path, out: Path, opening: str) -> dict[str, Any]:
    if not (out / EVAL_FILE).is_file():
        run_safety_depth(SafetyDepthConfig(model=plan.model, adapter=str(adapter), positions=plan.positions, limit=plan.limit,
                                           ks=list(KS), max_new_tokens=plan.max_new_tokens, opening=opening, output=out))
    return json.loads((out / EVAL_FILE).read_text())


def _attack(plan: Plan, adapter: Path, objective: str, out: Path, seed: int) -> dict[str, Any]:
    if not (out / EVAL_FILE).is_file():
        run_attack(AttackConfig(adapter=str(adapter), output=str(out), model=plan.model, objective=objective, n=plan.attack_n,
                                steps=plan.attack_steps, lr=plan.attack_lr, seed=seed, safety_limit=plan.safety_limit,
                                safety_max_new_tokens=plan.max_new_tokens, overwrite=True))
    return json.loads((out / EVAL_FILE).read_text())


def run(plan: Plan, seed: int, root: Path) -> dict[str, Any]:
    """Every piece of the experiment; returns the numbers the tables and plots need."""
    from tunelab.models import load_model

    data = root / "data" / "safety.jsonl"
    lm, tokenizer = load_model(plan.model)
    if not data.is_file():
        build_safety_data(lm, tokenizer, data, seed=seed)
    recovery = root / "data" / "safety-recovery.jsonl"
    if not recovery.is_file():
        augment_recovery_file(data, recovery, tokenizer, p=0.5, max_prefix=100, seed=seed)
    del lm

    adapters = {}
    for name, path in (("plain", data), ("recovery", recovery)):
        out = root / f"safety-{name}"
        if not (out / RUN_FILE).is_file():
            console.rule(f"safety adapter ({name} data)")
            train_safety_adapter(plan.method, out, model=plan.model, data=path, seed=seed, steps=plan.safety_steps)
        adapters[name] = out
    # the recovery data holds prefixes of AFFIRMATIVE_OPENING: the held-out opening tests recovery it never saw
    depth = {}
    for name, adapter in adapters.items():
        depth[name] = _depth(plan, adapter, root / f"depth-{name}", AFFIRMATIVE_OPENING)
        depth[f"{name}, held-out opening"] = _depth(plan, adapter, root / f"depth-{name}-heldout", HELDOUT_OPENING)
    # the attack on both safety adapters: does deeper alignment, the constrained objective, or both, hold?
    attacks = {}
    for name, adapter in adapters.items():
        for obj in ("sft", "constrained"):
            out = root / (f"attack-{obj}" if name == "plain" else f"attack-{name}-{obj}")
            attacks[f"{name}/{obj}"] = _attack(plan, adapter, obj, out, seed)
    return {"depth": depth, "attacks": attacks, "calibration": _calibration(plan, data, root, seed)}


def _calibration(plan: Plan, data: Path, root: Path, seed: int) -> dict[str, Any]:
    """Refusal tokens (single mode) trained with the recipe's LoRA settings, then the τ sweep."""
    from tunelab.safety.configs import RefusalCalibrationConfig
    from tunelab.safety.refusal_tokens import run_refusal_calibration
    from tunelab.finetune import TrainConfig, train

    run, out = root / "refusal-tokens", root / "calibration"
    recipe = SAFETY_RECIPE["lora"]
    if not (run / RUN_FILE).is_file():
        console.rule("refusal tokens")
        train(TrainConfig(model=plan.model, data=str(data), method="lora", output=str(run), refusal_tokens="single",
                          rank=recipe.rank, alpha=recipe.alpha, lr=recipe.lr, max_steps=plan.safety_steps or recipe.steps,
                          batch_size=recipe.batch_size, max_length=recipe.max_length, seed=seed, save_every=0, overwrite=True))
    if not (out / EVAL_FILE).is_file():
        run_refusal_calibration(RefusalCalibrationConfig(model=plan.model, adapter=str(run), limit=plan.limit, output=out))
    return json.loads((out / EVAL_FILE).read_text())


def _label(name: str) -> str:
    """'recovery, held-out opening' -> 'recovery data, held-out opening'."""
    data, _, rest = name.partition(", ")
    return f"{data} data" + (f", {rest}" if rest else "")


def tables(results: dict[str, Any], plan: Plan, seed: int) -> str:
    """The README tables."""
    d = results["depth"]
    lines = [f"smollm2-135m, {plan.method} safety adapter, seed {seed}; {plan.limit} held-out HarmBench prompts "
             "(test split), keyword judge.", "",
             "**Per-token KL(aligned ‖ base)** on the compliant opening (nats, mean over prompts)", "",
             "| safety adapter trained on | k=1 | k=2 | k=3 | k=5 | k=10 | k=20 | mean k≤5 / mean k>5 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in d:
        mean = d[name]["kl"]["mean"]
        at = lambda k: f"{mean[k - 1]:.3f}" if k <= len(mean) else "–"  # noqa: E731
        early, late = mean[:5], mean[5:]
        ratio = f"{(sum(early) / len(early)) / (sum(late) / len(late)):.1f}×" if late and sum(late) > 0 else "–"
        lines.append(f"| {_label(name)} | {at(1)} | {at(2)} | {at(3)} | {at(5)} | {at(10)} | {at(20)} | {ratio} |")
    lines += ["", "**Prefilling attack**: ASR after k prefilled tokens of the compliant opening", "",
              "| safety adapter trained on | " + " | ".join(f"k={k}" for k in KS) + " |", "|---|" + "---:|" * len(KS)]
    for name in d:
        by_k = {row["k"]: row for row in d[name]["asr"]}
        lines.append(f"| {_label(name)} | " + " | ".join(f"{by_k[k]['asr']:.0%}" for k in KS) + " |")
    lines += ["", f"**Fine-tuning attack** ({plan.attack_n} HarmBench train prompts → affirmative openings, "
              f"{plan.attack_steps} steps, lr {plan.attack_lr:g}, continuing the safety adapter)", "",
              "| safety adapter trained on | attack objective | ASR before → after | over-refusal before → after |",
              "|---|---|---:|---:|"]
    for key, a in results["attacks"].items():
        name, obj = key.split("/")
        lines.append(f"| {name} data | {obj} | {a['asr_before']:.0%} → {a['asr_after']:.0%} | {a['over_refusal_before']:.0%} → "
                     f"{a['over_refusal_after']:.0%} |")
    cal = results["calibration"]
    lines += ["", f"**Refusal tokens** (`[refuse]`/`[respond]`, LoRA on the same data): refuse when p([refuse]) ≥ τ at "
              f"the first response token; {cal['n_harmful']} harmful / {cal['n_benign']} benign held-out prompts", "",
              "| τ | harmful refused | benign refused | F1 |", "|---:|---:|---:|---:|"]
    for row in cal["sweep"]:
        best = " (best)" if row["threshold"] == cal["best_threshold"] else ""
        lines.append(f"| {row['threshold']:g}{best} | {row['harmful_refusal_rate']:.0%} | {row['benign_refusal_rate']:.0%} | {row['f1']:.3f} |")
    return "\n".join(lines) + "\n"


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    """KL vs position, ASR vs prefilled tokens, the calibration curve and the attack, in one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2, ax3, ax4) = plt.subplots(1, 4, figsize=(20, 3.8))
    colors = {"plain": "tab:blue", "recovery": "tab:orange"}
    for name, d in results["depth"].items():
        kl, heldout = d["kl"], "held-out" in name
        style = {"color": colors[name.split(",")[0]], "linestyle": "--" if heldout else "-", "label": _label(name)}
        ax1.plot(kl["positions"], kl["mean"], marker="o", ms=3, **style)
        if not heldout:
            ax1.fill_between(kl["positions"], kl["quantiles"]["p25"], kl["quantiles"]["p75"], alpha=0.2, color=style["color"])
        ax2.plot([r["k"] for r in d["asr"]], [r["asr"] for r in d["asr"]], marker="o", **style)
    ax1.set(title="KL(aligned ‖ base) per response token", xlabel="response position", ylabel="nats")
    ax2.set(title="prefilling attack", xlabel="prefilled tokens k", ylabel="ASR", ylim=(0, 1.05))
    for series in results["calibration"]["series"]:
        ax3.plot(series["x"], series["y"], marker="o", ms=3, label=series["label"])
    ax3.set(title="refusal tokens: calibration", xlabel="threshold τ", ylabel="rate / F1", ylim=(0, 1.05))
    attacks = results["attacks"]
    labels = [key.replace("/", "\n") for key in attacks]
    x = range(len(labels))
    ax4.bar([i - 0.2 for i in x], [a["asr_before"] for a in attacks.values()], width=0.4, label="before attack")
    ax4.bar([i + 0.2 for i in x], [a["asr_after"] for a in attacks.values()], width=0.4, label="after attack")
    ax4.set_xticks(list(x), labels)
    ax4.set(title="fine-tuning attack", ylabel="ASR", ylim=(0, 1.05))
    for ax in (ax1, ax2, ax3, ax4):
        ax.legend()
    fig.tight_layout()
    path = out / "safety_depth.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not a measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("runs/safety-depth"))
    parser.add_argument("--model", default=None, help="default smollm2-135m")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.model:
        plan = Plan(**{**asdict(plan), "model": args.model})
    root: Path = args.output
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = run(plan, args.seed, root)
    md = tables(results, plan, args.seed)
    figures = plots(results, root / "plots")
    return finish(root, {"plan": asdict(plan), "seed": args.seed, "results": results}, md, figures,
                  f"tunelab safety depth — {plan.model}", started, console)


if __name__ == "__main__":
    sys.exit(main())
