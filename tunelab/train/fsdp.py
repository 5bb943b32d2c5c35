"""FSDP2 (``torch.distributed.fsdp.fully_shard``) helpers for the trainer.

Why tunelab shards the model itself: accelerate refuses FSDP for CPU processes, and CPU/gloo
runs (``ACCELERATE_USE_CPU=true torchrun ...``) are how the distributed path is tested. The
same functions run on CUDA/nccl; only the mesh's device type differs (:func:`mesh_for`).

Design:

* **Sharding** (:func:`shard_model`): every transformer block becomes one FSDP unit, then the
  root. The root unit keeps the embedding, final norm and LM head, so a tied embedding / LM
  head stays one parameter in one unit (FSDP2 rejects a parameter shared by two units).
  Frozen and trainable parameters may share a unit (LoRA/LoRI). FSDP2 all-gathers a unit in
  one dtype, so the model stays fp32; bf16 is the trainer's ``torch.autocast`` around forward.
* **Gradient masks** (:func:`apply_grad_masks`): ``fully_shard`` replaces every parameter by a
  new sharded ``DTensor`` parameter, so hooks registered on the original parameters
  (LoRI-S / LoTA masks) silently stop firing. Instead the trainer zeroes ``.grad`` outside the
  masks after the last backward of a step and before clipping/the optimizer step. Masking the
  reduced (averaged) gradient equals masking every rank's gradient before the reduction.
* **Gradient averaging**: FSDP averages gradients over ranks (reduce-scatter), so each rank's
  loss is divided by the accumulation steps only, exactly as in a 1-process run; gradient sync
  is switched off for non-final micro-batches (:func:`set_gradient_sync`).
* **Clipping** (:func:`clip_grad_norm`): torch's ``clip_grad_norm_`` computes the global norm
  of DTensor gradients (a collective) and returns it as a DTensor.
* **State** (:func:`full_state_dict`, :func:`optimizer_full_state`, :func:`load_full_state`):
  torch.distributed.checkpoint's ``get/set_*_state_dict`` with ``full_state_dict=True``, keyed by
  the unsharded module's parameter names; rank 0 holds full CPU tensors, loads broadcast from
  rank 0. These are collectives: every rank must call them.
* **Saving** (:func:`unshard_for_saving`): PEFT's ``save_pretrained`` cannot handle DTensor
  storage, so after training rank 0 turns its module back into a plain module holding the full
  tensors; then every ordinary save/inspect path works unchanged. Other ranks must not use
  their (still sharded) model for forward afterwards.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._composable.contract import REGISTRY_KEY, STATE_KEY
from torch.distributed._composable_state import _module_state_mapping
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.utils.weak import WeakIdKeyDictionary

__all__ = [
    "apply_grad_masks",
    "clip_grad_norm",
    "full_state_dict",
    "full_tensors",
    "is_sharded",
    "load_full_state",
    "mesh_for",
    "optimizer_full_state",
    "set_gradient_sync",
    "shard_like",
    "shard_mask",
    "shard_model",
    "transformer_blocks",
    "unshard_for_saving",
]

# param -> (the full mask it was built from, its local "outside the mask" part)
_LOCAL_MASKS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def mesh_for(device: torch.device) -> DeviceMesh:
    """A 1-D mesh over the whole world on ``device``'s type ("cpu" with gloo, "cuda" with nccl).

    On CUDA the current device must already be set (accelerate does this).
    """
    world = dist.get_world_size() if dist.is_initialized() else 1
    return init_device_mesh(torch.device(device).type, (world,))


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks, found generically (also through a ``PeftModel``).

    Modules whose class name is in any submodule's ``_no_split_modules`` (HF's own list of
    blocks), else the children of a ``ModuleList`` named ``layers``. Only the outermost matches
    are returned, in module order.
    """
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    found = [(n, m) for n, m in model.named_modules() if n and type(m).__name__ in names]
    if not found:
        for name, module in model.named_modules():
            if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] == "layers":
                found.extend((f"{name}.{i}", child) for i, child in enumerate(module))
    outer: list[nn.Module] = []
    prefixes: list[str] = []
    for name, module in found:  # named_modules() is pre-order: parents come before children
        if not any(name.startswith(p) for p in prefixes):
            outer.append(module)
            prefixes.append(name + ".")
    return outer


