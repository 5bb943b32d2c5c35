"""Shared fixtures. Tests run offline; the model cache is shared across runs (~/.cache/tunelab)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# The default suite is deterministic (CI must not go red on a newly drawn example);
# HYPOTHESIS_PROFILE=explore draws fresh examples, and more of them.
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of tiny-random, loaded once; tests must not modify the model."""
    from tunelab.models import load_model

    return load_model("tiny-random")


@pytest.fixture(scope="session")
def qa_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small prompt/response JSONL file."""
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    rows = [{"prompt": f"What is {i} plus {i + 1}?", "response": str(2 * i + 1)} for i in range(24)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def arithmetic_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 examples of the built-in arithmetic task as JSONL (the multi-process tests' data)."""
    from tunelab.tasks import TASKS

    path = tmp_path_factory.mktemp("arithmetic") / "train.jsonl"
    rows = TASKS["arithmetic"].examples("train", 32, seed=0)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_config(data: Path, output: Path, method: str = "lora", **kw):
    """A fast TrainConfig on tiny-random."""
    from tunelab.finetune import TrainConfig

    values = dict(model="tiny-random", data=str(data), method=method, output=str(output), rank=4, alpha=8,
                  max_steps=4, batch_size=4, seed=123, lr=1e-2, save_every=0, bf16=False)
    values.update(kw)
    return TrainConfig(**values)


ROOT = Path(__file__).resolve().parents[1]


def launch(args: list[str], cwd: Path, processes: int = 1, module: str = "tunelab.cli") -> None:
    """``python -m MODULE ARGS`` in a fresh process, or ``processes`` gloo ranks under torchrun.

    accelerate's own CPU launcher needs mpirun; torchrun + ACCELERATE_USE_CPU gives gloo DDP/FSDP.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", module, *args]
    if processes > 1:
        env["ACCELERATE_USE_CPU"] = "true"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(port), "-m", module, *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420, cwd=cwd)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
