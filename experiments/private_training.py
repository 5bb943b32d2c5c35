"""Private fine-tuning on smollm2-135m: accuracy vs ε for DP-ZO and DP-SGD, each run audited with canaries.

Every run trains LoRA on the built-in arithmetic task plus m canaries (half of them members, by a
fair coin) and audits itself at the end (one-run ε lower bound, secret-span score):

* ε = ∞ baselines: AdamW (backprop; random, unigram and new-token canaries) and ZO (MeZO);
* DP-ZO with Gaussian and with Laplace noise, and DP-SGD (Opacus), each at ε ∈ {1, 4, 8}, δ = 1e-5,
  noise calibrated by the PLD accountant (``--target-epsilon``), random canaries;
* ZO and DP-ZO (ε = 8) again with a 5× larger learning rate (short of steps, or of step size?);
* at ε = 8, DP-ZO (Gaussian) and DP-SGD again with designed canaries: unigram (the model's least
  likely tokens) for both, new-token (fresh tokens with trained rows, the strongest at ε = ∞ in
  ``privacy_audit.py``) for DP-ZO only — DP-SGD refuses trained new-token rows.

Per run: task accuracy (greedy, held-out test split), held-out loss, ε spent (ledger), the audit's
ε_LB (beside its ceiling) and AUROC. Claims tested in direction (specs/privacy.md): ε_LB ≤ ε spent for every
DP run (a larger one is a bug); designed canaries audit higher than random ones; DP-ZO utility
near DP-SGD at equal (ε, δ).

Run:  python experiments/private_training.py [--quick] [--arms NAME,...] [--output runs/private-training]

The MeZO-like long arms (``LONG_ARMS``: DP-ZO at ε = 8 and ZO, lr 1e-3, 40 epochs) run only when
named in ``--arms``, e.g. ``--arms dp-zo-gaussian-eps8-lr0.001-ep40-random``.

Writes ``results.json``, ``results.md`` (the README table), ``private_training.png`` and
``report.html`` under ``--output``; finished runs are reused when re-run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _finish import finish  # experiments/ is on sys.path when a script runs
from rich.console import Console

from tunelab.layout import RUN_FILE
from tunelab.tasks import export_task

console = Console()
EPSILONS = (1.0, 4.0, 8.0)


@dataclass(frozen=True)
class Arm:
    """One training run: update rule, noise, target ε (inf: not private) and canary family."""

    optimizer: str
    noise: str = "gaussian"
    epsilon: float = math.inf
    family: str = "random"
    lr: float | None = None  # None: the plan's for this optimizer
    epochs: int | None = None  # None: the plan's for this optimizer

    @property
    def name(self) -> str:
        noise = f"-{self.noise}" if self.optimizer == "dp-zo" else ""
        eps = "" if math.isinf(self.epsilon) else f"-eps{self.epsilon:g}"
        lr = "" if self.lr is None else f"-lr{self.lr:g}"
        epochs = "" if self.epochs is None else f"-ep{self.epochs}"
        return f"{self.optimizer}{noise}{eps}{lr}{epochs}-{self.family}"


ARMS = (Arm("adamw"), Arm("adamw", family="unigram"), Arm("adamw", family="new-token"), Arm("zo"),
        *(Arm("dp-zo", "gaussian", e) for e in EPSILONS), *(Arm("dp-zo", "laplace", e) for e in EPSILONS),
        *(Arm("dp-sgd", "gaussian", e) for e in EPSILONS),
        Arm("dp-zo", "gaussian", 8.0, "unigram"), Arm("dp-sgd", "gaussian", 8.0, "unigram"),
        Arm("dp-zo", "gaussian", 8.0, "new-token"),  # dp-sgd refuses trained new-token rows (no per-sample gradient)
        Arm("zo", lr=1e-3), Arm("dp-zo", "gaussian", 8.0, lr=1e-3))  # is ZO short of steps, or of step size?
# MeZO-like: many more, cheaper steps at equal ε (σ recalibrated by the accountant for the longer run);
# only with --arms NAME (about an hour on 2 cores), not in the default run.
LONG_ARMS = (Arm("dp-zo", "gaussian", 8.0, lr=1e-3, epochs=40), Arm("zo", lr=1e-3, epochs=40))


@dataclass(frozen=True)
class Plan:
    """Sizes of the experiment; ``--quick`` shrinks every number."""

    model: str = "smollm2-135m"
    task_n: int = 400  # arithmetic training examples beside the canaries
    m: int = 200  # canaries per run (half members)
    test_n: int = 100
    batch_size: int = 16  # expected batch (Poisson) for DP runs
    backprop_epochs: int = 2  # adamw, dp-sgd
    zo_epochs: int = 5  # zo, dp-zo: zeroth-order needs more (cheaper) steps; 5 keeps the whole run near an hour
    adamw_lr: float = 5e-4
    dp_sgd_lr: float = 1e-3
    zo_lr: float = 2e-4
    clip_sgd: float = 1.0
    clip_zo: float = 2.0
    delta: float = 1e-5
    rank: int = 8
    max_steps: int | None = None


QUICK = Plan(model="tiny-random", task_n=24, m=8, test_n=4, batch_size=4, backprop_epochs=1, zo_epochs=1, max_steps=3)


def _config(plan: Plan, arm: Arm, data: Path, out: Path, seed: int) -> Any:
    from tunelab.finetune import TrainConfig

    zo = arm.optimizer in ("zo", "dp-zo")
    values: dict[str, Any] = dict(
        model=plan.model, data=str(data), method="lora", rank=plan.rank, alpha=2.0 * plan.rank, output=str(out),
        optimizer=arm.optimizer, canaries=plan.m, canary_family=arm.family, batch_size=plan.batch_size,
        epochs=arm.epochs or (plan.zo_epochs if zo else plan.backprop_epochs), max_steps=plan.max_steps, seed=seed, save_every=0,
        overwrite=True, lr=arm.lr or {"adamw": plan.adamw_lr, "dp-sgd": plan.dp_sgd_lr}.get(arm.optimizer, plan.zo_lr))
    if arm.optimizer.startswith("dp-"):
        values.update(noise=arm.noise, target_epsilon=arm.epsilon, target_delta=plan.delta,
                      clip=plan.clip_zo if zo else plan.clip_sgd)
    return TrainConfig(**values)


def _heldout(plan: Plan, out: Path | None, seed: int) -> dict[str, float]:
    """Accuracy (greedy) and mean per-example loss on the task's test split (``out=None``: the base model)."""
    import torch

    from tunelab.data import Collator, tokenize_records
    from tunelab.evaluate import evaluate_task, load_with_adapter
    from tunelab.tasks import TASKS
    from tunelab.train.objectives import CausalLMLoss

    model, tokenizer = load_with_adapter(plan.model, out)
    accuracy = evaluate_task(model, tokenizer, "arithmetic", limit=plan.test_n, seed=seed, bf16=True, progress=False)["score"]
    rows = TASKS["arithmetic"].examples("test", plan.test_n, seed=seed)
    chats = [[{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}] for r in rows]
    examples, _ = tokenize_records(chats, tokenizer, 512)
    collate, net = Collator(examples, tokenizer.pad_token_id), CausalLMLoss(model).eval()
    losses = []
    with torch.no_grad():
        for start in range(0, len(examples), 32):
            losses += net(**collate(list(range(start, min(start + 32, len(examples))))), per_example=True).tolist()
    return {"accuracy": accuracy, "heldout_loss": sum(losses) / len(losses)}


