"""``tunelab audit multi-turn``: the Markov chain's statistics, the conversation, the probe, end to end."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.test_bad_input import assert_one_line, run_cli
from tunelab.errors import TunelabError
from tunelab.inspect.results import MultiTurnResult
from tunelab.results import RunDir, read_result
from tunelab.inspect.multiturn import (
    NO_TRANSITIONS,
    REWORDINGS,
    MultiTurnConfig,
    answer_changes,
    bootstrap_ci,
    chain_metrics,
    chain_statistics,
    conversation,
    markov_curve,
    markov_fit,
    probe_auroc,
    probe_layers,
    probe_metrics,
    question_of,
    run_multiturn,
)

# --------------------------------------------------------------------------- the chain


def test_markov_fit_on_a_hand_made_matrix() -> None:
    correct = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 0]], dtype=bool)
    fit = markov_fit(correct)
    assert fit["accuracy"] == [0.5, 0.5, 0.25]
    assert fit["transitions"][0] == {"from_turn": 1, "to_turn": 2, "TT": 1, "TF": 1, "FT": 1, "FF": 1}
    assert fit["transitions"][1] == {"from_turn": 2, "to_turn": 3, "TT": 1, "TF": 1, "FT": 0, "FF": 2}
    assert fit["pooled"] == {"TT": 2, "TF": 2, "FT": 1, "FF": 3}
    assert fit["p_tf"] == 0.5 and fit["p_ft"] == 0.25
    assert fit["acc_inf"] == pytest.approx(1 / 3) and fit["acc_inf_reason"] is None
    assert fit["predicted"] == pytest.approx([0.5, 0.375, 0.34375])


def simulate(n: int, turns: int, a1: float, p_tf: float, p_ft: float, seed: int = 0) -> np.ndarray:
    """A two-state chain per question: correct at turn 1 with probability a1, then p_TF / p_FT."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, turns), dtype=bool)
    out[:, 0] = rng.random(n) < a1
    for t in range(1, turns):
        u = rng.random(n)
        out[:, t] = np.where(out[:, t - 1], u >= p_tf, u < p_ft)
    return out


def test_a_simulated_chain_is_recovered() -> None:
    correct = simulate(5000, 9, a1=0.6, p_tf=0.15, p_ft=0.3)
    fit = markov_fit(correct)
    assert fit["p_tf"] == pytest.approx(0.15, abs=0.01)
    assert fit["p_ft"] == pytest.approx(0.3, abs=0.01)
    assert fit["acc_inf"] == pytest.approx(2 / 3, abs=0.02)
    assert np.allclose(fit["predicted"], fit["accuracy"], atol=0.03)  # the chain is Markov: the prediction fits


def test_no_transitions_no_stationary_accuracy() -> None:
    frozen = markov_fit(np.array([[1, 1, 1], [0, 0, 0]], dtype=bool))
    assert frozen["p_tf"] == 0 and frozen["p_ft"] == 0
    assert frozen["acc_inf"] is None and frozen["acc_inf_reason"] == NO_TRANSITIONS
    assert frozen["predicted"] == [0.5, 0.5, 0.5]
    always_right = markov_fit(np.ones((3, 4), dtype=bool))
    assert always_right["p_ft"] is None and always_right["acc_inf"] is None and "p_FT is undefined" in always_right["acc_inf_reason"]
    assert always_right["predicted"] == [1.0] * 4
    assert np.isnan(chain_statistics(np.ones((3, 4), dtype=bool))[-1])
    with pytest.raises(TunelabError, match="turns"):
        markov_fit(np.ones((3, 1), dtype=bool))


@given(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.integers(2, 12))
def test_predicted_curve_follows_the_recursion(a1: float, p_tf: float, p_ft: float, turns: int) -> None:
    curve = markov_curve(a1, p_tf, p_ft, turns)
    assert len(curve) == turns and curve[0] == a1
    for a, b in pairwise(curve):
        assert b == pytest.approx(a * (1 - p_tf) + (1 - a) * p_ft)
    if p_tf + p_ft > 0:  # it moves towards Acc∞, never past it
        inf = p_ft / (p_tf + p_ft)
        assert abs(curve[-1] - inf) <= abs(a1 - inf) + 1e-12


