"""Membership scores for canaries (tunelab.privacy.scores) against slow per-example references."""

from __future__ import annotations

import copy
import math
import zlib

import numpy as np
import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.privacy.scores import SCORES, score_canaries

ALL_BUT_REFERENCE = tuple(s for s in SCORES if s != "reference")


def _records(n: int = 9) -> list[dict[str, str]]:
    """Canaries of varied lengths (prompt and secret), so batches pad."""
    return [{"prompt": "Tell me the code " + "please " * (i % 4) + f"for user {i}.",
             "response": f"The code of user {i} is {(i * 7919) % 100000:05d}" + " and more" * (i % 3)}
            for i in range(n)]


def _secret_ids(tokenizer, record) -> tuple[list[int], list[int]]:
    """(prompt ids, secret ids) rendered independently of tunelab.data: template up to the assistant turn
    with a generation prompt, then the rest of the rendered chat."""
    messages = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert full.startswith(prompt) and record["response"] in full[len(prompt):]
    return (tokenizer(prompt, add_special_tokens=False)["input_ids"],
            tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"])


@torch.inference_mode()
def _manual_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[j] | ids[:j]) for j = 1..n-1: one unpadded sequence, full logits, manual log-softmax."""
    x = torch.tensor([ids])
    logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, :-1].double()
    logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    return logp.gather(-1, x[0, 1:, None]).squeeze(-1)


def _manual_scores(model, tokenizer, record, k: float = 20.0, reference=None) -> dict[str, float]:
    prompt_ids, secret_ids = _secret_ids(tokenizer, record)
    ids = prompt_ids + secret_ids
    logp = _manual_logprobs(model, ids)
    mask = torch.zeros(len(ids) - 1, dtype=torch.bool)
    mask[len(prompt_ids) - 1:] = True  # the prediction of token j sits at j - 1
    secret = logp[mask]
    n_low = max(1, math.floor(len(secret) * k / 100 + 1e-9))
    out = {"secret_loss": float(secret.mean()),
           "sequence_loss": float(logp.mean()),
           "min_k": float(torch.sort(secret).values[:n_low].mean()),
           "zlib": float(secret.mean()) / len(zlib.compress(record["response"].encode("utf-8")))}
    if reference is not None:
        out["reference"] = out["secret_loss"] - float(_manual_logprobs(reference, ids)[mask].mean())
    return out


def test_scores_match_slow_per_example_reference(tiny):
    model, tokenizer = tiny
    records = _records()
    got = score_canaries(model, tokenizer, records, scores=ALL_BUT_REFERENCE, batch_size=4, k=20)
    for i, record in enumerate(records):
        want = _manual_scores(model, tokenizer, record, k=20)
        for name in ALL_BUT_REFERENCE:
            assert got[name][i] == pytest.approx(want[name], abs=1e-5), (name, i)


def test_batching_padding_and_order_do_not_change_scores(tiny):
    model, tokenizer = tiny
    records = _records(11)
    base = score_canaries(model, tokenizer, records, scores=ALL_BUT_REFERENCE, batch_size=1)
    perm = np.random.default_rng(0).permutation(len(records))
    for batch_size, side in ((3, "right"), (4, "left"), (32, "right"), (32, "left")):
        got = score_canaries(model, tokenizer, [records[i] for i in perm], scores=ALL_BUT_REFERENCE,
                             batch_size=batch_size, padding_side=side)
        for name in ALL_BUT_REFERENCE:
            np.testing.assert_allclose(got[name], base[name][perm], rtol=0, atol=1e-5, err_msg=f"{name} {batch_size} {side}")


def test_secret_loss_ignores_the_prefix(tiny):
    """secret_loss is the mean over the secret tokens only: equal to the manually masked mean, unlike the
    sequence mean, and unchanged whatever weight the prompt positions would get."""
    model, tokenizer = tiny
    record = _records(3)[2]
    prompt_ids, secret_ids = _secret_ids(tokenizer, record)
    ids = prompt_ids + secret_ids
    logp = _manual_logprobs(model, ids)
    n_prompt_preds = len(prompt_ids) - 1
    got = score_canaries(model, tokenizer, [record], scores=("secret_loss", "sequence_loss"))
    for weight in (0.0, 1.0, 1e3):  # the prompt positions' contribution, scaled arbitrarily then masked out
        weights = torch.cat([torch.full((n_prompt_preds,), weight), torch.ones(len(secret_ids))]).double()
        masked = (weights * logp)[n_prompt_preds:].sum() / len(secret_ids)
        assert got["secret_loss"][0] == pytest.approx(float(masked), abs=1e-5)
    assert abs(got["sequence_loss"][0] - got["secret_loss"][0]) > 1e-3
    assert got["sequence_loss"][0] == pytest.approx(float(logp.mean()), abs=1e-5)


def test_min_k_at_100_percent_is_secret_loss(tiny):
    model, tokenizer = tiny
    got = score_canaries(model, tokenizer, _records(), scores=("secret_loss", "min_k"), k=100)
    np.testing.assert_allclose(got["min_k"], got["secret_loss"], rtol=0, atol=1e-12)
    low = score_canaries(model, tokenizer, _records(), scores=("min_k",), k=5)["min_k"]
    assert np.all(low <= got["secret_loss"] + 1e-12)


def _lora(model, init_b_zero: bool = True):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    if not init_b_zero:
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return peft_model


def test_reference_disable_adapter_is_zero_for_a_fresh_lora(tiny):
    model, tokenizer = tiny
    peft_model = _lora(model)
    got = score_canaries(peft_model, tokenizer, _records(), scores=("secret_loss", "reference"),
                         reference="disable-adapter", batch_size=4)
    assert np.all(got["reference"] == 0.0)


def test_reference_matches_manual_calibrated_loss(tiny):
    model, tokenizer = tiny
    peft_model = _lora(model, init_b_zero=False)
    records = _records(5)
    via_disable = score_canaries(peft_model, tokenizer, records, scores=("reference",), reference="disable-adapter",
                                 batch_size=2)["reference"]
    via_model = score_canaries(peft_model, tokenizer, records, scores=("reference",), reference=model,
                               batch_size=3, padding_side="left")["reference"]
    for i, record in enumerate(records):
        want = _manual_scores(peft_model, tokenizer, record, reference=model)["reference"]
        assert via_disable[i] == pytest.approx(want, abs=1e-5)
        assert via_model[i] == pytest.approx(want, abs=1e-5)
    assert np.abs(via_disable).max() > 1e-3  # the adapter does change the secret's likelihood


def test_one_forward_per_batch_shared_by_all_scores(tiny):
    model, tokenizer = tiny
    calls = []
    handle = model.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        score_canaries(model, tokenizer, _records(9), scores=ALL_BUT_REFERENCE, batch_size=4)
    finally:
        handle.remove()
    assert len(calls) == 3  # ceil(9 / 4) batches, one decoder pass each


def test_bf16_autocast_is_close(tiny):
    model, tokenizer = tiny
    fp32 = score_canaries(model, tokenizer, _records(4), scores=("secret_loss",))["secret_loss"]
    bf16 = score_canaries(model, tokenizer, _records(4), scores=("secret_loss",), bf16=True)["secret_loss"]
    np.testing.assert_allclose(bf16, fp32, atol=0.1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(records=[]), "empty"),
    (dict(scores=("secret_loss", "perplexity")), "unknown membership score 'perplexity'"),
    (dict(scores=()), "no scores"),
    (dict(scores=("min_k",), k=0), r"\(0, 100\]"),
    (dict(scores=("min_k",), k=100.5), r"\(0, 100\]"),
    (dict(scores=("min_k",), k=-5), r"\(0, 100\]"),
    (dict(scores=("min_k",), k=float("nan")), r"\(0, 100\]"),
    (dict(batch_size=0), "batch_size"),
    (dict(padding_side="middle"), "padding_side"),
    (dict(scores=("reference",)), "needs reference="),
    (dict(scores=("reference",), reference="disable-adapter"), "unmerged PEFT"),
    (dict(scores=("reference",), reference="base"), "must be a model"),
    (dict(reference="disable-adapter"), "not among the scores"),
    (dict(records=[{"prompt": "hi"}]), "field 'response' missing"),
    (dict(records=[{"prompt": "hi", "response": "  "}]), "non-empty string"),
    (dict(records="not a list"), "must be a list"),
])
def test_bad_inputs_raise_tunelab_error(tiny, kwargs, match):
    model, tokenizer = tiny
    args = dict(records=_records(2))
    args.update(kwargs)
    with pytest.raises(TunelabError, match=match):
        score_canaries(model, tokenizer, **args)


def test_secret_cut_off_by_max_length_is_an_error(tiny):
    model, tokenizer = tiny
    with pytest.raises(TunelabError, match="no secret tokens left"):
        score_canaries(model, tokenizer, _records(2), max_length=5)


def test_scores_of_a_memorised_secret_rank_higher(tiny):
    """Sanity: a secret the model was just fit on scores above unseen ones (secret_loss, min_k, reference)."""
    from tunelab.data import tokenize_chat, validate_record
    from tunelab.train.objectives import CausalLMLoss

    model, tokenizer = tiny
    peft_model = _lora(model)
    records = _records(4)
    ex = tokenize_chat(validate_record(records[0], "r"), tokenizer, 10_000)
    batch = {"input_ids": torch.tensor([ex.input_ids]), "attention_mask": torch.ones(1, len(ex.input_ids), dtype=torch.long),
             "labels": torch.tensor([ex.labels])}
    loss_fn = CausalLMLoss(peft_model)
    opt = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        loss_fn(**batch).backward()
        opt.step()
    got = score_canaries(peft_model, tokenizer, records, scores=("secret_loss", "min_k", "reference"),
                         reference="disable-adapter")
    for name in ("min_k", "reference"):
        assert np.argmax(got[name]) == 0, (name, got[name])
    assert got["reference"][0] > 0


def test_plain_logits_path_gives_the_same_scores(tiny, monkeypatch):
    """Models the LM-head-on-kept-positions path cannot take (e.g. soft-capped logits) run the full forward."""
    from tunelab.privacy import scores as scores_mod

    model, tokenizer = tiny
    records = _records(5)
    fast = score_canaries(model, tokenizer, records, scores=ALL_BUT_REFERENCE, batch_size=2, padding_side="left")
    init = scores_mod._TokenScorer.__init__

    def slow_init(self, model):
        init(self, model)
        self._fast = False

    monkeypatch.setattr(scores_mod._TokenScorer, "__init__", slow_init)
    slow = score_canaries(model, tokenizer, records, scores=ALL_BUT_REFERENCE, batch_size=2, padding_side="left")
    for name in ALL_BUT_REFERENCE:
        np.testing.assert_allclose(slow[name], fast[name], rtol=0, atol=1e-5)


def test_accepts_canary_objects(tiny):
    """Objects with a ``record()`` method (tunelab.privacy.canaries.Canary) score like their records."""
    model, tokenizer = tiny

    class FakeCanary:
        def __init__(self, rec):
            self.rec = rec

        def record(self):
            return self.rec

    records = _records(3)
    a = score_canaries(model, tokenizer, records)["secret_loss"]
    b = score_canaries(model, tokenizer, [FakeCanary(r) for r in records])["secret_loss"]
    np.testing.assert_array_equal(a, b)
