"""Parameters and training FLOPs per token of a dense Llama-style decoder, attention included.

The usual C = 6·N·D counts only the weight matmuls; attention's score and value products grow
with the context length instead, and the embedding lookup costs nothing. Per token and layer,
the forward pass does (a multiply-add = 2 FLOPs; h = head dim, H query heads, G key/value heads,
f the MLP width, S the sequence length, S̄ = (S + 1)/2 the mean causal context):

    q, k, v projections   2·d·(H + 2G)·h
    scores QKᵀ            2·H·h·S̄
    softmax               3·H·S̄            (exp, sum, divide)
    weighted values       2·H·h·S̄
    output projection     2·H·h·d
    MLP                   2·3·d·f gated (SwiGLU/GeGLU), 2·2·d·f plain

plus the LM head, 2·d·V, once per token. Training = forward + backward = 3 × forward. Norms,
rotary embeddings and activations (O(d) per token) are left out. Heads come from the width:
H = d / h, G = max(1, H // queries-per-KV-head). The defaults are the Gemstones suite's shapes
(head dim 128, 2 queries per KV head, a gated MLP 4× wide, 2048 tokens, a 50,304-token vocab,
untied embeddings), for which :func:`dense_params` reproduces every published parameter count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tunelab.errors import TunelabError


@dataclass(frozen=True)
class DenseShape:
    """The architecture constants shared by every model of a sweep (width and depth vary)."""

    head_dim: int = 128
    queries_per_kv_head: int = 2
    ffn_mult: float = 4.0
    gated: bool = True
    seq_len: int = 2048
    vocab_size: int = 50304
    tied_embeddings: bool = False
    causal: bool = True

    def check(self) -> None:
        for name in ("head_dim", "queries_per_kv_head", "seq_len", "vocab_size"):
            if getattr(self, name) < 1:
                raise TunelabError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.ffn_mult <= 0:
            raise TunelabError(f"--ffn-mult must be > 0, got {self.ffn_mult:g}")


@dataclass(frozen=True)
class FlopsCount:
    """Training FLOPs per token (forward + backward) and their parts (forward only)."""

    qkv: float
    scores: float  # QKᵀ, softmax and the weighted sum of values
    out: float
    mlp: float
    lm_head: float
    forward: float
    training: float  # 3 × forward


def heads_of(width: int, shape: DenseShape) -> tuple[int, int]:
    """(query heads, key/value heads) of a model ``width`` wide; the width must be a multiple of the head dim."""
    if width < 1 or width % shape.head_dim:
        raise TunelabError(f"width {width} is not divisible by the head dim {shape.head_dim} (--head-dim)")
    heads = width // shape.head_dim
    return heads, max(1, heads // shape.queries_per_kv_head)


def flops_per_token(width: int, depth: int, shape: DenseShape = DenseShape()) -> FlopsCount:
    """Training FLOPs per token of a ``width`` × ``depth`` model of ``shape`` (see the module docstring)."""
    if depth < 1:
        raise TunelabError(f"depth must be >= 1, got {depth}")
    heads, kv = heads_of(width, shape)
    h, d = shape.head_dim, width
    ffn = shape.ffn_mult * d
    context = (shape.seq_len + 1) / 2 if shape.causal else shape.seq_len
    qkv = 2.0 * d * (heads + 2 * kv) * h
    scores = 2.0 * heads * h * context + 3.0 * heads * context + 2.0 * heads * h * context
    out = 2.0 * heads * h * d
    mlp = 2.0 * (3 if shape.gated else 2) * d * ffn
    lm_head = 2.0 * d * shape.vocab_size
    forward = depth * (qkv + scores + out + mlp) + lm_head
    return FlopsCount(depth * qkv, depth * scores, depth * out, depth * mlp, lm_head, forward, 3.0 * forward)


def dense_params(width: int, depth: int, shape: DenseShape = DenseShape()) -> int:
    """Parameters of the same model: attention, MLP and two RMSNorm weights per layer, a final
    norm, the embedding and (unless tied) the LM head."""
    heads, kv = heads_of(width, shape)
    d, h = width, shape.head_dim
    ffn = round(shape.ffn_mult * d)
    layer = d * (heads + 2 * kv) * h + heads * h * d + (3 if shape.gated else 2) * d * ffn + 2 * d
    embeddings = shape.vocab_size * d * (1 if shape.tied_embeddings else 2)
    return depth * layer + d + embeddings


def counted_flops(widths: np.ndarray, depths: np.ndarray, tokens: np.ndarray, shape: DenseShape,
                  where: Callable[[int], str] = lambda i: f"row {i + 1}") -> np.ndarray:
    """Training FLOPs of each row (counted FLOPs per token × tokens); ``where(i)`` names row i in errors."""
    per_token: dict[tuple[int, int], float] = {}
    out = np.empty(len(tokens))
    for i, (w, L) in enumerate(zip(widths, depths)):
        if w != int(w) or L != int(L):
            raise TunelabError(f"{where(i)}: width and depth must be whole numbers, got {w:g} and {L:g}")
        key = (int(w), int(L))
        if key not in per_token:
            try:
                per_token[key] = flops_per_token(*key, shape).training
            except TunelabError as exc:
                raise TunelabError(f"{where(i)}: {exc}") from None
        out[i] = per_token[key] * tokens[i]
    return out
