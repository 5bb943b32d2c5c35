"""Pruned forwards that really skip work, and the count of the work they do.

:func:`pruned` swaps, for the duration of a ``with`` block, the ``forward`` of every decoder
block's ``self_attn`` and ``mlp`` for one that computes only the kept units, chosen per forward
call by a :class:`Pruner` from that call's inputs:

* attention keeps whole *query* heads: ``q_proj`` rows and ``o_proj`` columns of the kept heads,
  attention for those heads only (each with the key/value head its GQA group reads). ``k_proj`` /
  ``v_proj`` always run in full, so the KV cache stays complete and a later step may keep other
  heads;
* the MLP keeps intermediate channels: ``gate_proj`` / ``up_proj`` rows and ``down_proj`` columns.

Weights are index-selected per call and fed to ``F.linear``; no weight is modified. Blocks the
pruner leaves alone (the first ``skip`` layers) keep their own forward, wrapped only to be counted.

MACs (multiply-accumulates) counted per call, actual and dense-equivalent for the same inputs:
the block's linear layers (``tokens × in × out`` each, padding positions included, since they are
computed) and the two attention matmuls (``batch × heads × q_len × kv_len × head_dim`` each, the
full rectangle, as a dense matmul would). Norms, rotary, softmax, activations, embeddings and the
LM head are not counted, in either count. A pruner's probe adds its own MACs (``probe_macs``) to
the actual count only.

Forward hooks registered on the projections themselves (``o_proj``, ``down_proj``…) do not fire
inside a pruned block, since the patched forward calls ``F.linear`` on their weights.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.errors import TunelabError
from tunelab.inspect.hooks import (
    ATTN_PARTS,
    MLP_PARTS,
    Block,
    Geometry,
    blocks,
    geometry,
)

_ACTIVE: set[int] = set()  # id() of models inside a pruned() block (nested blocks would miscount)


@dataclass
class MacCounter:
    """Multiply-accumulates performed (``macs``, probes included) and their dense equivalent."""

    macs: int = 0
    dense_macs: int = 0
    probe_macs: int = 0

    def add(self, actual: int, dense: int) -> None:
        """Add one module call: what it computed and what the dense module would have."""
        self.macs += int(actual)
        self.dense_macs += int(dense)

    def add_probe(self, macs: int) -> None:
        """Add work done only to decide what to prune (it has no dense counterpart)."""
        self.macs += int(macs)
        self.probe_macs += int(macs)

    @property
    def saved(self) -> float:
        """Fraction of the dense MACs not performed: ``1 − macs / dense_macs`` (0 before any call)."""
        return 1.0 - self.macs / self.dense_macs if self.dense_macs else 0.0

    def reset(self) -> None:
        """Zero all counts."""
        self.macs = self.dense_macs = self.probe_macs = 0


@dataclass
class AttnSite:
    """What a pruner sees when choosing the heads of one attention call.

    ``hidden`` is the normed block input ``[B, S, hidden]``; ``residual`` the block input before
    the norm (None if the block has no ``input_layernorm``); ``valid`` ``[B, S]`` marks
    non-padding positions; ``keys`` / ``values`` are the full ``[B, Hkv, T, D]`` states after
    rotary and the cache update; ``mask`` is the model's attention mask for this call (None =
    causal, or a 4D bool/additive mask); ``cos`` / ``sin`` the rotary tables of the call.
    """

    run: PruneRun
    block: Block
    hidden: torch.Tensor
    residual: torch.Tensor | None
    valid: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor | None
    cos: torch.Tensor
    sin: torch.Tensor


@dataclass
class MlpSite:
    """What a pruner sees when choosing the channels of one MLP call (see :class:`AttnSite`)."""

    run: PruneRun
    block: Block
    hidden: torch.Tensor
    residual: torch.Tensor | None
    valid: torch.Tensor


class Pruner:
    """Decides, per forward call, which units of each block to keep.

    Subclasses implement :meth:`keep_heads` / :meth:`keep_channels` (return the sorted indices
    to keep, or None to keep all) and may override :meth:`prepare` (validate against the model,
    called on entering :func:`pruned`), :meth:`prunes` and :meth:`install` (extra hooks).
    """

    name = "pruner"

    def prepare(self, model: nn.Module, found: list[Block], geo: Geometry) -> None:
        """Check the pruner fits ``model`` and precompute what it needs; raise TunelabError if not."""

    def prunes(self, index: int) -> bool:
        """Whether block ``index`` gets the pruned forward (else it is only counted)."""
        return True

    def keep_heads(self, site: AttnSite) -> torch.Tensor | None:
        """Query heads to keep for this call (sorted long tensor), or None for all."""
        return None

    def keep_channels(self, site: MlpSite) -> torch.Tensor | None:
        """MLP intermediate channels to keep for this call (sorted long tensor), or None for all."""
        return None

    def install(self, run: PruneRun) -> list[Any]:
        """Register extra hooks for the run; return their handles (removed on exit)."""
        return []


class StaticPlan(Pruner):
    """A fixed plan: ``heads`` / ``channels`` map a block index to the units to *prune* there.

    Useful to test the pruned forwards and to apply a plan computed elsewhere.
    """

    name = "static"

    def __init__(self, heads: dict[int, list[int]] | None = None, channels: dict[int, list[int]] | None = None):
        self.heads = {int(k): sorted({int(i) for i in v}) for k, v in (heads or {}).items()}
        self.channels = {int(k): sorted({int(i) for i in v}) for k, v in (channels or {}).items()}
        self._keep: dict[tuple[str, int], torch.Tensor] = {}

    def prepare(self, model: nn.Module, found: list[Block], geo: Geometry) -> None:
        """Turn the pruned sets into kept index tensors; errors name an index out of range."""
        inter = found[0].part("gate_proj").out_features
        for kind, plan, size in (("head", self.heads, geo.n_heads), ("channel", self.channels, inter)):
            for layer, units in plan.items():
                if not 0 <= layer < len(found):
                    raise TunelabError(f"plan names layer {layer}; the model has layers 0..{len(found) - 1}")
                bad = [u for u in units if not 0 <= u < size]
                if bad:
                    raise TunelabError(f"plan prunes {kind} {bad[0]} of layer {layer}; valid {kind}s are 0..{size - 1}")
                drop = set(units)
                self._keep[(kind, layer)] = torch.tensor([i for i in range(size) if i not in drop], dtype=torch.long)

    def prunes(self, index: int) -> bool:
        """Only the layers the plan names."""
        return index in self.heads or index in self.channels

    def keep_heads(self, site: AttnSite) -> torch.Tensor | None:
        """The plan's kept heads of this layer."""
        keep = self._keep.get(("head", site.block.index))
        return None if keep is None else keep.to(site.hidden.device)

    def keep_channels(self, site: MlpSite) -> torch.Tensor | None:
        """The plan's kept channels of this layer."""
        keep = self._keep.get(("channel", site.block.index))
        return None if keep is None else keep.to(site.hidden.device)


