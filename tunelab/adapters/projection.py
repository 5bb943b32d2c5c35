"""LoRI's frozen random projections A, regenerable bit-exactly from (adapter seed, module key)."""

from __future__ import annotations

import hashlib
import math
import secrets

import torch


def new_seed() -> int:
    """A fresh adapter seed: different runs get different random projections."""
    return secrets.randbits(63)


def module_seed(adapter_seed: int, key: str) -> int:
    """Generator seed for one module's A: a hash of (adapter seed, module key), order-independent."""
    digest = hashlib.sha256(f"{adapter_seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generate_a(adapter_seed: int, key: str, rank: int, in_features: int) -> torch.Tensor:
    """One module's A: kaiming-uniform(a=√5), i.e. U(-1/√d_in, 1/√d_in), in fp32."""
    gen = torch.Generator().manual_seed(module_seed(adapter_seed, key))
    bound = 1.0 / math.sqrt(in_features)
    return torch.empty(rank, in_features).uniform_(-bound, bound, generator=gen)
