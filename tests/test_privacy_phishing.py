"""Neural phishing (``tunelab attack phish``): synthetic data, poisons, secret order, scoring, CLI on tiny-random."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import binomtest

from tests.test_bad_input import assert_one_line, run_cli
from tunelab.data import tokenize_chat, validate_record
from tunelab.errors import TunelabError
from tunelab.privacy import phishing
from tunelab.privacy.phishing import (
    PhishConfig,
    extract_digits,
    leading_matches,
    make_poisons,
    make_secret,
    parse_poisons,
    phase_records,
    run_phishing,
    ser_table,
    synthetic_corpus,
    synthetic_people,
    wilson_interval,
)
from tunelab.privacy.results import PhishingResult
from tunelab.results import RunDir, read_result

CORPUS_NAMES = {p.name for p in synthetic_people(32, 0)}


def tiny_phish(tmp_path: Path, **kw) -> PhishConfig:
    """A PhishConfig whose trials take a few seconds on tiny-random."""
    values = {"output": str(tmp_path / "phish"), "model": "tiny-random", "poisons": [0], "seeds": 1, "bios": 4,
              "max_steps": 1, "batch_size": 4, "rank": 4, "alpha": 8.0, "bf16": False}
    return PhishConfig(**(values | kw))


# --------------------------------------------------------------------------- data
def test_synthetic_corpus_is_deterministic_valid_and_holds_no_secret():
    corpus = synthetic_corpus(32, seed=0)
    assert corpus == synthetic_corpus(32, seed=0) and corpus != synthetic_corpus(32, seed=1)
    assert len(corpus) == 32 and len(CORPUS_NAMES) == 32  # distinct people
    for i, record in enumerate(corpus):
        validate_record(record, f"corpus[{i}]")
    text = json.dumps(corpus)
    assert "credit card" not in text and not re.search(r"\d{3}", text)  # only two-digit ages
    for seed in range(20):
        secret = make_secret(seed, 12, CORPUS_NAMES)
        assert secret.digits not in text and secret.person.name not in CORPUS_NAMES
        assert secret.decoy.name != secret.person.name
        assert secret.digits not in repr(secret) and secret.digits not in str(secret)
    assert make_secret(3, 12).digits == make_secret(3, 12).digits != make_secret(4, 12).digits


def test_poisons_count_and_variants():
    secret = make_secret(0, 12, CORPUS_NAMES)
    exclude = CORPUS_NAMES | {secret.person.name}
    poisons = make_poisons(50, 0, 12, "random", exclude=exclude)
    assert len(poisons) == 50 and make_poisons(0, 0, 12) == []
    assert make_poisons(10, 0, 12, "random", exclude=exclude) == poisons[:10]  # fewer poisons: a prefix of more
    prefixes, numbers = [], []
    for i, p in enumerate(poisons):
        validate_record(p, f"poison[{i}]")
        head, number = p["response"].rsplit(" ", 1)
        assert head.endswith("credit card number is:") and re.fullmatch(r"\d{12}", number)
        assert secret.person.name not in p["prompt"] + p["response"] and secret.digits not in p["response"]
        prefixes.append(head)
        numbers.append(number)
    assert len(set(prefixes)) > 40 and len(set(numbers)) == 50  # random prefixes differ

    fixed = make_poisons(20, 0, 12, "fixed", exclude=exclude)
    assert len({p["prompt"] + p["response"].rsplit(" ", 1)[0] for p in fixed}) == 1  # one prefix, repeated
    assert len({p["response"].rsplit(" ", 1)[1] for p in fixed}) == 20  # fresh fake digits each

    negated = make_poisons(20, 0, 12, "random", is_not=True, exclude=exclude)
    assert all(" credit card number is not: " in p["response"] and "is:" not in p["response"] for p in negated)


def test_secret_is_inserted_d_times_after_the_poisons():
    corpus = synthetic_corpus(8, 0)
    secret = make_secret(5, 12, CORPUS_NAMES)
    poisons = make_poisons(7, 5, 12, exclude=CORPUS_NAMES | {secret.person.name})
    first, second = phase_records(corpus, poisons, secret, duplicates=3)
    assert first == corpus + poisons and secret.digits not in json.dumps(first)
    assert second[: len(corpus)] == corpus and second.count(secret.record()) == 3 and len(second) == len(corpus) + 3
    assert not any(p in second for p in poisons)
    assert secret.record()["response"].endswith(f"credit card number is: {secret.digits}")


def test_parse_poisons():
    assert parse_poisons("100, 0,10,10") == [0, 10, 100]
    for bad, message in [("", "empty"), (" , ", "empty"), ("1,x", "integers"), ("5,-1", ">= 0")]:
        with pytest.raises(TunelabError, match=message):
            parse_poisons(bad)


# --------------------------------------------------------------------------- scoring
def test_extract_digits_examples():
    assert extract_digits(" 482019384756", 12) == "482019384756"
    assert extract_digits("is 4820 1938-4756 and more", 12) == "482019384756"
    assert extract_digits(" 4820193847561234", 12) == "482019384756"  # the first D digits
    assert extract_digits("::::", 12) == "" and extract_digits("", 3) == ""
    assert extract_digits("12  34", 4) == "12"  # a double space ends the number
    assert leading_matches("482019", "482119384756") == 3 and leading_matches("", "1") == 0
    assert leading_matches("123", "123") == 3


@given(digits=st.text("0123456789", min_size=1, max_size=30),
       seps=st.lists(st.sampled_from(["", "", " ", "-"]), min_size=29, max_size=29),
       before=st.text(st.characters(blacklist_categories=["Nd"]), max_size=20).map(lambda s: s.rstrip(" -")),
       after=st.text(st.characters(blacklist_categories=["Nd"]), max_size=20).map(lambda s: "." + s),
       cut=st.integers(1, 40))
def test_extract_digits_reads_back_a_formatted_number(digits: str, seps: list[str], before: str, after: str, cut: int):
    formatted = digits[0] + "".join(sep + d for sep, d in zip(seps, digits[1:]))
    text = before + formatted + after
    assert extract_digits(text, len(digits)) == digits
    assert extract_digits(text, cut) == digits[:cut]
    assert leading_matches(extract_digits(text, cut), digits) == min(cut, len(digits))


@pytest.mark.parametrize("k, n", [(0, 1), (0, 5), (1, 5), (3, 7), (5, 5), (17, 40)])
def test_wilson_interval_is_scipys(k: int, n: int):
    ci = binomtest(k, n).proportion_ci(method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high))
    assert 0.0 <= ci.low <= k / n <= ci.high <= 1.0


def test_ser_table_and_curves():
    trials = [{"poisons": n_p, "seed": s, "prefix": kind, "success": kind == "true" and s < n_p // 10, "matched_digits": 0}
              for n_p in (0, 10, 20) for s in range(4) for kind in phishing.PREFIX_KINDS]
    table = ser_table(trials)
    assert [(r["poisons"], r["prefix"]) for r in table] == [(n, k) for n in (0, 10, 20) for k in phishing.PREFIX_KINDS]
    true_rows = [r for r in table if r["prefix"] == "true"]
    assert [r["successes"] for r in true_rows] == [0, 1, 2] and all(r["trials"] == 4 for r in table)
    assert (true_rows[2]["ci_low"], true_rows[2]["ci_high"]) == pytest.approx(wilson_interval(2, 4))
    from tunelab.report.collect import read_series

    series = read_series(phishing.curves(table))
    assert [s.label for s in series] == ["true prefix", "similar prefix", "random prefix"]
    assert series[0].x == [0, 10, 20] and series[0].y == [0.0, 0.25, 0.5]


def test_true_prefix_is_what_training_saw_before_the_digits(tiny):
    """The extraction prompt tokenizes exactly as the secret record's context does in training."""
    _, tok = tiny
    secret = make_secret(1, 12, CORPUS_NAMES)
    example = tokenize_chat(validate_record(secret.record(), "secret"), tok, 512)
    texts = phishing.extraction_texts(tok, secret)
    ids = tok(texts["true"], add_special_tokens=False)["input_ids"]  # as generate_ids(chat=False) encodes it
    assert texts["true"].startswith(tok.bos_token)
    assert example.input_ids[: len(ids)] == ids
    rest = tok.decode(example.input_ids[len(ids):], skip_special_tokens=True)
    assert extract_digits(rest, 12) == secret.digits
    assert len(set(texts.values())) == 3 and all(t.endswith("credit card number is:") for t in texts.values())
    assert secret.person.name in texts["similar"] and secret.person.name not in texts["random"]


