"""Structured dynamic pruning: Probe Pruning, Wanda-sp and alignment-aware Probe Pruning (AAPP).

All three prune whole attention query heads and MLP intermediate channels through
:func:`pruned` (``tunelab.inspect.pruned_modules``), which runs only the kept units and counts
the multiply-accumulates actually performed.

* :class:`ProbePruning` (Le et al., 2024) decides per layer and per forward call. A probe — the
  ~5% of samples (at least one) with the largest residual energy, and in each of them the ~50% of
  positions with the largest residual norm, its first real token always kept — goes through the
  block's q/k/v → attention (or gate/up → act) up to the o_proj (down_proj) inputs ``X``. Probe
  importance ``P_j = mean X_j²`` over the probe's real tokens is fused with a calibration EMA
  ``G_j`` (momentum 0.99; set by :meth:`ProbePruning.calibrate`, updated after every call):
  ``C = (1 − r) G + r P`` with ``r = P / (P + G)`` (0 where both are 0). Channel score
  ``s_j = ‖√C_j · W[:, j]‖ = sqrt(C_j Σ_i W_ij²)`` with ``W`` = o_proj / down_proj; a head scores
  the sum of its channels. The lowest heads / channels are pruned.
* :class:`WandaSP` is the static baseline: ``s_j = ‖W[:, j]‖ · ‖X_j‖`` over calibration tokens,
  one fixed kept set per layer.
* :class:`AAPP` is Probe Pruning that never prunes the units separating harmful from harmless
  prompts (top ``protect`` fraction of ``|μ_harmful − μ_benign| / pooled std`` per block, measured
  on the last token of the chat-templated prompts, where the model decides whether to refuse).
  It prunes exactly as many units as Probe Pruning at the same ratio, all from the unprotected
  ones (matched compute). With ``gate=True`` the protection only applies when a logistic-
  regression harmfulness probe on a middle layer's last-token residual fires.

Every method skips the first ``skip`` layers (3) and rescales the per-layer ratio to
``ratio · L / (L − skip)``, so the pruned fraction of all layers' heads (and of all channels)
matches ``ratio`` (MLP channels are kept in multiples of ``align=8``: odd matmul widths are slow
on CPU). Heads are pruned as query heads only; key/value projections always run in full.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.errors import TunelabError
from tunelab.inspect.hooks import Block, Geometry, blocks, geometry, model_device
from tunelab.inspect.pruned_modules import (
    _ACTIVE,
    AttnSite,
    MacCounter,
    MlpSite,
    Pruner,
    PruneRun,
    StaticPlan,
    apply_rotary,
    count_macs,
    pruned,
    valid_positions,
)
from tunelab.registry import Registry

DEFAULT_SKIP = 3
MOMENTUM = 0.99
PROBE_SAMPLES = 0.05
PROBE_POSITIONS = 0.5
DEFAULT_PROTECT = 0.05


# ----------------------------------------------------------------------------------------------
# Scores


def fuse(probe: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """Probe Pruning's fusion ``C = (1 − r) G + r P`` with ``r = P / (P + G)``, elementwise (r = 0 where P + G = 0)."""
    total = probe + history
    r = torch.where(total > 0, probe / total.clamp(min=torch.finfo(total.dtype).tiny), torch.zeros_like(total))
    return (1 - r) * history + r * probe


