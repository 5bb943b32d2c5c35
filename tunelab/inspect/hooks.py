"""Named hook points in a Hugging Face decoder, found by module suffix.

Points per layer (TransformerLens naming): ``resid_pre`` (the block's input), ``attn_out`` (the
attention's output, after o_proj), ``z`` (each head's output before o_proj, ``[B, S, H, D]``),
``pattern`` (attention weights ``[B, H, S, S]``, eager attention only), ``mlp_out`` and
``resid_post`` (the block's output), plus ``v`` (values per key/value head, ``[B, S, KV, D]``).
``record`` keeps copies keyed ``blocks.{layer}.{point}``, ``observe`` streams them to a callback,
``patch`` replaces them; ``eager_attention`` switches to eager attention (the only implementation
that forms attention weights) for one context. Every hook is removed on exit, also on errors.

Blocks are found by suffix (``…layers.N`` holding ``self_attn`` and ``mlp``) so a PEFT-wrapped
model (``base_model.model.model.layers``) and a merged one work the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from tunelab.errors import TunelabError, first_line
from tunelab.options import parse_int_ranges

ATTN_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PARTS = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Geometry:
    """Attention shape of a model: query heads, key/value heads (GQA), head size, layers."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int

    @property
    def group(self) -> int:
        """Query heads that share one key/value head."""
        return self.n_heads // self.n_kv_heads


@dataclass(frozen=True)
class Block:
    """One decoder layer and the modules the hook points and pruning need."""

    index: int
    name: str
    layer: nn.Module
    attn: nn.Module
    mlp: nn.Module

    def part(self, name: str) -> nn.Module:
        """A projection of this block (``q_proj``…``o_proj``, ``gate_proj``…``down_proj``)."""
        owner = self.attn if name in ATTN_PARTS else self.mlp
        return getattr(owner, name)


def text_config(model: nn.Module) -> Any:
    """The text part of the model's config (a multimodal config holds it as a sub-config)."""
    config = getattr(model, "config", None)
    if config is None:
        raise TunelabError(f"{type(model).__name__} has no config; expected a Hugging Face causal LM")
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def geometry(model: nn.Module) -> Geometry:
    """The attention geometry read from the model's config."""
    config = text_config(model)
    try:
        heads = int(config.num_attention_heads)
        kv = int(getattr(config, "num_key_value_heads", None) or heads)
        hidden = int(config.hidden_size)
        head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
        layers = int(config.num_hidden_layers)
    except AttributeError as exc:
        raise TunelabError(f"model config lacks {exc.name}; expected a Llama/Qwen2/Mistral-family config") from None
    return Geometry(layers, heads, kv, head_dim, hidden)


