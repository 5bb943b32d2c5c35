"""Data parallelism for ``tunelab pretrain``: PyTorch DDP under ``torchrun``, nothing home-made.

``torchrun --nproc_per_node N -m tunelab.cli pretrain ...`` starts N ranks (gloo on CPUs, NCCL on
GPUs). Every rank draws its own batches (seeded by seed, step and rank: N × ``--batch-size``
windows per step), DDP averages the gradients, rank 0 evaluates, logs, checkpoints and saves.
transformers keeps all of a layer's experts in one tensor, so an expert without tokens leaves
no parameter unused. Default MoE's EMA defaults are averaged over the ranks after every step
(each rank saw other tokens); DDP does not sync buffers per forward.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tunelab.moe.default_moe import DefaultMoeBlock


@dataclass(frozen=True)
class Ranks:
    """This process's place: rank, world size and device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup() -> Ranks:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
    return Ranks(dist.get_rank() if world > 1 else 0, world, device)


def wrap(model: torch.nn.Module, ranks: Ranks) -> torch.nn.Module:
    """The module to train: DDP around ``model`` on several ranks, ``model`` itself on one."""
    if ranks.world == 1:
        return model
    return DistributedDataParallel(model, device_ids=[ranks.device.index] if ranks.device.type == "cuda" else None,
                                   forward_sync_buffers=False)


def sync_defaults(model: torch.nn.Module, ranks: Ranks) -> None:
    """Average Default MoE's EMA buffers over the ranks."""
    if ranks.world == 1:
        return
    for block in model.modules():
        if isinstance(block, DefaultMoeBlock):
            value = block.defaults.clone()
            dist.all_reduce(value)
            block.defaults = value / ranks.world


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        dist.barrier()


def teardown(ranks: Ranks) -> None:
    if ranks.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
