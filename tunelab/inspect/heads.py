"""Inactive attention heads: per-input head scores, thresholds, dynamic zeroing and a sweep.

Scores (per input, layer and head; padding excluded; see ``SCORES``) come from one recording
forward: ``A`` = attention weights after repeat_kv (eager attention, switched on only when a
requested score needs them), ``V`` = values of each key/value head broadcast to its query heads,
``O`` = A·V = the head's output before o_proj (hook point ``z``). ``_ln`` divides by the layer's
mean over heads for that input, ``_hn`` by the head's own mean over tokens.

A head is inactive when its score is below τ (above τ for first-token weight); τ comes from the
empirical distribution of all recorded scores so that a chosen fraction of heads is flagged. The
flagged set is recomputed for every input and zeroed before o_proj (``zero_heads``).
``head_sweep`` measures multiple-choice accuracy against the actual % of heads zeroed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from torch import nn

from tunelab.errors import TunelabError
from tunelab.registry import Registry
from tunelab.evaluate.scorers import (
    choice_pairs,
    nest_pair_scores,
    pair_loglikelihoods,
    pick_choice,
)
from tunelab.inspect.hooks import (
    Geometry,
    attn_implementation,
    blocks,
    eager_attention,
    geometry,
    model_device,
    observe,
    patch,
)

LOW, HIGH = "low", "high"  # which end of a score means "inactive"


# --------------------------------------------------------------------------- per-layer quantities

@dataclass
class _LayerData:
    """What one layer's scores are computed from (float32; tensors absent when not needed)."""

    mask: torch.Tensor  # [B, S] bool, True at real tokens
    first: torch.Tensor  # [B] index of the first real token
    last: torch.Tensor  # [B] index of the last real token
    pattern: torch.Tensor | None = None  # [B, H, S, S]
    v: torch.Tensor | None = None  # [B, S, H, D], broadcast from the KV heads
    z: torch.Tensor | None = None  # [B, S, H, D]
    gram: torch.Tensor | None = None  # [H, D, D] = W_O[h]ᵀ W_O[h]
    n_heads: int = 0
    generator: torch.Generator | None = None  # for the random baseline


def _token_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens of ``x`` [B, S, H] → [B, H]; padded entries never enter (even NaN)."""
    m = mask[:, :, None]
    return torch.where(m, x, 0.0).sum(1) / m.sum(1)


def _at(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b]]`` for x [B, S, ...]."""
    return x[torch.arange(x.shape[0], device=x.device), index]


def _first_token_weight(d: _LayerData) -> torch.Tensor:
    a = d.pattern  # [B, H, Sq, Sk]
    to_first = a.gather(3, d.first.view(-1, 1, 1, 1).expand(*a.shape[:3], 1)).squeeze(3)  # [B, H, Sq]
    return _token_mean(to_first.transpose(1, 2), d.mask)


def _entropy(d: _LayerData) -> torch.Tensor:
    # xlogy: 0·log 0 = 0, so masked keys (weight exactly 0) add nothing.
    per_query = -torch.special.xlogy(d.pattern, d.pattern).sum(-1)  # [B, H, Sq]
    return _token_mean(per_query.transpose(1, 2), d.mask)


def _first_token_value_norm(d: _LayerData) -> torch.Tensor:
    return _at(d.v, d.first).norm(dim=-1)


def _mean_value_norm(d: _LayerData) -> torch.Tensor:
    return _token_mean(d.v.norm(dim=-1), d.mask)


def _last_token_output_norm(d: _LayerData) -> torch.Tensor:
    return _at(d.z, d.last).norm(dim=-1)


def _mean_output_norm(d: _LayerData) -> torch.Tensor:
    return _token_mean(d.z.norm(dim=-1), d.mask)


def _contribution_norm(d: _LayerData) -> torch.Tensor:
    # ‖W_O[h] o‖² = oᵀ (W_O[h]ᵀ W_O[h]) o: no [B, S, H, hidden] tensor.
    squared = torch.einsum("bshd,hde,bshe->bsh", d.z, d.gram, d.z).clamp_min(0)
    return _token_mean(squared.sqrt(), d.mask)


