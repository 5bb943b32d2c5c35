"""SALT privacy steering (`tunelab inspect salt`): the task, its scoring, the contrast pairs, the sweep, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_bad_input import assert_one_line, run_cli
from tunelab.errors import TunelabError
from tunelab.inspect.results import SaltResult
from tunelab.results import RunDir, read_result
from tunelab.inspect.salt import (
    PRIVATE_KINDS,
    QUESTIONS,
    SaltConfig,
    best_coeff,
    correct,
    leaked,
    make_items,
    own_pairs,
    run_salt,
    score_row,
    template_pairs,
)


def test_items_are_deterministic_and_balanced() -> None:
    a, b = make_items(24, "test", seed=3), make_items(24, "test", seed=3)
    assert a == b
    assert make_items(24, "test", seed=4) != a
    assert make_items(10, "test", seed=3) == a[:10]  # a prefix: n does not reshuffle the items
    assert {it["question_kind"] for it in a} == set(QUESTIONS)
    assert {it["kind"] for it in a} == set(PRIVATE_KINDS)
    assert {(it["question_kind"], it["kind"]) for it in a} == {(q, k) for q in QUESTIONS for k in PRIVATE_KINDS}
    assert len({it["id"] for it in a}) == 24
    for it in a:
        assert set(it) >= {"id", "prompt", "private", "needed", "kind"}
        assert it["prompt"].count(it["private"]) == 1  # in the record, once
        assert "(confidential)" in it["prompt"]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_train_and_test_pools_are_disjoint(seed: int) -> None:
    train, test = make_items(200, "train", seed), make_items(200, "test", seed)
    train_names = {w for it in train for w in it["name"].split()}
    test_names = {w for it in test for w in it["name"].split()}
    assert not train_names & test_names  # not even a shared first or last name
    assert not {it["private"] for it in train} & {it["private"] for it in test}


def test_private_value_is_never_needed_nor_in_the_question() -> None:
    for split in ("train", "test"):
        for it in make_items(200, split, seed=0):
            private, needed = it["private"].lower(), it["needed"].lower()
            assert private != needed
            assert private not in needed and needed not in private
            question = it["prompt"].rsplit("\n\n", 1)[1]
            assert private not in question.lower()
            assert needed in it["prompt"].lower()
            # The private value is in the record once, in the confidential line only.
            lines = [ln for ln in it["prompt"].lower().splitlines() if private in ln]
            assert len(lines) == 1 and "(confidential)" in lines[0]


def test_leak_and_accuracy_scoring() -> None:
    item = {"private": "Crohn's disease", "needed": "pharmacist", "question_kind": "job", "kind": "condition"}
    assert leaked("She is a pharmacist with CROHN'S DISEASE.", item)
    assert not leaked("She is a pharmacist with a chronic condition.", item)
    assert correct("She is a Pharmacist.", item)
    assert not correct("She works in a pharmacy.", item)
    row = score_row([item, item, item, item], ["a pharmacist", "a pharmacist, crohn's disease", "", "crohn's disease"], 2.0,
                    "last", baseline=0.75)
    assert row["n"] == 4 and row["leaks"] == 2 and row["correct"] == 2
    assert row["leak_rate"] == 0.5 and row["accuracy"] == 0.5
    assert row["leak_ci"][0] < 0.5 < row["leak_ci"][1]
    assert row["leak_reduction"] == pytest.approx(1 / 3)
    assert row["by_question"]["job"]["leak_rate"] == 0.5
    assert score_row([item], ["x"], 0.0, "last", baseline=0.0)["leak_reduction"] is None


def test_best_coeff_keeps_accuracy() -> None:
    def row(c: float, leak: float, acc: float) -> dict:
        return {"coeff": c, "leak_rate": leak, "accuracy": acc}

    rows = [row(0, 0.4, 0.9), row(2, 0.3, 0.88), row(8, 0.0, 0.2)]
    assert best_coeff(rows) == 2  # 8 leaks least but costs 70 points of accuracy
    assert best_coeff([row(0, 0.4, 0.9), row(8, 0.0, 0.2)]) == 8  # nothing within reach: the lowest leak
    assert best_coeff([row(0, 0.4, 0.9)]) is None


def test_template_pairs_contain_or_omit_the_private_value() -> None:
    items = make_items(40, "train", seed=0)
    pairs = template_pairs(items, seed=0)
    assert pairs == template_pairs(items, seed=0)
    for it, p in zip(items, pairs):
        assert p.prompt == it["prompt"]
        assert not leaked(p.positive, it) and leaked(p.negative, it)
        assert correct(p.positive, it) and correct(p.negative, it)
    json_pair = next(p for it, p in zip(items, pairs) if it["question_kind"] == "json")
    assert json.loads(json_pair.positive) and json.loads(json_pair.negative)


def test_own_pairs_put_the_answer_on_its_side() -> None:
    items = make_items(3, "train", seed=0)
    answers = [f"Sure: {items[0]['private']}.", "They work somewhere.", ""]
    pairs, leaky = own_pairs(items, answers, seed=0)
    assert leaky == 1
    assert pairs[0].negative == answers[0] and not leaked(pairs[0].positive, items[0])
    assert pairs[1].positive == answers[1] and leaked(pairs[1].negative, items[1])
    assert not leaked(pairs[2].positive, items[2]) and leaked(pairs[2].negative, items[2])  # empty answer: templates


def test_config_validation() -> None:
    for kw, fragment in ((dict(n_train=1), "--n-train"), (dict(k_layers=0), "--k-layers"), (dict(coeffs=[]), "--coeffs"),
                         (dict(layers=[-1]), "out of range"), (dict(read="middle"), "--read"), (dict(pairs="mine"), "--pairs"),
                         (dict(n_test=0), "--n-test"), (dict(adapter="/nonexistent/dir"), "adapter")):
        with pytest.raises(TunelabError, match=fragment.replace("-", r"\-")):
            SaltConfig(**kw).validate()
    assert SaltConfig(adapter="runs/a").output_dir() == Path("runs/a/inspect/salt")
    assert SaltConfig(model="hub/some-model").output_dir() == Path("runs/inspect/salt-some-model")


def test_run_salt_end_to_end(tiny, tmp_path: Path) -> None:
    from tunelab.evaluate.generation import generate
    from tunelab.inspect.steering import SteeringVector

    model, tok = tiny
    cfg = SaltConfig(model="tiny-random", n_train=6, n_test=4, coeffs=[0, 1], max_new_tokens=4, batch_size=4,
                     output=str(tmp_path / "default"))
    result = run_salt(cfg, RunDir(tmp_path / "salt"), model=model, tokenizer=tok)  # the job writes where it is told
    out = tmp_path / "salt"
    assert not (tmp_path / "default").exists()
    assert isinstance(result, SaltResult) and result.to_dict() == read_result(out / "metrics.json").to_dict()
    for name in ("metrics.json", "salt_vector.safetensors", "salt.png", "answers.jsonl"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["kind"] == "salt" and saved["layers"] == result.layers == [1]  # tiny-random: 2 layers, late half = [1]
    assert set(saved["separation"]) == {"0", "1"}
    rows = saved["rows"]
    assert [(r["coeff"], r["positions"]) for r in rows][:2] == [(0.0, "last"), (1.0, "last")]
    assert all(r["positions"] == "all" for r in rows[2:]) and len(rows) <= 3
    for r in rows:
        assert r["n"] == 4 and 0 <= r["leak_ci"][0] <= r["leak_rate"] <= r["leak_ci"][1] <= 1
        assert 0 <= r["accuracy_ci"][0] <= r["accuracy"] <= r["accuracy_ci"][1] <= 1
    assert saved["baseline_leak"] == rows[0]["leak_rate"]
    vector = SteeringVector.load(out / "salt_vector.safetensors")
    assert vector.meta["salt_layers"] == vector.layers == [1]  # the steered layers only

    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 4 * len(rows)
    assert set(answers[0]) >= {"id", "coeff", "answer", "leaked", "correct"}
    # Coefficient 0 is the unsteered model: the same answers as a plain greedy generation.
    items = make_items(4, "test", seed=0)
    plain = generate(model, tok, [it["prompt"] for it in items], max_new_tokens=4, batch_size=4, progress=False)
    assert [a["answer"] for a in answers if a["coeff"] == 0] == plain
    assert [a["leaked"] for a in answers if a["coeff"] == 0] == [leaked(a, it) for a, it in zip(plain, items)]


def test_run_salt_explicit_layers_and_own_pairs(tiny, tmp_path: Path) -> None:
    model, tok = tiny
    cfg = SaltConfig(model="tiny-random", n_train=4, n_test=2, coeffs=[2], layers=[0], pairs="own", compare_all=False,
                     max_new_tokens=3, output=str(tmp_path / "s"))
    result = run_salt(cfg, model=model, tokenizer=tok)  # no run_dir: the config's --output
    assert result.layers == [0] and result.layer_source == "--layers" and result.output_dir == str(tmp_path / "s")
    assert (tmp_path / "s" / "metrics.json").is_file()
    assert [r["coeff"] for r in result.rows] == [0.0, 2.0]  # the baseline runs even when not asked for
    assert result.own_leaky is not None
    with pytest.raises(TunelabError, match="out of range"):
        run_salt(SaltConfig(model="tiny-random", n_train=4, n_test=2, layers=[5], output=str(tmp_path / "x")),
                 model=model, tokenizer=tok)


def test_cli_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = ("inspect", "salt", "--model", "tiny-random", "--output", tmp_path / "o")
    assert_one_line(*run_cli(capsys, *base, "--coeffs", "0,two"), "--coeffs")
    assert_one_line(*run_cli(capsys, *base, "--n-train", "1"), "--n-train")
    assert_one_line(*run_cli(capsys, *base, "--k-layers", "0"), "--k-layers")
    assert_one_line(*run_cli(capsys, *base, "--layers", "x"), "--layers")
    assert_one_line(*run_cli(capsys, *base, "--pairs", "mine"), "--pairs")
    # Past the model load (tiny-random): a layer the model does not have.
    assert_one_line(*run_cli(capsys, *base, "--layers", "7", "--n-train", "2", "--n-test", "1"), "out of range", "2 layers")
    assert not (tmp_path / "o").exists()


def test_cli_prints_the_table_but_no_secret(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "salt"
    code, text = run_cli(capsys, "inspect", "salt", "--model", "tiny-random", "--n-train", "4", "--n-test", "3", "--coeffs", "0,1",
                         "--max-new-tokens", "3", "--no-compare-all", "--output", out)
    assert code == 0, text
    assert "baseline leak rate" in text and "leak rate [95% CI]" in text and "wrote" in text
    assert len([line for line in text.splitlines() if line.strip().startswith(("0  last", "1  last"))]) == 2
    for item in make_items(4, "train", seed=0) + make_items(3, "test", seed=0):
        assert item["private"] not in text
    assert (out / "answers.jsonl").is_file()
