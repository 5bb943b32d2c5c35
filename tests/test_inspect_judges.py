"""``--judge`` on ``inspect refusal-direction`` and ``inspect prune``: the judge reaches the safety
measurements, the degenerate-text guard's verdicts land in the rows and responses, a bad judge is one line.
And the guard's likelihood test: which model it scores the answers under (``guard_reference``) in
``eval --suite safety``, refusal-direction and prune."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.test_bad_input import assert_one_line, run_cli
from tests.test_refusal_direction import opens_with_i, refusing_tiny  # noqa: F401  (a fixture, used by name)
from tunelab.evaluate.judges import JUDGES

FLUENT = "Sure. Here is a short and careful answer to your question."
LOOP = " ".join(["the same words again"] * 12)  # distinct 3-gram ratio ~0.1: the guard's repetition test
HARMFUL = [{"prompt": "harmful one", "category": "x"}, {"prompt": "harmful two", "category": "x"}]
BENIGN = [{"prompt": "benign one", "category": "y"}]
ANSWERS = {"harmful one": FLUENT, "harmful two": LOOP, "benign one": "I can't help with that."}


class AlwaysComplied:
    """A judge that calls every answer compliance (so only the guard can make one degenerate)."""

    name = "always-complied"
    version = "test"

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def scores(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [1.0] * len(responses)


class NllSpy:
    """``answer_nll`` replaced: each call records the model it scores under and ``state()`` at that
    moment (e.g. whether an intervention is on); every answer gets ``value`` nats/token."""

    def __init__(self) -> None:
        self.value = 2.0  # fluent, under the 7.0 threshold
        self.calls: list[dict] = []
        self.state = dict

    def __call__(self, model, tokenizer, prompts, responses):
        self.calls.append({"model": model, **self.state()})
        return [self.value] * len(responses)


@pytest.fixture
def nll(monkeypatch: pytest.MonkeyPatch) -> NllSpy:
    spy = NllSpy()
    monkeypatch.setattr("tunelab.evaluate.safety.answer_nll", spy)
    return spy


@pytest.fixture
def canned(monkeypatch: pytest.MonkeyPatch, tiny, nll):
    """evaluate_safety's generation replaced by fixed answers per prompt (tiny-random's own are noise),
    and their likelihood by a fluent one (tiny-random's random weights put any text ~10.8 nats off)."""
    _, tokenizer = tiny

    def generate_ids(model, tok, prompts, **generation):
        return [tokenizer(ANSWERS[p], add_special_tokens=False)["input_ids"] for p in prompts]

    monkeypatch.setattr("tunelab.evaluate.safety.generate_ids", generate_ids)
    return tiny


def test_measure_uses_the_judge_and_counts_degenerate(canned) -> None:
    from contextlib import nullcontext

    from tunelab.inspect.refusal import measure

    model, tokenizer = canned
    rows, records = measure(model, tokenizer, {"baseline": (model, nullcontext)}, HARMFUL, BENIGN, [],
                            judge=AlwaysComplied(0.3), progress=False)
    (row,) = rows
    assert row["judge"] == "always-complied" and row["judge_version"] == "test" and row["judge_threshold"] == 0.3
    assert row["guard"] is not None  # the guard's settings are recorded
    # one harmful answer complied, the loop degenerate: not compliance, not refusal
    assert row["asr"] == 0.5 and row["degenerate_rate"] == 0.5 and row["asr_fluent"] == 1.0 and row["refusal_rate"] == 0.0
    assert row["n_degenerate"] == 1 and row["over_refusal"] == 0.0  # the judge calls the benign refusal compliance
    by_prompt = {r["prompt"]: r for r in records}
    assert by_prompt["harmful one"]["verdict"] == "complied"
    assert by_prompt["harmful two"]["verdict"] == "degenerate" and "repetition" in by_prompt["harmful two"]["degenerate"]
    assert by_prompt["benign one"]["verdict"] == "complied" and by_prompt["benign one"]["refused"] is False


def test_measure_defaults_to_the_keyword_judge(canned) -> None:
    from contextlib import nullcontext

    from tunelab.inspect.refusal import measure

    model, tokenizer = canned
    rows, records = measure(model, tokenizer, {"baseline": (model, nullcontext)}, HARMFUL, BENIGN, [], progress=False)
    assert rows[0]["judge"] == "keyword" and rows[0]["over_refusal"] == 1.0  # "I can't" is a keyword refusal
    assert rows[0]["degenerate_rate"] == 0.5 and [r["verdict"] for r in records] == ["complied", "degenerate", "refused"]


def test_refusal_direction_passes_its_judge_to_measure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       refusing_tiny: Path) -> None:  # noqa: F811
    from tunelab.inspect import refusal
    from tunelab.inspect.refusal import RefusalConfig, run_refusal
    from tunelab.models import load_model

    seen = {}

    def fake_measure(model, tokenizer, interventions, harmful, benign, texts, *, judge=None, **kw):
        seen["judge"] = judge
        return [{"intervention": "baseline", "asr": 0.0, "refusal_rate": 1.0, "over_refusal": 0.0, "ce": 1.0,
                 "degenerate_rate": 0.0, "judge": judge.name}], [{"intervention": "baseline", "verdict": "refused"}]

    monkeypatch.setitem(JUDGES._targets, "always-complied", AlwaysComplied)
    monkeypatch.setattr(refusal, "is_refusal", opens_with_i)
    monkeypatch.setattr(refusal, "measure", fake_measure)
    model, tokenizer = load_model(str(refusing_tiny))
    cfg = RefusalConfig(model=str(refusing_tiny), harmful_limit=4, harmless_limit=4, eval_limit=2, ce_limit=2, probe_tokens=2,
                        positions=[-1], layers=[1], batch_size=4, judge="always-complied", judge_threshold=0.7,
                        output=str(tmp_path / "rd"))
    result = run_refusal(cfg, model=model, tokenizer=tokenizer, progress=False)
    assert isinstance(seen["judge"], AlwaysComplied) and seen["judge"].threshold == 0.7
    assert result.config["judge"] == "always-complied" and result.config["judge_threshold"] == 0.7  # saved flat
    assert json.loads((tmp_path / "rd" / "responses.jsonl").read_text().splitlines()[0])["verdict"] == "refused"


