"""Steering vectors: fitting, saving, and the invariants of applying them (tiny-random)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.test_bad_input import assert_one_line, run_cli
from tunelab.errors import TunelabError
from tunelab.inspect.hooks import record
from tunelab.inspect.steering import (
    STEERING_METHODS,
    Pair,
    SteeringVector,
    best_layers,
    fit_direction,
    layer_sweep,
    parse_layers,
    read_pairs,
    read_prompt_pairs,
    separation,
    steer,
    train_steering_vector,
)

PAIRS = [Pair(f"Item {i} is wonderful and I love it.", f"Item {i} is awful and I hate it.", f"Describe item {i}.")
         for i in range(10)]


@pytest.fixture(scope="module")
def vector(tiny) -> SteeringVector:
    model, tok = tiny
    return train_steering_vector(model, tok, PAIRS, model_name="tiny-random")


def _batch(tok, texts=("hello there my friend", "a b"), side="left"):
    tok = copy.copy(tok)
    tok.padding_side = side
    return tok(list(texts), return_tensors="pt", padding=True)


# --------------------------------------------------------------------------- fitting


def _planted(n: int = 64, d: int = 16, seed: int = 0, spread: float = 3.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(d, generator=g)
    direction /= direction.norm()
    base = torch.randn(n, d, generator=g) * spread  # shared per pair: cancels in differences
    noise = lambda: torch.randn(n, d, generator=g) * 0.1  # noqa: E731
    scale = 1 + torch.rand(n, 1, generator=g)
    return base + scale * direction + noise(), base - scale * direction + noise(), direction


@pytest.mark.parametrize("method", list(STEERING_METHODS))
def test_every_method_recovers_a_planted_direction_with_positives_higher(method):
    # Logistic regression sees single activations, not pairs: the shared spread must stay small for it.
    pos, neg, truth = _planted(spread=0.3 if method == "logistic" else 3.0)
    v = fit_direction(pos, neg, method)
    assert torch.nn.functional.cosine_similarity(v, truth, dim=0) > 0.95
    assert float((pos - neg).mean(0) @ v) > 0
    # Scaled to the mean difference's length along the direction: coefficient 1 = negative mean → positive mean.
    unit = v / v.norm()
    assert float(v.norm()) == pytest.approx(float((pos.mean(0) - neg.mean(0)) @ unit), rel=1e-5)
    assert float(fit_direction(pos, neg, method, normalize=True).norm()) == pytest.approx(1.0, abs=1e-5)


def test_mean_diff_is_the_difference_of_means_and_swapping_sides_flips_it():
    pos, neg, _ = _planted(seed=3)
    assert torch.allclose(fit_direction(pos, neg, "mean-diff"), pos.mean(0) - neg.mean(0), atol=1e-6)
    assert torch.allclose(fit_direction(neg, pos, "mean-diff"), -(pos.mean(0) - neg.mean(0)), atol=1e-6)
    assert torch.allclose(fit_direction(neg, pos, "pca-diff"), -fit_direction(pos, neg, "pca-diff"), atol=1e-5)


def test_identical_sides_have_no_direction():
    x = torch.randn(5, 8)
    with pytest.raises(TunelabError, match="do not differ"):
        fit_direction(x, x.clone(), "mean-diff")
    with pytest.raises(TunelabError, match="zero"):
        SteeringVector({0: torch.zeros(8)})


def test_separation_and_layer_sweep():
    pos, neg, truth = _planted(spread=0.3)
    assert separation(truth, pos, neg) == 1.0
    assert separation(-truth, pos, neg) == 0.0
    noise = torch.randn(128, 16, generator=torch.Generator().manual_seed(1))
    sweep = layer_sweep({0: pos, 1: noise[:64]}, {0: neg, 1: noise[64:]}, holdout=0.25)
    assert sweep[0] == 1.0 and sweep[1] < 0.95


# --------------------------------------------------------------------------- the vector file


def test_save_load_roundtrip(tmp_path, vector):
    path = vector.save(tmp_path / "v")
    assert path.name == "steering.safetensors"
    back = SteeringVector.load(tmp_path / "v")
    assert back.layers == vector.layers
    assert all(torch.equal(back.directions[i], vector.directions[i]) for i in vector.layers)
    assert back.meta == json.loads(json.dumps(vector.meta))
    assert set(back.meta["separation"]) == {"0", "1"} and back.meta["method"] == "mean-diff"


def test_vector_file_errors(tmp_path, tiny):
    from safetensors.torch import save_file

    with pytest.raises(TunelabError, match="not found"):
        SteeringVector.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(TunelabError, match="not a readable safetensors"):
        SteeringVector.load(tmp_path / "junk.safetensors")
    save_file({"weird": torch.ones(4)}, str(tmp_path / "weird.safetensors"))
    with pytest.raises(TunelabError, match="unexpected tensor 'weird'"):
        SteeringVector.load(tmp_path / "weird.safetensors")
    save_file({"layers.0": torch.zeros(4)}, str(tmp_path / "zero.safetensors"))
    with pytest.raises(TunelabError, match="zero.safetensors.*zero"):
        SteeringVector.load(tmp_path / "zero.safetensors")


def test_vector_must_fit_the_model(tiny, vector):
    model, _ = tiny
    hidden = vector.hidden
    with pytest.raises(TunelabError, match="wide"):
        SteeringVector({0: torch.ones(hidden + 1)}, {"model": "other"}).check(model)
    with pytest.raises(TunelabError, match="30-layer model"):
        SteeringVector({0: torch.ones(hidden)}, {"n_layers": 30}).check(model)
    with pytest.raises(TunelabError, match="out of range"):
        vector.check(model, [2])
    with pytest.raises(TunelabError, match="no direction for layer 1"):
        SteeringVector({0: torch.ones(hidden)}).check(model, [1])


# --------------------------------------------------------------------------- applying


@pytest.mark.parametrize("mode", ["add", "ablate"])
@pytest.mark.parametrize("positions", ["all", "prompt", "last"])
def test_coefficient_zero_is_bit_identical(tiny, vector, mode, positions):
    model, tok = tiny
    batch = _batch(tok)
    base = model(**batch).logits
    with steer(model, vector, 0.0, mode=mode, positions=positions):
        steered = model(**batch).logits
    assert torch.equal(base, steered)


def test_coefficient_zero_generation_is_identical(tiny, vector):
    from tunelab.evaluate.generation import generate_ids

    model, tok = tiny
    prompts = ["hi", "tell me a story about a cat"]
    plain = generate_ids(model, tok, prompts, max_new_tokens=6, progress=False)
    with steer(model, vector, 0.0):
        zero = generate_ids(model, tok, prompts, max_new_tokens=6, progress=False)
    with steer(model, vector, 50.0):
        pushed = generate_ids(model, tok, prompts, max_new_tokens=6, progress=False)
    assert zero == plain and pushed != plain


def test_add_shifts_the_layer_output_by_coeff_times_v(tiny, vector):
    model, tok = tiny
    batch = _batch(tok)
    with record(model, "resid_post", [0]) as before:
        model(**batch)
    with steer(model, vector, 3.0, layers=[0]), record(model, "resid_post", [0]) as after:
        model(**batch)
    assert torch.allclose(after[0, "resid_post"] - before[0, "resid_post"], 3.0 * vector.directions[0].expand_as(after[0, "resid_post"]), atol=1e-5)


def test_ablation_leaves_no_component_along_the_direction(tiny, vector):
    model, tok = tiny
    unit = vector.directions[1] / vector.directions[1].norm()
    with steer(model, vector, 1.0, mode="ablate"), record(model, "resid_post") as rec:
        model(**_batch(tok))
    assert float((rec[1, "resid_post"] @ unit).abs().max()) < 1e-4
    assert float((rec[0, "resid_post"] @ (vector.directions[0] / vector.directions[0].norm())).abs().max()) < 1e-4


@pytest.mark.parametrize("side", ["left", "right"])
def test_last_position_steers_only_each_rows_last_prompt_token(tiny, vector, side):
    model, tok = tiny
    batch = _batch(tok, side=side)
    with record(model, "resid_post", [1]) as before:
        model(**batch)
    with steer(model, vector, 5.0, layers=[1], positions="last"), record(model, "resid_post", [1]) as after:
        model(**batch)
    changed = (after[1, "resid_post"] - before[1, "resid_post"]).abs().amax(-1) > 0
    mask = batch["attention_mask"]
    last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)
    expected = torch.zeros_like(changed)
    expected[torch.arange(len(last)), last] = True
    assert torch.equal(changed, expected)


def test_prompt_positions_leave_decoding_steps_alone(tiny, vector):
    model, tok = tiny
    batch = _batch(tok)
    step = {"input_ids": torch.tensor([[5], [7]]),
            "attention_mask": torch.cat([batch["attention_mask"], torch.ones(2, 1, dtype=torch.long)], 1)}
    with steer(model, vector, 5.0, positions="prompt"):
        first = model(**batch, use_cache=True)
        inside = model(**step, cache=first.cache, use_cache=True).logits
    with steer(model, vector, 5.0, positions="prompt"):
        again = model(**batch, use_cache=True)
    outside = model(**step, cache=again.cache, use_cache=True).logits
    assert torch.equal(inside, outside)
    with steer(model, vector, 5.0, positions="all"):
        third = model(**batch, use_cache=True)
        everywhere = model(**step, cache=third.cache, use_cache=True).logits
    assert not torch.equal(everywhere, outside)


def test_hooks_are_gone_after_the_context_and_after_errors(tiny, vector):
    model, tok = tiny
    batch = _batch(tok)
    base = model(**batch).logits

    def hooks() -> list[int]:  # other tests' hooks on the shared model may exist: compare, don't assume none
        return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]

    before = hooks()
    with steer(model, vector, 9.0, positions="last"):
        assert hooks() != before
    assert hooks() == before
    with pytest.raises(RuntimeError):
        with steer(model, vector, 9.0):
            raise RuntimeError("boom")
    assert torch.equal(model(**batch).logits, base)
    assert hooks() == before


def test_peft_wrapped_model_steers_like_the_base(tiny, vector):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    batch = _batch(tok)
    with steer(model, vector, 2.0):
        base = model(**batch).logits
    with steer(wrapped, vector, 2.0):
        peft = wrapped(**batch).logits
    assert torch.equal(base, peft)  # LoRA B starts at zero


def test_bad_apply_arguments(tiny, vector):
    model, _ = tiny
    for kwargs, match in [({"positions": "middle"}, "positions"), ({"mode": "flip"}, "mode"),
                          ({"points": "z"}, "residual-width"), ({"coeff": float("nan")}, "finite")]:
        with pytest.raises(TunelabError, match=match):
            with steer(model, vector, **{"coeff": 1.0, **kwargs}):
                pass


def test_best_layers_follow_separation(vector):
    v = SteeringVector(dict(vector.directions), {"separation": {"0": 0.7, "1": 0.9}})
    assert best_layers(v, 1) == [1] and best_layers(v, 2) == [0, 1] and best_layers(v, 1, among=[0]) == [0]


# --------------------------------------------------------------------------- inputs


def test_pairs_files(tmp_path):
    good = tmp_path / "pairs.jsonl"
    good.write_text('{"positive": "yes", "negative": "no"}\n{"positive": "a", "negative": "b", "prompt": "q"}\n')
    assert read_pairs(good) == [Pair("yes", "no"), Pair("a", "b", "q")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"positive": "yes", "negative": "no"}\n{"positive": "a"}\n')
    with pytest.raises(TunelabError, match=r"bad.jsonl:2: field 'negative'"):
        read_pairs(bad)
    (tmp_path / "p.txt").write_text("one\ntwo\nthree\n")
    (tmp_path / "n.txt").write_text("uno\ndos\n")
    with pytest.raises(TunelabError, match="3 prompts.*has 2"):
        read_prompt_pairs(tmp_path / "p.txt", tmp_path / "n.txt")
    (tmp_path / "n.txt").write_text("uno\ndos\ntres\n")
    assert read_prompt_pairs(tmp_path / "p.txt", tmp_path / "n.txt")[2] == Pair("three", "tres")


@given(st.lists(st.integers(0, 40), min_size=1, max_size=6))
def test_parse_layers_roundtrip(layers):
    assert parse_layers(",".join(map(str, layers))) == list(dict.fromkeys(layers))


def test_parse_layers_ranges_and_errors():
    assert parse_layers("3-5,9") == [3, 4, 5, 9]
    assert parse_layers(None) is None
    for bad in ("a", "5-3", "1,,x"):
        with pytest.raises(TunelabError, match="--layers"):
            parse_layers(bad)


# --------------------------------------------------------------------------- CLI


def test_cli_train_generate_eval(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p.prompt, "positive": p.positive, "negative": p.negative}) + "\n" for p in PAIRS))
    out = tmp_path / "vec"
    code, text = run_cli(capsys, "inspect", "steer", "train", "--model", "tiny-random", "--pairs", pairs, "--output", out,
                         "--method", "pca-diff")
    assert code == 0, text
    assert (out / "steering.safetensors").is_file() and (out / "separation.png").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "steering" and metrics["n"] == 10 and set(metrics["separation"]) == {"0", "1"}
    gen = ["generate", "--model", "tiny-random", "hello", "--max-new-tokens", "6"]
    plain, zero = run_cli(capsys, *gen), run_cli(capsys, *gen, "--steer", out, "--coeff", "0")
    assert plain[0] == zero[0] == 0 and plain[1] == zero[1]
    code, text = run_cli(capsys, "eval", "--model", "tiny-random", "--task", "arithmetic", "--limit", "2", "--steer", out,
                         "--coeff", "2", "--steer-positions", "last", "--output", tmp_path / "ev")
    assert code == 0, text
    steering = json.loads((tmp_path / "ev" / "metrics.json").read_text())["steering"]
    assert steering["coeff"] == 2.0 and steering["positions"] == "last" and steering["layers"] == [0, 1]


def test_run_steer_train_is_a_job(tiny, tmp_path):
    """``run_steer_train`` writes into the RunDir it is given and returns the typed result metrics.json reads back as."""
    from tunelab.inspect.results import SteeringResult
    from tunelab.inspect.run import SteerTrainConfig, run_steer_train
    from tunelab.results import RunDir, read_result

    model, tokenizer = tiny
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"positive": p.positive, "negative": p.negative}) + "\n" for p in PAIRS))
    result = run_steer_train(SteerTrainConfig(model="tiny-random", pairs=str(pairs), output=str(tmp_path / "default")),
                             RunDir(tmp_path / "v"), model=model, tokenizer=tokenizer)
    assert not (tmp_path / "default").exists()
    assert isinstance(result, SteeringResult) and result.to_dict() == read_result(tmp_path / "v" / "metrics.json").to_dict()
    assert result.output_dir == str(tmp_path / "v") and result.n == len(PAIRS) and result.layers == [0, 1]
    assert SteeringVector.load(tmp_path / "v").layers == [0, 1] and (tmp_path / "v" / "separation.png").is_file()


def test_cli_steering_bad_input(tmp_path, capsys, vector):
    from safetensors.torch import save_file

    path = vector.save(tmp_path / "v")
    SteeringVector({0: torch.ones(vector.hidden)}, {"n_layers": 30, "model": "smollm2-135m"}).save(tmp_path / "deep.safetensors")
    (tmp_path / "half.jsonl").write_text('{"positive": "yes", "negative": "no"}\n{"positive": "a"}\n')
    (tmp_path / "good.jsonl").write_text('{"positive": "yes", "negative": "no"}\n{"positive": "a", "negative": "b"}\n')
    (tmp_path / "p.txt").write_text("one\ntwo\nthree\n")
    (tmp_path / "n.txt").write_text("uno\ndos\n")
    save_file({"layers.0": torch.ones(vector.hidden + 3)}, str(tmp_path / "wide.safetensors"))
    save_file({"layers.0": torch.zeros(vector.hidden)}, str(tmp_path / "zero.safetensors"))
    gen = ["generate", "--model", "tiny-random", "hi", "--max-new-tokens", "2"]
    cases = [
        ([*gen, "--coeff", "2"], "need --steer"),
        ([*gen, "--steer", str(path), "--steer-layers", "7"], "out of range"),
        ([*gen, "--steer", str(tmp_path / "wide.safetensors")], "wide"),
        ([*gen, "--steer", str(tmp_path / "deep.safetensors")], "30-layer model (smollm2-135m)"),
        (["inspect", "steer", "train", "--model", "tiny-random", "--pairs", tmp_path / "half.jsonl", "--output", tmp_path / "o"],
         "half.jsonl:2: field 'negative'"),
        (["inspect", "steer", "train", "--model", "tiny-random", "--positive", tmp_path / "p.txt", "--negative", tmp_path / "n.txt",
          "--output", tmp_path / "o"], "has 3 prompts but"),
        (["inspect", "steer", "train", "--model", "tiny-random", "--positive", tmp_path / "p.txt", "--output", tmp_path / "o"],
         "go together"),
        (["inspect", "steer", "train", "--model", "tiny-random", "--pairs", tmp_path / "good.jsonl", "--output", tmp_path / "o",
          "--layers", "4"], "out of range"),
        ([*gen, "--steer", str(tmp_path / "zero.safetensors")], "zero"),
        ([*gen, "--steer", str(path), "--steer-positions", "middle"], "--steer-positions"),
        (["eval", "--model", "tiny-random", "--task", "arc-easy", "--limit", "2", "--steer", str(path),
          "--steer-positions", "prompt"], "option likelihood"),
    ]
    for args, match in cases:
        assert_one_line(*run_cli(capsys, *args), match)
