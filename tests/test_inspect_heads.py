"""Head scores against hand computation, thresholds, dynamic zeroing and the head sweep on tiny-random."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.evaluate.scorers import choice_loglikelihoods, pick_choice
from tunelab.inspect.heads import (
    HIGH,
    LOW,
    SCORES,
    HeadSweep,
    flag,
    head_scores,
    head_sweep,
    load_head_mask,
    static_zero,
    thresholds,
    zero_heads,
)
from tunelab.inspect.hooks import attn_implementation, blocks, geometry, record

TEXTS = ["The quick brown fox jumps over the lazy dog again and again.", "Hello there, friend"]
NON_RANDOM = [n for n in SCORES if n != "random"]


def _ids(tok) -> list[list[int]]:
    return [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]


def _padded(seqs: list[list[int]], pad: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(seqs):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span], mask[row, span] = torch.tensor(seq), 1
    return ids, mask


def _by_hand(model, seq: list[int]) -> dict[str, torch.Tensor]:
    """Every score of one unpadded sequence, head by head, from recorded A, V and z: {name: [L, H]}."""
    geo = geometry(model)
    with torch.no_grad(), record(model, ["pattern", "v", "z"]) as rec:
        model(torch.tensor([seq]))
    raw = {name: torch.zeros(geo.n_layers, geo.n_heads) for name in
           ["first_token_weight", "entropy", "first_token_value_norm", "mean_value_norm",
            "last_token_output_norm", "mean_output_norm", "contribution_norm", "last_token_output_norm_hn"]}
    for layer, block in enumerate(blocks(model)):
        w_o = block.part("o_proj").weight
        a, v, z = rec[layer, "pattern"][0], rec[layer, "v"][0], rec[layer, "z"][0]
        for h in range(geo.n_heads):
            kv = h // geo.group  # repeat_kv: query head h reads key/value head h // group
            head_w = w_o[:, h * geo.head_dim:(h + 1) * geo.head_dim]
            raw["first_token_weight"][layer, h] = a[h, :, 0].mean()
            raw["entropy"][layer, h] = torch.stack([-(row[row > 0] * row[row > 0].log()).sum() for row in a[h]]).mean()
            raw["first_token_value_norm"][layer, h] = v[0, kv].norm()
            raw["mean_value_norm"][layer, h] = torch.stack([v[t, kv].norm() for t in range(len(seq))]).mean()
            raw["last_token_output_norm"][layer, h] = z[-1, h].norm()
            raw["mean_output_norm"][layer, h] = torch.stack([z[t, h].norm() for t in range(len(seq))]).mean()
            raw["contribution_norm"][layer, h] = torch.stack([(head_w @ z[t, h]).norm() for t in range(len(seq))]).mean()
        raw["last_token_output_norm_hn"][layer] = raw["last_token_output_norm"][layer] / raw["mean_output_norm"][layer]
    out = dict(raw)
    for name in list(raw):
        if not name.endswith("_hn"):
            out[f"{name}_ln"] = raw[name] / raw[name].mean(-1, keepdim=True)
    return out


@pytest.mark.parametrize("side", ["left", "right"])
def test_every_score_matches_hand_computation_with_padding(tiny, side: str) -> None:
    model, tok = tiny
    seqs = _ids(tok)
    assert len(seqs[0]) != len(seqs[1])
    ids, mask = _padded(seqs, tok.pad_token_id, side)
    got = head_scores(model, ids, mask)
    assert set(got) == set(SCORES) and len(NON_RANDOM) == 15
    for row, seq in enumerate(seqs):
        expected = _by_hand(model, seq)
        assert set(expected) == set(NON_RANDOM)
        alone = head_scores(model, torch.tensor([seq]), names=NON_RANDOM)
        for name in NON_RANDOM:
            torch.testing.assert_close(got[name][row], expected[name], atol=1e-5, rtol=0, msg=f"{name} row {row}")
            torch.testing.assert_close(got[name][row], alone[name][0], atol=1e-5, rtol=0, msg=f"{name} alone")
    assert attn_implementation(model) == "sdpa"


def test_gqa_layer_norm_and_random(tiny) -> None:
    model, tok = tiny
    geo = geometry(model)
    ids, mask = _padded(_ids(tok), tok.pad_token_id, "right")
    got = head_scores(model, ids, mask)
    for name in ("first_token_value_norm", "mean_value_norm"):
        for h in range(geo.n_heads):  # query heads sharing a KV head share its values
            assert torch.equal(got[name][..., h], got[name][..., (h // geo.group) * geo.group])
        assert not torch.equal(got[name][..., 0], got[name][..., geo.group])
    for name in SCORES:
        if name.endswith("_ln"):
            torch.testing.assert_close(got[name].mean(-1), torch.ones(2, geo.n_layers), atol=1e-5, rtol=0)
    again = head_scores(model, ids, mask, ["random"], seed=0)["random"]
    assert torch.equal(got["random"], again) and ((again >= 0) & (again < 1)).all()
    assert not torch.equal(again, head_scores(model, ids, mask, "random", seed=1)["random"])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # scores stay float32 and near the fp32 ones
        low = head_scores(model, ids, mask, ["contribution_norm", "entropy", "mean_value_norm"])
    for name, value in low.items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, got[name], rtol=0.05, atol=1e-3)
    assert {SCORES.get(n).direction for n in SCORES if n.startswith("first_token_weight")} == {HIGH}
    assert {SCORES.get(n).direction for n in SCORES if not n.startswith("first_token_weight")} == {LOW}


def test_contribution_norm_sees_lora_delta() -> None:
    from peft import LoraConfig, get_peft_model

    from tunelab.models import load_model

    model, tok = load_model("tiny-random")  # private copy: PEFT wraps in place
    torch.manual_seed(0)
    wrapped = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "o_proj"], init_lora_weights=False))
    wrapped.eval()
    ids, mask = _padded(_ids(tok), tok.pad_token_id, "left")
    names = ["contribution_norm", "mean_output_norm_ln", "first_token_weight"]
    lora = head_scores(wrapped, ids, mask, names)
    merged = head_scores(wrapped.merge_and_unload(), ids, mask, names)
    for name in names:
        torch.testing.assert_close(lora[name], merged[name], atol=1e-5, rtol=0)


def test_thresholds_flag_the_requested_fraction() -> None:
    recorded = torch.randperm(200, generator=torch.Generator().manual_seed(0)).float().view(10, 4, 5)
    for fraction in (0.05, 0.25, 0.5, 0.9):
        k = round(fraction * 200)
        low = flag(recorded, thresholds(recorded, fraction, LOW), LOW)
        assert low.sum() == k and (recorded[low] < k).all()
        high = flag(recorded, thresholds(recorded, fraction, HIGH), HIGH)
        assert high.sum() == k and (recorded[high] >= 200 - k).all()
    for direction in (LOW, HIGH):
        assert flag(recorded, thresholds(recorded, 0, direction), direction).sum() == 0
        assert flag(recorded * 1e9, thresholds(recorded, 0.0, direction), direction).sum() == 0  # unseen data too
        assert flag(recorded, thresholds(recorded, 1, direction), direction).all()
    with pytest.raises(TunelabError, match=r"fraction of heads must be a number in \[0, 1\], got 1.5"):
        thresholds(recorded, 1.5, LOW)
    with pytest.raises(TunelabError, match="direction must be 'low' or 'high'"):
        flag(recorded, 0.0, "down")


def test_zero_heads_changes_only_flagged_rows(tiny) -> None:
    model, tok = tiny
    geo = geometry(model)
    ids, mask = _padded(_ids(tok), tok.pad_token_id, "right")
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        heads = torch.zeros(2, geo.n_layers, geo.n_heads, dtype=torch.bool)
        with zero_heads(model, heads):
            assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, ref)
        heads[0, 0, 1] = heads[0, 1, 3] = True
        with zero_heads(model, heads):
            out = model(input_ids=ids, attention_mask=mask).logits
        assert not torch.allclose(out[0], ref[0])
        assert torch.equal(out[1], ref[1])
        with static_zero(model, heads[0]):
            torch.testing.assert_close(model(input_ids=ids[:1], attention_mask=mask[:1]).logits, out[:1])
    with pytest.raises(TunelabError, match="head mask must be"):
        zero_heads(model, torch.zeros(2, 3, geo.n_heads, dtype=torch.bool)).__enter__()
    with pytest.raises(TunelabError, match="head mask has 2 rows but the batch has 1"), zero_heads(model, heads):
        model(input_ids=ids[:1])
    assert all(not m._forward_pre_hooks for m in model.modules())


RECORDS = [
    {"prompt": "What colour is the sky?", "choices": ["blue", "green", "a loud trumpet"], "answer": 0},
    {"prompt": "How many legs does a cat have?", "choices": ["four", "seven"], "answer": 0},
    {"prompt": "Which is a fruit?", "choices": ["a brick", "an apple", "tuesday"], "answer": 1},
    {"prompt": [{"role": "user", "content": "Is fire hot?"}], "choices": ["no", "yes"], "answer": 1},
    {"prompt": "What do bees make?", "choices": ["steel", "honey", "clouds"], "answer": 1},
    {"prompt": "Where do fish live?", "choices": ["water", "the moon", "in a sock drawer"], "answer": 0},
]


def test_head_sweep(tiny, tmp_path: Path) -> None:
    model, tok = tiny
    geo = geometry(model)
    names = ["mean_output_norm_ln", "first_token_weight"]
    sweep = head_sweep(model, tok, RECORDS, scores=names, fractions=[0, 0.25, 0.5], batch_size=4, progress=False)
    assert attn_implementation(model) == "sdpa"

    lls = choice_loglikelihoods(model, tok, [r["prompt"] for r in RECORDS], [r["choices"] for r in RECORDS])
    plain = sum(pick_choice(ll, r["choices"]) == r["answer"] for ll, r in zip(lls, RECORDS)) / len(RECORDS)
    plain_norm = sum(pick_choice(ll, r["choices"], True) == r["answer"] for ll, r in zip(lls, RECORDS)) / len(RECORDS)
    rows = {(r["score"], r["fraction"]): r for r in sweep.rows}
    assert set(rows) == {(n, f) for n in names for f in (0.0, 0.25, 0.5)}
    for name in names:
        assert rows[name, 0.0]["accuracy"] == plain == sweep.baseline["accuracy"]
        assert rows[name, 0.0]["accuracy_norm"] == plain_norm
        assert rows[name, 0.0]["actual_pct"] == 0
        assert rows[name, 0.25]["actual_pct"] == pytest.approx(25, abs=2)
        assert rows[name, 0.5]["actual_pct"] == pytest.approx(50, abs=2)
        assert rows[name, 0.5]["n"] == len(RECORDS)
        assert sweep.mean_scores[name].shape == (geo.n_layers, geo.n_heads)
        assert sweep.static_mask(name, 0.5).dtype == torch.bool
    assert set(sweep.largest_within()) == set(names)
    assert all(0 <= v <= 100 for v in sweep.largest_within(100).values())
    assert max(sweep.largest_within(100).values()) >= 49  # with 100 points everything is "within"

    data = json.loads(json.dumps(sweep.to_json()))
    assert HeadSweep.from_json(data).to_json() == data
    assert data["n_sequences"] == sum(len(r["choices"]) for r in RECORDS) and data["directions"] == {
        "mean_output_norm_ln": LOW, "first_token_weight": HIGH}

    paths = sweep.save(tmp_path)
    assert [p.name for p in paths] == ["heads.json", "head_mask.safetensors", "heads_accuracy.png", "heads_scores.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    saved = json.loads(paths[0].read_text())
    assert HeadSweep.from_json(saved).rows == sweep.rows
    mask = load_head_mask(paths[1])
    assert mask.shape == (geo.n_layers, geo.n_heads) and mask.dtype == torch.bool
    assert saved["static_mask"]["static_pct"] == pytest.approx(100 * mask.float().mean().item())
    assert saved["static_mask"]["mask"] == mask.tolist() and saved["static_mask"]["file"] == "head_mask.safetensors"
    assert saved["baseline_accuracy"] == sweep.baseline["accuracy"] and saved["largest_within"] == sweep.largest_within()
    with static_zero(model, mask), torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))


def test_bad_inputs(tiny, tmp_path: Path) -> None:
    model, tok = tiny
    with pytest.raises(TunelabError, match=r"fraction of heads must be a number in \[0, 1\], got 1.5"):
        head_sweep(model, tok, RECORDS, scores=["random"], fractions=[0, 1.5], progress=False)
    with pytest.raises(TunelabError, match="unknown head score 'norm'; known scores: first_token_weight, "):
        head_sweep(model, tok, RECORDS, scores=["norm"], fractions=[0.1], progress=False)
    with pytest.raises(TunelabError, match="unknown head score 'norm'"):
        head_scores(model, torch.tensor([[1, 2]]), names=["norm"])
    with pytest.raises(TunelabError, match=r"record 1: 'answer' must be an option index 0\.\.1, got 5"):
        head_sweep(model, tok, [RECORDS[0], {**RECORDS[1], "answer": 5}], scores=["random"], progress=False)
    with pytest.raises(TunelabError, match="row 1 of attention_mask has no tokens"):
        head_scores(model, torch.tensor([[1, 2], [1, 2]]), torch.tensor([[1, 1], [0, 0]]))
    with pytest.raises(TunelabError, match="no sweep row for score 'random' at fraction 0.3"):
        HeadSweep([], {"accuracy": 1.0}, {}, {}, {}).static_mask("random", 0.3)
    with pytest.raises(TunelabError, match="not a head sweep"):
        HeadSweep.from_json({"rows": []})
    bad = tmp_path / "mask.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(TunelabError, match="mask.safetensors: not a readable safetensors file"):
        load_head_mask(bad)
    with pytest.raises(TunelabError, match="head mask file not found"):
        load_head_mask(tmp_path / "missing.safetensors")
    with pytest.raises(TunelabError, match=r"head mask must be \[layers, heads\] with 2 layers and 4 heads, got \(3, 4\)"):
        static_zero(model, torch.zeros(3, 4, dtype=torch.bool)).__enter__()
