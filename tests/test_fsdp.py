"""FSDP2 training on the CPU: two gloo processes under torchrun with ``--fsdp``.

Two sharded processes with one micro-batch each must train the same weights as one plain
process that accumulates those two micro-batches; sparse methods must keep exact zeros outside
their masks although FSDP drops gradient hooks; adapters saved from the gathered full state
load in plain PEFT; a resumed FSDP run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import launch
from tunelab.adapters import storage


def _run(args: list[str], tmp: Path, processes: int = 2, module: str = "tunelab.cli") -> None:
    launch(args, tmp, processes=processes, module=module)


@pytest.fixture(scope="module")
def mask_source(arithmetic_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished LoRI-D run for LoRI-S to take its mask from."""
    out = tmp_path_factory.mktemp("fsdp-src") / "lori-d"
    _run(["train", "--model", "tiny-random", "--data", str(arithmetic_file), "--method", "lori-d", "--max-steps", "2",
          "--rank", "4", "--alpha", "8", "--seed", "1", "--no-bf16", "--output", str(out)], out.parent, processes=1)
    return out


def _common(arithmetic_file: Path, method: str, mask_source: Path) -> list[str]:
    args = ["train", "--model", "tiny-random", "--data", str(arithmetic_file), "--method", method, "--max-steps", "3",
            "--batch-size", "2", "--seed", "3", "--no-bf16", "--rank", "4", "--alpha", "8", "--save-every", "0"]
    lr = {"lora": "1e-2", "lori-d": "1e-2", "lori-s": "1e-2", "lota": "1e-3", "full": "1e-4"}[method]
    args += ["--lr", lr]
    if method == "lori-s":
        args += ["--mask-from", str(mask_source), "--sparsity", "0.9"]
    if method == "lota":
        args += ["--sparsity", "0.9"]
    return args


def _weights(run: Path, method: str) -> dict[str, torch.Tensor]:
    if method == "lota":
        return storage.load_task_vector(run)
    if method == "full":
        return load_file(next(run.glob("*.safetensors")))
    return load_file(run / storage.PEFT_WEIGHTS)


def _check_same_training(arithmetic_file: Path, tmp_path: Path, method: str, mask_source: Path) -> tuple[Path, Path]:
    common = _common(arithmetic_file, method, mask_source)
    _run([*common, "--fsdp", "--output", str(tmp_path / "fsdp")], tmp_path)
    _run([*common, "--grad-accum", "2", "--output", str(tmp_path / "single")], tmp_path, processes=1)
    fsdp_run, single = (json.loads((tmp_path / d / "tunelab.json").read_text()) for d in ("fsdp", "single"))
    assert fsdp_run["steps"] == single["steps"] == 3 and fsdp_run["tokens"] == single["tokens"]
    assert fsdp_run["config"]["fsdp"] and not single["config"]["fsdp"]
    a, b = _weights(tmp_path / "fsdp", method), _weights(tmp_path / "single", method)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=1e-5), (name, (a[name].float() - b[name].float()).abs().max())
    return tmp_path / "fsdp", tmp_path / "single"


def test_lori_s_two_sharded_ranks_equal_one_with_accumulation(arithmetic_file: Path, tmp_path: Path, mask_source: Path) -> None:
    fsdp_dir, _ = _check_same_training(arithmetic_file, tmp_path, "lori-s", mask_source)
    # exact zeros outside the mask, although fully_shard drops gradient hooks
    masks = storage.load_masks(fsdp_dir / storage.MASK_FILE)
    weights = load_file(fsdp_dir / storage.PEFT_WEIGHTS)
    for key, mask in masks.items():
        b = weights[f"base_model.model.{key}.lora_B.weight"]
        assert torch.count_nonzero(b[~mask]) == 0, key
        assert torch.count_nonzero(b[mask]) > 0, key
    # the adapter saved from the gathered full state loads in plain PEFT
    from peft import PeftModel

    from tunelab.models import load_model

    base, _ = load_model("tiny-random")
    model = PeftModel.from_pretrained(base, str(fsdp_dir))
    loaded = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_B" in k}
    for name, value in weights.items():
        if "lora_B" in name:
            assert torch.equal(loaded[name], value), name


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "lori-d", "lota", "full"])
def test_two_sharded_ranks_equal_one_with_accumulation(arithmetic_file: Path, tmp_path: Path, mask_source: Path, method: str) -> None:
    _check_same_training(arithmetic_file, tmp_path, method, mask_source)


def test_resumed_fsdp_run_equals_uninterrupted(arithmetic_file: Path, tmp_path: Path, mask_source: Path) -> None:
    common = _common(arithmetic_file, "lori-s", mask_source)
    common[common.index("--max-steps") + 1] = "4"
    common[common.index("--save-every") + 1] = "2"
    _run([*common, "--fsdp", "--output", str(tmp_path / "full")], tmp_path)
    # killed after step 2's checkpoint (tests/fsdp_stop.py stops there), then resumed
    _run([*common, "--fsdp", "--output", str(tmp_path / "part")], tmp_path, module="tests.fsdp_stop")
    assert not (tmp_path / "part" / "tunelab.json").exists()
    _run(["train", "--output", str(tmp_path / "part"), "--resume"], tmp_path)
    a, b = (load_file(tmp_path / d / storage.PEFT_WEIGHTS) for d in ("full", "part"))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ra, rb = (json.loads((tmp_path / d / "tunelab.json").read_text()) for d in ("full", "part"))
    assert ra["losses"] == rb["losses"] and rb["steps"] == 4
    steps = [json.loads(line)["step"] for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_fsdp_without_a_distributed_launch_is_one_line(arithmetic_file: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "tunelab.cli", "train", "--model", "tiny-random", "--data", str(arithmetic_file),
                             "--fsdp", "--max-steps", "1", "--no-bf16", "--output", str(tmp_path / "x")],
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--fsdp needs a distributed launch" in result.stderr
    assert not (tmp_path / "x").exists()  # refused before the output dir was touched