def blocks(model: nn.Module) -> list[Block]:
    """The decoder blocks of ``model`` in order; a clear error when it is not Llama-shaped."""
    found: list[Block] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or name.split(".")[-1] != "layers":
            continue
        for i, layer in enumerate(module):
            attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
            missing = [f"self_attn.{p}" for p in ATTN_PARTS if not hasattr(attn, p)]
            missing += [f"mlp.{p}" for p in MLP_PARTS if not hasattr(mlp, p)]
            if missing:
                raise TunelabError(f"{name}.{i} ({type(layer).__name__}) lacks {', '.join(missing)}; "
                                   "tunelab inspect supports Llama/Qwen2/Mistral-family decoders")
            found.append(Block(i, f"{name}.{i}", layer, attn, mlp))
        break
    if not found:
        raise TunelabError(f"no decoder layers found in {type(model).__name__}: looked for a ModuleList named "
                           "'layers' whose blocks have self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj")
    return found


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter."""
    return next(model.parameters()).device


def parse_layers(text: str | None, flag: str = "--layers") -> list[int] | None:
    """``"10,12,14"`` or ``"10-14"`` → layer indices; None stays None; one-line error otherwise."""
    return parse_int_ranges(text, flag)  # one parser, shared with the option declarations


# --------------------------------------------------------------------------- named points

POINTS: dict[str, str] = {
    "resid_pre": "the block's input [B, S, hidden]",
    "attn_out": "the attention's output after o_proj [B, S, hidden]",
    "z": "each head's output before o_proj [B, S, H, D]",
    "pattern": "attention weights after softmax [B, H, S, S] (eager attention only)",
    "v": "values, one per key/value head [B, S, KV, D]",
    "mlp_out": "the MLP's output [B, S, hidden]",
    "resid_post": "the block's output [B, S, hidden]",
}
# Attention weights are a by-product of the computation: replacing them changes nothing downstream.
PATCHABLE = tuple(p for p in POINTS if p != "pattern")

# fn(value, layer) -> replacement, or None to keep the (possibly in-place modified) value.
PointFn = Callable[[torch.Tensor, int], "torch.Tensor | None"]


def point_key(layer: int, point: str) -> str:
    """The key of a recorded point: ``blocks.{layer}.{point}`` (e.g. ``blocks.3.z``)."""
    return f"blocks.{layer}.{point}"


def _check_point(point: str, allowed: Sequence[str] = tuple(POINTS)) -> str:
    if point not in allowed:
        if point in POINTS:
            raise TunelabError(f"point '{point}' can be recorded but not patched; patchable points: {', '.join(allowed)}")
        raise TunelabError(f"unknown hook point '{point}'; known points: {', '.join(allowed)}")
    return point


def _select(model: nn.Module, layers: int | Iterable[int] | None) -> list[Block]:
    """The blocks named by ``layers`` (None: all; negative indices count from the end)."""
    found = blocks(model)
    if layers is None:
        return found
    wanted = [layers] if isinstance(layers, int) else list(layers)
    chosen = []
    for i in wanted:
        if isinstance(i, bool) or not isinstance(i, int) or not -len(found) <= i < len(found):
            raise TunelabError(f"layer {i!r} out of range: the model has {len(found)} layers (0..{len(found) - 1})")
        chosen.append(found[i % len(found)])
    return chosen


def _checked(new: torch.Tensor, old: torch.Tensor, point: str, layer: int) -> torch.Tensor:
    if not isinstance(new, torch.Tensor) or new.shape != old.shape:
        got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
        raise TunelabError(f"patch of blocks.{layer}.{point} returned {got}; expected a tensor of shape {tuple(old.shape)}")
    return new


def _install(block: Block, point: str, fn: PointFn, geo: Geometry, prepend: bool) -> torch.utils.hooks.RemovableHandle:
    """Hook ``fn`` at ``point`` of ``block``; a tensor it returns replaces the value there."""
    i = block.index

    def replace(value: torch.Tensor) -> torch.Tensor | None:
        new = fn(value, i)
        return None if new is None else _checked(new, value, point, i)

    if point == "resid_pre":
        # The block may get its input positionally or as a keyword: handle both.
        def pre_block(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            if args:
                new = replace(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = replace(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        return block.layer.register_forward_pre_hook(pre_block, with_kwargs=True, prepend=prepend)

    if point == "z":
        # o_proj's input is the heads' outputs concatenated: [B, S, H * D].
        def pre_o(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            key = None if args else next(iter(kwargs))  # called positionally in practice
            flat = args[0] if key is None else kwargs[key]
            new = replace(flat.view(*flat.shape[:-1], geo.n_heads, geo.head_dim))
            if new is None:
                return None
            new = new.reshape(flat.shape)
            return ((new, *args[1:]), kwargs) if key is None else (args, {**kwargs, key: new})

        return block.part("o_proj").register_forward_pre_hook(pre_o, with_kwargs=True, prepend=prepend)

    if point == "v":
        def post_v(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            new = replace(output.view(*output.shape[:-1], geo.n_kv_heads, geo.head_dim))
            return None if new is None else new.reshape(output.shape)

        return block.part("v_proj").register_forward_hook(post_v, prepend=prepend)

    # Forward hooks on outputs. Decoder layers return a tensor in transformers 5 (a tuple before),
    # attention modules return (output, weights): keep whichever structure came out.
    module, slot = {"resid_post": (block.layer, 0), "attn_out": (block.attn, 0), "pattern": (block.attn, 1),
                    "mlp_out": (block.mlp, 0)}[point]

    def post(module: nn.Module, args: tuple, output: Any) -> Any:
        parts = output if isinstance(output, tuple) else (output,)
        value = parts[slot] if slot < len(parts) else None
        if value is None:
            raise TunelabError(f"blocks.{i}.{point}: the attention implementation "
                               f"'{attn_implementation(block.attn)}' returned no attention weights; use eager_attention()")
        new = replace(value)
        if new is None:
            return None
        if not isinstance(output, tuple):
            return new
        return (*parts[:slot], new, *parts[slot + 1:])

    return module.register_forward_hook(post, prepend=prepend)


@contextmanager
def _hooked(model: nn.Module, points: Sequence[str], fn: Callable[[str, torch.Tensor, int], torch.Tensor | None],
            layers: int | Iterable[int] | None, prepend: bool) -> Iterator[None]:
    """Install ``fn(point, value, layer)`` at every point and layer; remove all hooks on exit."""
    geo = geometry(model)
    chosen = _select(model, layers)
    handles: list[torch.utils.hooks.RemovableHandle] = []
    with ExitStack() as stack:
        stack.callback(lambda: [h.remove() for h in handles])
        if "pattern" in points and attn_implementation(model) != "eager":
            stack.enter_context(eager_attention(model))
        for block in chosen:
            for point in points:
                handles.append(_install(block, point, partial(fn, point), geo, prepend))
        yield


def _points(points: Iterable[str] | str) -> list[str]:
    wanted = [points] if isinstance(points, str) else list(points)
    if not wanted:
        raise TunelabError(f"no hook points given; known points: {', '.join(POINTS)}")
    return [_check_point(p) for p in dict.fromkeys(wanted)]


class Recording(Mapping[str, torch.Tensor]):
    """Tensors recorded at named points, keyed ``blocks.{layer}.{point}``.

    ``rec["blocks.3.z"]`` and ``rec[3, "z"]`` are the same entry. Values are detached copies in
    the model's compute dtype, on the model's device, from the most recent forward (a second
    forward inside the same ``record`` overwrites them). ``rec.stack("z")`` stacks one point over
    the recorded layers.
    """

    def __init__(self) -> None:
        self._data: dict[str, torch.Tensor] = {}

    def _key(self, key: str | tuple[int, str]) -> str:
        return point_key(*key) if isinstance(key, tuple) else key

    def __getitem__(self, key: str | tuple[int, str]) -> torch.Tensor:  # type: ignore[override]
        try:
            return self._data[self._key(key)]
        except KeyError:
            raise TunelabError(f"nothing recorded at {self._key(key)!r} (was there a forward inside record()?); "
                               f"recorded: {', '.join(self._data) or 'nothing'}") from None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (str, tuple)) and self._key(key) in self._data  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def layers(self, point: str) -> list[int]:
        """The layers at which ``point`` was recorded, ascending."""
        return sorted(int(k.split(".")[1]) for k in self._data if k.split(".")[2] == point)

    def stack(self, point: str) -> torch.Tensor:
        """``point`` at every recorded layer, stacked: ``[n_layers_recorded, *shape]``."""
        found = self.layers(point)
        if not found:
            raise TunelabError(f"point '{point}' was not recorded; recorded: {', '.join(self._data) or 'nothing'}")
        return torch.stack([self._data[point_key(i, point)] for i in found])

    def _store(self, point: str, value: torch.Tensor, layer: int) -> None:
        self._data[point_key(layer, point)] = value.detach().clone()

    def __repr__(self) -> str:
        return f"Recording({', '.join(f'{k}: {tuple(v.shape)}' for k, v in self._data.items())})"


@contextmanager
def record(model: nn.Module, points: Iterable[str] | str, layers: int | Iterable[int] | None = None) -> Iterator[Recording]:
    """Record ``points`` at ``layers`` (default all) during the forwards run inside the context.

    Asking for ``pattern`` switches the model to eager attention for the context only (sdpa and
    flash kernels never form the weights). Recording sees a point after any active ``patch``, i.e.
    the value the model actually uses. Hooks are removed on exit, also after an exception.
    """
    wanted = _points(points)
    rec = Recording()
    with _hooked(model, wanted, lambda p, v, i: rec._store(p, v, i), layers, prepend=False):
        yield rec


@contextmanager
def observe(model: nn.Module, points: Iterable[str] | str, fn: Callable[[str, torch.Tensor, int], None],
            layers: int | Iterable[int] | None = None) -> Iterator[None]:
    """Call ``fn(point, value, layer)`` at each point without keeping the tensors (streaming reductions).

    Within a layer the points arrive in execution order: resid_pre, v, z, attn_out/pattern, mlp_out,
    resid_post. ``fn`` must not modify the value; use ``patch`` for that.
    """
    with _hooked(model, _points(points), fn, layers, prepend=False):
        yield


@contextmanager
def patch(model: nn.Module, point: str, fn: PointFn, layers: int | Iterable[int] | None = None) -> Iterator[None]:
    """Replace the value at ``point`` by ``fn(value, layer)`` during the context.

    ``z`` rewrites o_proj's input ([B, S, H, D] view; zeroing head h = ``z[..., h, :] = 0``), ``v``
    v_proj's output; the residual, attention and MLP points replace the module's output and keep
    its tuple structure. ``fn`` may return None to keep a value it modified in place. Patches run
    before recordings at the same point. Hooks are removed on exit, also after an exception.
    """
    _check_point(point, PATCHABLE)
    with _hooked(model, [point], lambda p, v, i: fn(v, i), layers, prepend=True):
        yield


# --------------------------------------------------------------------------- attention implementation

def _pretrained(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def attn_implementation(model: nn.Module) -> str | None:
    """The attention implementation the model's attention modules read (``eager``, ``sdpa``, …)."""
    attn = model if hasattr(model, "q_proj") else blocks(model)[0].attn
    config = getattr(attn, "config", None) or text_config(model)
    return getattr(config, "_attn_implementation", None)


