"""SDPA on CPU: PyTorch's flash kernel vs the math (matmul) path, bf16 forward + backward.

SmolLM2-135M's attention shape (9 query heads, 3 kv heads, head dim 64), causal, about 4k
tokens per call at each sequence length. The trainer picks the math path on CPU for batches up
to ``tunelab.train.precision._CPU_MATH_ATTENTION_MAX_LEN`` tokens, from this table.

    .venv/bin/python bench/attention_kernels.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def fwd_bwd_ms(backend: SDPBackend, batch: int, length: int, reps: int = 5) -> float:
    """Mean milliseconds of one forward + backward of causal GQA attention with ``backend``."""
    q = torch.randn(batch, 9, length, 64, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(batch, 3, length, 64, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(batch, 3, length, 64, dtype=torch.bfloat16, requires_grad=True)

    def run() -> None:
        with sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        out.sum().backward()

    for _ in range(2):
        run()
    start = time.perf_counter()
    for _ in range(reps):
        run()
    return (time.perf_counter() - start) / reps * 1000


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'length':>6s} {'batch':>5s} {'flash ms':>9s} {'math ms':>8s} {'flash / math':>12s}")
    for length in (32, 64, 128, 160, 256, 512, 1024):
        batch = max(1, 4096 // length)
        flash = fwd_bwd_ms(SDPBackend.FLASH_ATTENTION, batch, length)
        math = fwd_bwd_ms(SDPBackend.MATH, batch, length)
        print(f"{length:6d} {batch:5d} {flash:9.1f} {math:8.1f} {flash / math:11.2f}x")


if __name__ == "__main__":
    main()