def _tied_groups(model: nn.Module) -> list[list[tuple[nn.Module, str]]]:
    """(module, attribute) pairs that hold the same parameter object, for each shared one."""
    holders: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None:
                holders.setdefault(id(param), []).append((module, name))
    return [group for group in holders.values() if len(group) > 1]


def shard_model(model: nn.Module, mesh: DeviceMesh) -> None:
    """Apply FSDP2 in place: one unit per transformer block, then the root (``model`` itself).

    Shard the outermost module the trainer calls (e.g. the ``PeftModel``): FSDP's root is the
    first sharded module to run forward. Gradient hooks on the old parameters are lost; use
    :func:`apply_grad_masks`.
    """
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) > 1:
        # FSDP2 all-gathers a unit as one flat buffer of one dtype
        raise TypeError(f"FSDP needs one parameter dtype, the model has {sorted(map(str, dtypes))}; "
                        "keep it in fp32 and use autocast for bf16")
    blocks = transformer_blocks(model)
    if not blocks:
        raise ValueError(f"no transformer blocks found in {type(model).__name__} to shard")
    tied = _tied_groups(model)
    block_of = {id(m): i for i, block in enumerate(blocks) for m in block.modules()}
    for group in tied:
        if len({block_of.get(id(m)) for m, _ in group}) > 1:
            # e.g. a block sharing a weight with the embedding: FSDP2 wants it in one unit
            raise ValueError(f"parameter '{group[0][1]}' is shared across an FSDP unit boundary")
    for block in blocks:
        fully_shard(block, mesh=mesh)
    # The root collects the rest: embeddings, norm, LM head. A tied head/embedding is a single
    # parameter there and FSDP re-registers the sharded parameter on every module holding it.
    fully_shard(model, mesh=mesh)
    for group in tied:
        first = getattr(*group[0])
        if any(getattr(m, n) is not first for m, n in group[1:]):
            raise RuntimeError(f"fully_shard untied the shared parameter {group[0][1]}")


def is_sharded(model: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``model`` (as the root)."""
    return isinstance(model, FSDPModule)


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Switch gradient reduction on/off for the next backward (no-op on an unsharded model).

    Off for every accumulation micro-batch but the last: gradients accumulate unsharded and
    locally, and the last backward reduce-scatters their sum once.
    """
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)


