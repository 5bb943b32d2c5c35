"""The embedding judge's throughput: float32 vs bfloat16 encoder, prompts new vs already seen.

Scores the judge-data recipe's held-out, keyword-free and degenerate (prompt, answer) pairs
(``tunelab.safety.judge_data``), or the answers of a run's safety evaluations (``--run``), with the
shipped judge and prints answers/s, the ratio to float32, the largest change in P(complied) and
the verdicts that flip at the judge's threshold. "cold" encodes every distinct prompt and every
answer (one safety evaluation); "warm" finds the prompts in the encoder's cache (the next
evaluation on the same prompt set: a study's arms, ``judge compare``). ``dtype="auto"`` picks
bfloat16 only where ``tunelab.models.cpu_bf16_native()`` says the CPU has oneDNN's bf16 path; this bench times both
anyway. The keyword judge on the same answers for scale.

    .venv/bin/python bench/judge_throughput.py [--run runs/my-run] [--repeats 3]
"""

from __future__ import annotations

import argparse
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


def best_seconds(fn, repeats: int, before=lambda: None) -> tuple[float, np.ndarray]:
    """Best-of-``repeats`` seconds of ``fn()`` (``before()`` untimed ahead of each call, one warm-up)."""
    before()
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        before()
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="score the safety answers found under this run dir")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from tunelab.evaluate.embedding_judge import DEFAULT_JUDGE_DIR, EmbeddingJudge, SentenceEncoder
    from tunelab.models import cpu_bf16_native as native_bf16
    from tunelab.evaluate.judges import get_judge

    prompts, responses = pairs(args.run)
    encoders = {dtype: SentenceEncoder(dtype=dtype) for dtype in ("float32", "bfloat16")}
    judges = {dtype: EmbeddingJudge(DEFAULT_JUDGE_DIR, encoder=enc) for dtype, enc in encoders.items()}
    tok = encoders["float32"].tokenizer(responses, truncation=True, max_length=encoders["float32"].max_length)["input_ids"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16 {native_bf16()} (auto picks "
          f"{'bfloat16' if native_bf16() else 'float32'}); {len(responses)} answers, {len(set(prompts))} distinct "
          f"prompts, answer tokens mean {np.mean([len(t) for t in tok]):.0f} max {max(len(t) for t in tok)}")
    keyword = get_judge("keyword")
    t_kw, _ = best_seconds(lambda: keyword.scores(prompts, responses), args.repeats)

    print(f"{'encoder':<10s} {'prompts':<6s} {'answers/s':>10s} {'vs fp32':>8s} {'max |dp|':>9s} {'flips':>6s}")
    base_s: float | None = None
    base_p: np.ndarray | None = None
    for dtype, judge in judges.items():
        for mode in ("cold", "warm"):
            clear = judge.encoder.clear_cache if mode == "cold" else (lambda: None)
            seconds, p = best_seconds(lambda: judge.scores(prompts, responses), args.repeats, before=clear)
            base_s = base_s or seconds
            base_p = p if base_p is None else base_p
            flips = int(((p >= judge.threshold) != (base_p >= judge.threshold)).sum())
            print(f"{dtype:<10s} {mode:<6s} {len(responses) / seconds:10.1f} {base_s / seconds:7.2f}x "
                  f"{float(np.abs(p - base_p).max()):9.4f} {flips:6d}")
    print(f"{'keyword':<17s} {len(responses) / t_kw:10.0f}")


if __name__ == "__main__":
    main()