@dataclass
class PruneRun:
    """The live state of one :func:`pruned` block; what the ``with`` statement yields.

    ``kept_heads`` / ``kept_channels`` hold the last decision per pruned block (None = all kept);
    ``state`` is scratch space for the pruner (e.g. AAPP's gate).
    """

    model: nn.Module
    pruner: Pruner | None
    blocks: list[Block]
    geometry: Geometry
    intermediate: int
    counter: MacCounter = field(default_factory=MacCounter)
    kept_heads: dict[int, torch.Tensor | None] = field(default_factory=dict)
    kept_channels: dict[int, torch.Tensor | None] = field(default_factory=dict)
    residual: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    valid: dict[int, torch.Tensor] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def macs(self) -> int:
        """MACs performed so far (probes included)."""
        return self.counter.macs

    @property
    def dense_macs(self) -> int:
        """MACs the unpruned blocks would have performed on the same inputs."""
        return self.counter.dense_macs

    @property
    def probe_macs(self) -> int:
        """MACs spent on probes (part of :attr:`macs`)."""
        return self.counter.probe_macs

    @property
    def saved(self) -> float:
        """FLOPs actually saved so far: ``1 − macs / dense_macs``."""
        return self.counter.saved

    def reset(self) -> None:
        """Zero the counts (decisions and pruner state are kept)."""
        self.counter.reset()


