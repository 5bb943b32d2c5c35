"""Training throughput of the MoE routers against a FLOP-matched dense model, in one process.

Top-k (Mixtral's block), Sinkhorn top-k, Default MoE (forward and straight-through) and a dense
Llama-style model whose MLP width is top-k × the expert width (the same active MLP compute per
token) take turns on the same batches: one training step each (forward, next-token loss with the
balancing terms, backward, AdamW) per round, so a shared machine's drift hits them alike. Each row
is the median step time over ``--steps`` rounds after ``--warmup`` rounds. The goal the issue sets:
Default MoE's step time ≤ 1.1 × top-k's.

    OMP_NUM_THREADS=2 .venv/bin/python bench/moe_throughput.py [--width 128] [--depth 4] [--experts 8] [--top-k 2]
        [--batch 16] [--seq-len 256] [--steps 20] [--bf16]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from tunelab.moe.balancing import switch_aux_loss, z_loss
from tunelab.moe.model import ModelSpec, build_model, moe_blocks

VARIANTS = {
    "top-k": dict(router="topk"),
    "sinkhorn": dict(router="sinkhorn"),
    "default (forward)": dict(router="default", default_mode="forward"),
    "default (straight-through)": dict(router="default", default_mode="straight-through"),
}


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: torch.Tensor, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
        logits = model(input_ids=batch[:, :-1]).logits
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    blocks = moe_blocks(model)
    if blocks:
        loss = loss + 1e-2 * sum(switch_aux_loss(b.last_logits, b.last_indices) for b in blocks) \
            + 1e-3 * sum(z_loss(b.last_logits) for b in blocks)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()
    base = ModelSpec(arch="moe", width=args.width, depth=args.depth, experts=args.experts, top_k=args.top_k,
                     seq_len=args.seq_len)
    specs = {name: ModelSpec(**{**base.__dict__, **kw}) for name, kw in VARIANTS.items()}
    specs["dense (FLOP-matched)"] = base.flop_matched_dense()
    models = {name: build_model(spec, seed=0) for name, spec in specs.items()}
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-3) for name, m in models.items()}
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(3, 259, (args.batch, args.seq_len + 1), generator=g) for _ in range(args.warmup + args.steps)]
    times: dict[str, list[float]] = {name: [] for name in models}
    for i, batch in enumerate(batches):
        for name, model in models.items():
            model.train()
            t0 = time.perf_counter()
            step(model, opts[name], batch, args.bf16)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    tokens = args.batch * args.seq_len
    ref = statistics.median(times["top-k"])
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}), {'bf16 autocast' if args.bf16 else 'fp32'}")
    print(f"width {args.width} × {args.depth} layers, {args.experts} experts top-{args.top_k}, "
          f"batch {args.batch} × {args.seq_len} tokens, median of {args.steps} steps")
    print(f"{'model':28} {'params':>9} {'step (ms)':>10} {'tokens/s':>10} {'÷ top-k':>8}")
    for name, model in models.items():
        t = statistics.median(times[name])
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:28} {params:>9,} {t * 1e3:>10.1f} {tokens / t:>10,.0f} {t / ref:>8.2f}")


if __name__ == "__main__":
    main()