def _hn(d: _LayerData) -> torch.Tensor:
    return _last_token_output_norm(d) / _mean_output_norm(d).clamp_min(torch.finfo(torch.float32).tiny)


def _ln(fn: Callable[[_LayerData], torch.Tensor]) -> Callable[[_LayerData], torch.Tensor]:
    def normalized(d: _LayerData) -> torch.Tensor:
        raw = fn(d)
        return raw / raw.mean(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)

    normalized.__name__ = f"{fn.__name__}_ln"
    return normalized


def _random(d: _LayerData) -> torch.Tensor:
    return torch.rand(d.mask.shape[0], d.n_heads, generator=d.generator)


class Score(NamedTuple):
    """A head score: ``fn(layer data) -> [B, H]``, which end means inactive (``low``/``high``) and
    the hook point it records (``pattern``, ``v``, ``z``; None: it needs no recording)."""

    fn: Callable[[_LayerData], torch.Tensor]
    direction: str
    point: str | None = None


_BASE: dict[str, tuple[Callable[[_LayerData], torch.Tensor], str, str]] = {
    # name: (fn, direction, hook point it needs)
    "first_token_weight": (_first_token_weight, HIGH, "pattern"),
    "entropy": (_entropy, LOW, "pattern"),
    "first_token_value_norm": (_first_token_value_norm, LOW, "v"),
    "mean_value_norm": (_mean_value_norm, LOW, "v"),
    "last_token_output_norm": (_last_token_output_norm, LOW, "z"),
    "mean_output_norm": (_mean_output_norm, LOW, "z"),
    "contribution_norm": (_contribution_norm, LOW, "z"),
}
# --scores name → its Score: each base score, its LayerNorm'd ``_ln`` variant, one ``_hn`` and ``random``
SCORES: Registry[Score] = Registry("head score", listing="known scores: ")
for _name, (_fn, _direction, _point) in _BASE.items():
    SCORES.register(_name, Score(_fn, _direction, _point))
    SCORES.register(f"{_name}_ln", Score(_ln(_fn), _direction, _point))
    if _name == "last_token_output_norm":
        SCORES.register(f"{_name}_hn", Score(_hn, LOW, "z"))
SCORES.register("random", Score(_random, LOW, None))
del _name, _fn, _direction, _point


def _check_names(names: Iterable[str] | str | None) -> list[str]:
    wanted = list(SCORES) if names is None else [names] if isinstance(names, str) else list(names)
    if not wanted:
        raise TunelabError(f"no head scores given; known scores: {', '.join(SCORES)}")
    for name in wanted:
        SCORES.canonical(name)  # unknown → "unknown head score 'x' (did you mean ...); known scores: ..."
    return list(dict.fromkeys(wanted))


def _check_fraction(fraction: float) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise TunelabError(f"fraction of heads must be a number in [0, 1], got {fraction!r}")
    return float(fraction)


def _check_direction(direction: str) -> str:
    if direction not in (LOW, HIGH):
        raise TunelabError(f"direction must be '{LOW}' or '{HIGH}', got {direction!r}")
    return direction


# --------------------------------------------------------------------------- scoring forward

def _o_weight(o_proj: nn.Module, device: torch.device) -> torch.Tensor:
    """W_O [hidden, H·D] as the module applies it, in float32 (LoRA and other wrappers included)."""
    if type(o_proj) is nn.Linear:
        return o_proj.weight.detach().float()
    # A wrapper (PEFT LoRA, …) is still linear in its input: probe it with the identity.
    # .forward skips o_proj's own hooks (a zero_heads patch may be active).
    width = o_proj.in_features if hasattr(o_proj, "in_features") else o_proj.get_base_layer().in_features
    dtype = next(o_proj.parameters()).dtype
    with torch.no_grad():
        eye = torch.eye(width, device=device, dtype=dtype)
        out = o_proj.forward(eye) - o_proj.forward(torch.zeros(1, width, device=device, dtype=dtype))
    return out.T.detach().float()


def _grams(model: nn.Module, geo: Geometry, device: torch.device) -> list[torch.Tensor]:
    grams = []
    with torch.autocast(device.type, enabled=False):  # float32 even under bf16 autocast
        for block in blocks(model):
            w = _o_weight(block.part("o_proj"), device).view(-1, geo.n_heads, geo.head_dim)
            grams.append(torch.einsum("ohd,ohe->hde", w, w))
    return grams


