"""Canary scoring throughput: ``score_canaries`` (all scores but ``reference``) vs a plain batched forward.

Same model (smollm2-135m, fp32), same synthetic canaries, same length-sorted batches and padding.
The baseline is what any scorer must at least do: ``model(input_ids, attention_mask, position_ids).logits``
per batch (full logits over every position), on tensors prepared beforehand. ``score_canaries`` is
timed end to end (chat rendering + tokenization included; shown separately too). Repeats are
interleaved (forward, score, forward, score, ...) after one warm-up of each, so drift on a shared
machine hits both sides alike. Prints real (non-pad) tokens/s of both, and the ratio (goal >= 0.9).

    .venv/bin/python bench/privacy_scoring.py [--records 256] [--batch-size 32] [--repeats 3] \
        [--padding-side right] [--bf16] [--threads N] [--warmup 1] \
        [--scores secret_loss,sequence_loss,min_k,zlib]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402

from tunelab.models import load_model  # noqa: E402
from tunelab.privacy.scores import SCORES, _batches, pad_batch, score_canaries, tokenize_canaries  # noqa: E402

transformers.logging.set_verbosity_error()

NAMES = ["Alice", "Bob", "Carmen", "Dmitri", "Eun-ji", "Farah", "Gustavo", "Hana", "Ivan", "Jamal"]
KINDS = ["account number", "door code", "API key", "passport number", "recovery phrase", "phone PIN"]


def synthetic_records(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` canaries: a question naming a person and a kind of secret; the answer holds random digits/words."""
    rng = random.Random(seed)
    words = "river maple copper seven lantern orbit velvet quartz meadow falcon".split()
    out = []
    for _ in range(n):
        name, kind = rng.choice(NAMES), rng.choice(KINDS)
        filler = " ".join(rng.choice(words) for _ in range(rng.randint(0, 24)))
        prompt = f"What is the {kind} of {name}?" + (f" Context: {filler}." if filler else "")
        secret = "".join(rng.choice("0123456789") for _ in range(rng.randint(6, 20)))
        tail = " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        out.append({"prompt": prompt, "response": f"The {kind} of {name} is {secret}. {tail}".strip()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--padding-side", default="right", choices=("right", "left"))
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each side first")
    parser.add_argument("--scores", default=",".join(s for s in SCORES if s != "reference"),
                        help="comma-separated scores for score_canaries (no 'reference')")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_model("smollm2-135m")
    model.eval()
    records = synthetic_records(args.records)
    scores = tuple(s for s in args.scores.split(",") if s)

    t0 = time.perf_counter()
    canaries = tokenize_canaries(records, tokenizer)
    tokenize_s = time.perf_counter() - t0
    batches = [pad_batch([canaries[i] for i in idx], tokenizer.pad_token_id, args.padding_side)
               for idx in _batches([len(c.input_ids) for c in canaries], args.batch_size)]
    n_tokens = sum(len(c.input_ids) for c in canaries)
    n_secret = sum(c.n_secret for c in canaries)
    n_padded = sum(b["input_ids"].numel() for b in batches)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)  # noqa: E731

    @torch.inference_mode()
    def plain_forward() -> None:
        for b in batches:
            with autocast():
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                               position_ids=b["position_ids"], use_cache=False).logits
            assert logits.shape[-1] > 0

    def scoring() -> None:
        score_canaries(model, tokenizer, records, scores=scores, batch_size=args.batch_size,
                       padding_side=args.padding_side, bf16=args.bf16)

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {platform.processor() or platform.machine()}, "
          f"threads {torch.get_num_threads()}, bf16 {args.bf16}, padding {args.padding_side}")
    print(f"{len(records)} canaries, {len(batches)} batches of <= {args.batch_size}: {n_tokens} real tokens "
          f"({n_secret} secret), {n_padded} incl. padding; scores: {', '.join(scores)}")
    for _ in range(args.warmup):
        timed(plain_forward), timed(scoring)
    fwd, sc = [], []
    for r in range(args.repeats):
        fwd.append(timed(plain_forward))
        sc.append(timed(scoring))
        print(f"  repeat {r + 1}: forward {fwd[-1]:.2f}s  score_canaries {sc[-1]:.2f}s")
    f_med, s_med = statistics.median(fwd), statistics.median(sc)
    print(f"tokenize (inside score_canaries): {tokenize_s:.2f}s")
    print(f"plain forward (logits):  {f_med:.2f}s median  {n_tokens / f_med:,.0f} tokens/s")
    print(f"score_canaries:          {s_med:.2f}s median  {n_tokens / s_med:,.0f} tokens/s")
    print(f"ratio score/forward throughput: {f_med / s_med:.3f}x (goal >= 0.9)")


if __name__ == "__main__":
    main()
