"""Batched generation on tiny-random: equivalence with unbatched HF generate, seeding, arguments,
which decoder runs (own loop under either cache argument name, or a logged HF-generate fallback)."""

from __future__ import annotations

import copy
import inspect
import json
import logging
import warnings

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.evaluate import generation
from tunelab.evaluate.generation import generate, generate_ids, render_prompts

PROMPTS = [
    "Hi",
    "What is 2 plus 3?",
    "Reverse the order of these words: cat lamp river stone\nAnswer with the reversed words only.",
    "Tell me a story about a dragon who lived in a very old castle on a hill above a quiet town.",
    "ok",
]


@pytest.fixture(scope="module")
def lively(tiny):
    """tiny-random with its layer matrices scaled 8x: at init scale the residual stream is
    nearly the input embedding, so greedy decoding just repeats the last prompt token (the
    same for every chat prompt) and equality checks would have no teeth."""
    model, tok = tiny
    model = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.model.layers.parameters():
            if p.dim() == 2:
                p.mul_(8)
    return model, tok


def hf_one_at_a_time(model, tokenizer, prompts, max_new_tokens):
    """Reference: plain HF greedy generate, one prompt per call, no padding; cut at any EOS."""
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    out = []
    for text in render_prompts(tokenizer, prompts):
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            seq = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
        new = seq[0, ids["input_ids"].shape[1]:].tolist()
        out.append(new[: next((k for k, t in enumerate(new) if t in eos), len(new))])
    return out


@pytest.fixture(params=["own loop", "own loop, no cache pruning", "HF generate"])
def decode_path(request, monkeypatch):
    """Run a test on each decoding path: pruning loop, loop without pruning, HF generate."""
    if request.param == "own loop, no cache pruning":
        monkeypatch.setattr(generation, "Cache", type("NotACache", (), {}))
    elif request.param == "HF generate":
        monkeypatch.setattr(generation, "_own_loop_supported", lambda model: False)
    return request.param


def test_batched_greedy_matches_unbatched_hf(lively, decode_path):
    model, tok = lively
    ref = hf_one_at_a_time(model, tok, PROMPTS, 12)
    for batch_size in (2, 5):
        assert generate_ids(model, tok, PROMPTS, max_new_tokens=12, batch_size=batch_size, progress=False) == ref


def test_rows_ending_early_match_unbatched_hf(lively, decode_path):
    model, tok = lively
    full = generate_ids(model, tok, PROMPTS, max_new_tokens=10, progress=False)
    # Make a token that prompt 1 emits at step 3 an EOS: some rows now end early, some run on.
    stopper = copy.deepcopy(model)
    stopper.generation_config.eos_token_id = [full[1][3], tok.eos_token_id]
    ref = hf_one_at_a_time(stopper, tok, PROMPTS, 10)
    assert min(map(len, ref)) <= 3 and max(map(len, ref)) == 10
    assert generate_ids(stopper, tok, PROMPTS, max_new_tokens=10, batch_size=5, progress=False) == ref


def test_output_order_matches_input_order(lively):
    model, tok = lively
    forward = generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=2, progress=False)
    backward = generate(model, tok, PROMPTS[::-1], max_new_tokens=6, batch_size=2, progress=False)
    assert backward == forward[::-1]
    assert len(set(forward)) > 1  # distinct prompts, distinct outputs: the check above has teeth


def test_seeded_sampling_repeatable_and_batch_independent(tiny, decode_path):
    model, tok = tiny
    kw = dict(max_new_tokens=8, do_sample=True, temperature=0.9, top_p=0.95, progress=False)
    state = torch.get_rng_state()
    first = generate_ids(model, tok, PROMPTS, seed=7, batch_size=2, **kw)
    assert torch.equal(torch.get_rng_state(), state)  # a seeded run leaves the global RNG alone
    torch.manual_seed(1234)  # what ran before must not matter
    assert generate_ids(model, tok, PROMPTS, seed=7, batch_size=2, **kw) == first
    assert generate_ids(model, tok, PROMPTS, seed=7, batch_size=5, **kw) == first
    assert generate_ids(model, tok, PROMPTS, seed=7, batch_size=1, **kw) == first
    assert generate_ids(model, tok, PROMPTS, seed=8, batch_size=2, **kw) != first
    greedy = generate_ids(model, tok, PROMPTS, max_new_tokens=8, progress=False)
    assert first != greedy


