"""LoTA and continual learning (--init-from, --disjoint) on tiny-random."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_config
from tunelab.adapters.base import module_key
from tunelab.adapters.lota import materialize, target_weights
from tunelab.adapters.storage import COMPACT_FILE, MASK_FILE, PEFT_WEIGHTS, TASK_VECTOR_FILE, load_masks, load_task_vector, unpack
from tunelab.errors import TunelabError
from tunelab.evaluate import load_with_adapter
from tunelab.models import load_model
from tunelab.finetune import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, qa_file: Path) -> dict[str, Path]:
    """A LoTA run, a LoTTO follow-up, and a LoRI-S safety-first chain, all on the same data."""
    root = tmp_path_factory.mktemp("continual")
    out: dict[str, Path] = {}
    out["lota"] = train(tiny_config(qa_file, root / "lota", "lota", calibration_fraction=0.5, sparsity=0.9))
    out["lota2"] = train(tiny_config(qa_file, root / "lota2", "lota", init_from=str(out["lota"]), disjoint=True,
                                     sparsity=0.9, safety_eval_limit=3, safety_max_new_tokens=4))
    out["lori-d"] = train(tiny_config(qa_file, root / "lori-d", "lori-d"))
    out["lori-s"] = train(tiny_config(qa_file, root / "lori-s", "lori-s", mask_from=str(out["lori-d"])))
    out["calib"] = train(tiny_config(qa_file, root / "calib", "lori-d", init_from=str(out["lori-s"]), safety_eval_limit=0))
    out["disjoint"] = train(tiny_config(qa_file, root / "disjoint", "lori-s", init_from=str(out["lori-s"]),
                                        mask_from=str(out["calib"]), disjoint=True, safety_eval_limit=0))
    return out


def _b(run: Path) -> dict[str, torch.Tensor]:
    return {module_key(k.removesuffix(".lora_B.weight")): v for k, v in load_file(run / PEFT_WEIGHTS).items() if k.endswith("lora_B.weight")}


def test_lota_mask_density_and_exact_zeros_outside(runs: dict[str, Path]):
    masks = load_masks(runs["lota"] / MASK_FILE)
    vector = load_task_vector(runs["lota"])
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert abs(kept / total - 0.1) < 1e-3
    assert set(vector) == set(masks)
    model, _ = load_model("tiny-random")
    assert set(vector) == set(target_weights(model, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")))
    moved = 0
    for name, delta in vector.items():
        assert (delta[~masks[name]] == 0).all(), name  # nothing outside the ticket moved
        moved += int((delta[masks[name]] != 0).sum())
    assert moved > 0.9 * kept
    record = json.loads((runs["lota"] / "tunelab.json").read_text())
    assert record["trainable_params"] == kept


def test_lota_task_vector_file_is_sparse(runs: dict[str, Path]):
    stored = load_file(runs["lota"] / TASK_VECTOR_FILE)
    masks = load_masks(runs["lota"] / MASK_FILE)
    for name, mask in masks.items():
        assert stored[f"{name}.indices"].dtype == torch.int32
        assert stored[f"{name}.values"].numel() <= int(mask.sum())


def test_lota_loads_as_base_plus_vector_and_materializes(runs: dict[str, Path], tmp_path: Path):
    model, tok = load_with_adapter("tiny-random", runs["lota"])
    base, _ = load_model("tiny-random")
    params = dict(model.named_parameters())
    for name, delta in load_task_vector(runs["lota"]).items():
        assert torch.equal(params[name], dict(base.named_parameters())[name] + delta)
    full = materialize(runs["lota"], tmp_path / "model")
    reloaded, _ = load_model(str(full))
    ids = tok("12 plus 30 is", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, reloaded(**ids).logits)


def test_lotto_masks_are_disjoint_and_keep_the_first_vector(runs: dict[str, Path]):
    first = load_task_vector(runs["lota"])
    second = load_task_vector(runs["lota2"])
    masks2 = load_masks(runs["lota2"] / MASK_FILE)
    for name, delta in first.items():
        used = delta != 0
        assert not (masks2[name] & used).any(), name
        assert torch.equal(second[name][used], delta[used])  # the first task's weights never moved
    record = json.loads((runs["lota2"] / "tunelab.json").read_text())
    assert record["mask_overlap_with_init"] == 0
    assert set(record["safety"]) == {"before", "after"}
    assert record["safety"]["before"]["n_harmful"] == 3
    assert (runs["lota2"] / "eval" / "safety-before" / "metrics.json").is_file()
    assert (runs["lota2"] / "eval" / "safety" / "metrics.json").is_file()


def test_init_from_freezes_a_and_starts_b_from_the_earlier_run(runs: dict[str, Path]):
    calib = json.loads((runs["calib"] / "tunelab.json").read_text())
    first = json.loads((runs["lori-s"] / "tunelab.json").read_text())
    assert calib["a_seed"] == first["a_seed"] and calib["init_from"] == str(runs["lori-s"].resolve())
    w0, w1 = load_file(runs["lori-s"] / PEFT_WEIGHTS), load_file(runs["calib"] / PEFT_WEIGHTS)
    for k in w0:
        if k.endswith("lora_A.weight"):
            assert torch.equal(w0[k], w1[k]), k


def test_disjoint_lori_s_never_touches_the_earlier_adapter(runs: dict[str, Path], tmp_path: Path):
    earlier, later = _b(runs["lori-s"]), _b(runs["disjoint"])
    masks = load_masks(runs["disjoint"] / MASK_FILE)
    moved = 0
    for key, b0 in earlier.items():
        used = b0 != 0
        assert not (masks[key] & used).any(), key
        assert torch.equal(later[key][~masks[key]], b0[~masks[key]]), key  # outside the new mask: unchanged
        moved += int((later[key][masks[key]] != 0).sum())
    assert moved > 0
    # The compact file keeps both adapters' entries and unpacks exactly.
    restored = unpack(runs["disjoint"] / COMPACT_FILE, tmp_path / "unpacked")
    original, rebuilt = load_file(runs["disjoint"] / PEFT_WEIGHTS), load_file(restored / PEFT_WEIGHTS)
    assert original.keys() == rebuilt.keys()
    assert all(torch.equal(original[k], rebuilt[k]) for k in original)


def test_lota_resume_equals_uninterrupted(qa_file: Path, tmp_path: Path):
    cfg = dict(calibration_fraction=0.5, max_steps=4, save_every=2)
    full = train(tiny_config(qa_file, tmp_path / "full", "lota", **cfg))
    train(tiny_config(qa_file, tmp_path / "part", "lota", **cfg), stop_after_step=2)
    part = train(tiny_config(qa_file, tmp_path / "part", "lota", resume=True, **cfg))
    a, b = load_task_vector(full), load_task_vector(part)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="lori-s", disjoint=True, mask_from="x"), "--disjoint needs"),
        (dict(method="lota", weight_decay=0.1), "--weight-decay must be 0"),
        (dict(method="full", init_from="x"), "--init-from applies to"),
        (dict(method="lota", calibration_fraction=0.0), "--calibration-fraction"),
    ],
)
def test_bad_continual_config(qa_file: Path, tmp_path: Path, kwargs: dict, message: str):
    with pytest.raises(TunelabError, match=message):
        tiny_config(qa_file, tmp_path / "x", **kwargs).validate()


def test_init_from_must_fit(runs: dict[str, Path], qa_file: Path, tmp_path: Path):
    with pytest.raises(TunelabError, match="continues from lori-d or lori-s"):
        train(tiny_config(qa_file, tmp_path / "a", "lori-d", init_from=str(runs["lota"])))
    with pytest.raises(TunelabError, match="rank 4"):
        train(tiny_config(qa_file, tmp_path / "b", "lora", init_from=str(runs["lori-s"]), rank=8, alpha=16))
    with pytest.raises(TunelabError, match="continues from a finished lota run"):
        train(tiny_config(qa_file, tmp_path / "c", "lota", init_from=str(runs["lori-s"])))
    # a mask source trained from scratch with another seed than the init adapter
    other = train(tiny_config(qa_file, tmp_path / "other", "lori-d", seed=99))
    with pytest.raises(TunelabError, match="different A seeds"):
        train(tiny_config(qa_file, tmp_path / "e", "lori-s", init_from=str(runs["lori-s"]), mask_from=str(other)))


def test_report_shows_safety_before_and_after(runs: dict[str, Path]):
    from tunelab.report import render_report

    html = render_report([runs["lota2"]])
    assert "Continual learning" in html and "ASR before → after" in html


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(shapes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=4),
       density=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_sparse_task_vector_round_trip(tmp_path_factory: pytest.TempPathFactory, shapes, density: float, seed: int):
    from tunelab.adapters.storage import save_task_vector

    gen = torch.Generator().manual_seed(seed)
    deltas = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(s, generator=gen) * (torch.rand(s, generator=gen) < density)
              for i, s in enumerate(shapes)}
    path = save_task_vector(deltas, tmp_path_factory.mktemp("tv") / TASK_VECTOR_FILE)
    back = load_task_vector(path)
    assert back.keys() == deltas.keys()
    assert all(torch.equal(back[k], deltas[k]) for k in deltas)
    stored = load_file(path)
    assert sum(stored[f"{k}.values"].numel() for k in deltas) == sum(int((d != 0).sum()) for d in deltas.values())
