"""Tests for the built-in tasks: generation, splits, scorers, registry and export."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunelab.errors import TunelabError
from tunelab.tasks import SCORERS, TASKS, Task, export_task, get_task
from tunelab.tasks import base
from tunelab.tasks.arithmetic import evaluate
from tunelab.tasks.base import normalize_text, score_exact, score_numeric, split_of

TASK_NAMES = sorted(TASKS)
REPO_ROOT = Path(__file__).resolve().parents[1]


def test_at_least_two_tasks_with_distinct_scorers() -> None:
    assert {"arithmetic", "reverse_words"} <= set(TASKS)
    assert len({t.scorer for t in TASKS.values()}) >= 2
    for name, task in TASKS.items():
        assert task.name == name
        assert task.scorer in SCORERS
        assert task.description


@pytest.mark.parametrize("name", TASK_NAMES)
def test_examples_are_deterministic(name: str) -> None:
    task = get_task(name)
    assert task.examples("train", 50, seed=3) == task.examples("train", 50, seed=3)
    assert task.examples("train", 50, seed=3) != task.examples("train", 50, seed=4)
    # A smaller request is a prefix of a larger one.
    assert task.examples("test", 20, seed=1) == task.examples("test", 40, seed=1)[:20]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_examples_are_deterministic_across_processes(name: str) -> None:
    code = (
        "import json; from tunelab.tasks import get_task; "
        f"print(json.dumps(get_task({name!r}).examples('train', 20, seed=7)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "123"}, cwd=REPO_ROOT,
    ).stdout
    assert json.loads(out) == get_task(name).examples("train", 20, seed=7)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_records_shape_and_no_duplicates(name: str) -> None:
    for split in ("train", "test"):
        records = get_task(name).examples(split, 300, seed=0)
        assert len(records) == 300
        for r in records:
            assert set(r) == {"prompt", "response"}
            assert isinstance(r["prompt"], str) and r["prompt"]
            assert isinstance(r["response"], str) and r["response"] == r["response"].strip()
        assert len({r["prompt"] for r in records}) == 300


@pytest.mark.parametrize("name", TASK_NAMES)
def test_splits_never_overlap(name: str) -> None:
    task = get_task(name)
    train: set[str] = set()
    test: set[str] = set()
    for seed in range(5):
        train |= {r["prompt"] for r in task.examples("train", 300, seed=seed)}
        test |= {r["prompt"] for r in task.examples("test", 100, seed=seed)}
    assert not train & test
    assert all(split_of(p) == "train" for p in train)
    assert all(split_of(p) == "test" for p in test)


def test_bad_split_and_count() -> None:
    task = get_task("arithmetic")
    with pytest.raises(TunelabError, match="unknown split 'dev'"):
        task.examples("dev", 3)
    with pytest.raises(TunelabError):
        task.examples("train", -1)
    assert task.examples("train", 0) == []


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(TASK_NAMES),
    split=st.sampled_from(["train", "test"]),
    seed=st.integers(min_value=0, max_value=10**6),
)
def test_references_score_perfectly(name: str, split: str, seed: int) -> None:
    task = get_task(name)
    for r in task.examples(split, 10, seed=seed):
        assert task.score(r["response"], r["response"]) == 1.0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(min_value=0, max_value=10**6))
def test_wrong_answers_score_zero(seed: int) -> None:
    arith = get_task("arithmetic")
    for r in arith.examples("train", 5, seed=seed):
        assert arith.score(str(int(r["response"]) + 1), r["response"]) == 0.0
    words = get_task("reverse_words")
    for r in words.examples("train", 5, seed=seed):
        # Echoing the input order is the obvious wrong answer.
        original = r["prompt"].split(": ", 1)[1].split("\n", 1)[0]
        assert words.score(original, r["response"]) == 0.0


def test_arithmetic_reference_matches_prompt() -> None:
    for r in get_task("arithmetic").examples("train", 200, seed=0):
        expr = r["prompt"].removeprefix("Compute ").split(".", 1)[0]
        tokens = expr.split()
        operands = [int(t) for t in tokens[::2]]
        operators = tokens[1::2]
        assert len(operators) == 2
        assert operators.count("*") <= 1
        assert all(1 <= v <= 9 for v in operands)
        assert int(r["response"]) >= 0
        # Python's own precedence is the oracle for our tiny evaluator.
        assert evaluate(operands, operators) == int(r["response"]) == eval(expr)  # noqa: S307


def test_evaluate_precedence() -> None:
    assert evaluate([2, 3, 4], ["+", "*"]) == 14
    assert evaluate([2, 3, 4], ["*", "-"]) == 2
    assert evaluate([2, 3, 4], ["-", "-"]) == -5
    assert evaluate([5, 2, 3, 4], ["-", "*", "+"]) == 3


@dataclass(frozen=True)
class _TinyTask(Task):
    """A task with only 10 possible prompts, to exercise exhaustion."""

    name: str = "tiny"
    description: str = "tiny"
    scorer: str = "exact"

    def draw(self, rng: random.Random) -> tuple[str, str]:
        k = rng.randrange(10)
        return f"say {k}", str(k)


def test_exhausted_problem_space_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "MAX_CONSECUTIVE_MISSES", 500)
    task = _TinyTask()
    available = sum(split_of(f"say {k}") == "train" for k in range(10))
    assert len(task.examples("train", available)) == available
    with pytest.raises(TunelabError, match="could only generate"):
        task.examples("train", available + 1)


def test_unknown_scorer_rejected() -> None:
    with pytest.raises(TunelabError, match="unknown scorer 'fuzzy'"):
        _TinyTask(scorer="fuzzy")


def test_reverse_words_reference_matches_prompt() -> None:
    for r in get_task("reverse_words").examples("test", 200, seed=0):
        words = r["prompt"].split(": ", 1)[1].split("\n", 1)[0].split()
        assert 3 <= len(words) <= 5
        assert len(set(words)) == len(words)
        assert r["response"] == " ".join(reversed(words))


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("34", "34", 1.0),
        ("The answer is 34.", "34", 1.0),
        ("17 + 25 - 8 = 34", "34", 1.0),
        ("-12", "-12", 1.0),
        ("The result is -12.", "-12", 1.0),
        ("12", "-12", 0.0),
        ("5-3 gives 2", "2", 1.0),
        ("1,234", "1234", 1.0),
        ("It is 1,234.", "1234", 1.0),
        ("34.0", "34", 1.0),
        ("34.5", "34", 0.0),
        ("first 34 then 35", "34", 0.0),
        ("thirty-four", "34", 0.0),
        ("", "34", 0.0),
        ("no number here", "0", 0.0),
        ("0", "0", 1.0),
    ],
)
def test_score_numeric(prediction: str, reference: str, expected: float) -> None:
    assert score_numeric(prediction, reference) == expected


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("pear lamp river", "pear lamp river", 1.0),
        ("  Pear   LAMP\triver. ", "pear lamp river", 1.0),
        ("pear lamp river\n", "pear lamp river", 1.0),
        ("pear lamp river...", "pear lamp river", 1.0),
        ("river lamp pear", "pear lamp river", 0.0),
        ("pear, lamp, river", "pear lamp river", 0.0),
        ("", "pear lamp river", 0.0),
    ],
)
def test_score_exact(prediction: str, reference: str, expected: float) -> None:
    assert score_exact(prediction, reference) == expected


@given(st.text(max_size=40))
def test_normalize_is_idempotent(text: str) -> None:
    assert normalize_text(normalize_text(text)) == normalize_text(text)
    assert score_exact(text, text) == 1.0


def test_unknown_task_lists_builtin_names() -> None:
    with pytest.raises(TunelabError) as excinfo:
        get_task("nope")
    message = str(excinfo.value)
    assert message.startswith("unknown task 'nope'; built-in tasks: ")
    for name in TASK_NAMES:
        assert name in message


@pytest.mark.parametrize("name", TASK_NAMES)
def test_export_writes_jsonl(name: str, tmp_path) -> None:
    out = tmp_path / "nested" / name
    paths = export_task(name, out, n_train=30, n_test=12, seed=2)
    assert paths == {"train": out / "train.jsonl", "test": out / "test.jsonl"}
    task = get_task(name)
    for split, n in (("train", 30), ("test", 12)):
        lines = paths[split].read_text(encoding="utf-8").splitlines()
        assert len(lines) == n
        records = [json.loads(line) for line in lines]
        assert records == task.examples(split, n, seed=2)
    # Only the two files, no leftover temp files.
    assert sorted(p.name for p in out.iterdir()) == ["test.jsonl", "train.jsonl"]
    # Re-exporting overwrites in place.
    export_task(name, out, n_train=5, n_test=5, seed=2)
    assert len(paths["train"].read_text(encoding="utf-8").splitlines()) == 5


def test_export_unknown_task(tmp_path) -> None:
    with pytest.raises(TunelabError, match="unknown task 'x'"):
        export_task("x", tmp_path)
    assert not any(tmp_path.iterdir())