def test_unseeded_sampling_follows_torch_manual_seed(tiny):
    model, tok = tiny
    kw = dict(max_new_tokens=6, do_sample=True, progress=False)
    torch.manual_seed(3)
    a = generate_ids(model, tok, PROMPTS[:2], **kw)
    torch.manual_seed(3)
    assert generate_ids(model, tok, PROMPTS[:2], **kw) == a


def test_model_generation_config_does_not_override_decoding(lively, decode_path):
    model, tok = lively
    greedy = generate_ids(model, tok, PROMPTS, max_new_tokens=10, progress=False)
    sampled = generate_ids(model, tok, PROMPTS, max_new_tokens=10, do_sample=True, seed=0, progress=False)
    odd = copy.deepcopy(model)
    cfg = odd.generation_config
    cfg.do_sample, cfg.temperature, cfg.top_k, cfg.top_p = True, 0.3, 5, 0.5
    cfg.repetition_penalty, cfg.no_repeat_ngram_size, cfg.min_new_tokens = 3.0, 1, 10
    assert generate_ids(odd, tok, PROMPTS, max_new_tokens=10, progress=False) == greedy
    assert generate_ids(odd, tok, PROMPTS, max_new_tokens=10, do_sample=True, seed=0, progress=False) == sampled


def test_message_list_prompts(lively):
    model, tok = lively
    as_text = generate(model, tok, ["What is 2 plus 3?"], max_new_tokens=6, progress=False)
    as_messages = generate(model, tok, [[{"role": "user", "content": "What is 2 plus 3?"}]], max_new_tokens=6,
                           progress=False)
    assert as_messages == as_text
    dialogue = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a colour."}]
    mixed = generate(model, tok, [dialogue, "Hi"], max_new_tokens=6, progress=False)
    assert len(mixed) == 2 and all(isinstance(m, str) for m in mixed)


def test_max_new_tokens_respected(lively):
    model, tok = lively
    for n in (1, 7):
        ids = generate_ids(model, tok, PROMPTS, max_new_tokens=n, progress=False)
        assert all(len(x) <= n for x in ids) and max(len(x) for x in ids) == n


def test_stops_once_every_row_hit_eos(lively):
    model, tok = lively
    first = [x[0] for x in generate_ids(model, tok, PROMPTS[:2], max_new_tokens=1, progress=False)]
    stopper = copy.deepcopy(model)
    stopper.generation_config.eos_token_id = sorted(set(first))  # both rows end at their first token
    calls = []
    stopper.register_forward_hook(lambda *_: calls.append(1))
    assert generate_ids(stopper, tok, PROMPTS[:2], max_new_tokens=20, progress=False) == [[], []]
    assert len(calls) == 1  # the prefill only: no decode step after every row ended


def test_progress_bar_and_bf16_and_raw_prompts_run(tiny):
    model, tok = tiny
    quiet = generate(model, tok, PROMPTS, max_new_tokens=5, batch_size=2, progress=False)
    assert generate(model, tok, PROMPTS, max_new_tokens=5, batch_size=2, progress=True) == quiet
    assert len(generate(model, tok, PROMPTS, max_new_tokens=3, bf16=True, progress=False)) == len(PROMPTS)
    assert len(generate(model, tok, ["Once upon a time"], max_new_tokens=3, chat=False, progress=False)) == 1


def test_training_mode_restored(tiny):
    model, tok = tiny
    m = copy.deepcopy(model).train()
    generate(m, tok, ["Hi"], max_new_tokens=2, progress=False)
    assert m.training


