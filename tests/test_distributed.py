"""Multi-process (DDP) training on the CPU: two gloo processes under torchrun.

Two processes with one micro-batch each must train the same adapter as one process that
accumulates those two micro-batches, and the sparse methods must keep their invariants.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.conftest import launch
from tunelab.adapters import storage


def test_two_processes_equal_one_with_accumulation(arithmetic_file: Path, tmp_path: Path):
    common = ["train", "--model", "tiny-random", "--data", str(arithmetic_file), "--method", "lota", "--max-steps", "3",
              "--batch-size", "2", "--seed", "3", "--no-bf16", "--lr", "1e-3", "--sparsity", "0.9"]
    launch([*common, "--output", str(tmp_path / "ddp")], tmp_path, processes=2)
    launch([*common, "--grad-accum", "2", "--output", str(tmp_path / "single")], tmp_path)

    ddp, single = (json.loads((tmp_path / d / "tunelab.json").read_text()) for d in ("ddp", "single"))
    assert ddp["steps"] == single["steps"] == 3
    assert ddp["tokens"] == single["tokens"]
    # the same positions trained (rank 0's calibration mask), the same values up to reduction order
    masks_ddp, masks_single = (storage.load_masks(tmp_path / d / storage.MASK_FILE) for d in ("ddp", "single"))
    assert masks_ddp.keys() == masks_single.keys()
    for name in masks_ddp:
        assert torch.equal(masks_ddp[name], masks_single[name]), name
    vec_ddp, vec_single = (storage.load_task_vector(tmp_path / d) for d in ("ddp", "single"))
    assert vec_ddp.keys() == vec_single.keys()
    for name in vec_ddp:
        assert torch.allclose(vec_ddp[name].float(), vec_single[name].float(), atol=1e-6), name