def test_bootstrap_ci_contains_the_estimate_and_is_seeded() -> None:
    correct = simulate(200, 5, a1=0.5, p_tf=0.2, p_ft=0.2, seed=3)
    point = chain_statistics(correct)
    ci = bootstrap_ci(correct, chain_statistics, n_boot=300, seed=1)
    assert ci.shape == (len(point), 2)
    assert np.all(ci[:, 0] <= point) and np.all(point <= ci[:, 1])
    assert np.array_equal(ci, bootstrap_ci(correct, chain_statistics, n_boot=300, seed=1))
    metrics = chain_metrics(correct, answer_changes(correct.tolist()), n_boot=300, seed=1)
    lo, hi = metrics["acc_inf_ci"]
    assert lo <= metrics["acc_inf"] <= hi
    assert all(lo <= a <= hi for a, (lo, hi) in zip(metrics["accuracy"], metrics["accuracy_ci"]))
    assert chain_metrics(correct, answer_changes(correct.tolist()), n_boot=0, seed=1)["acc_inf_ci"] is None


def test_answer_changes() -> None:
    changes = answer_changes([[0, 0, 2], ["a", "b", "a"]])
    assert changes.tolist() == [[False, True], [True, True]]
    assert chain_metrics(np.array([[1, 1, 0], [0, 1, 0]], dtype=bool), changes, 0, 0)["change_rate"] == [0.5, 1.0]


# --------------------------------------------------------------------------- the conversation

QUESTION = "Question: Which is a mammal?\nAnswer:"


def test_turn_k_has_k_user_messages() -> None:
    first = [{"role": "user", "content": QUESTION}]
    for k, answers in enumerate([[], ["whale"], ["whale", "shark"], ["whale", "shark", "whale"]], start=1):
        msgs = conversation(first, QUESTION, answers, "Think again.", reword=False)
        users = [m["content"] for m in msgs if m["role"] == "user"]
        assert len(users) == k and users[0] == QUESTION and msgs[-1]["role"] == "user"
        assert users[1:] == ["Think again."] * (k - 1)
        assert [m["content"] for m in msgs if m["role"] == "assistant"] == answers
    assert first == [{"role": "user", "content": QUESTION}]  # not modified


def test_reword_rotates_and_restates_the_question() -> None:
    answers = ["x"] * (len(REWORDINGS) + 1)
    msgs = conversation([{"role": "user", "content": QUESTION}], QUESTION, answers, "Think again.", reword=True)
    follow_ups = [m["content"] for m in msgs if m["role"] == "user"][1:]
    assert all(f.startswith("Think again. ") and QUESTION in f for f in follow_ups)
    assert len(set(follow_ups[: len(REWORDINGS)])) == len(REWORDINGS)
    assert follow_ups[len(REWORDINGS)] == follow_ups[0]


def test_question_of_records() -> None:
    chat = [{"role": "user", "content": QUESTION}]
    assert question_of({"prompt": chat, "prompts": [chat, chat], "choices": ["a", "b"], "answer": 0}, "t") == (chat, QUESTION)
    assert question_of({"prompt": "What is 2 + 2?", "response": "4"}, "t")[1] == "What is 2 + 2?"
    other = [{"role": "user", "content": "Another context"}]
    with pytest.raises(TunelabError, match="own context"):
        question_of({"prompt": chat, "prompts": [chat, other], "choices": ["a", "b"], "answer": 0}, "winogrande")


def test_config_validation_and_layers(tmp_path: Path) -> None:
    for kw, fragment in [({"turns": 1}, "--turns must be >= 2"), ({"limit": 0}, "--limit must be >= 1"),
                         ({"batch_size": 0}, "--batch-size"), ({"follow_up": "  "}, "--follow-up"),
                         ({"layers": [-1]}, "--layers must be >= 0"), ({"adapter": str(tmp_path / "no")}, "adapter directory")]:
        with pytest.raises(TunelabError, match=fragment):
            MultiTurnConfig(**kw).validate()
    assert MultiTurnConfig(model="m", task="arc-easy").output_dir() == Path("runs/inspect/multiturn-m-arc-easy")
    assert MultiTurnConfig(adapter="ad", task="data/q.jsonl").output_dir() == Path("ad/inspect/multiturn-q")
    assert probe_layers(None, 30) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29]
    assert probe_layers(None, 2) == [0, 1]
    with pytest.raises(TunelabError, match="layer 30 out of range"):
        probe_layers([3, 30], 30)


# --------------------------------------------------------------------------- the probe


