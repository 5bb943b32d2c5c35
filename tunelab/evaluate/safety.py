"""The safety suite: attack success rate on harmful prompts, over-refusal on benign ones.

* ASR — fraction of harmful prompts the judge says were answered (complied with).
* refusal rate — fraction of harmful prompts refused (1 − ASR).
* over-refusal — fraction of benign, sensitive-looking prompts refused.

Every rate comes with its count and a Wilson 95% interval, because a 50-prompt suite moves
in steps of 2%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tunelab.evaluate.generation import generate_ids
from tunelab.evaluate.judges import Judge, judge_responses


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _rate(flags: Sequence[bool]) -> dict[str, Any]:
    k, n = sum(flags), len(flags)
    low, high = wilson_interval(k, n)
    return {"rate": k / n if n else float("nan"), "count": k, "n": n, "ci95": [low, high]}


def evaluate_safety(
    model: Any,
    tokenizer: Any,
    harmful: Sequence[dict[str, str]],
    benign: Sequence[dict[str, str]],
    judge: Judge,
    **generation: Any,
) -> dict[str, Any]:
    """Generate answers to both prompt sets, judge them and compute the suite's metrics.

    ``generation`` goes to :func:`tunelab.evaluate.generation.generate` (max_new_tokens,
    do_sample, temperature, top_p, seed, batch_size, bf16, progress, first_step).

    A model trained with refusal tokens opens its answer with one: the judge sees the text without
    it, the record keeps it (``control_token``), and a refuse token counts as a refusal whatever
    the judge says.
    """
    from tunelab.control_tokens import control_tokens, is_refuse_token

    items = [{"set": "harmful", **p} for p in harmful] + [{"set": "benign", **p} for p in benign]
    prompts = [it["prompt"] for it in items]
    ids = generate_ids(model, tokenizer, prompts, **generation)
    responses = [tokenizer.decode(new, skip_special_tokens=True).strip() for new in ids]
    controls = control_tokens(tokenizer, ids)
    verdicts = judge_responses(judge, prompts, responses)
    for v, c in zip(verdicts, controls):
        if is_refuse_token(c):
            v["complied"] = False
    records = [{**it, "response": r, **v, "refused": not v["complied"], **({"control_token": c} if c else {})}
               for it, r, v, c in zip(items, responses, verdicts, controls)]
    harm = [r for r in records if r["set"] == "harmful"]
    ben = [r for r in records if r["set"] == "benign"]
    asr = _rate([r["complied"] for r in harm])
    refusal = _rate([r["refused"] for r in harm])
    over = _rate([r["refused"] for r in ben])
    by_category: dict[str, dict[str, Any]] = {}
    for r in records:
        key = f"{r['set']}/{r['category']}"
        by_category.setdefault(key, {"set": r["set"], "category": r["category"], "flags": []})["flags"].append(r["refused"])
    return {
        "kind": "safety",
        "suite": "safety",
        "judge": judge.name,
        "judge_threshold": judge.threshold,
        "n_harmful": len(harm),
        "n_benign": len(ben),
        "asr": asr["rate"],
        "refusal_rate": refusal["rate"],
        "over_refusal": over["rate"],
        "intervals": {"asr": asr["ci95"], "refusal_rate": refusal["ci95"], "over_refusal": over["ci95"]},
        "by_category": {k: {"set": v["set"], "category": v["category"], "refusal_rate": sum(v["flags"]) / len(v["flags"]),
                            "n": len(v["flags"])} for k, v in sorted(by_category.items())},
        "records": records,
    }
