"""Privacy audit on smollm2-135m: which canaries and which scores reveal what fine-tuning memorised?

1. The built-in arithmetic task (``--task-n`` examples) plus m canaries of one family per run
   (``tunelab train --canaries m --canary-family F``), LoRA and full fine-tuning; every run audits
   itself (secret-span loss), then ``tunelab audit privacy`` scores it with every membership score:
   secret-span loss, whole-sequence loss, Min-K%, zlib ratio, reference (base model / adapter off).
2. New-token canaries with trainable embedding rows vs frozen ones (LoRA).
3. Neural phishing: secret extraction rate vs the number of poisons N_p.

Claims tested in direction (specs/privacy.md): designed canaries ≫ random in TPR@1%FPR and ε_LB;
secret-span ≫ whole-sequence scoring; frozen embeddings kill new-token canaries; phishing SER rises
with poisons.

Run:  python experiments/privacy_audit.py [--quick] [--seed 0] [--epochs 1] [--arms lora-random,...] [--skip-phish]
                                         [--output runs/privacy-audit]

Writes ``results.json``, ``results.md`` (the README table) and ``report.html`` (log-log ROC per
family, ε_LB vs ceiling, SER vs N_p) under ``--output``; finished runs are reused when re-run.
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

console = Console()
SCORES = ("secret_loss", "sequence_loss", "min_k", "zlib", "reference")
# (method, family, new-token rows): what one run trains
ARMS = (("lora", "random", "trained"), ("lora", "unigram", "trained"), ("lora", "unigram-corpus", "trained"),
        ("lora", "bigram", "trained"), ("lora", "new-token", "trained"), ("lora", "new-token", "frozen"),
        ("full", "random", "trained"), ("full", "bigram", "trained"), ("full", "new-token", "trained"))


@dataclass(frozen=True)
class Plan:
    """Sizes of the experiment; ``--quick`` shrinks every number."""

    model: str = "smollm2-135m"
    task_n: int = 200  # arithmetic training examples beside the canaries
    m: int = 1000  # canaries per run (half members by a fair coin)
    secret_len: int = 8
    epochs: int = 1  # members seen once: 2 epochs already gave random canaries AUROC 0.86 (m=200 pilot)
    lora_lr: float = 5e-4
    full_lr: float = 3e-5
    batch_size: int = 8
    max_steps: int | None = None
    phish_poisons: tuple[int, ...] = (0, 25, 100)
    phish_seeds: int = 4
    phish_duplicates: int = 2


QUICK = Plan(model="tiny-random", task_n=16, m=40, secret_len=4, epochs=1, max_steps=3, phish_poisons=(0, 4), phish_seeds=1)


def _data(plan: Plan, root: Path, seed: int) -> Path:
    from tunelab.tasks import TASKS

    path = root / "data" / "arithmetic.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = TASKS["arithmetic"].examples("train", plan.task_n, seed=seed)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _arm(plan: Plan, data: Path, root: Path, seed: int, method: str, family: str, rows: str) -> dict[str, Any]:
    """Train one run with canaries (it audits itself), then audit it with every score."""
    from tunelab.finetune import TrainConfig, train
    from tunelab.privacy.audit_run import PrivacyAuditConfig, run_privacy_audit

    name = f"{method}-{family}" + ("-frozen" if rows == "frozen" else "")
    out = root / name
    if not (out / RUN_FILE).is_file():
        console.rule(name)
        train(TrainConfig(model=plan.model, data=str(data), method=method, output=str(out), canaries=plan.m,
                          canary_family=family, canary_secret_len=plan.secret_len, canary_new_token_rows=rows,
                          lr=plan.lora_lr if method != "full" else plan.full_lr, epochs=plan.epochs,
                          max_steps=plan.max_steps, batch_size=plan.batch_size, seed=seed, save_every=0, overwrite=True))
    audit = out / "eval" / "privacy"  # the in-loop audit (secret-span only) is replaced by a superset
    if not set(SCORES) <= set(json.loads((audit / EVAL_FILE).read_text())["scores"]):
        run_privacy_audit(PrivacyAuditConfig(run=str(out), scores=list(SCORES), seed=seed))
    record = json.loads((out / RUN_FILE).read_text())
    return {"name": name, "method": method, "family": family, "rows": rows, "in_loop": record["privacy"],
            "train_seconds": record.get("train_seconds"), "audit": json.loads((audit / EVAL_FILE).read_text())}


def _phish(plan: Plan, root: Path, seed: int) -> dict[str, Any]:
    from tunelab.privacy.phishing import PhishConfig, run_phishing

    out = root / "phish"
    if not (out / EVAL_FILE).is_file():
        console.rule("neural phishing")
        run_phishing(PhishConfig(output=str(out), model=plan.model, poisons=list(plan.phish_poisons), seeds=plan.phish_seeds,
                                 seed=seed, duplicates=plan.phish_duplicates, max_steps=plan.max_steps, overwrite=True))
    return json.loads((out / EVAL_FILE).read_text())


def _tpr(score: dict[str, Any], fpr: float = 0.01) -> str:
    row = next(r for r in score["tpr_at_fpr"] if abs(r["fpr"] - fpr) < 1e-12)
    if row["tpr"] is None:
        return "–"
    ci = row.get("ci")
    return f"{row['tpr']:.1%}" + (f" [{ci[0]:.0%}–{ci[1]:.0%}]" if ci else "")


def tables(results: dict[str, Any], plan: Plan, seed: int) -> str:
    """The README tables."""
    lines = [f"{plan.model}, {plan.task_n} arithmetic examples + m = {plan.m} canaries per run (secret {plan.secret_len} "
             f"tokens, random-word prompts, membership by a fair coin), {plan.epochs} epoch{'s' if plan.epochs > 1 else ''}, LoRA r=32 lr {plan.lora_lr:g} / "
             f"full lr {plan.full_lr:g}, seed {seed}; δ = 1e-5, significance 0.05, Bonferroni over the ROC hull.", "",
             "**TPR at 1% FPR** [95% bootstrap CI] per membership score, and the one-run ε lower bound of the "
             "secret-span score beside its ceiling (a perfect attack with the same canaries)", "",
             "| run | members / non | secret-span | whole-sequence | Min-20% | zlib | reference | AUROC (secret) | ε_LB / ceiling |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for arm in results["arms"]:
        s = arm["audit"]["scores"]
        head = s["secret_loss"]
        lines.append(f"| {arm['name']} | {head['n_members']} / {head['n_non_members']} | "
                     + " | ".join(_tpr(s[name]) for name in SCORES)
                     + f" | {head['auroc']['value']:.3f} | {head['epsilon_lb']:.2f} / {head['epsilon_ceiling']:.2f} |")
    phish = results.get("phish")
    if phish:
        prefixes = list(dict.fromkeys(r["prefix"] for r in phish["ser"]))
        lines += ["", f"**Neural phishing**: secret extraction rate [Wilson 95% CI] over {plan.phish_seeds} trials per N_p "
                  f"(12-digit secret inserted {plan.phish_duplicates}×, LoRA, random poison prefixes); and the mean "
                  "number of leading secret digits the greedy output got right", "",
                  "| N_p | " + " | ".join(f"SER, {p} prefix" for p in prefixes) + " | mean leading digits right (true prefix) |",
                  "|---:|" + "---:|" * (len(prefixes) + 1)]
        for n_p in dict.fromkeys(r["poisons"] for r in phish["ser"]):
            cells = []
            for p in prefixes:
                r = next(r for r in phish["ser"] if r["poisons"] == n_p and r["prefix"] == p)
                cells.append(f"{r['successes']}/{r['trials']} [{r['ci_low']:.0%}–{r['ci_high']:.0%}]")
            digits = [t["matched_digits"] for t in phish["trials"] if t["poisons"] == n_p and t["prefix"] == "true"]
            lines.append(f"| {n_p} | " + " | ".join(cells) + f" | {sum(digits) / max(len(digits), 1):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--model", default=None, help="override the plan's model (e.g. tiny-random)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--canaries", type=int, default=None, help="m per run [default: 1000]")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run [default: 1]")
    parser.add_argument("--arms", default=None, help="comma-separated run names to do (e.g. lora-random,lora-new-token)")
    parser.add_argument("--skip-phish", action="store_true")
    parser.add_argument("--output", type=Path, default=Path("runs/privacy-audit"))
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.model:
        plan = Plan(**{**asdict(plan), "model": args.model})
    if args.canaries:
        plan = Plan(**{**asdict(plan), "m": args.canaries})
    if args.epochs:
        plan = Plan(**{**asdict(plan), "epochs": args.epochs})
    started = time.perf_counter()
    root = args.output
    data = _data(plan, root, args.seed)
    wanted = set(args.arms.split(",")) if args.arms else None
    arms = []
    for method, family, rows in ARMS:
        name = f"{method}-{family}" + ("-frozen" if rows == "frozen" else "")
        if wanted is None or name in wanted:
            arms.append(_arm(plan, data, root, args.seed, method, family, rows))
    results = {"plan": asdict(plan), "seed": args.seed, "arms": arms,
               "phish": None if args.skip_phish else _phish(plan, root, args.seed)}
    # results.json keeps every number but the ROC points (they stay in each audit's metrics.json)
    summary = {**results, "arms": [{**a, "audit": {**a["audit"], "scores": {n: {k: v for k, v in s.items() if k != "roc"}
                                                                         for n, s in a["audit"]["scores"].items()}}}
                                   for a in arms]}
    return finish(root, summary, tables(results, plan, args.seed), [], "tunelab privacy audit", started, console)


if __name__ == "__main__":
    sys.exit(main())
