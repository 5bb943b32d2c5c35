"""Processes and devices: one place that knows whether a run is single-process, DDP or FSDP2.

accelerate gives the process group, devices, mixed precision and DDP (``accelerate launch``, or
``torchrun`` with ``ACCELERATE_USE_CPU=true`` on CPUs). With ``cfg.fsdp`` the model is sharded
with PyTorch FSDP2 (:mod:`tunelab.train.fsdp`) instead of being wrapped in DDP — accelerate only
offers FSDP on GPUs, FSDP2 itself runs on CPUs with gloo too — and weights and optimizer state
move between full and sharded form here, for checkpoints and for saving.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from accelerate import Accelerator

from tunelab.errors import TunelabError
from tunelab.train import fsdp
from tunelab.train.config import TrainConfig
from tunelab.train.plugins import Run
from tunelab.train.precision import attention_kernels


def accelerator(cfg: TrainConfig) -> Accelerator:
    """An Accelerator for this run, also when an earlier one in this process chose another precision."""
    from accelerate.state import AcceleratorState, GradientState

    precision = "bf16" if cfg.bf16 else "no"
    state = AcceleratorState._shared_state
    if state and str(state.get("_mixed_precision", precision)) != precision and not AcceleratorState().use_distributed:
        # accelerate keeps one process-wide state; a single-process program (tests, benchmarks,
        # the demo) may train several runs with different precision one after another.
        AcceleratorState._reset_state()
        GradientState._reset_state()
    acc = Accelerator(mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum)
    if cfg.fsdp and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise TunelabError("--fsdp needs a distributed launch: torchrun --nproc_per_node N -m tunelab.cli train ... "
                           "(ACCELERATE_USE_CPU=true on CPUs), or accelerate launch")
    return acc


def shared_seed(cfg: TrainConfig, acc: Accelerator) -> TrainConfig:
    """Every rank takes rank 0's seed: each drew its own, and all must shuffle (and draw LoRI's A) alike."""
    if acc.num_processes <= 1:
        return cfg
    from accelerate.utils import broadcast_object_list

    return type(cfg)(**{**cfg.to_dict(), "seed": broadcast_object_list([cfg.seed])[0]})


def prepare(run: Run, net: torch.nn.Module, loader: Any) -> tuple[torch.nn.Module, Any]:
    """Put ``net`` on the device (DDP-wrapped, or FSDP2-sharded) and shard the loader across ranks."""
    acc = run.accelerator
    if not run.cfg.fsdp:
        return acc.prepare(net, loader)
    net.to(acc.device)
    # The loss module is the root unit: its forward gathers what lies outside the blocks
    # (embeddings, final norm, LM head), which CausalLMLoss calls directly.
    fsdp.shard_model(net, fsdp.mesh_for(acc.device))
    if run.cfg.bf16:  # accelerate.prepare would add this autocast; FSDP2 is reached without it
        forward = net.forward

        def autocast_forward(*args: Any, **kwargs: Any) -> Any:
            with torch.autocast(acc.device.type, dtype=torch.bfloat16):
                return forward(*args, **kwargs)

        net.forward = autocast_forward
    return net, acc.prepare(loader)


@contextlib.contextmanager
def micro_batch(run: Run, net: torch.nn.Module, seq_len: int) -> Iterator[None]:
    """The context of one micro-batch: accumulation bookkeeping (and DDP's no_sync), FSDP's
    gradient sync only on a step's last micro-batch, the attention kernels for its length."""
    acc = run.accelerator
    with acc.accumulate(net), attention_kernels(seq_len, acc.device):
        fsdp.set_gradient_sync(net, acc.sync_gradients)
        yield


def trainable_state(run: Run, params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """Full (unsharded) values of the trainable weights; all ranks call it, rank 0 gets them."""
    if not run.cfg.fsdp:
        return {name: p.detach() for name, p in params.items()}
    return fsdp.full_tensors(params)


def load_trainable(run: Run, params: dict[str, torch.nn.Parameter], values: dict[str, torch.Tensor]) -> None:
    """Copy full checkpoint values into the (possibly sharded) trainable weights."""
    missing = sorted(set(params) - set(values))
    if missing:
        raise TunelabError(f"{run.out}: the checkpoint lacks {len(missing)} trainable weights (e.g. {missing[0]}); "
                           "it was written by another version — restart with --overwrite")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(fsdp.shard_like(param, values[name]))  # every rank read the file: no broadcast


def gather_for_saving(run: Run, net: torch.nn.Module) -> None:
    """After training under FSDP, make rank 0's model a plain module with full weights (for
    the method's checks and PEFT's ``save_pretrained``). All ranks call it."""
    run.accelerator.wait_for_everyone()
    if run.cfg.fsdp:
        fsdp.unshard_for_saving(net)