def channel_scores(importance: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sqrt(C_j Σ_i W[i, j]²)`` per input channel ``j`` of ``weight`` ``[out, in]``."""
    return torch.sqrt(importance.float() * weight.detach().float().pow(2).sum(0))


def head_scores(scores: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Per-head sums of per-channel scores (channels ordered head by head, as o_proj's input)."""
    return scores.view(-1, head_dim).sum(1)


def wanda_sp_scores(weight: torch.Tensor, act_sq_sum: torch.Tensor) -> torch.Tensor:
    """Wanda-sp channel scores ``‖W[:, j]‖ · ‖X_j‖``; ``act_sq_sum`` is ``Σ_tokens X_j²``."""
    return weight.detach().float().pow(2).sum(0).sqrt() * act_sq_sum.float().clamp(min=0).sqrt()


def lowest_pruned(scores: torch.Tensor, k: int, protected: torch.Tensor | None = None) -> torch.Tensor:
    """Sorted indices kept after pruning the ``k`` lowest ``scores``, never a ``protected`` index."""
    s = scores.detach().float().clone()
    if protected is not None and protected.numel():
        s[protected.to(s.device)] = math.inf
    keep = torch.ones_like(s, dtype=torch.bool)
    keep[torch.argsort(s, stable=True)[:k]] = False
    return keep.nonzero().squeeze(1)


def effect_sizes(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-column ``|mean(a) − mean(b)| / pooled std`` of two ``[n, channels]`` samples."""
    a, b = a.float(), b.float()
    var = (a.var(0, unbiased=a.shape[0] > 1) + b.var(0, unbiased=b.shape[0] > 1)) / 2
    return (a.mean(0) - b.mean(0)).abs() / var.sqrt().clamp(min=1e-6)


# ----------------------------------------------------------------------------------------------
# Calibration passes (dense model, hooks on the o_proj / down_proj inputs)


def _token_batches(tokenizer: Any, texts: Sequence[str], batch_size: int, max_length: int,
                   add_special_tokens: bool = True, min_tokens: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded ``(input_ids, attention_mask)`` batches, sorted by length, each text cut to ``max_length``."""
    if batch_size < 1 or max_length < 1:
        raise TunelabError(f"batch_size and max_length must be >= 1, got {batch_size} and {max_length}")
    encoded = [ids[:max_length] for ids in tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]]
    encoded = sorted((e for e in encoded if len(e) >= min_tokens), key=len)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(e) for e in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, e in enumerate(chunk):
            ids[row, : len(e)] = torch.tensor(e)
            mask[row, : len(e)] = 1
        yield ids, mask


def _texts(items: Sequence[Any], what: str) -> list[str]:
    out = [p["prompt"] if isinstance(p, Mapping) else p for p in items]
    if not out or not all(isinstance(p, str) and p.strip() for p in out):
        raise TunelabError(f"{what} must be a non-empty list of non-empty strings (or {{'prompt': ...}} records)")
    return out


def _check_not_pruned(model: nn.Module) -> None:
    if id(model) in _ACTIVE:
        raise TunelabError("calibrate with the dense model: call this outside the pruned() block")


@dataclass
class ActivationStats:
    """Sums of squares of the o_proj (``attn``) and down_proj (``mlp``) inputs per channel and block,
    over ``tokens`` real (non-padding) calibration tokens."""

    attn: dict[int, torch.Tensor]
    mlp: dict[int, torch.Tensor]
    tokens: int


@torch.inference_mode()
def activation_stats(model: nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 8,
                     max_length: int = 512) -> ActivationStats:
    """One dense pass over ``texts`` collecting :class:`ActivationStats` (padding excluded)."""
    _check_not_pruned(model)
    found = blocks(model)
    device = model_device(model)
    sums: dict[tuple[str, int], torch.Tensor] = {}
    current: dict[str, torch.Tensor] = {}

    def hook(kind: str, index: int) -> Callable[..., None]:
        def fn(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].float()
            w = current["mask"].to(x.dtype)[..., None]
            s = (x * x * w).sum((0, 1))
            sums[(kind, index)] = sums[(kind, index)] + s if (kind, index) in sums else s
        return fn

    handles = [b.part("o_proj").register_forward_pre_hook(hook("attn", b.index)) for b in found]
    handles += [b.part("down_proj").register_forward_pre_hook(hook("mlp", b.index)) for b in found]
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        for ids, mask in _token_batches(tokenizer, _texts(texts, "calibration texts"), batch_size, max_length):
            current["mask"] = mask.to(device)
            model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            tokens += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not tokens:
        raise TunelabError("calibration texts tokenize to nothing")
    return ActivationStats({i: sums[("attn", i)] for i in range(len(found))},
                           {i: sums[("mlp", i)] for i in range(len(found))}, tokens)


@dataclass
class AlignmentStats:
    """Last-token activations of harmful (``*_h``) and benign (``*_b``) prompts, per block:
    o_proj inputs (``attn``), down_proj inputs (``mlp``) and the block's input residual (``resid``)."""

    attn_h: dict[int, torch.Tensor]
    attn_b: dict[int, torch.Tensor]
    mlp_h: dict[int, torch.Tensor]
    mlp_b: dict[int, torch.Tensor]
    resid_h: dict[int, torch.Tensor]
    resid_b: dict[int, torch.Tensor]
    n_heads: int

    @property
    def n_layers(self) -> int:
        """Blocks measured."""
        return len(self.attn_h)


@torch.inference_mode()
def _last_token_activations(model: nn.Module, tokenizer: Any, texts: list[str], batch_size: int,
                            max_length: int) -> dict[tuple[str, int], torch.Tensor]:
    found = blocks(model)
    device = model_device(model)
    rows: dict[tuple[str, int], list[torch.Tensor]] = {}
    current: dict[str, torch.Tensor] = {}

    def take(key: tuple[str, int], x: torch.Tensor) -> None:
        last = current["last"]
        rows.setdefault(key, []).append(x[torch.arange(x.shape[0], device=x.device), last].float().cpu())

    def pre(kind: str, index: int) -> Callable[..., None]:
        return lambda module, args: take((kind, index), args[0])

    def layer_pre(index: int) -> Callable[..., None]:
        def fn(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            take(("resid", index), args[0] if args else kwargs["hidden_states"])
        return fn

    handles = [b.part("o_proj").register_forward_pre_hook(pre("attn", b.index)) for b in found]
    handles += [b.part("down_proj").register_forward_pre_hook(pre("mlp", b.index)) for b in found]
    handles += [b.layer.register_forward_pre_hook(layer_pre(b.index), with_kwargs=True) for b in found]
    was_training = model.training
    model.eval()
    try:
        # Chat templates write their own special tokens into the text.
        for ids, mask in _token_batches(tokenizer, texts, batch_size, max_length, add_special_tokens=False):
            current["last"] = (mask.sum(1) - 1).to(device)  # right padding: the last real token
            model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {k: torch.cat(v) for k, v in rows.items()}


def alignment_stats(model: nn.Module, tokenizer: Any, harmful: Sequence[Any] | None = None,
                    benign: Sequence[Any] | None = None, *, chat: bool = True, limit: int | None = 64,
                    batch_size: int = 8, max_length: int = 256) -> AlignmentStats:
    """Last-token activations of chat-templated harmful vs benign prompts (dense model).

    Defaults: the "train" halves of HarmBench (:func:`tunelab.evaluate.prompts.harmful_prompts`)
    and of tunelab's benign look-alikes (:func:`~tunelab.evaluate.prompts.benign_prompts`), the
    first ``limit`` of each; the safety suite measures on the "test" halves.
    """
    from tunelab.evaluate.generation import render_prompts
    from tunelab.evaluate.prompts import benign_prompts, harmful_prompts

    _check_not_pruned(model)
    harmful = harmful if harmful is not None else harmful_prompts(limit=limit, split="train")
    benign = benign if benign is not None else benign_prompts(limit=limit, split="train")
    h_texts = render_prompts(tokenizer, _texts(harmful, "harmful prompts"), chat)
    b_texts = render_prompts(tokenizer, _texts(benign, "benign prompts"), chat)
    h = _last_token_activations(model, tokenizer, h_texts, batch_size, max_length)
    b = _last_token_activations(model, tokenizer, b_texts, batch_size, max_length)
    n = len(blocks(model))
    pick = lambda acts, kind: {i: acts[(kind, i)] for i in range(n)}
    return AlignmentStats(pick(h, "attn"), pick(b, "attn"), pick(h, "mlp"), pick(b, "mlp"),
                          pick(h, "resid"), pick(b, "resid"), geometry(model).n_heads)


# ----------------------------------------------------------------------------------------------
# Pruners


def _check_ratio(ratio: float) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise TunelabError(f"pruning ratio must be in [0, 1), got {ratio!r}")
    return float(ratio)


class RatioPruner(Pruner):
    """A pruner removing a fixed share of heads and channels from every layer after the first ``skip``.

    The per-layer ratio is ``ratio · L / (L − skip)`` so that ``ratio`` of all layers' heads (and
    of all channels) are pruned; each pruned layer drops ``round(layer_ratio · n)`` heads (at
    least one kept) and keeps a multiple of ``align`` MLP channels nearest ``(1 − layer_ratio) · n``:
    a matmul whose output width is not a multiple of 8 runs ~1.5× slower per channel on CPU, which
    would eat the saving (``align=1`` keeps the exact count).
    """

    def __init__(self, ratio: float, *, skip: int = DEFAULT_SKIP, align: int = 8):
        self.ratio = _check_ratio(ratio)
        for label, v, low in (("skip", skip, 0), ("align", align, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise TunelabError(f"{label} must be a whole number >= {low}, got {v!r}")
        self.skip, self.align = skip, align
        self.layer_ratio = 0.0
        self.heads_pruned = 0  # per pruned layer
        self.channels_pruned = 0
        self.n_layers = 0

    def prepare(self, model: nn.Module, found: list[Block], geo: Geometry) -> None:
        """Per-layer counts from the model's shape; errors when the ratio cannot be met."""
        n = len(found)
        inter = found[0].part("gate_proj").out_features
        self.n_layers, self.geometry, self.intermediate = n, geo, inter
        if self.ratio == 0:
            self.layer_ratio, self.heads_pruned, self.channels_pruned = 0.0, 0, 0
            return
        if self.skip >= n:
            raise TunelabError(f"skip={self.skip} leaves no layer to prune in a {n}-layer model")
        self.layer_ratio = self.ratio * n / (n - self.skip)
        if self.layer_ratio >= 1:
            raise TunelabError(f"ratio {self.ratio} over the {n - self.skip} layers after skip={self.skip} would prune "
                               f"every unit ({self.layer_ratio:.2f} per layer); lower the ratio or skip")
        self.heads_pruned = min(round(self.layer_ratio * geo.n_heads), geo.n_heads - 1)
        kept = round((inter - round(self.layer_ratio * inter)) / self.align) * self.align
        self.channels_pruned = inter - min(max(kept, min(self.align, inter), 1), inter)

    def prunes(self, index: int) -> bool:
        """Layers from ``skip`` on."""
        return index >= self.skip

    def pruned_fraction(self) -> dict[str, float]:
        """Share of all layers' heads and channels pruned per call (after :meth:`prepare`)."""
        if not self.n_layers:
            raise TunelabError("pruned_fraction() needs the model: use the pruner in pruned(model, ...) first")
        layers = self.n_layers - self.skip if self.ratio else 0
        return {"heads": layers * self.heads_pruned / (self.n_layers * self.geometry.n_heads),
                "channels": layers * self.channels_pruned / (self.n_layers * self.intermediate)}


class ProbePruning(RatioPruner):
    """Probe Pruning: per-call probe importance fused with a calibration EMA (see module doc).

    Call :meth:`calibrate` first for the EMA ``G``; without it the first call uses the probe alone
    and starts the EMA from there. ``update=False`` freezes ``G`` at its calibration value.
    """

    name = "pp"

    def __init__(self, ratio: float, *, skip: int = DEFAULT_SKIP, momentum: float = MOMENTUM,
                 probe_samples: float = PROBE_SAMPLES, probe_positions: float = PROBE_POSITIONS, update: bool = True,
                 align: int = 8):
        super().__init__(ratio, skip=skip, align=align)
        for label, v in (("momentum", momentum), ("probe_samples", probe_samples), ("probe_positions", probe_positions)):
            if not 0 <= v <= 1:
                raise TunelabError(f"{label} must be in [0, 1], got {v}")
        self.momentum, self.probe_samples, self.probe_positions = momentum, probe_samples, probe_positions
        self.update = update
        self.G: dict[tuple[str, int], torch.Tensor] = {}
        self._colsq: dict[tuple[str, int], torch.Tensor] = {}
        self.last_scores: dict[tuple[str, int], torch.Tensor] = {}

    def calibrate(self, model: nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 8,
                  max_length: int = 512) -> ProbePruning:
        """Set ``G`` to the mean squared o_proj / down_proj inputs over ``texts``; returns self."""
        return self.use_stats(activation_stats(model, tokenizer, texts, batch_size=batch_size, max_length=max_length))

    def use_stats(self, stats: ActivationStats) -> ProbePruning:
        """Set ``G`` from precomputed :class:`ActivationStats`; returns self."""
        self.G = {("attn", i): s / stats.tokens for i, s in stats.attn.items()}
        self.G.update({("mlp", i): s / stats.tokens for i, s in stats.mlp.items()})
        return self

    def prepare(self, model: nn.Module, found: list[Block], geo: Geometry) -> None:
        """Counts per layer, and ``Σ_i W_ij²`` of every pruned layer's o_proj / down_proj."""
        super().prepare(model, found, geo)
        with torch.no_grad():
            self._colsq = {}
            for b in found:
                if self.prunes(b.index):
                    self._colsq[("attn", b.index)] = b.part("o_proj").weight.float().pow(2).sum(0)
                    self._colsq[("mlp", b.index)] = b.part("down_proj").weight.float().pow(2).sum(0)

    # The probe ------------------------------------------------------------------------------

    def select_probe(self, residual: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(samples [x], positions [x, y], real [x, y])`` of the probe.

        Samples: the ``ceil(probe_samples · B)`` (≥ 1) with the largest summed squared residual
        norm over real tokens. Positions, per sample: its first real token plus the largest
        residual norms, ``ceil(probe_positions · S)`` (≥ 1) in all, in sequence order. ``real``
        marks positions that are not padding (a short sample may need padding to fill ``y``).
        """
        B, S = valid.shape
        energy = residual.detach().float().pow(2).sum(-1).masked_fill(~valid, 0.0)
        x = min(B, max(1, math.ceil(self.probe_samples * B)))
        samples = energy.sum(1).topk(x).indices.sort().values
        y = min(S, max(1, math.ceil(self.probe_positions * S)))
        real = valid[samples]
        rank = energy[samples].masked_fill(~real, -math.inf)
        rank.scatter_(1, real.int().argmax(1, keepdim=True), math.inf)  # first real token (attention sink)
        positions = rank.topk(y, dim=1).indices.sort(dim=1).values
        return samples, positions, real.gather(1, positions)

    @staticmethod
    def _gather(x: torch.Tensor, samples: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = x[samples]
        return x.gather(1, positions[..., None].expand(-1, -1, x.shape[-1]))

    @staticmethod
    def _mean_sq(X: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        sq = torch.where(real[..., None], X.float().pow(2), torch.zeros((), device=X.device))
        return sq.sum((0, 1)) / real.sum().clamp(min=1)

    def probe_attention(self, site: AttnSite) -> torch.Tensor:
        """Probe importance ``P`` per o_proj input channel ``[H · D]``; counts the probe's MACs.

        Probe queries (all heads) attend to all keys of their sample, under the same mask the
        model uses; the probe reuses the call's keys and values, so it costs q_proj on the probe
        tokens plus their attention.
        """
        attn, geo = site.block.attn, site.run.geometry
        B, S, hid = site.hidden.shape
        samples, positions, real = self.select_probe(site.residual if site.residual is not None else site.hidden,
                                                     site.valid)
        x, y = positions.shape
        H, D, T = geo.n_heads, geo.head_dim, site.keys.shape[2]
        q = F.linear(self._gather(site.hidden, samples, positions), attn.q_proj.weight, attn.q_proj.bias)
        q = q.view(x, y, H, D)
        q_norm = getattr(attn, "q_norm", None)
        q = (q_norm(q) if q_norm is not None else q).transpose(1, 2)
        cos = self._gather(site.cos.expand(B, -1, -1), samples, positions)
        sin = self._gather(site.sin.expand(B, -1, -1), samples, positions)
        q = apply_rotary(q, cos, sin)
        k = site.keys[samples].repeat_interleave(geo.group, dim=1)
        v = site.values[samples].repeat_interleave(geo.group, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=_probe_mask(site.mask, samples, positions, B, S, T),
                                             scale=attn.scaling)
        site.run.counter.add_probe(x * y * hid * H * D + 2 * x * H * y * T * D)
        return self._mean_sq(out.transpose(1, 2).reshape(x, y, H * D), real)

    def probe_mlp(self, site: MlpSite) -> torch.Tensor:
        """Probe importance ``P`` per down_proj input channel; counts the probe's MACs."""
        mlp = site.block.mlp
        samples, positions, real = self.select_probe(site.residual if site.residual is not None else site.hidden,
                                                     site.valid)
        hp = self._gather(site.hidden, samples, positions)
        X = mlp.act_fn(F.linear(hp, mlp.gate_proj.weight, mlp.gate_proj.bias)) * F.linear(hp, mlp.up_proj.weight,
                                                                                          mlp.up_proj.bias)
        site.run.counter.add_probe(2 * real.numel() * hp.shape[-1] * X.shape[-1])
        return self._mean_sq(X, real)

    def importance(self, key: tuple[str, int], probe: torch.Tensor) -> torch.Tensor:
        """Fuse the probe with ``G`` (the probe alone before any history), then update the EMA."""
        history = self.G.get(key)
        if history is None:
            fused = probe
        else:
            history = history.to(probe.device)
            fused = fuse(probe, history)
        if self.update:
            self.G[key] = probe.clone() if history is None else self.momentum * history + (1 - self.momentum) * probe
        return fused

    def protected(self, site: AttnSite | MlpSite, kind: str) -> torch.Tensor | None:
        """Units never pruned for this call (none in plain Probe Pruning)."""
        return None

    @torch.no_grad()
    def keep_heads(self, site: AttnSite) -> torch.Tensor | None:
        """Probe → fused importance → head scores → prune the lowest ``heads_pruned``."""
        if self.heads_pruned == 0:
            return None
        key = ("attn", site.block.index)
        c = self.importance(key, self.probe_attention(site))
        scores = head_scores(torch.sqrt(c * self._colsq[key]), site.run.geometry.head_dim)
        self.last_scores[key] = scores
        return lowest_pruned(scores, self.heads_pruned, self.protected(site, "attn"))

    @torch.no_grad()
    def keep_channels(self, site: MlpSite) -> torch.Tensor | None:
        """Probe → fused importance → channel scores → prune the lowest ``channels_pruned``."""
        if self.channels_pruned == 0:
            return None
        key = ("mlp", site.block.index)
        c = self.importance(key, self.probe_mlp(site))
        scores = torch.sqrt(c * self._colsq[key])
        self.last_scores[key] = scores
        return lowest_pruned(scores, self.channels_pruned, self.protected(site, "mlp"))


def _probe_mask(mask: torch.Tensor | None, samples: torch.Tensor, positions: torch.Tensor, batch: int,
                q_len: int, kv_len: int) -> torch.Tensor:
    """The model's mask rows for the probe's queries ``[x, 1, y, T]`` (causal when the model passed none)."""
    if mask is not None and mask.shape[-1] == kv_len and mask.shape[-2] == q_len:
        m = mask.expand(batch, *mask.shape[1:])[samples]
        return m.gather(2, positions[:, None, :, None].expand(-1, m.shape[1], -1, kv_len))
    keys = torch.arange(kv_len, device=positions.device)
    return (keys[None, None, :] <= (kv_len - q_len + positions)[:, :, None])[:, None]


class WandaSP(RatioPruner):
    """Wanda-sp: static structured pruning by ``‖W[:, j]‖ · ‖X_j‖`` over calibration tokens.

    Needs :meth:`calibrate` (or :meth:`use_stats`); one kept set per layer for every call.
    """

    name = "wanda-sp"

    def __init__(self, ratio: float, *, skip: int = DEFAULT_SKIP, align: int = 8):
        super().__init__(ratio, skip=skip, align=align)
        self.stats: ActivationStats | None = None
        self._keep: dict[tuple[str, int], torch.Tensor] = {}
        self.scores: dict[tuple[str, int], torch.Tensor] = {}

    def calibrate(self, model: nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 8,
                  max_length: int = 512) -> WandaSP:
        """Collect the calibration activations; returns self."""
        return self.use_stats(activation_stats(model, tokenizer, texts, batch_size=batch_size, max_length=max_length))

    def use_stats(self, stats: ActivationStats) -> WandaSP:
        """Use precomputed :class:`ActivationStats`; returns self."""
        self.stats = stats
        return self

    @torch.no_grad()
    def prepare(self, model: nn.Module, found: list[Block], geo: Geometry) -> None:
        """Fix the kept heads and channels of every pruned layer."""
        super().prepare(model, found, geo)
        if self.ratio and self.stats is None:
            raise TunelabError("WandaSP needs calibration activations: call calibrate(model, tokenizer, texts) first")
        if self.stats is not None and len(self.stats.attn) != len(found):
            raise TunelabError(f"calibration has {len(self.stats.attn)} layers, the model {len(found)}")
        self._keep, self.scores = {}, {}
        for b in found:
            if not self.prunes(b.index) or self.stats is None:
                continue
            attn = head_scores(wanda_sp_scores(b.part("o_proj").weight, self.stats.attn[b.index].to(model_device(model))),
                               geo.head_dim)
            mlp = wanda_sp_scores(b.part("down_proj").weight, self.stats.mlp[b.index].to(model_device(model)))
            self.scores[("attn", b.index)], self.scores[("mlp", b.index)] = attn, mlp
            self._keep[("attn", b.index)] = lowest_pruned(attn, self.heads_pruned)
            self._keep[("mlp", b.index)] = lowest_pruned(mlp, self.channels_pruned)

    def keep_heads(self, site: AttnSite) -> torch.Tensor | None:
        """The fixed kept heads of this layer."""
        return self._keep[("attn", site.block.index)].to(site.hidden.device) if self.heads_pruned else None

    def keep_channels(self, site: MlpSite) -> torch.Tensor | None:
        """The fixed kept channels of this layer."""
        return self._keep[("mlp", site.block.index)].to(site.hidden.device) if self.channels_pruned else None


@dataclass
class HarmGate:
    """A logistic-regression harmfulness probe on the residual entering block ``layer`` (last token)."""

    layer: int
    mean: torch.Tensor
    scale: torch.Tensor
    coef: torch.Tensor
    intercept: float
    train_accuracy: float
    cv_accuracy: float | None
    n: int

    def fires(self, x: torch.Tensor) -> torch.Tensor:
        """Per row of ``x`` ``[B, hidden]``: does the probe call it harmful."""
        z = ((x.float() - self.mean.to(x.device)) / self.scale.to(x.device)) @ self.coef.to(x.device)
        return z + self.intercept > 0


def fit_gate(harmful: torch.Tensor, benign: torch.Tensor, layer: int) -> HarmGate:
    """Fit :class:`HarmGate` (standardize + sklearn LogisticRegression) on residual rows; report its accuracy.

    ``train_accuracy`` is on the calibration rows themselves, ``cv_accuracy`` the stratified
    k-fold (k ≤ 5) estimate (None with fewer than 2 rows per class).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = torch.cat([harmful, benign]).float().numpy()
    y = [1] * len(harmful) + [0] * len(benign)
    if not len(harmful) or not len(benign):
        raise TunelabError("the harmfulness gate needs at least one harmful and one benign prompt")

    def model() -> Any:
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))

    pipe = model().fit(X, y)
    folds = min(5, len(harmful), len(benign))
    cv = None
    if folds >= 2:
        cv = float(cross_val_score(model(), X, y, cv=StratifiedKFold(folds, shuffle=True, random_state=0)).mean())
    scaler, logreg = pipe[0], pipe[1]
    return HarmGate(layer, torch.tensor(scaler.mean_, dtype=torch.float32),
                    torch.tensor(scaler.scale_, dtype=torch.float32),
                    torch.tensor(logreg.coef_[0], dtype=torch.float32), float(logreg.intercept_[0]),
                    float(pipe.score(X, y)), cv, len(y))


def _past_length(kwargs: dict[str, Any], layer: int) -> int:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    return int(cache.get_seq_length(layer)) if cache is not None and hasattr(cache, "get_seq_length") else 0


class AAPP(ProbePruning):
    """Alignment-aware Probe Pruning: Probe Pruning that never prunes alignment-relevant units.

    Per block, the top ``protect`` fraction (rounded up) of heads and of MLP channels by
    ``|μ_harmful − μ_benign| / pooled std`` of their last-token activations (a head: the RMS of
    its channels' effect sizes) are protected. The same number of units as Probe Pruning is
    pruned per layer, all from the rest, so compute is matched.

    ``gate=True``: protect only when a harmfulness probe on the last-token residual entering
    block ``gate_layer`` (default: the middle one) fires. Decisions are per forward call, so one
    firing row protects the whole batch. The gate is read on a sequence's first forward (prefill)
    and kept for the decode steps that follow; pruned layers before ``gate_layer`` run before it
    is known on that first forward and are protected.

    Call :meth:`calibrate` (Probe Pruning's EMA) and :meth:`fit_alignment` before pruning.
    """

    name = "aapp"

    def __init__(self, ratio: float, *, skip: int = DEFAULT_SKIP, protect: float = DEFAULT_PROTECT,
                 gate: bool = False, gate_layer: int | None = None, **probe: Any):
        super().__init__(ratio, skip=skip, **probe)
        if not 0 <= protect < 1:
            raise TunelabError(f"protect must be in [0, 1), got {protect}")
        self.protect, self.gate, self.gate_layer = protect, gate, gate_layer
        self.head_effect: dict[int, torch.Tensor] = {}
        self.channel_effect: dict[int, torch.Tensor] = {}
        self._protect: dict[tuple[str, int], torch.Tensor] = {}
        self.harm_gate: HarmGate | None = None

    def fit_alignment(self, model: nn.Module, tokenizer: Any, harmful: Sequence[Any] | None = None,
                      benign: Sequence[Any] | None = None, **kw: Any) -> dict[str, Any]:
        """Measure harmful vs benign activations (:func:`alignment_stats`, same keywords) and fit; returns :meth:`report`."""
        self.use_alignment(alignment_stats(model, tokenizer, harmful, benign, **kw))
        return self.report()

    def use_alignment(self, stats: AlignmentStats) -> AAPP:
        """Effect sizes, protected sets and (``gate=True``) the harmfulness gate from ``stats``; returns self."""
        n = stats.n_layers
        self.head_effect, self.channel_effect, self._protect = {}, {}, {}
        for i in range(n):
            per_channel = effect_sizes(stats.attn_h[i], stats.attn_b[i])
            head_dim = per_channel.numel() // stats.n_heads
            self.head_effect[i] = per_channel.view(-1, head_dim).pow(2).mean(1).sqrt()
            self.channel_effect[i] = effect_sizes(stats.mlp_h[i], stats.mlp_b[i])
            for kind, eff in (("attn", self.head_effect[i]), ("mlp", self.channel_effect[i])):
                k = math.ceil(self.protect * eff.numel()) if self.protect else 0
                self._protect[(kind, i)] = torch.argsort(eff, descending=True, stable=True)[:k].sort().values
        if self.gate:
            layer = n // 2 if self.gate_layer is None else self.gate_layer
            if not 0 <= layer < n:
                raise TunelabError(f"gate_layer {layer} is not a layer of this {n}-layer model")
            self.harm_gate = fit_gate(stats.resid_h[layer], stats.resid_b[layer], layer)
        return self

    def protected_units(self, kind: str, layer: int) -> torch.Tensor:
        """Indices of the protected heads (``kind="attn"``) or channels (``"mlp"``) of ``layer``."""
        return self._protect.get((kind, layer), torch.empty(0, dtype=torch.long))

    def report(self) -> dict[str, Any]:
        """Protected counts per layer and, with the gate, its layer and calibration accuracy."""
        out: dict[str, Any] = {
            "protect": self.protect,
            "protected_heads": {i: int(self.protected_units("attn", i).numel()) for i in self.head_effect},
            "protected_channels": {i: int(self.protected_units("mlp", i).numel()) for i in self.channel_effect},
        }
        if self.harm_gate is not None:
            g = self.harm_gate
            out["gate"] = {"layer": g.layer, "train_accuracy": g.train_accuracy, "cv_accuracy": g.cv_accuracy, "n": g.n}
        return out

    def prepare(self, model: nn.Module, found: list[Block], geo: Geometry) -> None:
        """Probe Pruning's preparation, plus: alignment fitted, and enough unprotected units to prune."""
        super().prepare(model, found, geo)
        if not self._protect:
            raise TunelabError("AAPP needs fit_alignment(model, tokenizer) before pruning")
        if len(self.head_effect) != len(found):
            raise TunelabError(f"alignment stats have {len(self.head_effect)} layers, the model {len(found)}")
        for kind, k, n in (("attn", self.heads_pruned, geo.n_heads), ("mlp", self.channels_pruned, self.intermediate)):
            p = max(self.protected_units(kind, b.index).numel() for b in found)
            if k > n - p:
                unit = "heads" if kind == "attn" else "channels"
                raise TunelabError(f"AAPP at ratio {self.ratio} prunes {k} of {n} {unit} per layer but protects {p}; "
                                   "lower the ratio or protect")

    def install(self, run: PruneRun) -> list[Any]:
        """With the gate: reset it on each new sequence and read it at ``gate_layer``."""
        if not self.gate:
            return []
        if self.harm_gate is None:
            raise TunelabError("AAPP(gate=True) needs fit_alignment(...) to fit the gate first")
        gate = self.harm_gate
        run.state.update(gate=None, gate_calls=0, gate_fired_calls=0)

        def reset(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if _past_length(kwargs, 0) == 0:
                run.state["gate"] = None

        def read(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if _past_length(kwargs, gate.layer) != 0:
                return  # a decode step: keep the prefill's decision
            h = args[0] if args else kwargs["hidden_states"]
            B, S = h.shape[:2]
            valid = valid_positions(kwargs.get("attention_mask"), B, S, S).to(h.device)
            idx = torch.where(valid, torch.arange(S, device=h.device), -1).max(1).values.clamp(min=0)
            rows = gate.fires(h[torch.arange(B, device=h.device), idx])
            run.counter.add_probe(B * h.shape[-1])
            run.state["gate"] = bool(rows.any())
            run.state["gate_rows"] = rows.tolist()
            run.state["gate_calls"] += 1
            run.state["gate_fired_calls"] += int(bool(rows.any()))

        return [run.blocks[0].layer.register_forward_pre_hook(reset, with_kwargs=True),
                run.blocks[gate.layer].layer.register_forward_pre_hook(read, with_kwargs=True)]

    def protected(self, site: AttnSite | MlpSite, kind: str) -> torch.Tensor | None:
        """The protected units, unless the gate is on and did not fire for this sequence."""
        if self.gate and site.run.state.get("gate") is False:
            return None
        return self.protected_units(kind, site.block.index)


# ----------------------------------------------------------------------------------------------
# Evaluation

# --methods name → ``(ratio, skip=..., **kw) -> Pruner | None`` (None: the dense model, unpruned)
PRUNING_METHODS: Registry[Callable[..., Pruner | None]] = Registry("pruning method", listing="known methods: ")
PRUNING_METHODS.register("dense", lambda ratio, *, skip=DEFAULT_SKIP, **kw: None)
PRUNING_METHODS.register("pp", ProbePruning)
PRUNING_METHODS.register("wanda-sp", WandaSP)
PRUNING_METHODS.register("aapp", AAPP)
PRUNING_METHODS.register("aapp-gate", lambda ratio, *, skip=DEFAULT_SKIP, **kw: AAPP(ratio, skip=skip, gate=True, **kw))


def make_pruner(method: str, ratio: float, *, skip: int = DEFAULT_SKIP, **kw: Any) -> Pruner | None:
    """A pruner by name (None for "dense"); a one-line error lists the known methods."""
    _check_ratio(ratio)
    return PRUNING_METHODS.get(method)(ratio, skip=skip, **kw)


@torch.inference_mode()
def perplexity(model: nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 4,
               max_length: int = 512) -> float:
    """Token-weighted perplexity of ``texts`` (each cut to ``max_length`` tokens; padding excluded)."""
    device = model_device(model)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for ids, mask in _token_batches(tokenizer, _texts(texts, "perplexity texts"), batch_size, max_length,
                                        min_tokens=2):
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
            target = mask[:, 1:].flatten().bool()  # right padding: a real target has a real input before it
            total += float(nll[target].sum())
            count += int(target.sum())
    finally:
        model.train(was_training)
    if not count:
        raise TunelabError("perplexity needs texts of at least 2 tokens")
    return math.exp(total / count)


# (model, tokenizer) -> a refusal rate, a dict of metrics, or a step giving that dict that
# compare_pruning calls once the pruned context is off (judged_safety's: the guard's likelihood
# test then scores the answers under the dense model).
SafetyFn = Callable[[nn.Module, Any], Any]


def judged_safety(harmful: Sequence[Any], benign: Sequence[Any], *, judge: Any = None, **generation: Any) -> SafetyFn:
    """A safety callable for :func:`compare_pruning`: the safety suite with ``judge`` (a Judge,
    a ``--judge`` spec, or None: keyword) and the degenerate-text guard.

    ``generation`` goes to :func:`tunelab.evaluate.safety.safety_answers` (max_new_tokens,
    batch_size, …). The callable generates (under the pruned forwards) and returns the step that
    judges, for after them: the guard's likelihood test scores the answers under the same model
    unpruned, the dense model (no copy: pruning patches forwards, not weights). The step returns
    the suite's ``refusal_rate``, ``over_refusal``, ``asr``, ``asr_fluent`` and
    ``degenerate_rate`` and the judge's provenance (``judge``, ``judge_version``,
    ``judge_threshold``, ``guard``, ``guard_reference``: "dense model").
    """
    from tunelab.evaluate.judges import PROVENANCE_KEYS, get_judge
    from tunelab.evaluate.safety import judge_safety, safety_answers

    harm = [p if isinstance(p, Mapping) else {"prompt": p, "category": "harmful"} for p in harmful]
    ben = [p if isinstance(p, Mapping) else {"prompt": p, "category": "benign"} for p in benign]
    # built once, before the first row: an embedding judge loads its encoder here
    judged_by = get_judge(judge or "keyword") if judge is None or isinstance(judge, str) else judge

    def run(model: nn.Module, tokenizer: Any) -> Callable[[], dict[str, Any]]:
        answers = safety_answers(model, tokenizer, harm, ben, **{"progress": False, **generation})

        def judged() -> dict[str, Any]:
            out = judge_safety(answers, judged_by, nll_reference=(model, tokenizer), reference_name="dense model")
            return {k: out[k] for k in ("refusal_rate", "over_refusal", "asr", "asr_fluent", "degenerate_rate", *PROVENANCE_KEYS)}

        return judged

    return run


def keyword_safety(harmful: Sequence[Any], benign: Sequence[Any], **generation: Any) -> SafetyFn:
    """:func:`judged_safety` with the keyword judge (kept for callers written before ``judge``)."""
    return judged_safety(harmful, benign, judge="keyword", **generation)


def _safety_fn(safety: SafetyFn | Mapping[str, Any] | None) -> SafetyFn | None:
    if safety is None or callable(safety):
        return safety
    if isinstance(safety, Mapping) and "harmful" in safety:
        spec = dict(safety)
        return judged_safety(spec.pop("harmful"), spec.pop("benign", []), **spec)
    raise TunelabError("safety must be a callable (model, tokenizer) -> metrics or {'harmful': [...], 'benign': [...]}")


def _accuracy(model: nn.Module, tokenizer: Any, records: Sequence[Mapping[str, Any]], chat: bool,
              batch_size: int) -> float:
    from tunelab.evaluate.scorers import choice_loglikelihoods, pick_choice

    lls = choice_loglikelihoods(model, tokenizer, [r["prompt"] for r in records], [r["choices"] for r in records],
                                chat=chat, batch_size=batch_size, option_prompts=[r.get("prompts") for r in records])
    right = [pick_choice(ll, r["choices"]) == r["answer"] for r, ll in zip(records, lls)]
    return sum(right) / len(right)


def compare_pruning(
    model: nn.Module,
    tokenizer: Any,
    *,
    methods: Sequence[str] = ("dense", "pp", "wanda-sp", "aapp"),
    ratios: Sequence[float] = (0.2, 0.3, 0.4),
    ppl_texts: Sequence[str],
    calib_texts: Sequence[str] | None = None,
    choice_records: Sequence[Mapping[str, Any]] | None = None,
    chat: bool = True,
    safety: SafetyFn | Mapping[str, Any] | None = None,
    alignment: tuple[Sequence[Any], Sequence[Any]] | AlignmentStats | None = None,
    skip: int = DEFAULT_SKIP,
    protect: float = DEFAULT_PROTECT,
    batch_size: int = 4,
    max_length: int = 512,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate pruning methods × ratios; one row per (method, ratio), "dense" once at ratio 0.

    Each row: ``method``, ``ratio``, ``flops_saved`` (counted: 1 − performed / dense MACs over
    everything run for the row), ``macs``, ``dense_macs``, ``ppl`` on ``ppl_texts``; ``accuracy``
    with ``choice_records`` (``{"prompt", "choices", "answer": index}``, log-likelihood choice);
    the safety callable's metrics (e.g. ``refusal_rate``) with ``safety`` — a callable
    ``(model, tokenizer) -> float | dict`` or ``{"harmful": [...], "benign": [...], "judge": ..., **generation}``
    run by :func:`judged_safety` (keyword judge unless ``judge`` is given). Everything runs under the pruned context
    but a step the safety callable returns, which runs after it (judging against the dense model).

    Calibration (Probe Pruning's EMA, Wanda-sp's activations) uses ``calib_texts`` (default:
    ``ppl_texts``); AAPP's alignment uses ``alignment`` = ``(harmful, benign)`` prompt lists
    (default: the HarmBench / look-alike train halves) or precomputed :class:`AlignmentStats`.
    """
    for m in methods:
        PRUNING_METHODS.canonical(m)  # unknown → one line naming the known methods
    for r in ratios:
        _check_ratio(r)
    safety_fn = _safety_fn(safety)
    from tunelab.inspect.pruned_modules import check_plain_linears

    check_plain_linears(blocks(model))
    ppl_texts = _texts(ppl_texts, "ppl_texts")
    jobs = [("dense", 0.0)] if "dense" in methods else []
    jobs += [(m, float(r)) for m in methods if m != "dense" for r in ratios]
    stats = align = None
    if any(m != "dense" for m in methods) and any(ratios):
        stats = activation_stats(model, tokenizer, calib_texts or ppl_texts, batch_size=batch_size,
                                 max_length=max_length)
    if any(m.startswith("aapp") for m in methods):
        if isinstance(alignment, AlignmentStats):
            align = alignment
        else:
            harmful, benign = alignment if alignment is not None else (None, None)
            align = alignment_stats(model, tokenizer, harmful, benign, chat=chat, batch_size=batch_size)

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    rows: list[dict[str, Any]] = []
    columns = (TextColumn("pruning {task.fields[job]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("pruning", total=len(jobs), job="")
        for method, ratio in jobs:
            bar.update(task, job=f"{method} {ratio:g}")
            kw = {"protect": protect} if method.startswith("aapp") else {}
            pruner = make_pruner(method, ratio, skip=skip, **kw)
            if stats is not None and isinstance(pruner, (ProbePruning, WandaSP)):
                pruner.use_stats(stats)
            if isinstance(pruner, AAPP):
                assert align is not None
                pruner.use_alignment(align)
            row: dict[str, Any] = {"method": method, "ratio": ratio}
            got = None
            with pruned(model, pruner) as run:
                row["ppl"] = perplexity(model, tokenizer, ppl_texts, batch_size=batch_size, max_length=max_length)
                if choice_records:
                    row["accuracy"] = _accuracy(model, tokenizer, choice_records, chat, batch_size)
                if safety_fn is not None:
                    got = safety_fn(model, tokenizer)
            if callable(got):  # judged with the pruning off: the guard's likelihood test is the dense model's
                got = got()
            if got is not None:
                row.update(got if isinstance(got, Mapping) else {"refusal_rate": float(got)})
            row.update(flops_saved=run.saved, macs=run.macs, dense_macs=run.dense_macs, probe_macs=run.probe_macs)
            if isinstance(pruner, AAPP) and pruner.harm_gate is not None:
                row["gate_train_accuracy"] = pruner.harm_gate.train_accuracy
                row["gate_cv_accuracy"] = pruner.harm_gate.cv_accuracy
                row["gate_fired_calls"] = run.state.get("gate_fired_calls", 0)
            rows.append(row)
            bar.advance(task)
    return rows


__all__ = [
    "AAPP",
    "PRUNING_METHODS",
    "ActivationStats",
    "AlignmentStats",
    "HarmGate",
    "MacCounter",
    "ProbePruning",
    "PruneRun",
    "Pruner",
    "RatioPruner",
    "StaticPlan",
    "WandaSP",
    "activation_stats",
    "alignment_stats",
    "channel_scores",
    "compare_pruning",
    "count_macs",
    "effect_sizes",
    "fit_gate",
    "fuse",
    "head_scores",
    "judged_safety",
    "keyword_safety",
    "lowest_pruned",
    "make_pruner",
    "perplexity",
    "pruned",
    "wanda_sp_scores",
]
