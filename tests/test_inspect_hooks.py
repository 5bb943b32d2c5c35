"""Named hook points: record, patch, eager attention, on plain, PEFT-wrapped and merged tiny-random."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tunelab.errors import TunelabError
from tunelab.inspect.hooks import (
    PATCHABLE,
    POINTS,
    attn_implementation,
    blocks,
    eager_attention,
    geometry,
    patch,
    record,
)

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello there"]


def _batch(tok) -> dict[str, torch.Tensor]:
    return dict(tok(TEXTS, return_tensors="pt", padding=True))


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _effective_o_weight(o_proj: nn.Module, width: int) -> torch.Tensor:
    """W_O as the module applies it (base weight plus any LoRA delta): probe with the identity."""
    with torch.no_grad():
        return (o_proj(torch.eye(width)) - o_proj(torch.zeros(1, width))).T


def _check_z_sums_to_attn_out(model, tok) -> None:
    geo = geometry(model)
    with record(model, ["z", "attn_out"]) as rec:
        _logits(model, _batch(tok))
    for block in blocks(model):
        w = _effective_o_weight(block.part("o_proj"), geo.n_heads * geo.head_dim)
        z = rec[block.index, "z"]
        assert z.shape[-2:] == (geo.n_heads, geo.head_dim)
        total = sum(z[..., h, :] @ w[:, h * geo.head_dim:(h + 1) * geo.head_dim].T for h in range(geo.n_heads))
        torch.testing.assert_close(total, rec[f"blocks.{block.index}.attn_out"], atol=1e-5, rtol=0)


def _zero_head(h: int):
    def fn(z: torch.Tensor, layer: int) -> torch.Tensor:
        z = z.clone()
        z[..., h, :] = 0
        return z
    return fn


def test_heads_sum_to_attention_output(tiny) -> None:
    _check_z_sums_to_attn_out(*tiny)


def test_recording_keys_shapes_and_no_effect(tiny) -> None:
    model, tok = tiny
    batch = _batch(tok)
    ref = _logits(model, batch)
    points = [p for p in POINTS if p != "pattern"]
    with record(model, points, layers=[1]) as rec:
        got = _logits(model, batch)
    assert torch.equal(ref, got)
    assert set(rec) == {f"blocks.1.{p}" for p in points}
    geo, (b, s) = geometry(model), batch["input_ids"].shape
    assert rec[1, "resid_pre"].shape == (b, s, geo.hidden)
    assert rec[1, "v"].shape == (b, s, geo.n_kv_heads, geo.head_dim)
    assert rec.stack("z").shape == (1, b, s, geo.n_heads, geo.head_dim)
    # resid_post of layer 0 is resid_pre of layer 1; resid_post = resid_pre + attn_out + mlp_out.
    with record(model, ["resid_pre", "resid_post", "attn_out", "mlp_out"]) as rec:
        _logits(model, batch)
    assert torch.equal(rec[0, "resid_post"], rec[1, "resid_pre"])
    torch.testing.assert_close(rec[0, "resid_pre"] + rec[0, "attn_out"] + rec[0, "mlp_out"], rec[0, "resid_post"])
    assert _no_hooks(model)


@pytest.mark.parametrize("point", PATCHABLE)
def test_identity_patch_changes_nothing(tiny, point: str) -> None:
    model, tok = tiny
    batch = _batch(tok)
    ref = _logits(model, batch)
    with patch(model, point, lambda t, layer: t):
        assert torch.equal(ref, _logits(model, batch))
    assert _no_hooks(model)


def test_zeroing_one_head_changes_logits_and_is_seen_by_record(tiny) -> None:
    model, tok = tiny
    batch = _batch(tok)
    ref = _logits(model, batch)
    with patch(model, "z", _zero_head(2), layers=0), record(model, "z", layers=0) as rec:
        changed = _logits(model, batch)
    assert not torch.allclose(ref, changed)
    assert torch.count_nonzero(rec[0, "z"][..., 2, :]) == 0  # the recording sees the patched value
    assert torch.equal(ref, _logits(model, batch))  # and nothing lingers


def test_pattern_under_sdpa_switches_to_eager_and_back(tiny) -> None:
    model, tok = tiny
    assert attn_implementation(model) == "sdpa"
    batch = _batch(tok)
    with record(model, "pattern") as rec:
        assert attn_implementation(model) == "eager"
        _logits(model, batch)
    assert attn_implementation(model) == "sdpa"
    geo, mask = geometry(model), batch["attention_mask"].bool()
    for layer in range(geo.n_layers):
        a = rec[layer, "pattern"]
        b, s = mask.shape
        assert a.shape == (b, geo.n_heads, s, s)
        for row in range(b):
            real = mask[row]
            rows = a[row][:, real][:, :, real]  # non-pad queries x non-pad keys
            torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[:-1]), atol=1e-5, rtol=0)
            assert torch.equal(torch.triu(rows, diagonal=1), torch.zeros_like(rows))  # causal
            assert torch.count_nonzero(a[row][:, real][:, :, ~real]) == 0  # no weight on padding


def test_eager_attention_restores_after_error(tiny) -> None:
    model, _ = tiny
    with pytest.raises(RuntimeError, match="boom"), eager_attention(model):
        assert attn_implementation(model) == "eager"
        raise RuntimeError("boom")
    assert attn_implementation(model) == "sdpa"


def test_hooks_removed_after_exception(tiny) -> None:
    model, tok = tiny
    with pytest.raises(RuntimeError, match="inside"), record(model, list(POINTS)), patch(model, "z", lambda t, i: t):
        assert not _no_hooks(model)
        raise RuntimeError("inside")
    assert _no_hooks(model)
    assert attn_implementation(model) == "sdpa"

    def bad(t: torch.Tensor, layer: int) -> torch.Tensor:
        return t[..., :1]

    with pytest.raises(TunelabError, match=r"patch of blocks\.0\.resid_post returned"), patch(model, "resid_post", bad):
        _logits(model, _batch(tok))
    assert _no_hooks(model)


def test_bad_points_and_layers(tiny) -> None:
    model, _ = tiny
    with pytest.raises(TunelabError, match="unknown hook point 'hook_z'; known points: resid_pre, attn_out, z"):
        record(model, ["z", "hook_z"]).__enter__()
    with pytest.raises(TunelabError, match="layer 2 out of range: the model has 2 layers"):
        record(model, "z", layers=[0, 2]).__enter__()
    with pytest.raises(TunelabError, match="'pattern' can be recorded but not patched"):
        patch(model, "pattern", lambda t, i: t).__enter__()
    with record(model, "z") as rec:
        pass
    with pytest.raises(TunelabError, match="nothing recorded at 'blocks.0.z'"):
        rec[0, "z"]
    assert _no_hooks(model)


def test_peft_wrapped_and_merged_models() -> None:
    from peft import LoraConfig, get_peft_model

    from tunelab.models import load_model

    model, tok = load_model("tiny-random")  # a private copy: PEFT wraps the model in place
    torch.manual_seed(0)
    wrapped = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "o_proj"], init_lora_weights=False))
    wrapped.eval()
    assert len(blocks(wrapped)) == 2
    _check_z_sums_to_attn_out(wrapped, tok)  # W_O includes the LoRA delta
    batch = _batch(tok)
    ref = _logits(wrapped, batch)
    with record(wrapped, ["z", "pattern"]) as rec, patch(wrapped, "z", lambda t, i: t):
        assert attn_implementation(wrapped) == "eager"
        _logits(wrapped, batch)
    assert attn_implementation(wrapped) == "sdpa"
    assert rec[1, "pattern"].shape[1] == geometry(wrapped).n_heads
    assert torch.equal(ref, _logits(wrapped, batch))
    with patch(wrapped, "z", _zero_head(0)):
        assert not torch.allclose(ref, _logits(wrapped, batch))
    assert _no_hooks(wrapped)

    merged = wrapped.merge_and_unload()
    torch.testing.assert_close(_logits(merged, batch), ref, atol=1e-4, rtol=0)
    _check_z_sums_to_attn_out(merged, tok)
    with patch(merged, "resid_post", lambda t, i: t):
        assert torch.equal(_logits(merged, batch), _logits(merged, batch))
    assert _no_hooks(merged)


def test_pattern_when_eager_is_impossible(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = tiny
    monkeypatch.setattr(model, "set_attn_implementation", lambda name: None)  # a model that ignores the switch
    with pytest.raises(TunelabError, match="cannot switch attention implementation 'sdpa' to eager"):
        record(model, ["z", "pattern"]).__enter__()
    assert attn_implementation(model) == "sdpa" and _no_hooks(model)
