"""Canary generation for membership-inference audits (tunelab.privacy.canaries)."""

from __future__ import annotations

import copy
import itertools
import json

import pytest
import scipy.stats

from tunelab.data import IGNORE_INDEX, tokenize_chat, validate_record
from tunelab.errors import TunelabError
from tunelab.privacy.canaries import (
    FAMILIES,
    BigramModel,
    CanarySet,
    _ordinary_ids,
    _token_streams,
    insert_members,
    make_canaries,
)

ROWS = [{"prompt": f"What is {i} plus {i + 1}? Please explain the sum.",
         "response": f"The answer is {2 * i + 1}, because {i} and {i + 1} add up to it."} for i in range(40)]


@pytest.fixture(scope="module")
def tok(tiny):
    return tiny[1]


def make(family, tiny, m=16, secret_len=4, seed=0, **kw):
    model, tokenizer = tiny
    kw.setdefault("data_rows", ROWS)
    return make_canaries(family, m, secret_len, seed, tokenizer, model=model, **kw)


def key(cs):
    return [(c.prefix, c.secret, c.secret_ids) for c in cs.canaries]


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_per_seed_and_seeds_differ(tiny, family):
    a, b, c = make(family, tiny, seed=1), make(family, tiny, seed=1), make(family, tiny, seed=2)
    assert key(a) == key(b) and [x.member for x in a.canaries] == [x.member for x in b.canaries]
    assert key(a) != key(c)
    assert len(a) == 16 and all(len(x.secret_ids) == 4 for x in a.canaries)
    if family != "new-token":
        assert len({tuple(x.secret_ids) for x in a.canaries}) == 16  # distinct secrets


@pytest.mark.parametrize("prefix_style", ["random", "data"])
def test_prefix_styles(tiny, prefix_style):
    cs = make("random", tiny, prefix_style=prefix_style)
    prompts = {r["prompt"] for r in ROWS}
    for c in cs.canaries:
        assert c.prefix.strip()
        assert (c.prefix in prompts) == (prefix_style == "data")
        validate_record(c.record(), "canary")  # an ordinary training record


def test_membership_is_a_fair_coin_drawn_after_generation(tiny):
    cs = make("random", tiny, m=200, secret_len=1)
    k = len(cs.members)
    # two-sided 99.9% binomial bounds for Binom(200, 1/2)
    lo, hi = scipy.stats.binom.ppf([0.0005, 0.9995], 200, 0.5)
    assert lo <= k <= hi
    assert len(cs.members) + len(cs.non_members) == 200
    other = make("random", tiny, m=200, secret_len=1, membership_seed=99)
    assert key(other) == key(cs)  # same canaries
    assert [c.member for c in other.canaries] != [c.member for c in cs.canaries]
    assert other.membership_seed == 99


def test_membership_over_many_seeds_is_about_half(tiny):
    total = sum(len(make("random", tiny, m=10, secret_len=1, membership_seed=s).members) for s in range(30))
    lo, hi = scipy.stats.binom.ppf([0.0005, 0.9995], 300, 0.5)
    assert lo <= total <= hi


@pytest.mark.parametrize("shape", ["records", "pairs", "chats"])
def test_insert_members_once_in_order(tiny, shape):
    cs = make("random", tiny, m=20, secret_len=3)
    assert cs.members and cs.non_members
    if shape == "records":
        data = copy.deepcopy(ROWS)
    elif shape == "pairs":
        data = [(f"f:{i}", r) for i, r in enumerate(copy.deepcopy(ROWS))]
    else:
        data = [validate_record(r, "x") for r in ROWS]
    before = copy.deepcopy(data)
    out = insert_members(data, cs, seed=5)
    assert data == before  # input untouched
    assert len(out) == len(data) + len(cs.members)

    def secret_of(item):
        if shape == "chats":
            return next(m["content"] for m in item if m["role"] == "assistant")
        rec = item[1] if shape == "pairs" else item
        return rec["response"]

    secrets = [secret_of(x) for x in out]
    for c in cs.members:
        assert secrets.count(c.secret) == 1
    for c in cs.non_members:
        assert c.secret not in secrets
    member_secrets = {c.secret for c in cs.members}
    assert [x for x in out if secret_of(x) not in member_secrets] == data  # user's data, in order
    assert insert_members(data, cs, seed=5) == out
    positions = [i for i, s in enumerate(secrets) if s in member_secrets]
    assert positions != list(range(len(data), len(out)))  # not all appended at the end
    assert positions != [i for i, s in enumerate(insert_members(data, cs, seed=6)) if secret_of(s) in member_secrets]


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "new-token"])
@pytest.mark.parametrize("prefix_style", ["random", "data"])
def test_secret_ids_are_what_training_sees(tiny, tok, family, prefix_style):
    cs = make(family, tiny, m=10, secret_len=5, prefix_style=prefix_style)
    for c in cs.canaries:
        assert tok(c.secret, add_special_tokens=False)["input_ids"] == c.secret_ids
        ex = tokenize_chat(validate_record(c.record(), "canary"), tok, 4096)
        supervised = [t for t in ex.labels if t != IGNORE_INDEX]
        assert supervised[:5] == c.secret_ids
        # the rest of the supervised span is only the end-of-turn marker
        assert tok.decode(supervised[5:]).strip() == "<|im_end|>"
        special = set(tok.all_special_ids)
        assert not special & set(c.secret_ids)