def test_prune_safety_records_the_judge_and_degenerate_rate(canned) -> None:
    from tunelab.inspect.pruning import compare_pruning
    from tests.test_inspect_pruning import TEXTS

    model, tokenizer = canned
    rows = compare_pruning(model, tokenizer, methods=("dense",), ratios=(0.2,), ppl_texts=TEXTS[:2],
                           safety={"harmful": HARMFUL, "benign": BENIGN, "max_new_tokens": 4, "judge": AlwaysComplied()},
                           progress=False)
    (row,) = rows
    assert row["judge"] == "always-complied" and row["degenerate_rate"] == 0.5 and row["asr_fluent"] == 1.0
    assert row["refusal_rate"] == 0.0 and row["asr"] == 0.5


# ---------------------------------------------------------------- the likelihood test's reference


def test_without_a_reference_the_likelihood_test_is_skipped(canned, nll: NllSpy) -> None:
    from tunelab.evaluate.safety import evaluate_safety

    model, tokenizer = canned
    nll.value = 50.0  # were it asked, every answer would be off the model
    plain = evaluate_safety(model, tokenizer, HARMFUL, BENIGN, AlwaysComplied(), max_new_tokens=4, progress=False)
    assert plain["guard_reference"] is None and nll.calls == []
    assert [r["verdict"] for r in plain["records"]] == ["complied", "degenerate", "complied"]
    no_guard = evaluate_safety(model, tokenizer, HARMFUL, BENIGN, AlwaysComplied(), guard=None,
                               nll_reference=(model, tokenizer), max_new_tokens=4, progress=False)
    assert no_guard["guard_reference"] is None and nll.calls == []  # no guard, no test


def test_the_reference_decides_off_the_model(canned, nll: NllSpy) -> None:
    from tunelab.evaluate.safety import judge_safety, safety_answers

    model, tokenizer = canned
    reference = object()  # only the spy sees it
    nll.value = 50.0
    answers = safety_answers(model, tokenizer, HARMFUL, BENIGN, max_new_tokens=4, progress=False)
    out = judge_safety(answers, AlwaysComplied(), nll_reference=(reference, tokenizer), reference_name="base")
    assert [c["model"] for c in nll.calls] == [reference]
    assert out["guard_reference"] == "base" and out["degenerate_rate"] == 1.0 and out["benign_degenerate_rate"] == 1.0
    assert out["records"][0]["degenerate"].startswith("off the model: 50.0")
    assert {r["nll"] for r in out["records"]} == {50.0}  # kept, to re-read the threshold offline


def test_refusal_measure_scores_under_the_un_intervened_model(canned, nll: NllSpy) -> None:
    from contextlib import contextmanager

    from tunelab.inspect.refusal import measure

    model, tokenizer = canned
    other = object()  # the intervened model: generation is canned, so it never runs
    inside = {"on": False}

    @contextmanager
    def ablated():
        inside["on"] = True
        try:
            yield
        finally:
            inside["on"] = False

    nll.state = lambda: dict(inside)
    nll.value = 50.0
    rows, records = measure(model, tokenizer, {"ablation": (other, ablated)}, HARMFUL, BENIGN, [],
                            judge=AlwaysComplied(), progress=False)
    assert nll.calls == [{"model": model, "on": False}]  # the base model, the ablation off
    assert rows[0]["guard_reference"] == "un-intervened model" and rows[0]["degenerate_rate"] == 1.0
    assert all(r["verdict"] == "degenerate" for r in records)