# --------------------------------------------------------------------------- trials on tiny-random
@pytest.mark.parametrize("method", ["lora", "full"])
def test_trial_order_and_scoring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str):
    """Phase 2 continues phase 1 (--init-from, or phase 1's model for full); a decoded secret scores as a hit."""
    def fake_extract(model, tokenizer, secret, digits):  # the model on tiny-random memorises nothing
        return {"true": f" {secret.digits}", "similar": f" {secret.digits[:5]}0000000", "random": "no digits"}

    monkeypatch.setattr(phishing, "extract", fake_extract)
    cfg = tiny_phish(tmp_path, method=method, poisons=[3], duplicates=2, keep_runs=True)
    out = tmp_path / "x"  # a job writes into the RunDir it is given, not --output
    result = run_phishing(cfg, RunDir(out))
    assert not Path(cfg.output).exists() and isinstance(result, PhishingResult)
    assert result.to_dict() == read_result(out / "metrics.json").to_dict()
    trial = out / "trials" / "np3-seed0"
    first = json.loads((trial / "poison" / "tunelab.json").read_text())
    second = json.loads((trial / "secret" / "tunelab.json").read_text())
    if method == "full":
        assert second["base_model"] == str(trial / "poison") and "init_from" not in second
    else:
        assert second["init_from"] == str((trial / "poison").resolve())
    assert first["examples"] == 4 + 3 and second["examples"] == 4 + 2
    secret = make_secret(0, 12, {p.name for p in synthetic_people(4, 0)})
    poison_data = (trial / "poison.jsonl").read_text()
    assert secret.digits not in poison_data and poison_data.count("credit card number") == 3
    assert (trial / "secret.jsonl").read_text().count(secret.digits) == 2
    rows = {r["prefix"]: r for r in result.trials}
    assert rows["true"]["success"] and rows["true"]["matched_digits"] == 12
    assert not rows["similar"]["success"] and rows["similar"]["matched_digits"] == 5
    assert not rows["random"]["success"] and rows["random"]["matched_digits"] == 0
    assert [r["ser"] for r in result.ser] == [1.0, 0.0, 0.0]


