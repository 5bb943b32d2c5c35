"""Refusal tokens on tiny-random: vocabulary and embeddings, data prefixing, first-step control,
the calibration sweep, a train → reload round trip in plain PEFT, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_config
from tunelab.data import tokenize_chat
from tunelab.errors import TunelabError
from tunelab.evaluate.generation import generate_ids, render_prompts
from tunelab.models import load_model
from tunelab.safety.refusal_tokens import (
    REFUSAL_CATEGORIES, REFUSE, RESPOND, RefusalControl, RefusalTokens, add_refusal_tokens, category_token,
    control_tokens, f1_score, parse_categories, parse_thresholds, prefix_chats, refusal_control, refuse_probs, sweep,
)


@pytest.fixture(scope="module")
def single():
    """tiny-random with [refuse]/[respond] added (a private copy: the model is modified)."""
    model, tokenizer = load_model("tiny-random")
    add_refusal_tokens(model, tokenizer, RefusalTokens.from_mode("single"))
    return model, tokenizer


@pytest.fixture(scope="module")
def categorical():
    model, tokenizer = load_model("tiny-random")
    add_refusal_tokens(model, tokenizer, RefusalTokens.from_mode("categorical"))
    return model, tokenizer


# --------------------------------------------------------------------------- tokens and embeddings
def test_tokens_added_embeddings_resized_and_tied(single, categorical):
    base, base_tok = load_model("tiny-random")
    for (model, tokenizer), n_new in ((single, 2), (categorical, len(REFUSAL_CATEGORIES) + 1)):
        assert len(tokenizer) == len(base_tok) + n_new
        emb = model.get_input_embeddings().weight
        assert emb.shape[0] == len(tokenizer) and model.config.vocab_size == len(tokenizer)
        assert model.get_output_embeddings().weight is emb  # the tied head stays tied
        spec = RefusalTokens.from_tokenizer(tokenizer)
        ids = list(spec.ids(tokenizer).values())
        assert ids == list(range(len(base_tok), len(tokenizer)))
        mean = base.get_input_embeddings().weight.mean(0)
        for i in ids:
            assert torch.allclose(emb[i], mean, atol=1e-6)
        assert torch.equal(emb[: len(base_tok)], base.get_input_embeddings().weight)
        # special tokens: one id each, hidden when decoding
        first = tokenizer(f"{spec.tokens[0]}Hello", add_special_tokens=False)["input_ids"]
        assert first[0] == ids[0] and tokenizer.decode(first, skip_special_tokens=True) == "Hello"
    assert RefusalTokens.from_tokenizer(single[1]).mode == "single"
    assert RefusalTokens.from_tokenizer(categorical[1]).mode == "categorical"
    assert RefusalTokens.from_tokenizer(base_tok) is None
    with pytest.raises(TunelabError, match="already has refusal tokens"):
        add_refusal_tokens(*single, RefusalTokens.from_mode("single"))


# --------------------------------------------------------------------------- data
ROWS = [
    ("f:1", {"prompt": "harmful one", "response": "I can't help.", "source": "harmful-refusal", "category": "cybercrime"}),
    ("f:2", {"prompt": "harmful two", "response": "No.", "source": "harmful-refusal", "category": "chemical-biological"}),
    ("f:3", {"prompt": "harmful three", "response": "No.", "source": "harmful-refusal", "category": "something-new"}),
    ("f:4", {"prompt": "benign", "response": "Sure: 4.", "source": "benign-anchor", "category": "homonym"}),
    ("f:5", {"prompt": "plain", "response": "Hello."}),
    ("f:6", {"prompt": "override", "response": "Hmm.", "refusal_token": "misinformation"}),
    ("f:7", {"prompt": "prefixed", "prefix": "Sure, here", "response": " — no, I can't.", "source": "harmful-refusal",
             "category": "misinformation"}),
]


def _first_assistant(chat):
    return next(m for m in chat if m["role"] == "assistant")


def test_data_prefixing_single_and_categorical():
    rows = [r for r in ROWS if r[0] != "f:6"] + [("f:8", {"prompt": "o", "response": "Hm.", "source": "harmful-refusal", "refusal_token": "respond"}),
                                                  ("f:9", {"prompt": "o", "response": "No.", "refusal_token": "[refuse]"})]
    single = [_first_assistant(c) for c in prefix_chats(rows, RefusalTokens.from_mode("single"))]
    assert [m["content"] for m in single] == [
        "[refuse]I can't help.", "[refuse]No.", "[refuse]No.", "[respond]Sure: 4.", "[respond]Hello.",
        "[refuse]Sure, here — no, I can't.", "[respond]Hm.", "[refuse]No."]
    assert single[5]["prefix"] == "[refuse]Sure, here"  # the token opens the masked prefix
    cat = [_first_assistant(c) for c in prefix_chats(ROWS, RefusalTokens.from_mode("categorical"))]
    expected = [category_token("cyber"), category_token("weapons"), category_token("crime"), RESPOND, RESPOND,
                category_token("misinformation"), category_token("misinformation")]
    assert [m["content"][: len(t)] for m, t in zip(cat, expected)] == expected
    # single mode: a category name is not a token there
    with pytest.raises(TunelabError, match=r"f:6: field 'refusal_token' is 'misinformation'"):
        prefix_chats(ROWS, RefusalTokens.from_mode("single"))


def test_data_prefix_is_trained_first_token(single):
    _, tokenizer = single
    chat = prefix_chats([("f:1", dict(ROWS[0][1]))], RefusalTokens.from_mode("single"))[0]
    ex = tokenize_chat(chat, tokenizer, 512)
    first = next(i for i, label in enumerate(ex.labels) if label != -100)
    assert ex.labels[first] == tokenizer.convert_tokens_to_ids(REFUSE)
    # recovery-augmented record: the token opens the masked prefix
    chat = prefix_chats([ROWS[6]], RefusalTokens.from_mode("single"))[0]
    ex = tokenize_chat(chat, tokenizer, 512)
    refuse = tokenizer.convert_tokens_to_ids(REFUSE)
    at = ex.input_ids.index(refuse)
    assert ex.labels[at] == -100


# --------------------------------------------------------------------------- first-step control
def test_threshold_rule_on_constructed_logits():
    control = RefusalControl(selected=[3], blocked=[], respond=5, threshold=0.5)
    scores = torch.tensor([[0.0, 0, 0, 4.0, 0, 0],   # p(3) ≈ 0.92 → refuse
                           [0.0, 0, 0, -4.0, 0, 0],  # p(3) ≈ 0.004 → respond
                           [1.0, 1, 1, 1.0, 1, 1]])  # p(3) = 1/6
    out = control(scores)
    assert out.argmax(-1).tolist() == [3, 5, 5]
    assert torch.isinf(out).sum() == 3 * 5  # every other token is forbidden
    p = refuse_probs(scores, [3])[:, 0]
    for tau in (0.0, float(p[2]), float(p[1]), 0.99, 1.0):
        chosen = RefusalControl([3], [], 5, threshold=tau)(scores).argmax(-1).tolist()
        assert chosen == [3 if float(pi) >= tau else 5 for pi in p], tau  # p ≥ τ ⇒ refuse
    # temperature: p = softmax(logits / T)
    hot = RefusalControl([3], [], 5, threshold=0.5, temperature=100.0)(scores[:1])
    assert hot.argmax(-1).tolist() == [5]


def test_categorical_selection_excludes_unselected(categorical):
    _, tokenizer = categorical
    ids = RefusalTokens.from_tokenizer(tokenizer).ids(tokenizer)
    cyber, weapons, respond = ids[category_token("cyber")], ids[category_token("weapons")], ids[RESPOND]
    scores = torch.zeros(2, len(tokenizer))
    scores[0, weapons] = 20.0  # weapons is by far the likeliest
    scores[1, cyber] = 20.0
    control = refusal_control(tokenizer, threshold=0.5, categories=["cyber"])
    assert control(scores).argmax(-1).tolist() == [respond, cyber]
    everything = refusal_control(tokenizer, threshold=0.5)
    assert everything(scores).argmax(-1).tolist() == [weapons, cyber]
    biased = refusal_control(tokenizer, bias=5.0, categories=["cyber", "crime"])(scores)
    assert torch.isinf(biased[:, weapons]).all() and biased[0, cyber] == 5.0
    assert biased[0, ids[category_token("crime")]] == 5.0 and biased[0, respond] == 0.0


def test_bias_and_threshold_change_only_the_first_step(single, monkeypatch):
    model, tokenizer = single
    refuse = tokenizer.convert_tokens_to_ids(REFUSE)
    prompts = ["Tell me a story.", "What is 2 + 2?"]
    for kind in ("bias", "threshold"):
        control = refusal_control(tokenizer, bias=1e4) if kind == "bias" else refusal_control(tokenizer, threshold=0.0)
        forced = generate_ids(model, tokenizer, prompts, max_new_tokens=5, progress=False, first_step=control)
        assert [ids[0] for ids in forced] == [refuse, refuse]
        # the rest is the plain greedy continuation after the forced token
        rendered = [t + REFUSE for t in render_prompts(tokenizer, prompts)]
        rest = generate_ids(model, tokenizer, rendered, max_new_tokens=4, chat=False, progress=False)
        assert [ids[1:] for ids in forced] == rest
        assert control_tokens(tokenizer, forced) == [REFUSE, REFUSE]
    never = refusal_control(tokenizer, threshold=1.0)
    plain = generate_ids(model, tokenizer, prompts, max_new_tokens=3, progress=False, first_step=never)
    assert [ids[0] for ids in plain] == [tokenizer.convert_tokens_to_ids(RESPOND)] * 2
    # the HF-generate fallback applies the same rule
    from tunelab.evaluate import generation

    monkeypatch.setattr(generation, "_own_loop_supported", lambda model: False)
    control = refusal_control(tokenizer, bias=1e4)
    assert generate_ids(model, tokenizer, prompts, max_new_tokens=5, progress=False, first_step=control) == forced


# --------------------------------------------------------------------------- calibration
def test_sweep_equals_direct_counting():
    gen = torch.Generator().manual_seed(0)
    harmful, benign = torch.rand(17, 2, generator=gen), torch.rand(11, 2, generator=gen) * 0.6
    h_cat = ["a", "b"] * 8 + ["a"]
    b_cat = ["x"] * 11
    taus = [0.0, 0.1, 0.3, 0.5, 0.7, 1.0]
    rows = sweep(harmful, benign, taus, h_cat, b_cat)
    for tau, row in zip(taus, rows):
        h = [max(r) >= tau for r in harmful.tolist()]
        b = [max(r) >= tau for r in benign.tolist()]
        tp, fp = sum(h), sum(b)
        fn = len(h) - tp
        assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (tp, fp, fn, len(b) - fp)
        assert row["harmful_refusal_rate"] == tp / 17 and row["benign_refusal_rate"] == fp / 11
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        assert math.isclose(row["f1"], f1)
        a_flags = [f for f, c in zip(h, h_cat) if c == "a"]
        assert row["by_category"]["harmful/a"]["refusal_rate"] == sum(a_flags) / len(a_flags)
        assert row["by_category"]["benign/x"]["n"] == 11
    assert rows[0]["harmful_refusal_rate"] == 1.0 and rows[0]["benign_refusal_rate"] == 1.0  # τ = 0 refuses all
    assert f1_score(0, 0, 0) == 0.0 and f1_score(3, 1, 2) == 6 / 9


def test_calibration_audit_writes_series(tmp_path: Path, monkeypatch, capsys, trained_run: Path):
    from tests.test_safety_depth import _cli

    out = tmp_path / "cal"
    _cli(monkeypatch, "audit", "refusal-calibration", "--model", "tiny-random", "--adapter", str(trained_run),
         "--thresholds", "0,0.5,1", "--limit", "3", "--output", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "refusal-calibration" and metrics["n_harmful"] == 3 and metrics["n_benign"] == 3
    assert [s["label"] for s in metrics["series"]] == ["harmful refusal rate", "benign refusal rate", "F1"]
    assert metrics["series"][0]["x"] == [0.0, 0.5, 1.0] and metrics["series"][0]["y"][0] == 1.0
    by_cat = json.loads((out / "by-category" / "metrics.json").read_text())
    assert by_cat["series"] and all(s["label"].split("/")[0] in ("harmful", "benign") for s in by_cat["series"])
    assert len((out / "outputs.jsonl").read_text().splitlines()) == 6
    from tunelab.report.collect import read_series

    assert len(read_series(metrics["series"])) == 3


def test_calibration_job_writes_its_run_dir_and_returns_the_result(tmp_path: Path, trained_run: Path):
    """``run_refusal_calibration(cfg, run_dir)`` with a config built in Python: the files go to ``run_dir`` only."""
    from tunelab.results import RunDir, read_result
    from tunelab.safety.configs import RefusalCalibrationConfig
    from tunelab.safety.refusal_tokens import run_refusal_calibration
    from tunelab.safety.results import RefusalCalibrationResult

    cfg = RefusalCalibrationConfig(model="tiny-random", adapter=str(trained_run), thresholds=[0.0, 1.0], limit=2,
                                   output=tmp_path / "unused")
    result = run_refusal_calibration(cfg, RunDir(tmp_path / "x"))
    assert not (tmp_path / "unused").exists()
    assert isinstance(result, RefusalCalibrationResult)
    assert result.to_dict() == read_result(tmp_path / "x" / "metrics.json").to_dict()
    assert [r["threshold"] for r in result.sweep] == [0.0, 1.0] and result.n_harmful == 2 and result.mode == "single"
    assert (tmp_path / "x" / "by-category" / "metrics.json").is_file()
    for bad, message in ((dict(refusal_threshold=0.5), "takes no refusal threshold"), (dict(limit=0), "--limit must be >= 1"),
                         (dict(thresholds=[2.0]), "--thresholds must be numbers in")):
        with pytest.raises(TunelabError, match=message):
            run_refusal_calibration(RefusalCalibrationConfig(model="tiny-random", **bad))


# --------------------------------------------------------------------------- train → reload
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tunelab.finetune import train

    tmp = tmp_path_factory.mktemp("refusal")
    data = tmp / "safety.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for _, r in ROWS[:5]) * 2)
    return train(tiny_config(data, tmp / "run", refusal_tokens="single", max_steps=3, lr=5e-2))


def test_trained_adapter_reloads_in_plain_peft(trained_run: Path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from tunelab.evaluate.loading import load_with_adapter

    run = json.loads((trained_run / "tunelab.json").read_text())
    tokens = run["refusal_tokens"]
    assert tokens["mode"] == "single" and set(tokens["tokens"]) == {REFUSE, RESPOND}
    weights = load_file(trained_run / "adapter_model.safetensors")
    assert not any("base_layer" in k for k in weights)  # no copy of the resized embedding matrix
    deltas = [v for k, v in weights.items() if "trainable_tokens_delta" in k]
    base, _ = load_model("tiny-random")
    assert deltas and not torch.allclose(deltas[0], base.get_input_embeddings().weight.mean(0).expand_as(deltas[0]))  # the rows trained
    # plain PEFT: the saved tokenizer, resize the base (transformers' own init), load
    tokenizer = AutoTokenizer.from_pretrained(trained_run)
    base.resize_token_embeddings(len(tokenizer))
    plain = PeftModel.from_pretrained(base, str(trained_run)).eval()
    ours, our_tok = load_with_adapter("tiny-random", trained_run, merge=False)
    merged, _ = load_with_adapter("tiny-random", trained_run)
    assert our_tok.get_vocab() == tokenizer.get_vocab()
    text = render_prompts(tokenizer, ["harmful one"])[0] + REFUSE + "I can't"
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b, c = plain(input_ids=ids).logits, ours.eval()(input_ids=ids).logits, merged.eval()(input_ids=ids).logits
    assert torch.equal(a, b)
    assert torch.allclose(a, c, atol=1e-4)
    assert merged.get_output_embeddings().weight is merged.get_input_embeddings().weight


def test_bf16_preparation_keeps_the_tied_embedding_fp32():
    from peft import LoraConfig, get_peft_model

    from tunelab.train.precision import prepare_for_bf16

    model, tokenizer = load_model("tiny-random")
    ids = add_refusal_tokens(model, tokenizer, RefusalTokens.from_mode("single"))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], trainable_token_indices=ids))
    prepare_for_bf16(peft_model)
    head = peft_model.base_model.model.lm_head.token_adapter.base_layer.weight
    assert head.dtype == torch.float32 and head is peft_model.get_input_embeddings().token_adapter.base_layer.weight


def test_safety_suite_counts_a_refuse_token_as_refusal(trained_run: Path, tmp_path: Path):
    from tunelab.eval_recipe import run_eval
    from tunelab.evaluate.runner import EvalConfig

    prompts = tmp_path / "p.txt"
    prompts.write_text("first prompt\nsecond prompt\n")
    common = dict(model="tiny-random", adapter=str(trained_run), suite="safety", harmful_prompts=str(prompts),
                  benign_prompts=str(prompts), max_new_tokens=3)
    forced = run_eval(EvalConfig(**common, refusal_threshold=0.0, output=str(tmp_path / "on")))
    assert forced.refusal_rate == 1.0 and forced.over_refusal == 1.0
    rows = [json.loads(line) for line in (tmp_path / "on" / "outputs.jsonl").read_text().splitlines()]
    assert all(r["control_token"] == REFUSE and REFUSE not in r["response"] for r in rows)
    never = run_eval(EvalConfig(**common, refusal_threshold=1.0))
    assert never.output_dir is not None  # the adapter's eval/safety: the config's default run dir
    assert all(r["control_token"] == RESPOND for r in never.records)


# --------------------------------------------------------------------------- bad input
def test_bad_control_input(single, categorical):
    with pytest.raises(TunelabError, match=r"--refusal-threshold must be in \[0, 1\]"):
        refusal_control(single[1], threshold=1.5)
    with pytest.raises(TunelabError, match="not both"):
        refusal_control(single[1], threshold=0.5, bias=1.0)
    with pytest.raises(TunelabError, match="needs a model trained with --refusal-tokens categorical"):
        refusal_control(single[1], categories=["cyber"])
    with pytest.raises(TunelabError, match="need a model trained with --refusal-tokens"):
        refusal_control(load_model("tiny-random")[1], threshold=0.5)
    with pytest.raises(TunelabError, match="unknown refusal category nope"):
        parse_categories("cyber,nope")
    with pytest.raises(TunelabError, match="--thresholds must be numbers in"):
        parse_thresholds("0.1,2")
    with pytest.raises(TunelabError, match="unknown refusal-token mode"):
        RefusalTokens.from_mode("plural")


@pytest.mark.parametrize("args, message", [
    (["train", "--model", "tiny-random", "--data", "DATA", "--output", "OUT", "--refusal-tokens", "plural"], "unknown --refusal-tokens mode"),
    (["train", "--model", "tiny-random", "--data", "DATA", "--output", "OUT", "--method", "lota", "--refusal-tokens", "single"], "works with --method"),
    (["generate", "hi", "--model", "tiny-random", "--refusal-threshold", "1.5"], "--refusal-threshold must be in [0, 1]"),
    (["generate", "hi", "--model", "tiny-random", "--refusal-categories", "nope"], "unknown refusal category"),
    (["eval", "--model", "tiny-random", "--suite", "safety", "--refusal-threshold", "-0.1"], "--refusal-threshold must be in [0, 1]"),
    (["eval", "--model", "tiny-random", "--suite", "safety", "--refusal-bias", "2", "--refusal-threshold", "0.3"], "not both"),
    (["audit", "refusal-calibration", "--model", "tiny-random", "--thresholds", "0.2,x"], "--thresholds must be"),
    (["audit", "refusal-calibration", "--model", "tiny-random", "--refusal-categories", "nope"], "unknown refusal category"),
])
def test_cli_bad_input(tmp_path: Path, monkeypatch, capsys, args: list[str], message: str):
    from tests.test_safety_depth import _cli

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n")
    args = [str(data) if a == "DATA" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        _cli(monkeypatch, *args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines
