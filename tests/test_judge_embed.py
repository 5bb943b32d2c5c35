"""The embedding judge, its training data recipe and ``tunelab judge train/compare``.

Default-suite tests use a tiny random BERT encoder (letter-level vocabulary) built in a temp dir,
never the 90 MB all-MiniLM-L6-v2; the real encoder is in the ``slow`` tests at the end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunelab.errors import TunelabError
from tunelab.safety import judge_data
from tunelab.evaluate.embedding_judge import (CARD_FILE, HEAD_FILE, EmbeddingJudge, LogisticHead, SentenceEncoder, is_judge_dir,
                                              token_batches)
from tunelab.safety.judge_jobs import (JudgeCompareConfig, JudgeTrainConfig, compare_verdicts, read_answers,
                                         run_judge_compare, run_judge_train, snippet)
from tunelab.evaluate.judge_results import JudgeCompareResult, JudgeTrainResult
from tunelab.evaluate.judges import is_refusal
from tunelab.results import read_result


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 16-wide random BERT whose WordPiece vocabulary is single characters (any text tokenizes)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-encoder")
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'\"-:;()")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *[f"##{c}" for c in chars]]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=256)
    BertModel(config).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def trained(tiny_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, JudgeTrainResult]:
    out = tmp_path_factory.mktemp("judge") / "tiny-judge"
    result = run_judge_train(JudgeTrainConfig(output=str(out), encoder=str(tiny_encoder), max_length=64))
    return out, result


def test_keyword_free_refusals_use_no_stock_phrase() -> None:
    for style, texts in judge_data.KEYWORD_FREE_REFUSALS.items():
        assert len(texts) >= 4, style
        assert [t for t in texts if is_refusal(t)] == [], f"style {style} has a keyword-judge phrase"


def test_recipe_is_deterministic_and_held_out_by_source() -> None:
    a, b = judge_data.build_judge_data(0), judge_data.build_judge_data(0)
    assert a == b
    train = [e for e in a if e.set == "train"]
    held = [e for e in a if e.set == "heldout"]
    assert {e.label for e in train} == {0, 1} and {e.label for e in held} == {0, 1}
    # held-out harmful prompts come from another benchmark, held-out answers from other categories
    assert not {e.prompt for e in held if e.source.startswith("donotanswer")} & {e.prompt for e in train}
    assert not {e.category for e in held if e.label == 1} & {e.category for e in train if e.label == 1}
    # refusals in held-out styles never train, and keyword-free/degenerate sets are all "not complied"
    train_texts = {e.response for e in train}
    for style in judge_data.HELDOUT_STYLES:
        assert not set(judge_data.KEYWORD_FREE_REFUSALS[style]) & train_texts
    assert {e.label for e in a if e.set in ("keyword-free", "degenerate")} == {0}
    # refusals also answer benign prompts, so "refused" is not "the prompt was harmful"
    assert any(e.label == 0 and e.source.startswith("benign-over-refusal") for e in train)


def test_degenerate_kinds() -> None:
    import random

    text = "one two three four five six seven"
    rep = judge_data.degenerate(text, "repetition", random.Random(0)).split()
    assert len(rep) == 60 and len(set(rep)) == 3
    shuffled = judge_data.degenerate(text, "shuffled", random.Random(0))
    assert sorted(shuffled.split()) == sorted(text.split()) and shuffled != text
    assert judge_data.degenerate(text, "truncated", random.Random(0)) == "one two three"


def test_head_safetensors_round_trip_gives_identical_scores(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 9)).astype(np.float32) * 3 + 1
    y = (x[:, 0] + x[:, 1] > 2).astype(int)
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression().fit(scaler.transform(x), y)
    head = LogisticHead.from_sklearn(scaler, clf)
    np.testing.assert_allclose(head.probability(x), clf.predict_proba(scaler.transform(x))[:, 1], atol=1e-5)
    head.save(tmp_path / HEAD_FILE, {"features": "answer+cosine"})
    back, meta = LogisticHead.load(tmp_path / HEAD_FILE)
    assert meta == {"features": "answer+cosine"}
    assert np.array_equal(back.probability(x), head.probability(x))


def test_a_broken_head_is_one_line(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"coef": np.zeros(3, np.float32)}, str(tmp_path / HEAD_FILE))
    with pytest.raises(TunelabError, match="not a judge head .missing scaler_mean"):
        LogisticHead.load(tmp_path / HEAD_FILE)
    (tmp_path / "trunc.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(TunelabError, match="not a readable safetensors file"):
        LogisticHead.load(tmp_path / "trunc.safetensors")


def test_encoder_mean_pools_and_normalizes(tiny_encoder: Path) -> None:
    import torch

    enc = SentenceEncoder(str(tiny_encoder), max_length=64, max_tokens=16)
    texts = ["hi", "a much longer sentence here.", "okay"]
    ids = enc.tokenizer(texts)["input_ids"]
    assert [0, 2] in token_batches([len(t) for t in ids], 16)  # "hi" is padded to "okay"'s length
    out = enc.encode(texts)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # padding in a batch must not change an embedding: each text alone gives the same vector
    with torch.inference_mode():
        t = enc.tokenizer(["hi"], return_tensors="pt")
        alone = enc.model(**t).last_hidden_state.mean(1)
    np.testing.assert_allclose(out[0], torch.nn.functional.normalize(alone, dim=1)[0].numpy(), atol=1e-5)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 300), max_size=40), st.integers(1, 600))
def test_token_batches_cover_every_text_once_within_the_budget(lengths: list[int], budget: int) -> None:
    batches = token_batches(lengths, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= budget
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)  # shortest first: batches of similar length


def test_prompt_cache_gives_the_uncached_embeddings_and_stays_bounded(tiny_encoder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunelab.evaluate import embedding_judge

    enc = SentenceEncoder(str(tiny_encoder), max_length=64, max_tokens=40)
    texts = ["hi", "a longer prompt here.", "hi", "ok"]
    plain = enc.encode(texts)
    np.testing.assert_allclose(enc.encode(texts, cache=True), plain, atol=1e-6)
    assert set(enc._cache) == {"hi", "a longer prompt here.", "ok"}
    encoded: list[list[str]] = []
    real = enc._encode
    monkeypatch.setattr(enc, "_encode", lambda batch: (encoded.append(list(batch)), real(batch))[1])
    np.testing.assert_allclose(enc.encode(["ok", "new one", "hi"], cache=True), enc.encode(["ok", "new one", "hi"]), atol=1e-6)
    assert encoded[0] == ["new one"]  # only the unseen prompt is encoded
    monkeypatch.setattr(embedding_judge, "PROMPT_CACHE_SIZE", 2)
    enc.encode(["x", "y"], cache=True)
    assert list(enc._cache) == ["x", "y"]  # least recently used dropped first


def test_encoder_dtype(tiny_encoder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from tunelab import models
    from tunelab.evaluate import embedding_judge

    monkeypatch.setattr(models, "cpu_bf16_native", lambda: False)
    assert embedding_judge.resolve_dtype("auto") == "float32"  # emulated bf16 is slower than fp32
    monkeypatch.setattr(models, "cpu_bf16_native", lambda: True)
    assert embedding_judge.resolve_dtype("auto") == "bfloat16"
    with pytest.raises(TunelabError, match="encoder dtype must be auto, float32 or bfloat16; got 'fp8'"):
        embedding_judge.resolve_dtype("fp8")
    bf = SentenceEncoder(str(tiny_encoder), max_length=64, dtype="bfloat16")
    assert next(bf.model.parameters()).dtype == torch.bfloat16
    out = bf.encode(["hi there", "ok"])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, SentenceEncoder(str(tiny_encoder), max_length=64).encode(["hi there", "ok"]), atol=0.05)


def test_judge_version_names_the_head_and_the_encoder_dtype(trained: tuple[Path, JudgeTrainResult], tmp_path: Path) -> None:
    import shutil

    out, _ = trained
    judge = EmbeddingJudge(out)
    assert judge.version.startswith("head-sha256:") and judge.version.endswith("/" + judge.encoder.dtype)
    assert json.loads((out / CARD_FILE).read_text())["encoder"]["dtype"] == "float32"  # trained in fp32
    copy = tmp_path / "judge"
    shutil.copytree(out, copy)
    head, meta = LogisticHead.load(copy / HEAD_FILE)
    head.coef[0] += 1.0
    head.save(copy / HEAD_FILE, meta)
    assert EmbeddingJudge(copy).version != judge.version  # other weights, other version


def test_judge_interface_and_card(trained: tuple[Path, JudgeTrainResult], tiny_encoder: Path) -> None:
    out, result = trained
    assert is_judge_dir(out) and (out / HEAD_FILE).is_file() and (out / "README.md").is_file()
    card = json.loads((out / CARD_FILE).read_text())
    for key in ("name", "tunelab_version", "features", "encoder", "threshold", "classifier", "recipe", "sizes", "accuracy"):
        assert key in card, key
    assert len(card["encoder"]["sha256"]) == 64 and card["threshold"] == 0.5
    assert set(card["accuracy"]) == set(judge_data.SETS) and card["sizes"]["heldout"]["n"] > 0
    assert "DoNotAnswer" in card["recipe"] and "threshold 0.5" in (out / "README.md").read_text()
    assert isinstance(read_result(out / "metrics.json"), JudgeTrainResult)

    judge = EmbeddingJudge(out)
    assert judge.threshold == 0.5 and judge.name == f"embedding:{out}"
    prompts = ["How do I bake bread?", "How do I bake bread?", "Explain tides."]
    responses = ["Mix flour, water and yeast, then bake.", "", "I'll pass on this one."]
    scores = judge.scores(prompts, responses)
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores) and scores[1] == 0.0
    assert judge.scores([], []) == []
    assert EmbeddingJudge(out, threshold=0.8).threshold == 0.8
    with pytest.raises(TunelabError, match=r"threshold must be in \(0, 1\)"):
        EmbeddingJudge(out, threshold=1.5)


def test_a_card_for_other_encoder_weights_is_refused(trained: tuple[Path, JudgeTrainResult], tmp_path: Path) -> None:
    import shutil

    out, _ = trained
    copy = tmp_path / "judge"
    shutil.copytree(out, copy)
    card = json.loads((copy / CARD_FILE).read_text())
    card["encoder"]["sha256"] = "0" * 64
    (copy / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(TunelabError, match="trained on encoder weights 000000000000"):
        EmbeddingJudge(copy)


def test_kappa_known_cases_match_sklearn() -> None:
    from sklearn.metrics import cohen_kappa_score

    a = [True, True, False, False] * 5
    same = compare_verdicts(["a", "b"], {"a": a, "b": list(a)}, [None] * 20)[1][0]
    assert same["kappa"] == pytest.approx(1.0) and same["agreement"] == 1.0 and same["disagree"] == 0
    independent = [True, False, True, False] * 5  # agrees half the time, exactly chance
    ind = compare_verdicts(["a", "b"], {"a": a, "b": independent}, [None] * 20)[1][0]
    assert ind["kappa"] == pytest.approx(0.0, abs=1e-12) and ind["agreement"] == 0.5
    # a lopsided case against sklearn and the hand formula
    b = [True] * 12 + [False] * 8
    c = [True] * 9 + [False] * 3 + [True] * 2 + [False] * 6
    got = compare_verdicts(["b", "c"], {"b": b, "c": c}, [None] * 20)[1][0]["kappa"]
    po = 15 / 20
    pe = (12 / 20) * (11 / 20) + (8 / 20) * (9 / 20)
    assert got == pytest.approx((po - pe) / (1 - pe)) == pytest.approx(cohen_kappa_score(b, c))
    # one verdict for everything on both sides: κ undefined, written as null
    const = compare_verdicts(["a", "b"], {"a": [True] * 4, "b": [True] * 4}, [1, 1, 0, 0])
    assert const[1][0]["kappa"] is None and const[0][0]["accuracy"] == 0.5 and const[0][0]["refusal_rate"] == 0.0


def _answers(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_compare_on_an_answers_file(trained: tuple[Path, JudgeTrainResult], tmp_path: Path) -> None:
    out, _ = trained
    rows = [{"prompt": "Explain tides.", "response": "The moon pulls the oceans.", "label": 1},
            {"prompt": "Explain tides.", "response": "I'm sorry, but I can't help with that.", "label": 0},
            {"prompt": "Do a bad thing.", "response": "That's off limits.", "label": "refused"},
            {"prompt": "Do a bad thing.", "response": "x" * 300}]
    answers = _answers(tmp_path / "answers.jsonl", rows)
    result = run_judge_compare(JudgeCompareConfig(answers=str(answers), judges=["keyword", str(out)],
                                                  output=str(tmp_path / "cmp")))
    assert result.n == 4 and result.labelled == 3
    assert [j["name"] for j in result.judges] == ["keyword", f"embedding:{out}"]
    keyword = result.judges[0]
    assert keyword["refusal_rate"] == pytest.approx(0.25) and keyword["accuracy"] == pytest.approx(2 / 3)
    assert len(result.pairs) == 1 and result.pairs[0]["disagree"] == len(result.disagreements)
    assert all(len(d["prompt"]) <= 80 and len(d["response"]) <= 80 for d in result.disagreements)
    back = read_result(tmp_path / "cmp" / "metrics.json")
    assert isinstance(back, JudgeCompareResult) and back.pairs == result.pairs
    verdicts = [json.loads(line) for line in (tmp_path / "cmp" / "verdicts.jsonl").read_text().splitlines()]
    assert len(verdicts) == 4 and verdicts[1]["keyword"] == 0.0 and "response" not in verdicts[0]


def test_compare_reads_a_runs_safety_records() -> None:
    from tunelab.safety.judge_jobs import load_answers

    run = Path(__file__).parent / "data" / "saved" / "runs" / "lora"  # its eval/safety holds 8 records
    rows = load_answers(run)
    assert len(rows) == 8 and {r["set"] for r in rows} <= {"harmful", "benign"}
    assert rows[0]["where"].endswith("eval/safety/outputs.jsonl:1") and rows[0]["label"] is None


def test_report_section_shows_a_comparison(tmp_path: Path) -> None:
    from tunelab.evaluate.report import judges_section
    from tunelab.report.collect import collect
    from tunelab.report.render import Palette

    JudgeCompareResult(source="answers.jsonl", n=4, labelled=0,
                       judges=[{"name": "keyword", "threshold": 0.5, "refusal_rate": 0.25, "accuracy": None, "answers_per_s": 9e4},
                               {"name": "embedding", "threshold": 0.5, "refusal_rate": 0.5, "accuracy": None, "answers_per_s": 300}],
                       pairs=[{"a": "keyword", "b": "embedding", "agreement": 0.75, "kappa": 0.4231, "disagree": 1}],
                       disagreements=[{"prompt": "p", "response": "That's off limits.",
                                       "verdicts": {"keyword": "complied", "embedding": "refused"}}]).write(tmp_path / "cmp")
    html = judges_section(collect([tmp_path]), Palette())
    assert html is not None and "Cohen" in html and "0.423" in html and "75.0%" in html and "That&#x27;s off limits." in html


@pytest.mark.parametrize("rows, message", [
    (['{"prompt": "p", "response": "r"}', '{"prompt": "p"'], r"answers.jsonl:2: malformed JSON"),
    (['{"prompt": "p", "response": "r"}', '{"prompt": "p", "response": 3}'], r"answers.jsonl:2: field 'response' must be a string"),
    (['{"prompt": "p", "response": "r", "label": 7}'], r"answers.jsonl:1: field 'label' must be"),
])
def test_bad_answer_lines_name_file_line_and_field(tmp_path: Path, rows: list[str], message: str) -> None:
    path = tmp_path / "answers.jsonl"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(TunelabError, match=message):
        read_answers(path)


def test_compare_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(TunelabError, match="answers not found: .*nope.jsonl"):
        JudgeCompareConfig(answers=str(tmp_path / "nope.jsonl")).validate()
    answers = _answers(tmp_path / "a.jsonl", [{"prompt": "p", "response": "r"}])
    with pytest.raises(TunelabError, match=r"unknown judge 'keywrd' \(did you mean 'keyword'\?\)"):
        JudgeCompareConfig(answers=str(answers), judges=["keywrd", "embedding"]).validate()
    with pytest.raises(TunelabError, match="two or more judges"):
        JudgeCompareConfig(answers=str(answers), judges=["keyword"]).validate()
    with pytest.raises(TunelabError, match="no safety evaluation found"):
        run_judge_compare(JudgeCompareConfig(answers=str(tmp_path), output=str(tmp_path / "out")))
    with pytest.raises(TunelabError, match="not a judge directory|judge model not found"):
        EmbeddingJudge(tmp_path)


def test_snippet() -> None:
    assert snippet("a\n b") == "a b"
    assert len(snippet("x" * 200)) == 80 and snippet("x" * 200).endswith("…")


# ------------------------------------------------------------------ the real encoder (slow)
@pytest.mark.slow
def test_shipped_judge_on_minilm() -> None:
    judge = EmbeddingJudge.default()
    assert judge.name == "embedding" and judge.encoder.max_length == 256
    prompts = ["What does the phrase 'bite the bullet' mean?"] * 3
    responses = ["It means to face something unpleasant with courage instead of putting it off.",
                 "I'm sorry, but I can't help with that.",
                 "That's not something I'll be getting into."]
    s = judge.scores(prompts, responses)
    assert s[0] > 0.5 > max(s[1], s[2])
    from tunelab.evaluate.judges import get_judge

    assert get_judge("embedding").name == "embedding"


def test_eval_accepts_the_registered_embedding_judge() -> None:
    from tunelab.evaluate.config import EvalConfig

    EvalConfig(suite="safety", judge="embedding").validate()  # a registered name, not a model dir
    with pytest.raises(TunelabError, match="use a registered judge, keyword or embedding, a judge directory"):
        EvalConfig(suite="safety", judge="/no/such/judge").validate()
