"""lm-evaluation-harness bridge: a local multiple-choice task YAML on tiny-random, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.evaluate.results import LmEvalResult
from tunelab.evaluate.runner import EvalConfig, run_eval
from tunelab.results import read_result


@pytest.fixture()
def local_task(tmp_path: Path) -> Path:
    rows = [{"question": f"What is {i} plus {i}?", "choices": [str(2 * i), str(2 * i + 1), str(i)], "answer": i % 3}
            for i in range(1, 7)]
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "sums.yaml").write_text(
        "task: tunelab_test_sums\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n")
    return tmp_path


def test_lm_eval_local_task_matches_our_own_loglikelihoods(tiny, local_task: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model, tok = tiny
    cfg = EvalConfig(model="tiny-random", task="lm-eval:tunelab_test_sums", lm_eval_include=str(local_task),
                     output=str(local_task / "out"))
    result = run_eval(cfg, model=model, tokenizer=tok)
    acc = result.results["tunelab_test_sums"]["acc"]
    assert isinstance(result, LmEvalResult) and result.n["tunelab_test_sums"] == 6
    assert result.to_dict() == read_result(local_task / "out" / "metrics.json").to_dict()
    # Recompute acc by hand: lm-eval scores " choice" after "Question: ...\nAnswer:" (no chat template).
    rows = [json.loads(line) for line in (local_task / "sums.jsonl").read_text().splitlines()]
    correct = 0
    for row in rows:
        ctx = tok(f"Question: {row['question']}\nAnswer:")["input_ids"]
        scores = []
        for choice in row["choices"]:
            cont = tok(f" {choice}", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].float(), -1)
            scores.append(sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont)))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == row["answer"])
    assert acc == pytest.approx(correct / len(rows))
    metrics = json.loads((local_task / "out" / "metrics.json").read_text())
    assert metrics["kind"] == "lm-eval" and metrics["results"]["tunelab_test_sums"]["acc"] == acc


def test_lm_eval_unknown_task(tiny, local_task: Path) -> None:
    model, tok = tiny
    with pytest.raises(TunelabError, match="unknown lm-eval task"):
        run_eval(EvalConfig(model="tiny-random", task="lm-eval:no_such_task", lm_eval_include=str(local_task)), model=model, tokenizer=tok)
    with pytest.raises(TunelabError, match="--lm-eval-include directory not found"):
        EvalConfig(task="lm-eval:x", lm_eval_include=str(local_task / "missing")).validate()