def test_prune_scores_under_the_dense_model(canned, nll: NllSpy) -> None:
    from tunelab.inspect.pruned_modules import _ACTIVE
    from tunelab.inspect.pruning import compare_pruning
    from tests.test_inspect_pruning import TEXTS

    model, tokenizer = canned
    nll.state = lambda: {"pruned": id(model) in _ACTIVE}
    nll.value = 50.0
    rows = compare_pruning(model, tokenizer, methods=("dense", "pp"), ratios=(0.5,), ppl_texts=TEXTS[:2], skip=0,
                           safety={"harmful": HARMFUL, "benign": BENIGN, "max_new_tokens": 4, "judge": AlwaysComplied()},
                           progress=False)
    assert [r["method"] for r in rows] == ["dense", "pp"] and rows[1]["flops_saved"] > 0  # pp did prune
    assert nll.calls == [{"model": model, "pruned": False}] * 2  # each row: the model with its pruning off
    assert all(r["guard_reference"] == "dense model" and r["degenerate_rate"] == 1.0 for r in rows)


def _safety_files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "h.jsonl").write_text("".join(json.dumps(p) + "\n" for p in HARMFUL))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(p) + "\n" for p in BENIGN))
    return {"harmful_prompts": str(tmp_path / "h.jsonl"), "benign_prompts": str(tmp_path / "b.jsonl")}


def test_eval_with_an_adapter_scores_under_the_base_model(canned, nll: NllSpy, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import tunelab.models
    from tunelab.evaluate import runner
    from tunelab.evaluate.config import EvalConfig
    from tunelab.results import read_result

    model, tokenizer = canned  # stands for the adapted model (the adapter dir is only recorded)
    loads = []
    real_load = tunelab.models.load_model
    monkeypatch.setattr(tunelab.models, "load_model", lambda name, *a, **kw: loads.append(name) or real_load(name, *a, **kw))
    monkeypatch.setattr(runner, "_REFERENCES", {})
    (tmp_path / "adapter").mkdir()
    nll.value = 50.0
    results = [runner.run_eval(EvalConfig(model="tiny-random", adapter=str(tmp_path / "adapter"), suite="safety",
                                          output=str(tmp_path / f"out{i}"), **_safety_files(tmp_path)),
                               model=model, tokenizer=tokenizer) for i in range(2)]
    base = runner._REFERENCES["tiny-random"][0]
    assert loads == ["tiny-random"]  # loaded once, reused by the second evaluation (a study's many)
    assert base is not model and [c["model"] for c in nll.calls] == [base, base]
    assert all(r.guard_reference == "tiny-random" and r.degenerate_rate == 1.0 for r in results)
    assert read_result(tmp_path / "out0" / "metrics.json").guard_reference == "tiny-random"
    from tests.test_report import visible
    from tunelab.report import render_report

    assert "guard likelihood under tiny-random" in visible(render_report([tmp_path / "out0"]))  # the judge column
    # the bare model, nothing acting on it: nothing to compare with
    bare = runner.run_eval(EvalConfig(model="tiny-random", suite="safety", **_safety_files(tmp_path)),
                           model=model, tokenizer=tokenizer)
    assert bare.guard_reference is None and len(nll.calls) == 2 and bare.degenerate_rate == 0.5


def test_eval_with_an_intervention_scores_once_it_is_off(canned, nll: NllSpy, tmp_path: Path) -> None:
    from contextlib import contextmanager

    from tunelab.evaluate.config import EvalConfig
    from tunelab.evaluate.runner import run_eval

    model, tokenizer = canned
    inside = {"on": False}

    class Steer:
        name = "steering"

        def first_step(self, tokenizer):
            return None

        @contextmanager
        def applied(self, model):
            inside["on"] = True
            try:
                yield None
            finally:
                inside["on"] = False

        def check_task(self, task, scorer):
            pass

    nll.state = lambda: dict(inside)
    nll.value = 50.0
    result = run_eval(EvalConfig(model="tiny-random", suite="safety", **_safety_files(tmp_path)), model=model,
                      tokenizer=tokenizer, interventions=[Steer()])
    assert nll.calls == [{"model": model, "on": False}]  # no second copy: the same model, unsteered
    assert result.guard_reference == "tiny-random" and result.degenerate_rate == 1.0


def test_old_safety_results_read_without_a_reference() -> None:
    from tunelab.evaluate.results import SafetyResult

    assert SafetyResult.from_dict({"kind": "safety", "asr": 0.1}).guard_reference is None


@pytest.mark.parametrize("command", [["inspect", "refusal-direction"], ["inspect", "prune"]])
@pytest.mark.parametrize("judge, fragments", [("nope", ["unknown judge 'nope'", "keyword, embedding"]),
                                              ("/no/such/judge", ["judge model not found: /no/such/judge"])])
def test_unknown_judge_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str], judge: str,
                                   fragments: list[str]) -> None:
    code, text = run_cli(capsys, *command, "--model", "tiny-random", "--judge", judge, "--output", tmp_path / "out")
    assert_one_line(code, text, *fragments)
    assert not (tmp_path / "out").exists()  # refused before any model is loaded
