"""HumanEval: problem loading, program extraction, sandboxed checking, pass@k, end to end."""

from __future__ import annotations

import pytest

from tunelab.errors import TunelabError
from tunelab.evaluate.humaneval import (
    PREFILL,
    build_prompt,
    check_program,
    evaluate_humaneval,
    extract_program,
    load_problems,
    pass_at_k,
)
from tunelab.evaluate.sandbox import STATUSES


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    return load_problems()


@pytest.fixture(scope="module")
def first(problems: list[dict]) -> dict:
    """HumanEval/0, has_close_elements(numbers, threshold)."""
    return problems[0]


def test_problems_load_in_task_order(problems: list[dict]) -> None:
    assert len(problems) == 164
    assert [p["task_id"] for p in problems[:12]] == [f"HumanEval/{i}" for i in range(12)]
    assert {"prompt", "entry_point", "test", "canonical_solution"} <= set(problems[0])
    assert [p["task_id"] for p in load_problems(limit=3)] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    with pytest.raises(TunelabError):
        load_problems(limit=0)


def test_canonical_solutions_pass(problems: list[dict]) -> None:
    for problem in problems[:3] + [problems[32]]:  # 32: the prompt defines a helper, poly()
        program = extract_program(problem, problem["canonical_solution"])
        result = check_program(problem, program)
        assert result.passed, (problem["task_id"], result.stderr)
        assert "tunelab-humaneval-ok" not in result.stdout  # the sentinel is taken out


def test_wrong_body_fails(first: dict) -> None:
    result = check_program(first, extract_program(first, "    return False\n"))
    assert result.status == "failed" and "AssertionError" in result.stderr


def test_exiting_early_does_not_pass(first: dict) -> None:
    # exit(0) before the tests run would be a pass without the sentinel check.
    for body in ("    import sys\n    sys.exit(0)\n", "    raise SystemExit\n"):
        program = first["prompt"] + body + f"\n{first['entry_point']}([], 0.1)\n"
        result = check_program(first, program)
        assert result.status == "failed" and not result.passed


def test_prompt_messages(first: dict) -> None:
    messages = build_prompt(first)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert first["prompt"] in messages[1]["content"] and "```python" in messages[1]["content"]
    assert messages[2]["content"] == PREFILL
    assert [m["role"] for m in build_prompt(first, prefill=False)] == ["system", "user"]


BODY = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
FUNCTION = "def has_close_elements(numbers, threshold):\n" + BODY


@pytest.mark.parametrize("completion", [
    pytest.param(BODY, id="body"),
    pytest.param(BODY.lstrip(), id="body-flush-left"),
    pytest.param("```python\n" + BODY + "```\nThis checks every pair.", id="fenced-body"),
    pytest.param("Sure! Here it is:\n\n```python\nfrom typing import List\n\n" + FUNCTION
                 + "\nprint(has_close_elements([1.0, 2.0], 0.5))\nassert has_close_elements([], 1) is True\n```\n"
                 "It works.", id="fenced-function-with-examples"),
    pytest.param("Here is the function:\n" + FUNCTION + "\nThis uses a generator.", id="unfenced-function-with-prose"),
    pytest.param("```py\n" + FUNCTION + "\nif __name__ == '__main__':\n    print(has_close_elements([1.0], 1.0))\n",
                 id="unterminated-fence-with-main"),
    pytest.param(BODY + "\n\nprint(has_close_elements([1.0, 2.0", id="cut-off-by-token-limit"),
    pytest.param("```python\n    " + FUNCTION.replace("\n    ", "\n        ") + "```", id="indented-function"),
])
def test_extract_program_variants_pass(first: dict, completion: str) -> None:
    program = extract_program(first, completion)
    assert "def has_close_elements" in program and "print(" not in program and "assert" not in program
    result = check_program(first, program)
    assert result.passed, (program, result.stderr)


def test_extract_keeps_the_prompt_prefix(problems: list[dict]) -> None:
    # A rewrite of find_zero alone must still see poly() and math from the prompt.
    problem = problems[32]
    body = problem["canonical_solution"].replace("\n    ", "\n        ").replace("    begin", "        begin", 1)
    completion = "```python\ndef find_zero(xs: list):\n" + body + "```"
    program = extract_program(problem, completion)
    assert program.startswith("import math") and "def poly(" in program
    assert check_program(problem, program).passed


def test_extract_with_prefill(first: dict) -> None:
    # What evaluate_humaneval extracts from: the pre-filled fence + the model's answer.
    program = extract_program(first, PREFILL + FUNCTION + "```\n\nThis function checks pairs.")
    assert program.count("def has_close_elements") == 1 and "This function" not in program
    assert check_program(first, program).passed


def test_pass_at_k_matches_hand_computed() -> None:
    # n=5, c=2: pass@1 = c/n = 0.4; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    results = [[True, False, True, False, False]]
    assert pass_at_k(results, [1]) == pytest.approx({"pass@1": 0.4})
    assert pass_at_k(results, [2])["pass@2"] == pytest.approx(0.7)
    two = pass_at_k([[True, False, True, False, False], [False] * 5], [1])
    assert two["pass@1"] == pytest.approx(0.2)
    with pytest.raises(TunelabError):
        pass_at_k([[True]], [2])
    with pytest.raises(TunelabError):
        pass_at_k([], [1])


def test_evaluate_humaneval_end_to_end(tiny) -> None:
    model, tokenizer = tiny
    result = evaluate_humaneval(model, tokenizer, limit=2, max_new_tokens=16, progress=False)
    assert result["task"] == "humaneval" and result["n"] == 2 and result["n_samples"] == 1
    assert 0.0 <= result["pass@1"] <= 1.0
    assert [r["task_id"] for r in result["records"]] == ["HumanEval/0", "HumanEval/1"]
    for record in result["records"]:
        assert set(record) == {"task_id", "sample", "prompt", "completion", "program", "status", "passed"}
        assert record["status"] in STATUSES and record["status"] != "error"
        assert record["passed"] == (record["status"] == "passed")


def test_evaluate_humaneval_sampled_pass_at_k(tiny) -> None:
    model, tokenizer = tiny
    result = evaluate_humaneval(model, tokenizer, limit=1, n_samples=2, ks=(1, 2), max_new_tokens=8,
                                progress=False)
    assert set(result) >= {"pass@1", "pass@2"} and [r["sample"] for r in result["records"]] == [0, 1]
    with pytest.raises(TunelabError):
        evaluate_humaneval(model, tokenizer, limit=1, n_samples=1, ks=(2,), progress=False)