def shard_like(param: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """``full`` (every rank holds all of it) laid out like ``param``, without communication.

    For a DTensor parameter: a DTensor on its mesh and placements whose local part is this
    rank's piece (so ``param.copy_(shard_like(param, full))`` loads it); else ``full`` itself.
    """
    if tuple(full.shape) != tuple(param.shape):
        raise ValueError(f"shape {tuple(full.shape)} != parameter shape {tuple(param.shape)}")
    full = full.to(param.device)
    if isinstance(param, DTensor):
        # src_data_rank=None: split the local copy, as fully_shard does (torch.chunk on dim 0)
        return distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
    return full


def shard_mask(param: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """This rank's part of the full boolean ``mask``, laid out like ``param``'s local tensor.

    The local tensor of a DTensor ``param.grad`` has the same layout, so it can be masked in
    place; for a plain tensor this is ``mask`` itself.
    """
    local = shard_like(param, mask.to(torch.bool))
    return local.to_local() if isinstance(local, DTensor) else local


def apply_grad_masks(named_params: Mapping[str, nn.Parameter], masks: Mapping[str, torch.Tensor]) -> None:
    """Zero ``param.grad`` outside ``masks[name]`` (True = trainable), in place.

    Call after the last backward of a step, before clipping and ``optimizer.step()``. Works
    for plain and DTensor gradients; each parameter's local mask is built once and cached.
    """
    for name, mask in masks.items():
        param = named_params[name]
        grad = param.grad
        if grad is None:
            continue
        cached = _LOCAL_MASKS.get(param)
        if cached is None or cached[0] is not mask:
            cached = (mask, ~shard_mask(param, mask))
            _LOCAL_MASKS[param] = cached
        local = grad.to_local() if isinstance(grad, DTensor) else grad
        local.masked_fill_(cached[1], 0.0)  # masked_fill, not mul: a NaN outside stays out


def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> float:
    """Clip gradients to a total L2 norm of ``max_norm``; returns the norm before clipping.

    For DTensor gradients torch's ``clip_grad_norm_`` reduces the norm over ranks and returns a
    DTensor; ``full_tensor()`` makes it a plain number (the same on every rank).
    """
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    kinds = {isinstance(p.grad, DTensor) for p in params}
    if len(kinds) > 1:
        raise ValueError("clip_grad_norm: gradients mix DTensors and plain tensors; shard the whole model")
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return float(norm)


def _param_names(model: nn.Module, trainable_only: bool) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad or not trainable_only]


def full_state_dict(model: nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    """Full parameters on rank 0 as CPU tensors, ``{}`` on other ranks. Every rank must call it.

    Keys are ``model.named_parameters()`` names (a tied LM head appears once, under the
    embedding's name); buffers are not included.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    state = get_model_state_dict(model, options=options)
    if dist.is_initialized() and dist.get_rank() != 0:
        return {}
    # state_dict() also lists a tied weight under its second name; named_parameters() does not
    names = _param_names(model, trainable_only)
    return _snapshot({name: state[name] for name in names}, _live_storages(model))


def full_tensors(params: Mapping[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """Full CPU values of some parameters on rank 0 (``{}`` elsewhere); every rank calls it.

    For a subset of parameters without the model at hand; each DTensor is gathered with
    ``full_tensor()``. :func:`full_state_dict` is the whole-model equivalent.
    """
    out = {}
    for name, param in params.items():
        value = param.detach()
        out[name] = value.full_tensor() if isinstance(value, DTensor) else value
    if dist.is_initialized() and dist.get_rank() != 0:
        return {}
    return _snapshot({n: v.cpu() for n, v in out.items()}, {_storage_ptr(p) for p in params.values()})


def _live_storages(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> set[int]:
    tensors = list(model.parameters())
    if optimizer is not None:
        tensors += [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return {_storage_ptr(t) for t in tensors}


def _storage_ptr(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.untyped_storage().data_ptr()


def _snapshot(tree: Any, live: set[int]) -> Any:
    """Clone the tensors in ``tree`` that alias live model/optimizer storage.

    With one rank (or an unsharded model), and always for AdamW's scalar ``step`` tensor, the
    "gathered" value can be the live tensor itself; a snapshot must not change as training
    goes on.
    """
    if isinstance(tree, dict):
        return {k: _snapshot(v, live) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_snapshot(v, live) for v in tree]
    if torch.is_tensor(tree) and _storage_ptr(tree) in live:
        return tree.detach().clone()
    return tree


def optimizer_full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state on rank 0 (CPU tensors, keyed by parameter name), ``{}`` elsewhere.

    Every rank must call it, after at least one ``optimizer.step()`` (torch would otherwise
    initialize the state with a zero-lr step, which counts as a step).
    """
    if not optimizer.state:
        raise ValueError("the optimizer has no state yet; save after the first step")
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_optimizer_state_dict(model, optimizer, options=options)
    if dist.is_initialized() and dist.get_rank() != 0:
        return {}
    return _snapshot(state, _live_storages(model, optimizer))


def load_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    model_sd: Mapping[str, torch.Tensor] | None,
    optim_sd: Mapping[str, Any] | None,
) -> None:
    """Load rank 0's full model (and optimizer) state into the sharded model; every rank calls it.

    ``model_sd`` may hold only some parameters (e.g. the trainable ones); the rest keep their
    values. Other ranks' arguments are ignored: rank 0 broadcasts, each rank keeps its shard.
    Call it before the first backward of the resumed run.
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    error = None
    if rank == 0:
        unknown = sorted(set(model_sd or {}) - {n for n, _ in model.named_parameters()})
        if unknown:
            error = f"load_full_state: not parameters of this model: {unknown[:5]}"
    if dist.is_initialized():
        # decide together, or the other ranks would wait in the broadcast forever
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise KeyError(error)
    # strict=False: missing keys (frozen params, the tied head's second name) keep their values
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    set_model_state_dict(model, dict(model_sd or {}) if rank == 0 else {}, options=options)
    if optimizer is not None:
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_optimizer_state_dict(model, optimizer, dict(optim_sd or {}) if rank == 0 else {}, options=options)


def _strip_fsdp(model: nn.Module) -> None:
    """Undo ``fully_shard``'s changes to the modules (hooks, class, registered state).

    torch has no public inverse of ``fully_shard``; this removes exactly what ``fully_shard``
    (torch 2.13) installs, so the module runs forward on one rank without collectives.
    """
    for module in list(model.modules()):
        if not isinstance(module, FSDPModule):
            continue
        state = fully_shard.state(module)
        state._pre_forward_hook_handle.remove()
        state._post_forward_hook_handle.remove()
        for group in state._fsdp_param_groups:
            for fsdp_param in group.fsdp_params:
                fsdp_param._post_load_hook_handle.remove()
        states = module.__dict__.get(STATE_KEY, {})
        for key in [k for k, v in states.items() if v is state]:  # keyed by the undecorated fn
            del states[key]
        module.__dict__.get(REGISTRY_KEY, {}).pop("fully_shard", None)
        _module_state_mapping.pop(module, None)
        # FSDP<Cls> subclasses (FSDPModule, Cls): restore the first class that is not FSDP's
        module.__class__ = next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))
    for module in model.modules():  # markers fully_shard sets on every module of a unit
        module.__dict__.pop("_is_fsdp_managed_module", None)
        module.__dict__.pop("_fsdp_use_orig_params", None)


def unshard_for_saving(
    model: nn.Module,
    state: Mapping[str, torch.Tensor] | None = None,
    device: torch.device | str | None = None,
) -> None:
    """On rank 0 after training: make ``model`` a plain module holding ``state``'s full tensors.

    ``state`` must hold every parameter (``full_state_dict(model, trainable_only=False)``); its
    tensors become ordinary ``nn.Parameter``s on ``device`` (default: where they are, the CPU),
    buffers follow, tied parameters stay tied and ``requires_grad`` is kept. PEFT's
    ``save_pretrained`` and plain forward passes then work. The optimizer still refers to the
    old sharded parameters: do not step it afterwards.

    With ``state=None`` *every* rank calls it: the full state is gathered here (a collective),
    rank 0 unshards and the other ranks return with their model still sharded.
    """
    if state is None:
        state = full_state_dict(model, trainable_only=False)
        if dist.is_initialized() and dist.get_rank() != 0:
            return
    canonical = {id(p): n for n, p in model.named_parameters()}
    missing = sorted(n for n in canonical.values() if n not in state)
    if missing:
        raise KeyError(f"unshard_for_saving needs every parameter; missing {missing[:5]} "
                       f"({len(missing)} in all): use full_state_dict(model, trainable_only=False)")
    _strip_fsdp(model)
    if device is not None:
        target = torch.device(device)
    else:
        target = next(iter(state.values())).device if state else torch.device("cpu")
    replaced: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, old in list(module._parameters.items()):
            if old is None:
                continue
            new = replaced.get(id(old))
            if new is None:  # one new Parameter per old one keeps tied weights tied
                full = state[canonical[id(old)]].detach().to(target)
                new = replaced[id(old)] = nn.Parameter(full, requires_grad=old.requires_grad)
            module.register_parameter(name, new)
        for name, buf in list(module._buffers.items()):
            if buf is not None:
                module._buffers[name] = buf.to(target)