def attn_macs(geo: Geometry, batch: int, q_len: int, kv_len: int, heads: int) -> int:
    """MACs of one attention call keeping ``heads`` query heads (k/v projections always full)."""
    tokens = batch * q_len
    proj = tokens * geo.hidden * geo.head_dim * (2 * heads + 2 * geo.n_kv_heads)
    return proj + 2 * batch * heads * q_len * kv_len * geo.head_dim


def mlp_macs(hidden: int, tokens: int, channels: int) -> int:
    """MACs of one gated MLP call keeping ``channels`` intermediate channels."""
    return 3 * tokens * hidden * channels


def valid_positions(mask: torch.Tensor | None, batch: int, q_len: int, kv_len: int) -> torch.Tensor:
    """``[batch, q_len]`` bool: which query positions of this call are real tokens (not padding).

    Read from the diagonal of the 4D mask (a padding token may not attend to itself; a real one
    always may); ``None`` (pure causal) means no padding. A mask whose key length is not the
    key/value length (static caches) is taken as no padding.
    """
    if mask is None:
        return torch.ones(batch, q_len, dtype=torch.bool)
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        raise TunelabError(f"pruned attention needs a 4D attention mask or none (sdpa/eager attention), got "
                           f"{type(mask).__name__}; load the model with attn_implementation='sdpa'")
    if mask.shape[-1] != kv_len or mask.shape[-2] != q_len:
        return torch.ones(batch, q_len, dtype=torch.bool, device=mask.device)
    q = torch.arange(q_len, device=mask.device)
    diag = mask[:, 0, q, kv_len - q_len + q]
    allowed = diag if diag.dtype == torch.bool else diag > torch.finfo(diag.dtype).min / 2
    return allowed.expand(batch, q_len)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Llama's rotary helper: ``(-x2, x1)`` of the two halves of the last dim."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` ``[B, H, S, D]`` with tables ``[B or 1, S, D]`` (as Llama does)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def check_plain_linears(found: list[Block]) -> None:
    """Raise a one-line TunelabError unless every projection is a plain floating-point nn.Linear."""
    for b in found:
        for part in ATTN_PARTS + MLP_PARTS:
            module = b.part(part)
            owner = "self_attn" if part in ATTN_PARTS else "mlp"
            plain = isinstance(module, nn.Linear) and not hasattr(module, "base_layer")
            if not plain or not module.weight.dtype.is_floating_point:
                raise TunelabError(
                    f"{b.name}.{owner}.{part} is a {type(module).__name__}, not a plain nn.Linear; pruning needs "
                    "merged weights: merge the adapter first (tunelab's loader merges by default; "
                    "or model.merge_and_unload())")


class _HeadView:
    """The attention module as the attention kernel should see it after head selection: each
    kept query head comes with its own key/value head, so no GQA grouping is left to do."""

    num_key_value_groups = 1

    def __init__(self, attn: nn.Module):
        self._attn = attn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._attn, name)


def _attention_interface(attn: nn.Module) -> Callable[..., Any]:
    """The attention function the model itself would call (sdpa, eager, …)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    eager = getattr(sys.modules[type(attn).__module__], "eager_attention_forward", None)
    impl = attn.config._attn_implementation
    if impl == "eager" or impl is None:
        if eager is None:
            raise TunelabError(f"{type(attn).__name__}: no eager_attention_forward in {type(attn).__module__}")
        return eager
    return ALL_ATTENTION_FUNCTIONS.get_interface(impl, eager)


def _weights(module: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    return module.weight, module.bias


def _head_rows(kept: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Row indices of ``q_proj`` (= column indices of ``o_proj``) of the kept heads."""
    return (kept[:, None] * head_dim + torch.arange(head_dim, device=kept.device)).reshape(-1)