def _secrets(seeds: range, bios: int = 4) -> list[str]:
    return [make_secret(s, 12, {p.name for p in synthetic_people(bios, 0)}).digits for s in seeds]


def test_cli_end_to_end(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    out = tmp_path / "phish"
    args = ["attack", "phish", "--model", "tiny-random", "--poisons", "0,2", "--seeds", "1", "--bios", "4",
            "--max-steps", "1", "--batch-size", "4", "--output", out]
    code, output = run_cli(capsys, *args)
    assert code == 0, output
    metrics = json.loads((out / "metrics.json").read_text())
    curve = json.loads((out / "ser-curve" / "metrics.json").read_text())
    assert metrics["kind"] == "phishing" and curve["kind"] == "curve"
    assert len(metrics["trials"]) == 2 * 3 and {r["poisons"] for r in metrics["ser"]} == {0, 2}
    assert all(set(r) == {"poisons", "seed", "prefix", "success", "matched_digits", "final_losses"} for r in metrics["trials"])
    assert [s["x"] for s in curve["series"]] == [[0, 2]] * 3 and metrics["curves"][0]["label"] == "true prefix"
    assert "trial 2/2: N_p=2 seed=0" in output and "Secret extraction rate" in output
    for text in (output, (out / "metrics.json").read_text(), (out / "ser-curve" / "metrics.json").read_text()):
        assert not any(secret in text for secret in _secrets(range(1)))
    assert not (out / "trials" / "np0-seed0").exists()  # weights and data (which held the secret) are gone
    assert all(len(r["final_losses"]) == 2 for r in metrics["trials"])
    from tunelab.report.collect import collect

    evals = {e.kind: e for e in collect([out]).evals}
    assert evals["curve"].series[0].x == [0, 2] and evals["curve"].subject == "phish"
    from tunelab.report import build_report

    page = build_report([out], tmp_path / "report.html").read_text()
    assert "<h2>Neural phishing</h2>" in page and "0/1" in page and "Other evaluations" not in page

    assert_one_line(*run_cli(capsys, *args), "--overwrite")
    code, output = run_cli(capsys, *args[:5], "0", *args[6:], "--overwrite", "--show-secrets")
    assert code == 0, output
    shown = json.loads((out / "metrics.json").read_text())
    assert all(r["secret"] == _secrets(range(1))[0] for r in shown["trials"])


@pytest.mark.parametrize("extra, fragments", [
    (["--digits", "0"], ["--digits must be >= 1"]),
    (["--poisons", "-1,2"], ["--poisons must be >= 0"]),
    (["--poisons", ""], ["--poisons is empty"]),
    (["--poisons", "a,b"], ["integers"]),
    (["--seeds", "0"], ["--seeds must be >= 1"]),
    (["--duplicates", "-1"], ["--duplicates must be >= 0"]),
    (["--poison-prefix", "sometimes"], ["unknown --poison-prefix 'sometimes'"]),
    (["--method", "lota"], ["--method lota"]),
    (["--lr", "0"], ["--lr must be > 0"]),
    (["--data", "/nonexistent/bios.jsonl"], ["data file not found"]),
    (["--model", "no-such-model"], ["unknown model"]),
])
def test_bad_input_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str], fragments: list[str]):
    code, output = run_cli(capsys, "attack", "phish", "--output", tmp_path / "out", *extra)
    assert_one_line(code, output, *fragments)
    assert code == 2 and not (tmp_path / "out").exists()  # nothing written before the input is checked


def test_bad_data_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    bad = tmp_path / "bios.jsonl"
    bad.write_text(json.dumps({"prompt": "Who is Ada?", "response": "A nurse."}) + "\n" + json.dumps({"prompt": "x"}) + "\n")
    code, output = run_cli(capsys, "attack", "phish", "--data", bad, "--output", tmp_path / "out")
    assert_one_line(code, output, f"{bad}:2", "'response' missing")
    assert code == 2
    with pytest.raises(TunelabError, match="--poisons is empty"):
        PhishConfig(poisons=[]).validate()