def test_bigram_secrets_are_improbable_under_the_data_bigram_model(tiny, tok):
    streams = _token_streams(tok, ROWS)
    bigram = BigramModel.fit(streams, len(tok))

    def mean_lp(cs):
        total = 0.0
        for c in cs.canaries:
            last = tok(c.prefix, add_special_tokens=False)["input_ids"][-1]
            total += bigram.sequence_logprob(c.secret_ids, context=last)
        return total / len(cs)

    for style in ("random", "data"):
        b = make("bigram", tiny, m=20, secret_len=5, prefix_style=style)
        r = make("random", tiny, m=20, secret_len=5, prefix_style=style)
        assert mean_lp(b) < mean_lp(r)
        # every step is an unseen continuation of the previous token
        for c in b.canaries:
            last = tok(c.prefix, add_special_tokens=False)["input_ids"][-1]
            seq = [last] + c.secret_ids
            assert all(bigram.pairs.get(p, 0) == 0 for p in itertools.pairwise(seq))
            # and made of tokens the data uses
            assert all(bigram.contexts.get(t, 0) > 0 for t in c.secret_ids)


def test_unigram_corpus_uses_rare_tokens(tiny, tok):
    counts = {}
    for s in _token_streams(tok, ROWS):
        for t in s:
            counts[t] = counts.get(t, 0) + 1
    cs = make("unigram-corpus", tiny, m=10)
    assert all(counts.get(t, 0) == 0 for c in cs.canaries for t in c.secret_ids)