@pytest.mark.parametrize(
    "kw",
    [
        dict(max_new_tokens=0),
        dict(max_new_tokens=-3),
        dict(max_new_tokens=2.5),
        dict(batch_size=0),
        dict(do_sample=True, temperature=0.0),
        dict(do_sample=True, temperature=-1.0),
        dict(do_sample=True, temperature=float("nan")),
        dict(do_sample=True, top_p=0.0),
        dict(do_sample=True, top_p=1.5),
    ],
)
def test_invalid_arguments(tiny, kw):
    model, tok = tiny
    with pytest.raises(TunelabError):
        generate(model, tok, ["Hi"], progress=False, **{"max_new_tokens": 2, **kw})


def test_invalid_prompts(tiny):
    model, tok = tiny
    for prompts in ([], [42], [[]], [[{"role": "user"}]]):
        with pytest.raises(TunelabError):
            generate(model, tok, prompts, max_new_tokens=2, progress=False)


def test_greedy_ignores_sampling_knobs(tiny):
    model, tok = tiny
    # The CLI passes its sampling defaults even for greedy runs: they must not error or matter.
    a = generate(model, tok, ["Hi"], max_new_tokens=3, temperature=0.0, top_p=0.0, progress=False)
    assert a == generate(model, tok, ["Hi"], max_new_tokens=3, progress=False)


def test_raw_prompts_get_bos_once():
    class BosTokenizer:  # adds BOS id 1 with special tokens, like Llama's
        bos_token = "<s>"

        def __call__(self, texts, add_special_tokens):
            return {"input_ids": [([1] if add_special_tokens else []) + [ord(c) for c in t] for t in texts]}

    tok = BosTokenizer()
    assert generation.encode_texts(tok, ["ab", "<s>ab"], chat=False) == [[1, 97, 98], [ord(c) for c in "<s>ab"]]
    assert generation.encode_texts(tok, ["ab"], chat=True) == [[97, 98]]  # the chat template wrote its own


def test_unmerged_peft_adapter(lively):
    from peft import LoraConfig, get_peft_model

    model, tok = lively
    # init_lora_weights=False: random B, so the adapter really changes the outputs.
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                 init_lora_weights=False))
    ref = hf_one_at_a_time(peft_model, tok, PROMPTS, 8)
    assert generation._own_loop_supported(peft_model)
    assert generate_ids(peft_model, tok, PROMPTS, max_new_tokens=8, batch_size=5, progress=False) == ref
    assert ref != generate_ids(model, tok, PROMPTS, max_new_tokens=8, progress=False)


# --- which decoder runs ----------------------------------------------------------------------

def _inner_cache_name(model) -> str:
    """What this transformers' forward calls the KV cache (``cache`` from 5.24, ``past_key_values`` before)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class _Wrapped(torch.nn.Module):
    """tiny-random behind a hand-written forward signature, to drive the decoder the way another
    transformers version (or remote code) would; ``generate`` is the wrapped model's HF generate."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config, self.generation_config = inner.config, inner.generation_config

    def _call(self, kv, **kwargs):
        return self.inner(**kwargs, **{_inner_cache_name(self.inner): kv})

    def generate(self, **kwargs):
        return self.inner.generate(**kwargs)


class OldSignature(_Wrapped):
    """A forward taking ``past_key_values`` (transformers <= 5.23)."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                logits_to_keep=0):
        return self._call(past_key_values, input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids, use_cache=use_cache, logits_to_keep=logits_to_keep)


class NewSignature(_Wrapped):
    """A forward taking ``cache`` (transformers >= 5.24)."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None, logits_to_keep=0):
        return self._call(cache, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache, logits_to_keep=logits_to_keep)


