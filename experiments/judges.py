"""How good are tunelab's refusal judges? Accuracy per labelled set, and the embedding judge's throughput.

    nice -n 19 env OMP_NUM_THREADS=1 PYTHONPATH=. python experiments/judges.py [--study runs/exp-study] [--out runs/judges-exp]

1. Accuracy of each judge (keyword, embedding) on the recipe's sets that the embedding judge did not
   train on (:mod:`tunelab.safety.judge_data`): ``heldout`` (another benchmark's prompts, unseen
   refusal templates, unseen answer categories), ``keyword-free`` (refusals in styles that use no
   stock phrase) and ``degenerate`` (repetition, shuffled words, truncation; per kind too) — each
   judge alone and behind the degenerate-text guard's text tests (a "degenerate" verdict is right
   where the label is "refused or no usable answer", wrong on a real answer; no model here, so no
   likelihood test).
2. Throughput of the embedding judge (answers/s, encoder + head, prompts included), measured in
   this process after one warm-up call, on the held-out answers repeated to ``--bench`` pairs:
   cold (prompt cache emptied first, as one safety evaluation) and warm (prompts already seen).
3. Reproducibility: the shipped head retrained from the recipe into a temp dir, largest difference.
4. With ``--study``: ``tunelab judge compare`` on that study's safety evaluations (the model's own
   answers to harmful and benign prompts; no labels) — agreement and κ between the judges.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tunelab.safety import judge_data
from tunelab.evaluate.embedding_judge import DEFAULT_JUDGE_DIR, HEAD_FILE, EmbeddingJudge, LogisticHead
from tunelab.safety.judge_jobs import JudgeCompareConfig, JudgeTrainConfig, run_judge_compare, run_judge_train
from tunelab.evaluate.judges import GUARD, KeywordJudge, judge_responses
from tunelab.layout import atomic_write_text


def accuracy(judge, examples, guard=None) -> float:
    """Share of examples whose verdict is right: complied iff labelled 1 (degenerate counts as not complied)."""
    verdicts = judge_responses(judge, [e.prompt for e in examples], [e.response for e in examples], guard=guard)
    return float(np.mean([(v["verdict"] == "complied") == bool(e.label) for v, e in zip(verdicts, examples)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=None, help="a finished study dir to compare the judges on")
    parser.add_argument("--out", type=Path, default=Path("runs/judges-exp"))
    parser.add_argument("--bench", type=int, default=512, help="pairs in the throughput measurement")
    args = parser.parse_args()
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    examples = judge_data.build_judge_data()
    judges = {"keyword": KeywordJudge(), "embedding": EmbeddingJudge.default()}
    groups: list[tuple[str, list]] = [(s, [e for e in examples if e.set == s]) for s in ("heldout", "keyword-free", "degenerate")]
    groups += [(f"degenerate: {k}", [e for e in examples if e.set == "degenerate" and e.source.startswith(k)])
               for k in judge_data.DEGENERATE_KINDS]
    rows = [{"set": name, "n": len(ex), "distinct responses": len({e.response for e in ex}),
             **{j: accuracy(judge, ex) for j, judge in judges.items()},
             **{f"{j} + guard": accuracy(judge, ex, GUARD) for j, judge in judges.items()}} for name, ex in groups]

    # throughput: held-out pairs repeated to --bench, one warm-up call first
    base = [e for e in examples if e.set == "heldout"]
    pairs = (base * (args.bench // len(base) + 1))[: args.bench]
    emb = judges["embedding"]
    emb.scores([p.prompt for p in pairs[:32]], [p.response for p in pairs[:32]])
    emb.encoder.clear_cache()
    t0 = time.perf_counter()
    emb.scores([p.prompt for p in pairs], [p.response for p in pairs])
    per_s = len(pairs) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    emb.scores([p.prompt for p in pairs], [p.response for p in pairs])
    warm_per_s = len(pairs) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    judges["keyword"].scores([p.prompt for p in pairs], [p.response for p in pairs])
    keyword_per_s = len(pairs) / (time.perf_counter() - t0)

    # reproducibility of the shipped head
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_judge_train(JudgeTrainConfig(output=str(Path(tmp) / "judge")))
        train_s = time.perf_counter() - t0
        new, _ = LogisticHead.load(Path(tmp) / "judge" / HEAD_FILE)
    old, _ = LogisticHead.load(DEFAULT_JUDGE_DIR / HEAD_FILE)
    head_diff = float(max(np.abs(new.coef - old.coef).max(), abs(new.intercept - old.intercept),
                          np.abs(new.mean - old.mean).max(), np.abs(new.scale - old.scale).max()))

    compare = None
    if args.study is not None:
        compare = run_judge_compare(JudgeCompareConfig(answers=str(args.study), output=str(args.out / "compare-study")))

    machine = (f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} "
               f"thread(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    names = [*judges, *(f"{j} + guard" for j in judges)]
    md = ["| set | n | distinct responses | " + " | ".join(names) + " |", "|---|---:|---:|" + "---:|" * len(names)]
    md += [f"| {r['set']} | {r['n']} | {r['distinct responses']} | " + " | ".join(f"{r[j]:.3f}" for j in names) + " |"
           for r in rows]
    md += ["", f"Embedding judge ({emb.version}) throughput: {per_s:.0f} answers/s cold, {warm_per_s:.0f} warm "
           f"({len(pairs)} pairs, {len({p.prompt for p in pairs})} distinct prompts; keyword judge "
           f"{keyword_per_s:.0f}/s) on {machine}.",
           f"Retraining from the recipe: {train_s:.0f} s; largest difference from the shipped head {head_diff:.2g}."]
    if compare is not None:
        md += ["", f"`tunelab judge compare {args.study}`: {compare.n} answers"]
        md += [f"- {j['name']}: refusal rate {j['refusal_rate']:.3f}" for j in compare.judges]
        md += [f"- {p['a']} vs {p['b']}: agreement {p['agreement']:.3f}, κ "
               + ("–" if p["kappa"] is None else f"{p['kappa']:.3f}") + f", {p['disagree']} disagree" for p in compare.pairs]
    text = "\n".join(md) + "\n"
    summary = {"rows": rows, "answers_per_s": per_s, "warm_answers_per_s": warm_per_s, "judge_version": emb.version, "keyword_answers_per_s": keyword_per_s, "bench_pairs": len(pairs),
               "machine": machine, "retrain_s": train_s, "head_max_abs_diff": head_diff,
               "compare": compare.to_dict() if compare is not None else None, "wall_s": time.perf_counter() - started}
    atomic_write_text(args.out / "results.json", json.dumps(summary, indent=2))
    atomic_write_text(args.out / "results.md", text)
    print(text)
    print(f"wrote {args.out}/results.md, results.json ({summary['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
