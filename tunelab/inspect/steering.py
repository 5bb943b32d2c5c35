"""Steering vectors: train from contrast pairs, save as safetensors, apply at inference.

Train: residual activations (``resid_post`` of each layer) of the positive and negative side of
every contrast pair, read at the last non-pad token or averaged over a span (the completion when
the pair has a shared prompt), become one vector per layer by

* ``mean-diff`` — mean(positive) − mean(negative) (CAA);
* ``pca-diff`` — first principal component of the per-pair differences (centred, as repeng's
  sklearn PCA does);
* ``pca-center`` — first principal component of both sides after centring each pair on its mean;
* ``logistic`` — the weight vector of a logistic regression separating the two sides.

Every direction is signed so that positives project higher, and scaled to the mean difference's
length along it (coefficient 1 moves an activation from the negative mean to the positive mean
along the direction, whatever the method); ``normalize`` makes it unit length instead. The layer
sweep fits the vector on 80% of the pairs and scores each layer's held-out separation: the AUROC
of the projection of held-out positives vs negatives.

Apply (:func:`steer`, a context manager): ``add`` puts ``coeff · v[layer]`` into the residual
stream at the chosen layers, ``ablate`` removes ``coeff`` times the component along v̂
(``x ← x − coeff (x·v̂) v̂``); at every position, at the prompt's positions only (the prefill
forward, not the decoded tokens) or at the last prompt token. Coefficient 0 leaves every logit
bit-identical.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from tunelab.errors import TunelabError
from tunelab.inspect.hooks import PATCHABLE, blocks, geometry, model_device, patch, record
from tunelab.inspect.hooks import parse_layers  # noqa: F401  (re-exported for the CLI commands)
from tunelab.registry import Registry

# --method name → ``(pos, neg, seed) -> direction`` (unnormalised, either sign); the functions are
# defined under "the vector" below, each with its one-line description as its docstring
STEERING_METHODS: Registry[Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = Registry(
    "steering method", listing="known methods: ")
POSITIONS: dict[str, str] = {
    "all": "every position, prompt and generated tokens",
    "prompt": "the prompt's positions only (the prefill forward)",
    "last": "the last prompt token only",
}
MODES: dict[str, str] = {"add": "x ← x + coeff·v", "ablate": "x ← x − coeff·(x·v̂)v̂"}
READS = ("last", "span")
VECTOR_FILE = "steering.safetensors"
FORMAT = "tunelab-steering/1"


# --------------------------------------------------------------------------- the vector


@dataclass
class SteeringVector:
    """One direction per layer (fp32, ``[hidden]``) plus what it was trained from."""

    directions: dict[int, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        """The layers that have a direction, ascending."""
        return sorted(self.directions)

    @property
    def hidden(self) -> int:
        return int(next(iter(self.directions.values())).shape[0])

    def __post_init__(self) -> None:
        if not self.directions:
            raise TunelabError("a steering vector needs a direction for at least one layer")
        widths = {int(v.shape[-1]) for v in self.directions.values()}
        if len(widths) != 1 or any(v.dim() != 1 for v in self.directions.values()):
            raise TunelabError(f"steering directions must be 1-d and of one width, got widths {sorted(widths)}")
        for layer, v in self.directions.items():
            norm = float(v.float().norm())
            if not norm > 0 or not torch.isfinite(v).all():
                raise TunelabError(f"the steering direction at layer {layer} has zero (or non-finite) norm; "
                                   "its positive and negative activations do not differ there")

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (a file, or ``DIR/steering.safetensors``) as safetensors with JSON metadata."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.suffix != ".safetensors":
            path = path / VECTOR_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"layers.{i}": v.detach().float().contiguous().cpu() for i, v in self.directions.items()}
        save_file(tensors, str(path), metadata={"format": FORMAT, "tunelab": json.dumps(self.meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        """Read a vector written by :meth:`save` (a file or its directory); errors name the file."""
        from safetensors import safe_open

        path = Path(path)
        if path.is_dir():
            path = path / VECTOR_FILE
        if not path.is_file():
            raise TunelabError(f"steering vector not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta_raw = (f.metadata() or {}).get("tunelab", "{}")
                directions = {}
                for key in f.keys():
                    head, _, index = key.partition(".")
                    if head != "layers" or not index.isdigit():
                        raise TunelabError(f"{path}: unexpected tensor '{key}'; a steering vector holds layers.N tensors")
                    directions[int(index)] = f.get_tensor(key).float()
        except TunelabError:
            raise
        except Exception as exc:  # safetensors raises its own error types for a damaged file
            raise TunelabError(f"{path}: not a readable safetensors file ({type(exc).__name__})") from None
        try:
            meta = json.loads(meta_raw)
        except json.JSONDecodeError:
            raise TunelabError(f"{path}: metadata field 'tunelab' is not valid JSON") from None
        try:
            return cls(directions, meta)
        except TunelabError as exc:
            raise TunelabError(f"{path}: {exc}") from None

    def check(self, model: nn.Module, layers: Sequence[int] | None = None) -> list[int]:
        """The layers to steer (default: all the vector has), after checking the vector fits ``model``."""
        geo = geometry(model)
        source = self.meta.get("model") or "another model"
        if self.hidden != geo.hidden:
            raise TunelabError(f"the steering vector is {self.hidden} wide (from {source}) but the model's hidden size is {geo.hidden}")
        trained_layers = self.meta.get("n_layers")
        if trained_layers is not None and int(trained_layers) != geo.n_layers:
            raise TunelabError(f"the steering vector comes from a {trained_layers}-layer model ({source}); this model has {geo.n_layers} layers")
        chosen = self.layers if layers is None else list(layers)
        for i in chosen:
            if not 0 <= i < geo.n_layers:
                raise TunelabError(f"layer {i} out of range: the model has {geo.n_layers} layers (0..{geo.n_layers - 1})")
            if i not in self.directions:
                raise TunelabError(f"the steering vector has no direction for layer {i}; it has layers {_ranges(self.layers)}")
        return chosen


def _ranges(layers: Sequence[int]) -> str:
    """``[0,1,2,5]`` → ``0-2,5``."""
    out, start = [], None
    for k, i in enumerate(layers):
        if start is None:
            start = i
        if k + 1 == len(layers) or layers[k + 1] != i + 1:
            out.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ",".join(out)


# --------------------------------------------------------------------------- contrast pairs


@dataclass(frozen=True)
class Pair:
    """A contrast pair: two texts, optionally completions of a shared prompt."""

    positive: str
    negative: str
    prompt: str | None = None


def read_pairs(path: str | Path) -> list[Pair]:
    """JSONL/JSON/CSV rows with ``positive`` and ``negative`` (and optionally ``prompt``)."""
    from tunelab.data import read_rows

    pairs = []
    for where, row in read_rows(path):
        if not isinstance(row, dict):
            raise TunelabError(f"{where}: record is a {type(row).__name__}, expected an object with 'positive' and 'negative'")
        values = {}
        for name in ("positive", "negative"):
            value = row.get(name)
            if not isinstance(value, str) or not value.strip():
                raise TunelabError(f"{where}: field '{name}' must be a non-empty string (a contrast pair needs both sides)")
            values[name] = value
        prompt = row.get("prompt")
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            raise TunelabError(f"{where}: field 'prompt' must be a non-empty string when given")
        pairs.append(Pair(values["positive"], values["negative"], prompt))
    if len(pairs) < 2:
        raise TunelabError(f"{path}: a steering vector needs at least 2 contrast pairs, got {len(pairs)}")
    return pairs


def read_prompt_pairs(positive: str | Path, negative: str | Path) -> list[Pair]:
    """Two prompt files (one prompt per line, or rows with ``text``/``prompt``) paired line by line."""
    sides = [_read_lines(positive), _read_lines(negative)]
    if len(sides[0]) != len(sides[1]):
        raise TunelabError(f"{positive} has {len(sides[0])} prompts but {negative} has {len(sides[1])}; "
                           "contrast pairs need the same number on both sides")
    if len(sides[0]) < 2:
        raise TunelabError(f"{positive}: a steering vector needs at least 2 contrast pairs, got {len(sides[0])}")
    return [Pair(p, n) for p, n in zip(*sides)]


def _read_lines(path: str | Path) -> list[str]:
    from tunelab.files import read_text

    path = Path(path)
    if path.suffix == ".txt":
        return [line for line in read_text(path, "prompts file").splitlines() if line.strip()]
    from tunelab.data import read_rows

    out = []
    for where, row in read_rows(path):
        text = row.get("text", row.get("prompt")) if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise TunelabError(f"{where}: field 'text' (or 'prompt') must be a non-empty string")
        out.append(text)
    return out


# --------------------------------------------------------------------------- reading activations


def _pair_texts(tokenizer: Any, pair_prompt: str | None, completion: str, chat: bool) -> tuple[list[int], int]:
    """Token ids of (prompt +) completion, and where the completion starts (0 without a prompt)."""
    from tunelab.evaluate.generation import encode_texts, render_prompts

    if pair_prompt is None:
        text = render_prompts(tokenizer, [completion], chat)[0] if chat else completion
        return encode_texts(tokenizer, [text], chat)[0], 0
    context = encode_texts(tokenizer, render_prompts(tokenizer, [pair_prompt], chat), chat)[0]
    # Context and completion tokenized separately (as choice scoring does): the split is exact.
    return context + tokenizer(completion, add_special_tokens=False)["input_ids"], len(context)


@torch.inference_mode()
def read_activations(model: nn.Module, tokenizer: Any, sequences: Sequence[tuple[list[int], int]], layers: Sequence[int],
                     *, read: str = "last", batch_size: int = 16, point: str = "resid_post") -> dict[int, torch.Tensor]:
    """``{layer: [N, hidden]}`` fp32 activations at ``point``, read at each sequence's last token
    (``read="last"``) or averaged over tokens ``start:`` (``"span"``); ``sequences`` are
    ``(ids, start)`` and run right-padded in batches."""
    from tunelab.evaluate.generation import pad_rows

    if read not in READS:
        raise TunelabError(f"unknown read position '{read}'; use one of {', '.join(READS)}")
    device = model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    was_training = model.training
    model.eval()
    try:
        for b in range(0, len(sequences), batch_size):
            chunk = sequences[b : b + batch_size]
            ids, mask = pad_rows([seq for seq, _ in chunk], pad, side="right")
            span = torch.zeros(ids.shape, dtype=torch.float32)
            for row, (seq, start) in enumerate(chunk):
                if read == "span":
                    span[row, min(start, len(seq) - 1) : len(seq)] = 1
                else:
                    span[row, len(seq) - 1] = 1
            span = (span / span.sum(1, keepdim=True)).to(device)
            with record(model, point, layers) as rec:
                model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=1)
            for i in layers:
                out[i].append(torch.einsum("bs,bsh->bh", span, rec[i, point].float()).cpu())
    finally:
        model.train(was_training)
    return {i: torch.cat(v) for i, v in out.items()}


def pair_activations(model: nn.Module, tokenizer: Any, pairs: Sequence[Pair], layers: Sequence[int], *, read: str = "last",
                     chat: bool = False, batch_size: int = 16) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """(positive, negative) activations ``{layer: [n_pairs, hidden]}`` of the contrast pairs."""
    pos = [_pair_texts(tokenizer, p.prompt, p.positive, chat) for p in pairs]
    neg = [_pair_texts(tokenizer, p.prompt, p.negative, chat) for p in pairs]
    acts = read_activations(model, tokenizer, pos + neg, layers, read=read, batch_size=batch_size)
    n = len(pairs)
    return {i: a[:n] for i, a in acts.items()}, {i: a[n:] for i, a in acts.items()}


# --------------------------------------------------------------------------- fitting


def _first_component(x: torch.Tensor) -> torch.Tensor:
    """First principal component of the rows of ``x`` (centred first, as sklearn's PCA)."""
    centred = x - x.mean(0, keepdim=True)
    return torch.linalg.svd(centred.double(), full_matrices=False).Vh[0].float()


@STEERING_METHODS.register("mean-diff")
def mean_diff(pos: torch.Tensor, neg: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """mean(positive) − mean(negative) (CAA)"""
    return pos.mean(0) - neg.mean(0)


@STEERING_METHODS.register("pca-diff")
def pca_diff(pos: torch.Tensor, neg: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """first principal component of the pair differences (repeng pca_diff)"""
    return _first_component(pos - neg)


@STEERING_METHODS.register("pca-center")
def pca_center(pos: torch.Tensor, neg: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """first principal component after centring each pair (repeng pca_center)"""
    center = (pos + neg) / 2
    return _first_component(torch.cat([pos - center, neg - center]))


@STEERING_METHODS.register("logistic")
def logistic(pos: torch.Tensor, neg: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """logistic-regression weights separating positives from negatives"""
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([pos, neg]).double().numpy()
    y = [1] * len(pos) + [0] * len(neg)
    clf = LogisticRegression(max_iter=2000, random_state=seed).fit(x, y)
    return torch.from_numpy(clf.coef_[0]).float()


def fit_direction(pos: torch.Tensor, neg: torch.Tensor, method: str = "mean-diff", normalize: bool = False,
                  seed: int = 0) -> torch.Tensor:
    """One layer's steering vector from ``[n, hidden]`` positive and negative activations.

    Signed so positives project higher; scaled to the mean difference's length along the
    direction (or unit length with ``normalize``). Raises when the two sides do not differ.
    """
    fit = STEERING_METHODS.get(method)  # unknown → one line naming the known methods
    pos, neg = pos.float(), neg.float()
    diff_mean = pos.mean(0) - neg.mean(0)
    direction = fit(pos, neg, seed)
    norm = direction.norm()
    if not norm > 0 or not torch.isfinite(norm):
        raise TunelabError("the positive and negative activations do not differ: no steering direction to fit")
    unit = direction / norm
    along = float(diff_mean @ unit)
    if along < 0:
        unit, along = -unit, -along
    return unit if normalize else unit * along


def separation(direction: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> float | None:
    """AUROC of the projection on ``direction`` of positives (label 1) vs negatives (0)."""
    from sklearn.metrics import roc_auc_score

    if len(pos) == 0 or len(neg) == 0:
        return None
    scores = torch.cat([pos.float(), neg.float()]) @ direction.float()
    labels = [1] * len(pos) + [0] * len(neg)
    return float(roc_auc_score(labels, scores.numpy()))


def layer_sweep(pos: dict[int, torch.Tensor], neg: dict[int, torch.Tensor], method: str = "mean-diff",
                holdout: float = 0.2, seed: int = 0) -> dict[int, float | None]:
    """Held-out separation per layer: fit on ``1 − holdout`` of the pairs, AUROC on the rest."""
    n = len(next(iter(pos.values())))
    test = max(1, round(n * holdout)) if holdout > 0 else 0
    if test == 0 or n - test < 1:
        return {i: None for i in pos}
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    tr, te = order[test:], order[:test]
    out: dict[int, float | None] = {}
    for i in pos:
        try:
            direction = fit_direction(pos[i][tr], neg[i][tr], method, normalize=True, seed=seed)
        except TunelabError:  # the sides are identical at this layer: no separation
            out[i] = 0.5
            continue
        out[i] = separation(direction, pos[i][te], neg[i][te])
    return out


def train_steering_vector(model: nn.Module, tokenizer: Any, pairs: Sequence[Pair], *, layers: Sequence[int] | None = None,
                          method: str = "mean-diff", read: str = "last", chat: bool = False, normalize: bool = False,
                          holdout: float = 0.2, seed: int = 0, batch_size: int = 16,
                          model_name: str | None = None) -> SteeringVector:
    """Fit a vector at each layer (default all) from contrast pairs; the layer sweep's held-out
    separation goes into ``meta["separation"]``."""
    STEERING_METHODS.canonical(method)  # unknown → one line naming the known methods
    if not 0 <= holdout < 1:
        raise TunelabError(f"--holdout must be in [0, 1), got {holdout:g}")
    if len(pairs) < 2:
        raise TunelabError(f"a steering vector needs at least 2 contrast pairs, got {len(pairs)}")
    geo = geometry(model)
    chosen = list(range(geo.n_layers)) if layers is None else [_layer_index(i, geo.n_layers) for i in layers]
    pos, neg = pair_activations(model, tokenizer, pairs, chosen, read=read, chat=chat, batch_size=batch_size)
    sweep = layer_sweep(pos, neg, method, holdout, seed)
    directions = {i: fit_direction(pos[i], neg[i], method, normalize, seed) for i in chosen}
    meta = {"format": FORMAT, "model": model_name, "hidden": geo.hidden, "n_layers": geo.n_layers, "method": method,
            "read": read, "chat": chat, "normalized": normalize, "point": "resid_post", "n_pairs": len(pairs),
            "holdout": holdout, "seed": seed, "separation": {str(i): s for i, s in sweep.items()},
            "norms": {str(i): float(v.norm()) for i, v in directions.items()}}
    return SteeringVector(directions, meta)


def _layer_index(i: int, n_layers: int) -> int:
    if isinstance(i, bool) or not isinstance(i, int) or not -n_layers <= i < n_layers:
        raise TunelabError(f"layer {i!r} out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    return i % n_layers


def best_layers(vector: SteeringVector, k: int, among: Sequence[int] | None = None) -> list[int]:
    """The ``k`` layers (of ``among``, default all) with the highest held-out separation."""
    sep = {int(i): s for i, s in (vector.meta.get("separation") or {}).items() if s is not None}
    pool = [i for i in (among if among is not None else vector.layers) if i in sep]
    if not pool:
        raise TunelabError("the steering vector has no layer sweep (train it with --holdout > 0)")
    return sorted(sorted(pool, key=lambda i: (-sep[i], -i))[:k])


# --------------------------------------------------------------------------- applying


class _Phase:
    """Whether the current forward is a prompt forward (no cached tokens yet) and where each
    row's last real token is; read by a pre-hook on the module that runs the decoder layers."""

    def __init__(self) -> None:
        self.prompt = True
        self.last: torch.Tensor | None = None  # [B] index of each row's last non-pad token

    def hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        seen = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        self.prompt = int(seen) == 0
        mask = kwargs.get("attention_mask")
        if self.prompt and isinstance(mask, torch.Tensor) and mask.dim() == 2:
            # Index of the last 1 in each row: right padding keeps it before the pads, left padding at the end.
            width = mask.shape[1]
            self.last = width - 1 - mask.flip(-1).long().argmax(-1)
        else:
            self.last = None


def _stack_owner(model: nn.Module) -> nn.Module:
    """The module whose forward runs the decoder layers (``LlamaModel``), found from a block's name."""
    owner_name = blocks(model)[0].name.rsplit(".layers.", 1)[0]
    return model.get_submodule(owner_name) if owner_name and owner_name != blocks(model)[0].name else model


@contextmanager
def steer(model: nn.Module, vector: SteeringVector, coeff: float = 1.0, *, layers: Sequence[int] | None = None,
          positions: str = "all", mode: str = "add", points: Sequence[str] | str = "resid_post") -> Iterator[None]:
    """Steer ``model`` inside the context: ``add`` ``coeff · v`` or ``ablate`` ``coeff`` times the
    v̂ component, at ``points`` of ``layers`` (default: every layer the vector has), at ``positions``
    (all / prompt / last). Coefficient 0 changes nothing, bit for bit. Hooks go on exit."""
    if positions not in POSITIONS:
        raise TunelabError(f"unknown steering positions '{positions}'; use one of {', '.join(POSITIONS)}")
    if mode not in MODES:
        raise TunelabError(f"unknown steering mode '{mode}'; use one of {', '.join(MODES)}")
    if not isinstance(coeff, (int, float)) or coeff != coeff or abs(coeff) == float("inf"):
        raise TunelabError(f"the steering coefficient must be a finite number, got {coeff!r}")
    wanted = [points] if isinstance(points, str) else list(points)
    for p in wanted:
        if p not in PATCHABLE or p in ("z", "v"):
            raise TunelabError(f"cannot steer at '{p}'; steer a residual-width point: resid_pre, resid_post, attn_out, mlp_out")
    chosen = vector.check(model, layers)
    device = model_device(model)
    dirs = {i: vector.directions[i].to(device) for i in chosen}
    units = {i: v / v.norm() for i, v in dirs.items()}
    phase = _Phase()

    def apply(value: torch.Tensor, layer: int) -> torch.Tensor | None:
        if positions != "all" and not phase.prompt:
            return None
        if mode == "add":
            delta = (coeff * dirs[layer]).to(value.dtype).expand_as(value)
        else:
            unit = units[layer].to(value.dtype)
            delta = -coeff * (value @ unit)[..., None] * unit  # x + (−y) rounds exactly as x − y
        if positions != "last":
            return value + delta
        out = value.clone()
        last = phase.last if phase.last is not None else torch.full((value.shape[0],), value.shape[1] - 1, device=value.device)
        rows = torch.arange(value.shape[0], device=value.device)
        out[rows, last] = value[rows, last] + delta[rows, last]
        return out

    with ExitStack() as stack:
        handle = _stack_owner(model).register_forward_pre_hook(phase.hook, with_kwargs=True)
        stack.callback(handle.remove)
        for p in wanted:
            stack.enter_context(patch(model, p, apply, chosen))
        yield


def direction_vector(direction: torch.Tensor, n_layers: int, layers: Sequence[int] | None = None,
                     meta: dict[str, Any] | None = None) -> SteeringVector:
    """One direction used at several layers (default all): e.g. the refusal direction."""
    chosen = range(n_layers) if layers is None else layers
    return SteeringVector({i: direction.detach().float().cpu().clone() for i in chosen},
                          {"hidden": int(direction.shape[-1]), "n_layers": n_layers, **(meta or {})})


# --------------------------------------------------------------------------- --steer FILE on generate/eval


@dataclass
class SteerSpec:
    """What ``--steer FILE --coeff C`` asks for on ``tunelab generate`` and ``tunelab eval``.

    A :class:`tunelab.evaluate.intervention.GenerationIntervention`: it acts around the forwards
    (:meth:`applied`), not at the first step; its summary is recorded as ``"steering"``.
    """

    path: str
    coeff: float = 1.0
    layers: list[int] | None = None
    positions: str = "all"
    mode: str = "add"
    name: ClassVar[str] = "steering"

    def first_step(self, tokenizer: Any) -> None:
        """Steering does not rewrite the first decoding step."""
        return None

    def check_task(self, task: str, scorer: str) -> None:
        """Prompt/last positions exist only in generation: a task scored by option likelihood steers all."""
        if self.positions != "all" and scorer == "choice":
            raise TunelabError(f"--steer-positions {self.positions} applies to generation; '{task}' is scored by "
                               "option likelihood: steer all positions")

    def load(self) -> SteeringVector:
        """The vector, after checking the options (before any model is loaded)."""
        if self.positions not in POSITIONS:
            raise TunelabError(f"--steer-positions must be one of {', '.join(POSITIONS)}, got '{self.positions}'")
        if self.mode not in MODES:
            raise TunelabError(f"--steer-mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        if self.coeff != self.coeff or abs(self.coeff) == float("inf"):
            raise TunelabError(f"--coeff must be a finite number, got {self.coeff}")
        return SteeringVector.load(self.path)

    @contextmanager
    def applied(self, model: nn.Module, vector: SteeringVector | None = None) -> Iterator[dict[str, Any]]:
        """Steer ``model`` inside the context; yields what was applied (for metrics.json)."""
        vector = vector or self.load()
        layers = vector.check(model, self.layers)
        with steer(model, vector, self.coeff, layers=layers, positions=self.positions, mode=self.mode):
            yield {"file": str(self.path), "coeff": self.coeff, "layers": layers, "positions": self.positions,
                   "mode": self.mode, "method": vector.meta.get("method"), "trained_on": vector.meta.get("model")}


def steer_spec(path: str | None, coeff: float | None, layers: str | list[int] | None, positions: str | None,
               mode: str | None) -> SteerSpec | None:
    """A :class:`SteerSpec` from CLI/config values; steering options without ``--steer`` are an error."""
    if path is None:
        if coeff is not None or layers is not None or positions is not None or mode is not None:
            raise TunelabError("--coeff, --steer-layers, --steer-positions and --steer-mode need --steer FILE")
        return None
    return SteerSpec(str(path), 1.0 if coeff is None else float(coeff),
                     parse_layers(layers, "--steer-layers") if isinstance(layers, str) else layers,
                     positions or "all", mode or "add")
