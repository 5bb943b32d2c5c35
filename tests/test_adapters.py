from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import PeftModel
from safetensors.torch import load_file

from tests.conftest import tiny_config
from tunelab.adapters import get_method
from tunelab.adapters.base import lora_layers
from tunelab.adapters.lori import compute_masks
from tunelab.adapters.projection import generate_a
from tunelab.adapters.storage import COMPACT_FILE, MASK_FILE, PEFT_WEIGHTS, load_masks, unpack
from tunelab.errors import TunelabError
from tunelab.models import load_model
from tunelab.finetune import train


def test_a_regenerates_bit_exactly_and_independently_of_order():
    a1 = generate_a(42, "model.layers.0.self_attn.q_proj", 8, 64)
    generate_a(42, "model.layers.1.mlp.up_proj", 8, 64)  # other draws in between change nothing
    assert torch.equal(a1, generate_a(42, "model.layers.0.self_attn.q_proj", 8, 64))
    assert not torch.equal(a1, generate_a(43, "model.layers.0.self_attn.q_proj", 8, 64))
    assert not torch.equal(a1, generate_a(42, "model.layers.0.self_attn.k_proj", 8, 64))
    assert a1.abs().max() <= 1 / 64**0.5


def test_lori_d_seeds_differ_between_runs_unless_given():
    from tunelab.adapters.base import AdapterSettings

    seeds = set()
    for _ in range(2):
        model, _ = load_model("tiny-random")
        prepared = get_method("lori-d").prepare(model, AdapterSettings(method="lori-d", rank=4, alpha=8))
        seeds.add(prepared.record["a_seed"])
    assert len(seeds) == 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, qa_file: Path) -> dict[str, Path]:
    """lora, lori-d and lori-s (mask from the lori-d run) trained on tiny-random."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method in ("lora", "lori-d", "lori-s"):
        extra = {"mask_from": str(out["lori-d"]), "sparsity": 0.9} if method == "lori-s" else {}
        out[method] = train(tiny_config(qa_file, root / method, method, **extra))
    return out


def _logits(model: torch.nn.Module, tokenizer) -> torch.Tensor:
    ids = tokenizer("The quick brown fox jumps over the lazy dog", return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_a_is_frozen_at_its_seeded_value_after_training(runs: dict[str, Path]):
    for method in ("lori-d", "lori-s"):
        run = json.loads((runs[method] / "tunelab.json").read_text())
        weights = load_file(runs[method] / PEFT_WEIGHTS)
        a_keys = [k for k in weights if k.endswith("lora_A.weight")]
        assert a_keys
        for k in a_keys:
            key = k.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            a = weights[k]
            assert torch.equal(a, generate_a(int(run["a_seed"]), key, a.shape[0], a.shape[1])), k


def test_lori_s_reuses_the_mask_source_seed(runs: dict[str, Path]):
    d = json.loads((runs["lori-d"] / "tunelab.json").read_text())
    s = json.loads((runs["lori-s"] / "tunelab.json").read_text())
    assert s["a_seed"] == d["a_seed"]


def test_lori_s_zeros_outside_mask_and_density(runs: dict[str, Path]):
    weights = load_file(runs["lori-s"] / PEFT_WEIGHTS)
    masks = load_masks(runs["lori-s"] / MASK_FILE)
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    assert abs(kept / total - 0.1) < 1e-3
    trained_inside = 0
    for key, mask in masks.items():
        b = weights[f"base_model.model.{key}.lora_B.weight"]
        assert (b[~mask] == 0).all(), key
        trained_inside += int((b[mask] != 0).sum())
    assert trained_inside > 0.9 * kept  # the masked entries did train


@pytest.mark.parametrize("method", ["lora", "lori-d", "lori-s"])
def test_plain_peft_reload_gives_the_trained_logits(runs: dict[str, Path], method: str):
    """Training-time model (rebuilt from our own record of A seed + B) == PeftModel.from_pretrained."""
    base, tok = load_model("tiny-random")
    reloaded = PeftModel.from_pretrained(base, str(runs[method]))
    weights = load_file(runs[method] / PEFT_WEIGHTS)
    # Apply ΔW = (α/r)·B·A by hand to a fresh base and compare.
    manual, _ = load_model("tiny-random")
    cfg = json.loads((runs[method] / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    modules = dict(manual.named_modules())
    for k, b in weights.items():
        if k.endswith("lora_B.weight"):
            name = k.removeprefix("base_model.model.").removesuffix(".lora_B.weight")
            a = weights[k.replace("lora_B", "lora_A")]
            with torch.no_grad():
                modules[name].weight += scale * (b @ a)
    reloaded_logits = _logits(reloaded, tok)
    assert torch.allclose(reloaded_logits, _logits(manual, tok), atol=1e-4)
    untouched, _ = load_model("tiny-random")  # `base` now carries the injected LoRA layers
    assert not torch.allclose(reloaded_logits, _logits(untouched, tok), atol=1e-3)


def test_peft_save_load_is_bit_exact(tmp_path: Path):
    """A prepared adapter with random B saves and reloads to identical logits."""
    from tunelab.adapters.base import AdapterSettings

    for name in ("lora", "lori-d"):
        model, tok = load_model("tiny-random")
        method = get_method(name)
        prepared = method.prepare(model, AdapterSettings(method=name, rank=4, alpha=8, seed=7))
        torch.manual_seed(0)
        for _, layer in lora_layers(prepared.model):
            torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.05)
        expected = _logits(prepared.model, tok)
        method.save(prepared, tok, tmp_path / name)
        base, _ = load_model("tiny-random")
        assert torch.equal(_logits(PeftModel.from_pretrained(base, str(tmp_path / name)), tok), expected)


def test_compact_round_trip_is_exact_and_small(runs: dict[str, Path], tmp_path: Path):
    unpack(runs["lori-s"] / COMPACT_FILE, tmp_path)
    original = load_file(runs["lori-s"] / PEFT_WEIGHTS)
    restored = load_file(tmp_path / PEFT_WEIGHTS)
    assert original.keys() == restored.keys()
    for k in original:
        assert original[k].dtype == restored[k].dtype and torch.equal(original[k], restored[k]), k
    assert json.loads((tmp_path / "adapter_config.json").read_text()) == json.loads((runs["lori-s"] / "adapter_config.json").read_text())
    # Payload: B values at mask positions + one bit per B entry; no A at all.
    stored = load_file(runs["lori-s"] / COMPACT_FILE)
    masks = load_masks(runs["lori-s"] / MASK_FILE)
    assert not any("lora_A" in k for k in stored)
    for key, mask in masks.items():
        assert stored[f"{key}.values"].numel() == int(mask.sum())
        assert stored[f"{key}.bitmap"].numel() == -(-mask.numel() // 8)


def test_unpack_refuses_a_non_compact_file(runs: dict[str, Path], tmp_path: Path):
    with pytest.raises(TunelabError, match="not a tunelab compact adapter"):
        unpack(runs["lori-s"] / PEFT_WEIGHTS, tmp_path)


@settings(max_examples=40, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 6)), min_size=1, max_size=4),
    sparsity=st.floats(0.0, 0.99),
    granularity=st.sampled_from(["global", "layer", "matrix"]),
    seed=st.integers(0, 1000),
)
def test_mask_keeps_the_top_fraction(shapes, sparsity: float, granularity: str, seed: int):
    gen = torch.Generator().manual_seed(seed)
    b = {f"model.layers.{i % 2}.m{i}": torch.randn(s, generator=gen) for i, s in enumerate(shapes)}  # continuous: no ties
    masks = compute_masks(b, sparsity, granularity)
    groups: dict[str, list[str]] = {}
    for key in b:
        groups.setdefault({"global": "all", "layer": key.split(".")[2], "matrix": key}[granularity], []).append(key)
    for keys in groups.values():
        n = sum(b[k].numel() for k in keys)
        kept = sum(int(masks[k].sum()) for k in keys)
        assert kept == max(1, int((1 - sparsity) * n))
        smallest_kept = min(b[k].abs()[masks[k]].min() for k in keys if masks[k].any())
        largest_dropped = max((b[k].abs()[~masks[k]].max() for k in keys if (~masks[k]).any()), default=-1.0)
        assert smallest_kept > largest_dropped


def test_mask_source_must_match(runs: dict[str, Path], qa_file: Path, tmp_path: Path):
    with pytest.raises(TunelabError, match="needs --mask-from"):
        train(tiny_config(qa_file, tmp_path / "a", "lori-s"))
    with pytest.raises(TunelabError, match="rank 4, but this run uses --rank 8"):
        train(tiny_config(qa_file, tmp_path / "b", "lori-s", mask_from=str(runs["lori-d"]), rank=8))
    with pytest.raises(TunelabError, match="a 'lora' run"):
        train(tiny_config(qa_file, tmp_path / "c", "lori-s", mask_from=str(runs["lora"])))
    other = tmp_path / "other-base"
    other.mkdir()
    for f in runs["lori-d"].iterdir():
        if f.is_file():
            (other / f.name).write_bytes(f.read_bytes())
    meta = json.loads((other / "tunelab.json").read_text())
    (other / "tunelab.json").write_text(json.dumps({**meta, "base_model": "smollm2-135m"}))
    with pytest.raises(TunelabError, match="trained on base model 'smollm2-135m', not 'tiny-random'"):
        train(tiny_config(qa_file, tmp_path / "d", "lori-s", mask_from=str(other)))
    for name in "abcd":
        assert not (tmp_path / name).exists()  # refused before anything was written


def test_bf16_runs_keep_the_seeded_a_and_unpack_exactly(qa_file: Path, tmp_path: Path):
    """With --bf16 the frozen base is stored in bf16, but LoRI's A must be saved as its seed makes it."""
    d = train(tiny_config(qa_file, tmp_path / "d", "lori-d", bf16=True))
    s = train(tiny_config(qa_file, tmp_path / "s", "lori-s", bf16=True, mask_from=str(d), sparsity=0.9))
    seed = int(json.loads((s / "tunelab.json").read_text())["a_seed"])
    original = load_file(s / PEFT_WEIGHTS)
    for k, a in original.items():
        if k.endswith("lora_A.weight"):
            key = k.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            assert torch.equal(a, generate_a(seed, key, a.shape[0], a.shape[1])), k
    unpack(s / COMPACT_FILE, tmp_path / "unpacked")
    restored = load_file(tmp_path / "unpacked" / PEFT_WEIGHTS)
    for k in original:
        assert original[k].dtype == restored[k].dtype and torch.equal(original[k], restored[k]), k
