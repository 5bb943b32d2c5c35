"""The embedding judge's throughput: fp32 encoder vs bf16 weights vs bf16 autocast, same answers.

Scores the judge-data recipe's held-out, keyword-free and degenerate (prompt, answer) pairs
(``tunelab.safety.judge_data``), or the answers of a run's safety evaluations (``--run``), with the
shipped judge and prints answers/s, the ratio to fp32, the largest change in P(complied) and the
verdicts that flip at the judge's threshold. The keyword judge on the same answers for scale.

    .venv/bin/python bench/judge_throughput.py [--run runs/my-run] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch


def pairs(run: Path | None) -> tuple[list[str], list[str]]:
    """(prompts, responses): a run's safety answers, or the judge recipe's non-train examples."""
    if run is not None:
        rows = [json.loads(line) for path in sorted(run.glob("**/outputs.jsonl"))
                for line in path.read_text().splitlines() if '"response"' in line]
        return [r["prompt"] for r in rows], [r["response"] for r in rows]
    from tunelab.safety.judge_data import build_judge_data

    rows = [e for e in build_judge_data() if e.set != "train"]
    return [e.prompt for e in rows], [e.response for e in rows]


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    """Best-of-``repeats`` seconds of ``fn()`` (after one warm-up call) and its last result."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="score the safety answers found under this run dir")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from tunelab.evaluate.embedding_judge import EmbeddingJudge
    from tunelab.evaluate.judges import get_judge

    prompts, responses = pairs(args.run)
    judge = EmbeddingJudge.default()
    tok = judge.encoder.tokenizer(responses, truncation=True, max_length=judge.encoder.max_length)["input_ids"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; {len(responses)} answers, "
          f"{len(set(prompts))} distinct prompts, answer tokens mean {np.mean([len(t) for t in tok]):.0f} "
          f"max {max(len(t) for t in tok)}")
    keyword = get_judge("keyword")
    t_kw, _ = timed(lambda: keyword.scores(prompts, responses), args.repeats)

    fp32 = judge.encoder.model
    variants: dict[str, tuple[torch.nn.Module, bool]] = {
        "fp32": (fp32, False),
        "bf16 autocast": (fp32, True),
        "bf16 weights": (copy.deepcopy(fp32).to(torch.bfloat16), False),
    }
    print(f"{'encoder':<14s} {'answers/s':>10s} {'vs fp32':>8s} {'max |dp|':>9s} {'flips':>6s}")
    base_s: float | None = None
    base_p: np.ndarray | None = None
    for name, (model, autocast) in variants.items():
        judge.encoder.model = model

        def score() -> np.ndarray:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                return np.asarray(judge.scores(prompts, responses))

        seconds, p = timed(score, args.repeats)
        base_s = base_s or seconds
        base_p = p if base_p is None else base_p
        flips = int(((p >= judge.threshold) != (base_p >= judge.threshold)).sum())
        print(f"{name:<14s} {len(responses) / seconds:10.1f} {base_s / seconds:7.2f}x "
              f"{float(np.abs(p - base_p).max()):9.4f} {flips:6d}")
    print(f"{'keyword':<14s} {len(responses) / t_kw:10.0f}")


if __name__ == "__main__":
    main()