def _pruned_attention(run: PruneRun, block: Block) -> Callable[..., Any]:
    attn, geo = block.attn, run.geometry
    D, H = geo.head_dim, geo.n_heads
    interface = _attention_interface(attn)
    q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)  # Qwen3-style, per head

    def forward(hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                attention_mask: torch.Tensor | None = None, cache: Any = None, past_key_values: Any = None,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
        cache = cache if cache is not None else past_key_values
        B, S, _ = hidden_states.shape
        if position_embeddings is None:
            raise TunelabError(f"{block.name}.self_attn was called without position_embeddings")
        cos, sin = position_embeddings
        wk, bk = _weights(attn.k_proj)
        wv, bv = _weights(attn.v_proj)
        keys = F.linear(hidden_states, wk, bk).view(B, S, -1, D)
        keys = (k_norm(keys) if k_norm is not None else keys).transpose(1, 2)
        values = F.linear(hidden_states, wv, bv).view(B, S, -1, D).transpose(1, 2)
        keys = apply_rotary(keys, cos, sin)
        if cache is not None:
            keys, values = cache.update(keys, values, attn.layer_idx, kwargs=kwargs)
        T = keys.shape[2]
        valid = valid_positions(attention_mask, B, S, T).to(hidden_states.device)
        run.valid[block.index] = valid
        site = AttnSite(run, block, hidden_states, run.residual.pop((block.index, "attn"), None), valid, keys,
                        values, attention_mask, cos, sin)
        kept = run.pruner.keep_heads(site) if run.pruner is not None else None
        if kept is not None and kept.numel() == H:
            kept = None
        run.kept_heads[block.index] = kept
        heads = H if kept is None else int(kept.numel())
        run.counter.add(attn_macs(geo, B, S, T, heads), attn_macs(geo, B, S, T, H))
        wq, bq = _weights(attn.q_proj)
        wo, bo = _weights(attn.o_proj)
        module: Any = attn
        if kept is not None:
            if heads == 0:  # nothing left: the block adds only o_proj's bias
                out = torch.zeros(B, S, wo.shape[0], dtype=hidden_states.dtype, device=hidden_states.device)
                return (out + bo if bo is not None else out), None
            rows = _head_rows(kept, D)
            wq, bq = wq.index_select(0, rows), (bq.index_select(0, rows) if bq is not None else None)
            wo = wo.index_select(1, rows)
            kv = kept // geo.group  # the key/value head each kept query head reads
            keys, values = keys.index_select(1, kv), values.index_select(1, kv)
            module = _HeadView(attn)
        query = F.linear(hidden_states, wq, bq).view(B, S, heads, D)
        query = (q_norm(query) if q_norm is not None else query).transpose(1, 2)
        query = apply_rotary(query, cos, sin)
        extra = {"sliding_window": attn.sliding_window} if hasattr(attn, "sliding_window") else {}
        out, _ = interface(module, query, keys, values, attention_mask,
                           dropout=0.0 if not attn.training else attn.attention_dropout,
                           scaling=attn.scaling, **extra, **kwargs)
        out = out.reshape(B, S, heads * D).contiguous()
        return F.linear(out, wo, bo), None

    return forward


def _pruned_mlp(run: PruneRun, block: Block) -> Callable[..., Any]:
    mlp = block.mlp
    hidden, inter = run.geometry.hidden, run.intermediate

    def forward(x: torch.Tensor) -> torch.Tensor:
        tokens = x.numel() // x.shape[-1]
        valid = run.valid.get(block.index)
        if valid is None or valid.shape != x.shape[:-1]:
            valid = torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
        site = MlpSite(run, block, x, run.residual.pop((block.index, "mlp"), None), valid)
        kept = run.pruner.keep_channels(site) if run.pruner is not None else None
        if kept is not None and kept.numel() == inter:
            kept = None
        run.kept_channels[block.index] = kept
        channels = inter if kept is None else int(kept.numel())
        run.counter.add(mlp_macs(hidden, tokens, channels), mlp_macs(hidden, tokens, inter))
        (wg, bg), (wu, bu), (wd, bd) = _weights(mlp.gate_proj), _weights(mlp.up_proj), _weights(mlp.down_proj)
        if kept is not None:
            wg, wu, wd = wg.index_select(0, kept), wu.index_select(0, kept), wd.index_select(1, kept)
            bg = bg.index_select(0, kept) if bg is not None else None
            bu = bu.index_select(0, kept) if bu is not None else None
        return F.linear(mlp.act_fn(F.linear(x, wg, bg)) * F.linear(x, wu, bu), wd, bd)

    return forward


def _counted_attention(run: PruneRun, block: Block, original: Callable[..., Any]) -> Callable[..., Any]:
    geo = run.geometry

    def forward(*args: Any, **kwargs: Any) -> Any:
        h = args[0] if args else kwargs["hidden_states"]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length(block.attn.layer_idx) if cache is not None else 0
        B, S = h.shape[0], h.shape[1]
        macs = attn_macs(geo, B, S, S + past, geo.n_heads)
        run.counter.add(macs, macs)
        return original(*args, **kwargs)

    return forward


def _counted_mlp(run: PruneRun, original: Callable[..., Any]) -> Callable[..., Any]:
    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        macs = mlp_macs(run.geometry.hidden, x.numel() // x.shape[-1], run.intermediate)
        run.counter.add(macs, macs)
        return original(x, *args, **kwargs)

    return forward


def _residual_hook(run: PruneRun, index: int, kind: str) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        if args:
            run.residual[(index, kind)] = args[0]

    return hook


@contextmanager
def pruned(model: nn.Module, pruner: Pruner | None) -> Iterator[PruneRun]:
    """Run ``model`` with ``pruner`` deciding the kept units per forward call; yields a :class:`PruneRun`.

    ``pruner=None`` prunes nothing and only counts (every block keeps its own forward). Every
    patched ``forward`` and hook is removed on exit, also when the block raises.
    """
    found = blocks(model)
    geo = geometry(model)
    check_plain_linears(found)
    if id(model) in _ACTIVE:
        raise TunelabError("this model is already inside a pruned() block; nesting them is not supported")
    if pruner is not None:
        pruner.prepare(model, found, geo)
    run = PruneRun(model, pruner, found, geo, found[0].part("gate_proj").out_features)
    saved: list[tuple[nn.Module, Any]] = []  # (module, previous instance forward or None)
    handles: list[Any] = []
    _ACTIVE.add(id(model))
    try:
        for b in found:
            prune = pruner is not None and pruner.prunes(b.index)
            for module in (b.attn, b.mlp):
                saved.append((module, module.__dict__.get("forward")))
            if prune:
                b.attn.forward = _pruned_attention(run, b)
                b.mlp.forward = _pruned_mlp(run, b)
                for norm_name, kind in (("input_layernorm", "attn"), ("post_attention_layernorm", "mlp")):
                    norm = getattr(b.layer, norm_name, None)
                    if isinstance(norm, nn.Module):
                        handles.append(norm.register_forward_pre_hook(_residual_hook(run, b.index, kind)))
            else:
                b.attn.forward = _counted_attention(run, b, b.attn.forward)
                b.mlp.forward = _counted_mlp(run, b.mlp.forward)
        if pruner is not None:
            handles += pruner.install(run)
        yield run
    finally:
        for h in handles:
            h.remove()
        for module, previous in reversed(saved):
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous
        run.residual.clear()
        run.valid.clear()
        _ACTIVE.discard(id(model))


def count_macs(model: nn.Module, fn: Callable[[], Any], pruner: Pruner | None = None) -> MacCounter:
    """Run ``fn()`` with ``model`` under ``pruned(model, pruner)`` and return what it counted."""
    with pruned(model, pruner) as run:
        fn()
    return run.counter
