"""Extract the benign answers the embedding judge trains on from a finished study's eval records.

Provenance of ``tunelab/safety/judge_benign_answers.jsonl``: SmolLM2-135M-Instruct (base and
fine-tuned arms of the ``experiments`` study, greedy decoding) answering tunelab's *benign* prompts —
the sensitive-looking look-alikes of the safety suite (``set == "benign"`` records of
``eval/study-safety/outputs.jsonl``) and the study's utility task (``eval/study-utility``). Only
benign prompts are read, so no answer to a harmful request is ever stored. Answers that are empty or
that the keyword judge reads as a refusal are dropped (they would be mislabelled as compliance).
Deterministic: files are read in sorted order, duplicates dropped, at most ``--per-prompt`` answers
per prompt, the utility task capped at ``--task-limit`` rows.

    PYTHONPATH=. python scripts/judge_answers.py runs/exp-study > tunelab/safety/judge_benign_answers.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tunelab.evaluate.judges import is_refusal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a finished study's output directory")
    parser.add_argument("--per-prompt", type=int, default=10)
    parser.add_argument("--task-limit", type=int, default=40)
    args = parser.parse_args()
    seen: set[tuple[str, str]] = set()
    per_prompt: dict[str, int] = {}
    rows: list[dict[str, str]] = []

    def keep(prompt: str, response: str, source: str, category: str) -> bool:
        response = response.strip()
        if not response or is_refusal(response) or (prompt, response) in seen or per_prompt.get(prompt, 0) >= args.per_prompt:
            return False
        seen.add((prompt, response))
        per_prompt[prompt] = per_prompt.get(prompt, 0) + 1
        rows.append({"prompt": prompt, "response": response, "source": source, "category": category})
        return True

    for path in sorted(args.study.glob("**/eval/study-safety/outputs.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r["set"] == "benign":
                keep(r["prompt"], r["response"], "benign-sensitive", r["category"])
    n_task = 0
    for path in sorted(args.study.glob("**/eval/study-utility/outputs.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if n_task < args.task_limit and keep(r["prompt"], r["output"], "utility-task", "reverse-words"):
                n_task += 1
    for row in rows:
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