def _check_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise TunelabError(f"input_ids must be a [batch, seq] tensor, got {getattr(input_ids, 'shape', type(input_ids))}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise TunelabError(f"attention_mask {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}")
    empty = (attention_mask.sum(-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise TunelabError(f"row {empty[0]} of attention_mask has no tokens")
    return input_ids, attention_mask


def _score_forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                   names: list[str], generator: torch.Generator | None,
                   logits_to_keep: int | torch.Tensor = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One forward that records ``names``: (scores {name: [B, L, H] float32 on CPU}, logits at
    ``logits_to_keep``: transformers' argument, 0 = every position)."""
    input_ids, attention_mask = _check_inputs(input_ids, attention_mask)
    geo, device = geometry(model), model_device(model)
    ids, mask = input_ids.to(device), attention_mask.to(device)
    real = mask.bool()
    first = real.int().argmax(-1)  # argmax returns the first maximum
    last = real.shape[1] - 1 - real.flip(-1).int().argmax(-1)
    points = sorted({SCORES.get(n).point for n in names} - {None})
    grams = _grams(model, geo, device) if any(n.startswith("contribution_norm") for n in names) else None
    out = {n: torch.empty(ids.shape[0], geo.n_layers, geo.n_heads) for n in names}
    stash: dict[int, dict[str, torch.Tensor]] = {}

    def on_point(point: str, value: torch.Tensor, layer: int) -> None:
        got = stash.setdefault(layer, {})
        if point == "v":  # broadcast each KV head to the query heads that share it (as repeat_kv does)
            value = value.repeat_interleave(geo.group, dim=2)
        got[point] = value.detach().float()
        if len(got) < len(points):
            return
        data = _LayerData(real, first, last, got.get("pattern"), got.get("v"), got.get("z"),
                          grams[layer] if grams else None, geo.n_heads)
        with torch.autocast(device.type, enabled=False):  # scores in float32 even under bf16 autocast
            for n in names:
                if SCORES.get(n).point is not None:
                    out[n][:, layer] = SCORES.get(n).fn(data).cpu()
        del stash[layer]  # keep one layer's tensors at a time

    # Positions from the mask, so a left-padded row sees the same positions as unpadded.
    position_ids = (mask.long().cumsum(-1) - 1).clamp_min(0)
    with ExitStack() as stack:
        if points:
            stack.enter_context(observe(model, points, on_point))
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, logits_to_keep=logits_to_keep).logits
    for layer in range(geo.n_layers):  # scores that need no activations (random), in a fixed order
        data = _LayerData(real.cpu(), first.cpu(), last.cpu(), n_heads=geo.n_heads, generator=generator)
        for n in names:
            if SCORES.get(n).point is None:
                out[n][:, layer] = SCORES.get(n).fn(data)
    return out, logits


@torch.inference_mode()
def head_scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                names: Iterable[str] | str | None = None, *, seed: int | torch.Generator = 0) -> dict[str, torch.Tensor]:
    """Head scores of each input: ``{name: [B, n_layers, n_heads]}`` (float32, CPU), from one forward.

    ``names`` defaults to every score in ``SCORES``. Padding (zeros of ``attention_mask``, left or
    right) is excluded: a padded row scores as the same sequence alone. ``seed`` seeds ``random``.
    """
    wanted = _check_names(names)
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    model.eval()
    return _score_forward(model, input_ids, attention_mask, wanted, generator)[0]


def needs_pattern(names: Iterable[str]) -> bool:
    """Whether any of these scores needs attention weights (hence eager attention)."""
    return any(SCORES.get(n).point == "pattern" for n in _check_names(names))


# --------------------------------------------------------------------------- thresholds and zeroing

def thresholds(recorded: torch.Tensor, fraction: float, direction: str) -> float:
    """τ such that ``flag(recorded, τ, direction)`` flags ``fraction`` of all recorded scores.

    ``recorded`` is any tensor of scores (typically [N, L, H]). τ lies halfway between the last
    flagged and the first kept value, so with distinct values exactly round(fraction·n) are
    flagged. Fraction 0 gives ±inf (nothing is ever flagged), fraction 1 the opposite.
    """
    fraction, direction = _check_fraction(fraction), _check_direction(direction)
    values = recorded.detach().flatten().float()
    values = values[~values.isnan()]
    n = values.numel()
    if n == 0:
        raise TunelabError("no recorded scores to take a threshold from")
    k = round(fraction * n)
    if k == 0:
        return -math.inf if direction == LOW else math.inf
    if k == n:
        return math.inf if direction == LOW else -math.inf
    ordered = values.sort(descending=direction == HIGH).values
    return float((ordered[k - 1] + ordered[k]) / 2)


def flag(scores: torch.Tensor, tau: float, direction: str) -> torch.Tensor:
    """Boolean mask of inactive heads: score < τ (``low``) or > τ (``high``)."""
    return scores < tau if _check_direction(direction) == LOW else scores > tau


def _check_mask(model: nn.Module, mask: torch.Tensor, dims: int) -> Geometry:
    geo = geometry(model)
    shape = "[batch, layers, heads]" if dims == 3 else "[layers, heads]"
    if not isinstance(mask, torch.Tensor) or mask.dim() != dims or tuple(mask.shape[-2:]) != (geo.n_layers, geo.n_heads):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TunelabError(f"head mask must be {shape} with {geo.n_layers} layers and {geo.n_heads} heads, got {got}")
    return geo


@contextmanager
def zero_heads(model: nn.Module, mask: torch.Tensor) -> Iterator[None]:
    """Zero, for each input row b, the heads with ``mask[b, layer, head]`` True (before o_proj).

    The batch of every forward inside the context must have ``mask.shape[0]`` rows.
    """
    _check_mask(model, mask, 3)
    mask = mask.bool().to(model_device(model))

    def zero(z: torch.Tensor, layer: int) -> torch.Tensor | None:
        rows = mask[:, layer]  # [B, H]
        if rows.shape[0] != z.shape[0]:
            raise TunelabError(f"head mask has {rows.shape[0]} rows but the batch has {z.shape[0]}")
        if not rows.any():
            return None
        return torch.where(rows[:, None, :, None], torch.zeros((), dtype=z.dtype, device=z.device), z)

    with patch(model, "z", zero):
        yield


@contextmanager
def static_zero(model: nn.Module, mask: torch.Tensor) -> Iterator[None]:
    """Zero the heads with ``mask[layer, head]`` True for every input (a static head mask)."""
    _check_mask(model, mask, 2)
    mask = mask.bool().to(model_device(model))

    def zero(z: torch.Tensor, layer: int) -> torch.Tensor | None:
        heads = mask[layer]
        if not heads.any():
            return None
        return torch.where(heads[:, None], torch.zeros((), dtype=z.dtype, device=z.device), z)

    with patch(model, "z", zero):
        yield


# --------------------------------------------------------------------------- the sweep

def _fmt_fraction(fraction: float) -> str:
    return f"{fraction:g}"


@dataclass
class HeadSweep:
    """Accuracy with dynamically zeroed heads, per score and fraction (see ``head_sweep``).

    ``rows``: one dict per (score, fraction) with ``score``, ``fraction``, ``threshold`` (None when
    infinite), ``actual_pct`` (actual mean % of heads zeroed per sequence), ``accuracy``,
    ``accuracy_norm`` (option log-likelihood ÷ its length in characters) and ``n`` (questions).
    ``mean_scores``: per score, the [L, H] mean over sequences. ``flag_rates``: per (score,
    fraction), the [L, H] share of sequences in which each head was zeroed.
    """

    rows: list[dict[str, Any]]
    baseline: dict[str, float]
    directions: dict[str, str]
    mean_scores: dict[str, torch.Tensor]
    flag_rates: dict[tuple[str, float], torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def largest_within(self, points: float = 1.0) -> dict[str, float]:
        """Per score, the largest actual % of heads zeroed whose accuracy ≥ baseline − ``points`` (percentage points)."""
        floor = self.baseline["accuracy"] - points / 100 - 1e-12
        best: dict[str, float] = {}
        for row in self.rows:
            best.setdefault(row["score"], 0.0)
            if row["accuracy"] >= floor:
                best[row["score"]] = max(best[row["score"]], row["actual_pct"])
        return best

    def best(self, points: float = 1.0) -> dict[str, Any] | None:
        """The non-random score that zeroes most heads within ``points`` of the baseline, and its row."""
        floor = self.baseline["accuracy"] - points / 100 - 1e-12
        ok = [r for r in self.rows if r["score"] != "random" and r["accuracy"] >= floor]
        return max(ok, key=lambda r: (r["actual_pct"], r["accuracy"]), default=None)

    def static_mask(self, score: str, fraction: float) -> torch.Tensor:
        """[L, H] bool: heads zeroed in at least half of the sequences at (score, fraction).

        The majority vote over inputs keeps the heads the dynamic rule actually zeroed; comparing
        the mean score with τ would not (τ is a per-input threshold).
        """
        fraction = _check_fraction(fraction)
        key = (score, fraction)
        if key not in self.flag_rates:
            known = ", ".join(f"{s}@{_fmt_fraction(f)}" for s, f in self.flag_rates)
            raise TunelabError(f"no sweep row for score '{score}' at fraction {fraction:g}; rows: {known}")
        return self.flag_rates[key] >= 0.5

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable dict (``from_json`` reads it back)."""
        return {
            "kind": "head_sweep",
            **self.meta,
            "baseline": self.baseline,
            "baseline_accuracy": self.baseline["accuracy"],
            "directions": self.directions,
            "rows": self.rows,
            "largest_within": self.largest_within(1.0),
            "mean_scores": {name: t.tolist() for name, t in self.mean_scores.items()},
            "flag_rates": [{"score": s, "fraction": f, "rate": t.tolist()} for (s, f), t in self.flag_rates.items()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HeadSweep:
        """Read a ``to_json`` dict (e.g. a loaded heads.json)."""
        if not isinstance(data, dict) or data.get("kind") not in ("head_sweep", "heads"):
            raise TunelabError("not a head sweep: expected a JSON object with \"kind\": \"head_sweep\"")
        try:
            meta = {k: v for k, v in data.items() if k not in _SWEEP_FIELDS}
            return cls(rows=list(data["rows"]), baseline=dict(data["baseline"]), directions=dict(data["directions"]),
                       mean_scores={n: torch.tensor(v, dtype=torch.float32) for n, v in data["mean_scores"].items()},
                       flag_rates={(r["score"], float(r["fraction"])): torch.tensor(r["rate"], dtype=torch.float32)
                                   for r in data["flag_rates"]},
                       meta=meta)
        except (KeyError, TypeError, ValueError) as exc:
            raise TunelabError(f"head sweep JSON is missing or has a malformed field ({exc})") from None

    def save(self, directory: str | Path) -> list[Path]:
        """Write heads.json, head_mask.safetensors, heads_accuracy.png and heads_scores.png; return the paths.

        The mask is the static mask (``static_mask``) of the best non-random score at the
        largest fraction within 1 point of the baseline (all False when none is).
        """
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        best = self.best(1.0)
        if best is not None and best["fraction"] > 0:
            mask = self.static_mask(best["score"], best["fraction"])
        else:
            shape = next(iter(self.mean_scores.values())).shape if self.mean_scores else (
                self.meta["n_layers"], self.meta["n_heads"])
            mask = torch.zeros(*shape, dtype=torch.bool)
        paths = [out / "heads.json", out / "head_mask.safetensors", out / "heads_accuracy.png", out / "heads_scores.png"]
        chosen = {"score": best["score"] if best else None, "fraction": best["fraction"] if best else 0.0,
                  "actual_pct": best["actual_pct"] if best else 0.0, "accuracy": best["accuracy"] if best else None,
                  "static_pct": 100 * mask.float().mean().item(), "rule": "zeroed in >= 50% of the sequences"}
        data = {**self.to_json(), "static_mask": {**chosen, "file": paths[1].name, "mask": mask.tolist()}}
        paths[0].write_text(json.dumps(data, indent=1) + "\n")
        metadata = {k: json.dumps(v) for k, v in chosen.items()}
        metadata.update(model=str(self.meta.get("model")), baseline_accuracy=json.dumps(self.baseline["accuracy"]))
        save_file({"head_mask": mask.contiguous()}, str(paths[1]), metadata=metadata)
        self.plot_accuracy(paths[2])
        self.plot_scores(paths[3])
        return paths

    def plot_accuracy(self, path: str | Path) -> None:
        """Accuracy vs actual % of heads zeroed, one line per score (random dashed)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for score in dict.fromkeys(r["score"] for r in self.rows):
            rows = sorted((r for r in self.rows if r["score"] == score), key=lambda r: r["actual_pct"])
            ax.plot([r["actual_pct"] for r in rows], [100 * r["accuracy"] for r in rows], marker="o",
                    linestyle="--" if score == "random" else "-", color="grey" if score == "random" else None,
                    label=score)
        base = 100 * self.baseline["accuracy"]
        ax.axhline(base, color="black", linewidth=0.8, label="unablated")
        ax.axhline(base - 1, color="black", linewidth=0.8, linestyle=":", label="unablated − 1 point")
        ax.set_xlabel("heads zeroed (%, actual)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{self.meta.get('model', 'model')}: accuracy with inactive heads zeroed (n={self.baseline.get('n')})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    def plot_scores(self, path: str | Path) -> None:
        """One heatmap per score of its mean over inputs, layers × heads."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        names = [n for n in self.mean_scores if n != "random"] or list(self.mean_scores)
        cols = min(3, len(names))
        rows = math.ceil(len(names) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
        for ax, name in zip(axes.flat, names):
            image = ax.imshow(self.mean_scores[name].numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
            ax.set_title(f"{name} ({self.directions[name]} = inactive)", fontsize=9)
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            fig.colorbar(image, ax=ax)
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


# to_json/save fields that are not ``meta`` (derived, or kept in their own attribute).
_SWEEP_FIELDS = {"kind", "baseline", "baseline_accuracy", "directions", "rows", "largest_within", "mean_scores",
                 "flag_rates", "static_mask"}


def _check_records(records: Sequence[dict[str, Any]]) -> None:
    if not records:
        raise TunelabError("no records to evaluate")
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not {"prompt", "choices", "answer"} <= set(r):
            raise TunelabError(f"record {i} must be an object with 'prompt', 'choices' and 'answer'")
        choices = r["choices"]
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise TunelabError(f"record {i}: 'choices' must be a list of at least 2 strings")
        answer = r["answer"]
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise TunelabError(f"record {i}: 'answer' must be an option index 0..{len(choices) - 1}, got {answer!r}")


def _accuracy(records: Sequence[dict[str, Any]], lls: list[list[float]]) -> tuple[float, float]:
    hits = [pick_choice(ll, r["choices"]) == r["answer"] for r, ll in zip(records, lls)]
    hits_norm = [pick_choice(ll, r["choices"], normalize=True) == r["answer"] for r, ll in zip(records, lls)]
    return sum(hits) / len(records), sum(hits_norm) / len(records)


def head_sweep(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    *,
    scores: Sequence[str] = ("mean_output_norm_ln", "first_token_weight", "random"),
    fractions: Sequence[float] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3),
    chat: bool = True,
    batch_size: int = 16,
    bf16: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> HeadSweep:
    """Multiple-choice accuracy with the inactive heads of every sequence zeroed, per score and fraction.

    ``records``: ``{"prompt": str | messages, "choices": [str], "answer": int}`` (and ``"prompts"``,
    one context per option, where options differ in context: WinoGrande); each (prompt,
    option) sequence is tokenized and scored as ``choice_loglikelihoods`` does. Pass 1 records
    every score for every sequence (one forward per batch); τ per (score, fraction) comes from that
    distribution; pass 2 reruns each batch per (score, fraction > 0) with each sequence's flagged
    heads zeroed. The baseline (fraction 0) is the unablated accuracy under the model's own
    attention implementation.
    """
    names = _check_names(scores)
    wanted = sorted({_check_fraction(f) for f in fractions})
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise TunelabError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    _check_records(records)
    geo = geometry(model)
    prompts, choices = [r["prompt"] for r in records], [r["choices"] for r in records]
    pairs = choice_pairs(tokenizer, prompts, choices, chat, [r.get("prompts") for r in records])
    generator = torch.Generator().manual_seed(seed)
    eager = needs_pattern(names) and attn_implementation(model) != "eager"
    configs = [(n, f) for n in names for f in wanted if f > 0]
    n_batches = math.ceil(len(pairs) / batch_size)
    recorded = {n: torch.empty(len(pairs), geo.n_layers, geo.n_heads) for n in names}

    def record_batch(rows: list[int], ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        got, logits = _score_forward(model, ids, mask, names, generator, keep)
        for n in names:
            recorded[n][rows] = got[n]
        return logits

    columns = (TextColumn("head sweep: {task.fields[stage]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("batches"), TimeElapsedColumn())
    total = n_batches * (1 + eager + len(configs))
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("sweep", total=total, stage="recording scores")

        def advance(_: int) -> None:
            bar.update(task, advance=1)

        common: dict[str, Any] = {"batch_size": batch_size, "bf16": bf16, "on_batch": advance}
        with eager_attention(model) if eager else nullcontext():
            first_pass = pair_loglikelihoods(model, tokenizer, pairs, forward=record_batch, **common)
        if eager:  # the ablated passes run the model's own attention: so must the baseline
            bar.update(task, stage="baseline")
            first_pass = pair_loglikelihoods(model, tokenizer, pairs, **common)
        accuracy, accuracy_norm = _accuracy(records, nest_pair_scores(pairs, first_pass, choices))
        baseline = {"accuracy": accuracy, "accuracy_norm": accuracy_norm, "n": len(records)}

        rows: list[dict[str, Any]] = []
        flag_rates: dict[tuple[str, float], torch.Tensor] = {}
        for name in names:
            direction = SCORES.get(name).direction
            for fraction in wanted:
                if fraction == 0:
                    rows.append({"score": name, "fraction": 0.0, "threshold": None, "actual_pct": 0.0,
                                 **{k: baseline[k] for k in ("accuracy", "accuracy_norm", "n")}})
                    flag_rates[name, 0.0] = torch.zeros(geo.n_layers, geo.n_heads)
                    continue
                tau = thresholds(recorded[name], fraction, direction)
                flags = flag(recorded[name], tau, direction)

                def ablated(batch: list[int], ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor,
                            flags: torch.Tensor = flags) -> torch.Tensor:
                    with zero_heads(model, flags[batch]):
                        return model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits

                bar.update(task, stage=f"{name} at {fraction:g}")
                lls = pair_loglikelihoods(model, tokenizer, pairs, forward=ablated, **common)
                acc, acc_norm = _accuracy(records, nest_pair_scores(pairs, lls, choices))
                rows.append({"score": name, "fraction": fraction, "threshold": tau if math.isfinite(tau) else None,
                             "actual_pct": 100 * flags.float().mean().item(), "accuracy": acc,
                             "accuracy_norm": acc_norm, "n": len(records)})
                flag_rates[name, fraction] = flags.float().mean(0)

    meta = {"model": str(getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__),
            "n": len(records), "n_sequences": len(pairs), "scores": names, "fractions": wanted,
            "n_layers": geo.n_layers, "n_heads": geo.n_heads, "n_kv_heads": geo.n_kv_heads,
            "chat_template": chat, "bf16": bf16, "seed": seed}
    return HeadSweep(rows=rows, baseline=baseline, directions={n: SCORES.get(n).direction for n in names},
                     mean_scores={n: recorded[n].mean(0) for n in names}, flag_rates=flag_rates, meta=meta)


def load_head_mask(path: str | Path) -> torch.Tensor:
    """The [layers, heads] bool mask of a head_mask.safetensors written by ``HeadSweep.save``."""
    from tunelab.files import load_safetensors

    _, tensors = load_safetensors(path, "head mask file")
    mask = tensors.get("head_mask")
    if mask is None:
        raise TunelabError(f"{path}: no 'head_mask' tensor (has: {', '.join(tensors) or 'nothing'})")
    if mask.dim() != 2:
        raise TunelabError(f"{path}: head_mask must be [layers, heads], got shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool and not torch.isin(mask, torch.tensor([0, 1], dtype=mask.dtype)).all():
        raise TunelabError(f"{path}: head_mask must hold booleans (0/1), got {mask.dtype} values")
    return mask.bool()