def test_unigram_model_uses_tokens_the_model_finds_unlikely(tiny, tok):
    from tunelab.privacy.canaries import _model_logprobs

    model, _ = tiny
    lp = _model_logprobs(model, tok, ROWS)
    ordinary = _ordinary_ids(tok)
    median = sorted(float(lp[i]) for i in ordinary)[len(ordinary) // 2]
    cs = make("unigram", tiny, m=10, pool_size=256)
    assert all(float(lp[t]) < median for c in cs.canaries for t in c.secret_ids)
    # without data: the single-token context
    make_canaries("unigram", 4, 2, 0, tok, model=model)


def test_new_token_family(tiny, tok):
    cs = make("new-token", tiny, m=6, secret_len=3)
    vocab = tok.get_vocab()
    assert len(cs.new_tokens) == 18 and len(set(cs.new_tokens)) == 18
    assert not any(t in vocab for t in cs.new_tokens)
    assert all(t.startswith("<canary_") for t in cs.new_tokens)
    tokenizer = copy.deepcopy(tok)
    ids = cs.add_new_tokens(None, tokenizer)
    assert ids == [i for c in cs.canaries for i in c.secret_ids]
    for c in cs.canaries:
        assert tokenizer(c.secret, add_special_tokens=False)["input_ids"] == c.secret_ids
        ex = tokenize_chat(validate_record(c.record(), "canary"), tokenizer, 4096)
        assert [t for t in ex.labels if t != IGNORE_INDEX][:3] == c.secret_ids
    with pytest.raises(TunelabError, match="already"):
        cs.add_new_tokens(None, tokenizer)


def test_new_token_resizes_model(tok):
    from tunelab.models import load_model

    model, tokenizer = load_model("tiny-random")
    cs = make_canaries("new-token", 2, 2, 0, tokenizer)
    ids = cs.add_new_tokens(model, tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == max(ids) + 1


def test_repr_hides_secrets(tiny):
    cs = make("random", tiny, m=6)
    for text in (repr(cs), str(cs), repr(cs.canaries), str(cs.canaries[0]), f"{cs}"):
        for c in cs.canaries:
            assert c.secret.strip() not in text
            assert str(c.secret_ids) not in text
    assert "m=6" in repr(cs)
    shown = cs.show_secrets()
    assert all(c.secret in shown or repr(c.secret) in shown for c in cs.canaries)


@pytest.mark.parametrize("family", ["bigram", "new-token"])
def test_save_load_round_trip(tiny, tmp_path, family):
    cs = make(family, tiny, m=8, prefix_style="data")
    path = cs.save(tmp_path / "sub" / "canaries.json")
    data = json.loads(path.read_text())
    assert data["family"] == family and data["seed"] == 0 and len(data["canaries"]) == 8
    assert set(data["canaries"][0]) == {"prefix", "secret", "secret_ids", "member"}
    back = CanarySet.load(path)
    assert back.to_json() == cs.to_json()
    assert key(back) == key(cs) and [c.member for c in back.canaries] == [c.member for c in cs.canaries]


def test_bad_inputs(tiny, tok, tmp_path):
    model, _ = tiny
    cases = [
        ({"family": "random", "m": 1}, "at least 2"),
        ({"family": "random", "secret_len": 0}, "secret length"),
        ({"family": "nope"}, "unknown canary family"),
        ({"family": "random", "prefix_style": "nope"}, "unknown canary prefix style"),
        ({"family": "bigram", "data_rows": None}, "need the fine-tuning data"),
        ({"family": "unigram-corpus", "data_rows": []}, "need the fine-tuning data"),
        ({"family": "unigram", "model": None}, "need the model"),
        ({"family": "random", "prefix_style": "data", "data_rows": None}, "prefix style 'data'"),
    ]
    for kw, msg in cases:
        args = {"family": "random", "m": 4, "secret_len": 2, "seed": 0, "tokenizer": tok, "data_rows": ROWS, "model": model}
        args.update(kw)
        with pytest.raises(TunelabError, match=msg) as err:
            make_canaries(**args)
        assert "\n" not in str(err.value)
    bad = tmp_path / "bad.json"
    for content in ("not json", json.dumps([1, 2]), json.dumps({"format": "tunelab-canaries", "family": "random"}),
                    json.dumps({"hello": 1})):
        bad.write_text(content)
        with pytest.raises(TunelabError, match="not a canary set") as err:
            CanarySet.load(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(TunelabError, match="not found"):
        CanarySet.load(tmp_path / "missing.json")


def test_plugin_trains_members_and_new_token_rows(qa_file, tmp_path):
    from safetensors.torch import load_file

    from tests.conftest import tiny_config
    from tunelab.models import load_model
    from tunelab.privacy.plugin import CanaryPlugin
    from tunelab.train import Plugin, fit

    _, tokenizer = load_model("tiny-random")
    cs = make_canaries("new-token", 4, 2, 0, tokenizer, membership_seed=3)
    assert cs.members and cs.non_members
    plugin = CanaryPlugin(cs, audit=False)
    seen = []

    class Spy(Plugin):
        def on_prepared(self, run):
            seen.extend(run.examples)

    out = fit(tiny_config(qa_file, tmp_path / "run", max_steps=2), plugins=[plugin, Spy()])
    record = json.loads((out / "tunelab.json").read_text())
    assert record["canaries"]["members"] == len(cs.members)
    assert not any(c.secret in json.dumps(record) for c in cs.canaries)
    ids = [e.input_ids for e in seen]
    for c in cs.canaries:
        hits = sum(any(ex[i:i + 2] == c.secret_ids for i in range(len(ex))) for ex in ids)
        assert hits == (1 if c.member else 0)
    assert len(seen) == 24 + len(cs.members)
    assert any("token_adapter" in k or "trainable_tokens" in k for k in load_file(out / "adapter_model.safetensors"))
