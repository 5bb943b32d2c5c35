"""Shared fixtures. Tests run offline; the model cache is shared across runs (~/.cache/tunelab)."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


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


def tiny_config(data: Path, output: Path, method: str = "lora", **kw):
    """A fast TrainConfig on tiny-random."""
    from tunelab.train import TrainConfig

    values = dict(model="tiny-random", data=str(data), method=method, output=str(output), rank=4, alpha=8,
                  max_steps=4, batch_size=4, seed=123, lr=1e-2, save_every=0, bf16=False)
    values.update(kw)
    return TrainConfig(**values)