class NoCacheArgument(_Wrapped):
    """A forward with no way to pass a KV cache in: only HF generate can drive it."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
        return self._call(None, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache)


NO_CACHE_REASON = "forward takes neither `cache` nor `past_key_values`"


@pytest.fixture
def cache_deprecations(monkeypatch):
    """The cache-name deprecation messages transformers logs or warns during the test."""
    seen: list[str] = []
    # warning_once is lru-cached per process: record every call instead, so an earlier test can't hide one.
    monkeypatch.setattr(logging.Logger, "warning_once", lambda self, msg, *a, **k: seen.append(str(msg)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield seen
    seen.extend(str(w.message) for w in caught)
    seen[:] = [m for m in seen if "past_key_values" in m or "`cache`" in m]


def test_own_loop_runs_on_installed_transformers(lively):
    model, tok = lively
    assert generation.decoder(model) == generation.OWN_DECODER == "tunelab"
    assert generation.cache_argument(model) == _inner_cache_name(model)
    with generation.record_decoders() as used:
        ids = generate_ids(model, tok, PROMPTS, max_new_tokens=8, batch_size=5, progress=False)
    assert used == {"tunelab"}
    assert ids == hf_one_at_a_time(model, tok, PROMPTS, 8)


def test_no_cache_deprecation_warnings(lively, cache_deprecations):
    model, tok = lively
    generate_ids(model, tok, PROMPTS, max_new_tokens=8, batch_size=5, progress=False)
    assert cache_deprecations == []


@pytest.mark.parametrize("signature", [OldSignature, NewSignature])
def test_either_cache_argument_name_drives_own_loop(lively, monkeypatch, signature):
    model, tok = lively
    wrapped = signature(model)
    assert generation.decoder(wrapped) == "tunelab"
    with generation.record_decoders() as used:
        own = generate_ids(wrapped, tok, PROMPTS, max_new_tokens=10, batch_size=5, progress=False)
    assert used == {"tunelab"}
    monkeypatch.setattr(generation, "_own_loop_supported", lambda model: False)
    with generation.record_decoders() as used:
        assert generate_ids(model, tok, PROMPTS, max_new_tokens=10, batch_size=5, progress=False) == own
    assert used == {"hf-generate: own loop disabled"}


def test_fallback_reasons(tiny):
    from peft import PromptTuningConfig, get_peft_model

    model = copy.deepcopy(tiny[0])  # changed below
    assert generation.decoder(NoCacheArgument(model)) == f"hf-generate: {NO_CACHE_REASON}"
    prompt_tuned = get_peft_model(copy.deepcopy(model), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    assert generation.decoder(prompt_tuned) == "hf-generate: PEFT prompt learning"
    model.config.is_encoder_decoder = True
    assert generation.decoder(model) == "hf-generate: encoder-decoder"


def test_fallback_warns_once_and_matches_own_loop(lively, monkeypatch, caplog):
    model, tok = lively
    monkeypatch.setattr(generation, "_warned", set())  # once per process: start this test's process afresh
    wrapped = NoCacheArgument(model)
    with caplog.at_level(logging.WARNING, logger=generation.__name__), generation.record_decoders() as used:
        first = generate_ids(wrapped, tok, PROMPTS, max_new_tokens=10, batch_size=5, progress=False)
        generate(wrapped, tok, PROMPTS[:2], max_new_tokens=3, progress=False)
    assert used == {f"hf-generate: {NO_CACHE_REASON}"}
    logged = [r.getMessage() for r in caplog.records if r.name == generation.__name__]
    assert len(logged) == 1 and "NoCacheArgument" in logged[0] and NO_CACHE_REASON in logged[0]
    assert first == generate_ids(model, tok, PROMPTS, max_new_tokens=10, batch_size=5, progress=False)


def test_eval_result_records_the_decoder(lively, tmp_path):
    from tunelab.evaluate.runner import EvalConfig, run_eval

    model, tok = lively
    cases = [("own", model, "tunelab"), ("fallback", NoCacheArgument(model), f"hf-generate: {NO_CACHE_REASON}")]
    for name, lm, want in cases:
        cfg = EvalConfig(model="tiny-random", task="arithmetic", limit=2, max_new_tokens=3, output=str(tmp_path / name))
        assert run_eval(cfg, model=lm, tokenizer=tok).decoder == want
        assert json.loads((tmp_path / name / "metrics.json").read_text())["decoder"] == want
    choices = tmp_path / "mc.jsonl"  # scored by log-likelihood: nothing generated, no decoder
    choices.write_text(json.dumps({"prompt": "2+2?", "choices": ["3", "4"], "answer": "4"}) + "\n")
    cfg = EvalConfig(model="tiny-random", task=str(choices), scorer="choice", output=str(tmp_path / "mc"))
    assert run_eval(cfg, model=model, tokenizer=tok).decoder is None
