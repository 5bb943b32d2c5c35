"""``--judge`` on ``inspect refusal-direction`` and ``inspect prune``: the judge reaches the safety
measurements, the degenerate-text guard's verdicts land in the rows and responses, a bad judge is one line."""

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


@pytest.fixture
def canned(monkeypatch: pytest.MonkeyPatch, tiny):
    """evaluate_safety's generation replaced by fixed answers per prompt (tiny-random's own are noise)."""
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


@pytest.mark.parametrize("command", [["inspect", "refusal-direction"], ["inspect", "prune"]])
@pytest.mark.parametrize("judge, fragments", [("nope", ["unknown judge 'nope'", "keyword, embedding"]),
                                              ("/no/such/judge", ["judge model not found: /no/such/judge"])])
def test_unknown_judge_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str], judge: str,
                                   fragments: list[str]) -> None:
    code, text = run_cli(capsys, *command, "--model", "tiny-random", "--judge", judge, "--output", tmp_path / "out")
    assert_one_line(code, text, *fragments)
    assert not (tmp_path / "out").exists()  # refused before any model is loaded
