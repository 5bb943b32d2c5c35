"""Generation throughput: HF ``model.generate`` one prompt at a time vs tunelab batched ``generate``.

One process, same model (smollm2-135m, fp32), same prompts (a mix of both built-in tasks' test
prompts and general instructions, so lengths vary), greedy decoding, same ``max_new_tokens``.
Prints wall seconds, new tokens/s and prompts/s of both sides, the ratio, and how many of the
outputs match exactly; for each mismatch, the first diverging position and the top-2 logit gap
there in the unbatched run (a tiny gap = a near-tie that padding's different float reduction
order can flip, not a bug).

    .venv/bin/python bench/generation_throughput.py [--prompts 64] [--max-new-tokens 64] \
        [--batch-size 32] [--threads N] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402

from tunelab.evaluate.generation import decoder, generate_ids  # noqa: E402
from tunelab.models import load_model  # noqa: E402
from tunelab.tasks import get_task  # noqa: E402

transformers.logging.set_verbosity_error()

GENERAL = [
    "What is the capital of France?",
    "List three fruits.",
    "Say hello in Spanish.",
    "Write a haiku about autumn leaves.",
    "Explain what a neural network is in two sentences.",
    "Give me a tip for sleeping better.",
    "What does a thermometer measure?",
    "Translate 'good morning' into French.",
    "Summarize the following paragraph in one sentence: The city council met on Tuesday to discuss "
    "the new bike lanes. Residents spoke for and against the plan, citing safety, parking and the "
    "cost of construction. After three hours the council voted to run a six-month trial on two streets.",
    "I have a meeting at 3 pm, a dentist appointment at 5 pm and I need to buy groceries. "
    "The store closes at 8 pm. In what order should I do these things, and why?",
    "Write a short, friendly email to a colleague asking whether they can review my report by Friday.",
    "Describe the water cycle for a ten-year-old, mentioning evaporation, condensation and precipitation.",
    "What are two differences between a list and a tuple in Python?",
    "Name a famous painting and its painter.",
    "Why is the sky blue? Answer briefly.",
    "Suggest a name for a small bakery that sells bread and cakes in a seaside town.",
]


def bench_prompts(n: int) -> list[str]:
    """``n`` prompts: 3/8 arithmetic, 3/8 reverse_words (test split), 1/4 general instructions."""
    n_task = 3 * n // 8
    prompts = [ex["prompt"] for ex in get_task("arithmetic").examples("test", n_task, seed=0)]
    prompts += [ex["prompt"] for ex in get_task("reverse_words").examples("test", n_task, seed=0)]
    general = n - len(prompts)
    prompts += [GENERAL[i % len(GENERAL)] + ("" if i < len(GENERAL) else f" (variant {i // len(GENERAL)})")
                for i in range(general)]
    # Interleave so the input order is not already grouped by length.
    return [prompts[i] for i in sorted(range(n), key=lambda i: (i * 7919) % n)]


def hf_one_at_a_time(model, tokenizer, prompts: list[str], max_new_tokens: int) -> tuple[float, list[list[int]]]:
    """The loop a typical HF user writes: chat template, tokenizer(...), generate, one prompt each."""
    outs = []
    t = time.perf_counter()
    for prompt in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        inputs = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        outs.append(out[0, inputs["input_ids"].shape[1]:].tolist())
    seconds = time.perf_counter() - t
    eos = tokenizer.eos_token_id
    return seconds, [o[: o.index(eos)] if eos in o else o for o in outs]


def first_divergence(model, tokenizer, prompt: str, ref: list[int], got: list[int]) -> dict:
    """Where two greedy continuations part, and the unbatched top-2 logit gap there."""
    pos = next((k for k, (a, b) in enumerate(zip(ref, got)) if a != b), min(len(ref), len(got)))
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + ref[:pos]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    top = torch.topk(logits, 2)
    eos = tokenizer.eos_token_id
    want = ref[pos] if pos < len(ref) else eos
    alt = got[pos] if pos < len(got) else eos
    return {"position": pos, "hf_token": tokenizer.decode([want]), "tunelab_token": tokenizer.decode([alt]),
            "top2_gap": float(top.values[0] - top.values[1]),
            "logit_gap_between_the_two": float(logits[want] - logits[alt])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bf16", action="store_true",
                        help="tunelab side under bf16 autocast (faster, but greedy outputs then differ from fp32 HF)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both sides (default: torch's choice); 1 is steadier on a busy machine")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_model("smollm2-135m")
    model.eval()
    prompts = bench_prompts(args.prompts)
    lengths = [len(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                 tokenize=True, return_dict=True)["input_ids"]) for p in prompts]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine()) \
        if Path("/proc/cpuinfo").is_file() else platform.processor() or platform.machine()
    machine = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "transformers": transformers.__version__,
               "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    print(f"machine: {cpu}, {machine['cores']} cores, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{machine['threads']} threads, CPU capability {machine['cpu_capability']}")
    print(f"prompts: {len(prompts)}, prompt tokens {min(lengths)}-{max(lengths)} (mean {sum(lengths) / len(lengths):.1f}); "
          f"greedy, max_new_tokens {args.max_new_tokens}, HF fp32, tunelab {'bf16 autocast' if args.bf16 else 'fp32'} "
          f"batch size {args.batch_size}")
    # "hf-generate: ..." here means tunelab fell back to HF generate: the ratio below then measures nothing.
    print(f"tunelab decoder: {decoder(model)}")

    # Warm-up both paths (first-call allocations, lazy imports).
    hf_one_at_a_time(model, tokenizer, prompts[:2], 4)
    generate_ids(model, tokenizer, prompts[:4], max_new_tokens=4, batch_size=4, progress=False)

    hf_s, hf_ids = hf_one_at_a_time(model, tokenizer, prompts, args.max_new_tokens)
    t = time.perf_counter()
    tl_ids = generate_ids(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                          bf16=args.bf16, progress=False)
    tl_s = time.perf_counter() - t

    # New tokens = what each side produced before EOS (+1 for the EOS step itself, when there was one).
    def new_tokens(ids: list[list[int]]) -> int:
        return sum(min(len(x) + 1, args.max_new_tokens) for x in ids)

    rows = {"HF generate, 1 prompt at a time": (hf_s, new_tokens(hf_ids)),
            f"tunelab generate, batch {args.batch_size}": (tl_s, new_tokens(tl_ids))}
    print(f"\n{'':34s} {'wall s':>8s} {'new tok/s':>10s} {'prompts/s':>10s} {'vs HF':>7s}")
    for name, (s, n) in rows.items():
        print(f"{name:34s} {s:8.1f} {n / s:10.1f} {len(prompts) / s:10.2f} {hf_s / s:6.2f}x")

    matches = sum(a == b for a, b in zip(hf_ids, tl_ids))
    print(f"\nexact match (greedy token ids, tunelab vs HF): {matches}/{len(prompts)}")
    mismatches = []
    for i, (a, b) in enumerate(zip(hf_ids, tl_ids)):
        if a != b:
            d = first_divergence(model, tokenizer, prompts[i], a, b)
            mismatches.append({"prompt": prompts[i], **d})
            print(f"  prompt {i} ({lengths[i]} tokens) diverges at new token {d['position']}: HF {d['hf_token']!r} vs "
                  f"tunelab {d['tunelab_token']!r}; unbatched logit gap between them {d['logit_gap_between_the_two']:.4f} "
                  f"(top-2 gap {d['top2_gap']:.4f})")
    ratio = hf_s / tl_s
    print(f"\nspeed-up: {ratio:.2f}x (target >= 4x: {'met' if ratio >= 4 else 'NOT met'})")

    if args.json is not None:
        result = {"machine": machine, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
                  "batch_size": args.batch_size, "bf16": args.bf16, "decoder": decoder(model), "hf": {"seconds": hf_s, "new_tokens": rows[next(iter(rows))][1]},
                  "tunelab": {"seconds": tl_s, "new_tokens": new_tokens(tl_ids)}, "speedup": ratio,
                  "exact_match": matches, "mismatches": mismatches}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