def _attn_configs(model: nn.Module) -> list[Any]:
    """Every config (and sub-config) of every transformers model inside ``model``."""
    found: dict[int, Any] = {}
    todo = [m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")]
    while todo:
        config = todo.pop()
        if id(config) in found:
            continue
        found[id(config)] = config
        todo += [getattr(config, k) for k in getattr(config, "sub_configs", {}) if getattr(config, k, None) is not None]
    return list(found.values())


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run the model with eager attention inside the context; restore the previous implementation after.

    Works on plain, PEFT-wrapped and merged models (the switch goes to the transformers model
    inside a PEFT wrapper). Eager attention computes the same function as sdpa up to rounding.
    """
    before = attn_implementation(model)
    if before == "eager":
        yield
        return
    base = _pretrained(model)
    saved = [(c, c._attn_implementation_internal) for c in _attn_configs(base)]

    def restore() -> None:
        # Write the saved values back directly: re-validating the old implementation is pointless.
        for config, value in saved:
            config._attn_implementation_internal = value

    try:
        if not hasattr(base, "set_attn_implementation"):
            raise TunelabError(f"{type(base).__name__} cannot switch attention implementation '{before}' to eager")
        try:
            base.set_attn_implementation("eager")
        except (ValueError, ImportError) as exc:
            raise TunelabError(f"cannot switch attention implementation '{before}' to eager: {first_line(exc)}") from None
        if attn_implementation(model) != "eager":
            raise TunelabError(f"cannot switch attention implementation '{before}' to eager "
                               f"({type(base).__name__} does not support switching); load the model with attn_implementation='eager'")
    except BaseException:
        restore()
        raise
    try:
        yield
    finally:
        restore()