def _arm(plan: Plan, arm: Arm, data: Path, root: Path, seed: int) -> dict[str, Any]:
    from tunelab.finetune import train

    out = root / arm.name
    if not (out / RUN_FILE).is_file():
        console.rule(arm.name)
        train(_config(plan, arm, data, out, seed))
    cached = out / "heldout.json"
    if not cached.is_file():
        cached.write_text(json.dumps(_heldout(plan, out, seed)))
    record = json.loads((out / RUN_FILE).read_text())
    return {**asdict(arm), "name": arm.name, **json.loads(cached.read_text()), "steps": record["steps"],
            "wall_time_s": record["wall_time_s"], "dp": record.get("dp"), "audit": record["privacy"]}


def _base(plan: Plan, root: Path, seed: int) -> dict[str, float]:
    """The untrained model's held-out accuracy and loss: the floor every run starts from."""
    cached = root / "base" / "heldout.json"
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(_heldout(plan, None, seed)))
    return json.loads(cached.read_text())


def tables(results: dict[str, Any], plan: Plan, seed: int) -> str:
    """The README table."""
    lines = [f"{plan.model}, LoRA r={plan.rank}, {plan.task_n} arithmetic examples + m = {plan.m} canaries (half members), "
             f"expected batch {plan.batch_size}; AdamW/DP-SGD {plan.backprop_epochs} epochs (lr {plan.adamw_lr:g}/"
             f"{plan.dp_sgd_lr:g}, C = {plan.clip_sgd:g}), ZO/DP-ZO {plan.zo_epochs} epochs (lr {plan.zo_lr:g}, "
             f"C = {plan.clip_zo:g}); δ = {plan.delta:g}, PLD; accuracy and loss on {plan.test_n} held-out test "
             f"problems; seed {seed}.", "",
             "| run | canaries | target ε | ε spent | σ or b | steps | accuracy | held-out loss | audit ε_LB / ceiling | AUROC |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| base model (no training) | – | – | – | – | 0 | {results['base']['accuracy']:.1%} | "
             f"{results['base']['heldout_loss']:.3f} | – | – |"]
    for a in results["arms"]:
        dp, audit = a["dp"], a["audit"]
        target = "∞" if math.isinf(a["epsilon"]) else f"{a['epsilon']:g}"
        spent = f"{dp['epsilon']:.3g}" if dp else "∞"
        noise = f"{dp['noise_multiplier']:.3g}" if dp else "–"
        lines.append(f"| {a['name']} | {a['family']} | {target} | {spent} | {noise} | {a['steps']} | {a['accuracy']:.1%} | "
                     f"{a['heldout_loss']:.3f} | {audit['epsilon_lb']:.2f} / {audit['epsilon_ceiling']:.2f} | {audit['auroc']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], plan: Plan, path: Path) -> Path | None:
    """Accuracy and held-out loss vs ε per rule (ε = ∞ drawn at the right edge); None when no
    default-lr random-canary arm ran (e.g. ``--arms`` naming only a long arm)."""
    if not any(a["family"] == "random" and a["lr"] is None for a in results["arms"]):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    inf_x = 16.0
    series = {"dp-zo (gaussian)": ("dp-zo", "gaussian", "zo"), "dp-zo (laplace)": ("dp-zo", "laplace", "zo"),
              "dp-sgd": ("dp-sgd", "gaussian", "adamw")}
    for label, (opt, noise, baseline) in series.items():
        arms = [a for a in results["arms"] if a["family"] == "random" and a["lr"] is None and
                ((a["optimizer"] == opt and a["noise"] == noise) or a["optimizer"] == baseline)]
        arms.sort(key=lambda a: a["epsilon"])
        xs = [inf_x if math.isinf(a["epsilon"]) else a["epsilon"] for a in arms]
        for ax, key in zip(axes, ("accuracy", "heldout_loss")):
            ax.plot(xs, [a[key] for a in arms], marker="o", label=label)
    for ax, key in zip(axes, ("accuracy", "heldout_loss")):
        ax.axhline(results["base"][key], color="grey", linestyle=":", label="base model")
    for ax, title in zip(axes, ("accuracy", "held-out loss")):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 4, 8, inf_x], ["1", "4", "8", "∞"])
        ax.set_xlabel("ε (δ = 1e-5)")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{plan.model}: private LoRA on arithmetic (∞ = AdamW / ZO without noise)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", default=None, help="comma-separated run names to do (e.g. dp-sgd-eps8-random)")
    parser.add_argument("--output", type=Path, default=Path("runs/private-training"))
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    started = time.perf_counter()
    root = args.output
    data = export_task("arithmetic", root / "data", n_train=plan.task_n, n_test=plan.test_n, seed=args.seed)["train"]
    wanted = set(args.arms.split(",")) if args.arms else None
    arms = [_arm(plan, arm, data, root, args.seed) for arm in (*ARMS, *LONG_ARMS)
            if (wanted is None and arm not in LONG_ARMS) or (wanted is not None and arm.name in wanted)]
    results = {"plan": asdict(plan), "seed": args.seed, "base": _base(plan, root, args.seed), "arms": arms}
    bad = [a["name"] for a in arms if a["dp"] and a["audit"]["epsilon_lb"] > a["dp"]["epsilon"] + 1e-9]
    if bad:  # an audit above the guarantee is a bug in the implementation, not a finding
        console.print(f"[red]ε_LB above the ε spent in {', '.join(bad)}: a bug to find[/]")
    figure = plot(results, plan, root / "private_training.png")
    code = finish(root, {**results, "epsilon_lb_above_spent": bad}, tables(results, plan, args.seed), [figure] if figure else [],
                  "tunelab private training", started, console)
    return 1 if bad else code


if __name__ == "__main__":
    sys.exit(main())