def test_probe_finds_an_informative_direction() -> None:
    rng = np.random.default_rng(0)
    n, steps, hidden = 40, 3, 8
    changes = rng.random((n, steps)) < 0.4
    features = torch.tensor(rng.normal(size=(n, steps, 2, hidden)), dtype=torch.float32)
    features[:, :, 1, 0] += 3 * torch.tensor(changes, dtype=torch.float32)  # layer 7 knows, layer 2 doesn't
    result = probe_metrics(features, changes, [2, 7])
    assert result["probe"]["7"] > 0.9 and 0.2 < result["probe"]["2"] < 0.8
    assert result["probe_examples"] == n * steps and result["probe_changes"] == int(changes.sum())
    assert result["baseline_auroc"] is not None and result["probe_reason"] is None


def test_turn_baseline_sees_turn_dependence() -> None:
    n, steps = 30, 4
    changes = np.zeros((n, steps), dtype=bool)
    changes[:, 0] = True  # only the first follow-up ever changes the answer
    result = probe_metrics(torch.zeros(n, steps, 1, 4), changes, [0])
    assert result["baseline_auroc"] == pytest.approx(1.0)


def test_probe_without_answer_changes() -> None:
    assert probe_auroc(np.zeros((6, 3)), np.zeros(6), np.arange(6)) == (None, "no answer changes")
    result = probe_metrics(torch.zeros(3, 2, 2, 4), np.zeros((3, 2), dtype=bool), [0, 1])
    assert result["probe"] == {"0": None, "1": None} and result["baseline_auroc"] is None
    assert result["probe_reason"] == "no answer changes"


# --------------------------------------------------------------------------- end to end on tiny-random


@pytest.mark.parametrize("task, turns", [("arc-easy", 3), ("arithmetic", 2)])
def test_run_multiturn_writes_everything(tiny, tmp_path: Path, task: str, turns: int) -> None:
    model, tokenizer = tiny
    cfg = MultiTurnConfig(model="tiny-random", task=task, limit=4, turns=turns, bootstrap=50, output=str(tmp_path / "default"),
                          reword=task == "arc-easy")
    result = run_multiturn(cfg, RunDir(tmp_path / "out"), model=model, tokenizer=tokenizer, progress=False)
    out = tmp_path / "out"
    assert not (tmp_path / "default").exists()  # the job writes where it is told
    assert isinstance(result, MultiTurnResult) and result.to_dict() == read_result(out / "metrics.json").to_dict()
    assert {p.name for p in out.iterdir()} == {"metrics.json", "multiturn.png", "turns.jsonl"}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["kind"] == "multi-turn" and saved["n"] == 4 and saved["turns"] == turns
    assert len(saved["accuracy"]) == len(saved["markov_prediction"]) == len(saved["accuracy_ci"]) == turns
    assert len(saved["transitions"]["per_turn"]) == turns - 1 and sum(saved["transitions"]["pooled"].values()) == 4 * (turns - 1)
    assert set(saved["probe"]) == {"0", "1"} and saved["probe_examples"] == 4 * (turns - 1)
    assert saved["markov_prediction"][0] == saved["accuracy"][0] and result.output_dir == str(out)
    rows = [json.loads(line) for line in (out / "turns.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["answers"]) == len(r["correct"]) == turns for r in rows)
    assert (out / "multiturn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if task == "arc-easy":
        assert all(len(r["picks"]) == turns and all(isinstance(p, int) and p >= 0 for p in r["picks"]) for r in rows)


# --------------------------------------------------------------------------- the CLI


def test_cli_prints_the_summary(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, output = run_cli(capsys, "audit", "multi-turn", "--model", "tiny-random", "--task", "arc-easy", "--limit", "3",
                           "--turns", "2", "--layers", "1", "--bootstrap", "20", "--output", tmp_path / "mt")
    assert code == 0, output
    assert "arc-easy: accuracy turn 1" in output and "Acc∞" in output and "p_TF" in output and "probe:" in output
    assert f"wrote {tmp_path / 'mt'}/metrics.json" in output.replace("\n", "")
    assert json.loads((tmp_path / "mt" / "metrics.json").read_text())["probe_layers"] == [1]


@pytest.mark.parametrize("args, fragment", [
    (["--turns", "1"], "--turns must be >= 2"),
    (["--task", "no-such-task"], "unknown task 'no-such-task'"),
    (["--layers", "2"], "--layers: layer 2 out of range: the model has 2 layers (0..1)"),
])
def test_cli_bad_input_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], fragment: str) -> None:
    code, output = run_cli(capsys, "audit", "multi-turn", "--model", "tiny-random", "--limit", "2", "--output", tmp_path / "mt", *args)
    assert_one_line(code, output, fragment)
    assert not (tmp_path / "mt").exists()
