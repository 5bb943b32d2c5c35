"""tunelab merge and interference analysis, on tiny-random with hand-built adapters."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tunelab.adapters.storage import save_task_vector
from tunelab.errors import TunelabError
from tunelab.merge import MERGE_METHODS, merge_adapters, merged_delta_fn
from tunelab.merge.base import elect_and_merge, trim_top_magnitude
from tunelab.merge.cat import Cat
from tunelab.merge.interference import analyze, factor_inner, factor_sparse_inner, inspect_interference
from tunelab.merge.interference_config import InterferenceConfig
from tunelab.merge.results import InterferenceResult
from tunelab.results import RunDir, read_result
from tunelab.merge.sources import AdapterSource, LoraFactors, SparseDelta, read_source
from tunelab.merge.ties import Ties
from tunelab.models import load_model

PREFIX = "base_model.model."
TEXT = "The quick brown fox jumps over the lazy dog"


def make_adapter(path: Path, seed: int, *, r: int = 4, alpha: float = 8, targets: list[str] | None = None,
                 rslora: bool = False, alpha_pattern: dict | None = None, run: dict | None = None) -> Path:
    """A PEFT LoRA adapter on tiny-random with random (non-zero) A and B from ``seed``."""
    model, _ = load_model("tiny-random")
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                     use_rslora=rslora, alpha_pattern=alpha_pattern or {}, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    peft_model.save_pretrained(path)
    if run is not None:
        (path / "tunelab.json").write_text(json.dumps(run))
    return path


def expected_scale(cfg: dict, key: str, rank: int) -> float:
    alpha = next((v for k, v in (cfg.get("alpha_pattern") or {}).items() if key.endswith(k)), cfg["lora_alpha"])
    return alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank


def raw_deltas(path: Path) -> dict[str, torch.Tensor]:
    """ΔW per base weight straight from the files (independent of tunelab.merge.sources)."""
    cfg = json.loads((path / "adapter_config.json").read_text())
    w = load_file(path / "adapter_model.safetensors")
    out = {}
    for k, a in w.items():
        if k.endswith(".lora_A.weight"):
            key = k.removeprefix(PREFIX).removesuffix(".lora_A.weight")
            b = w[k.replace("lora_A", "lora_B")]
            out[key + ".weight"] = expected_scale(cfg, key, a.shape[0]) * (b @ a)
    return out


def logits(model) -> torch.Tensor:
    _, tok = load_model("tiny-random")
    with torch.no_grad():
        return model(**tok(TEXT, return_tensors="pt")).logits


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        # a tunelab-style run dir (alias base model in tunelab.json)
        "a": make_adapter(root / "a", 1, run={"method": "lora", "base_model": "tiny-random", "rank": 4, "alpha": 8}),
        # plain PEFT, same rank
        "b": make_adapter(root / "b", 2),
        # plain PEFT, rank 2, rsLoRA + alpha_pattern, no MLP down_proj (a module missing)
        "c": make_adapter(root / "c", 3, r=2, alpha=4, rslora=True, alpha_pattern={"q_proj": 16},
                          targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]),
    }


@pytest.fixture(scope="module")
def lota(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A LoTA-style run dir: sparse task vector over two base weights."""
    d = tmp_path_factory.mktemp("lota")
    gen = torch.Generator().manual_seed(7)
    deltas = {}
    for name, shape in (("model.layers.0.self_attn.q_proj.weight", (64, 64)), ("model.layers.1.mlp.down_proj.weight", (64, 128))):
        dense = torch.randn(shape, generator=gen) * 0.05
        deltas[name] = dense * (torch.rand(shape, generator=gen) < 0.1)
    save_task_vector(deltas, d / "task_vector.safetensors")
    (d / "tunelab.json").write_text(json.dumps({"method": "lota", "base_model": "tiny-random"}))
    return d, deltas


# --------------------------------------------------------------------------- reading
def test_source_scales_honour_rslora_and_alpha_pattern(adapters):
    c = read_source(adapters["c"])
    assert c.base_model and c.method == "peft"
    q = c.factors["model.layers.0.self_attn.q_proj"]
    k = c.factors["model.layers.0.self_attn.k_proj"]
    assert q.scale == pytest.approx(16 / math.sqrt(2)) and k.scale == pytest.approx(4 / math.sqrt(2))
    assert "model.layers.0.mlp.down_proj" not in c.factors


# --------------------------------------------------------------------------- cat
def test_cat_is_exact_and_loads_with_plain_peft(adapters, tmp_path: Path):
    weights = [0.7, -0.3]
    out = merge_adapters([adapters["a"], adapters["c"]], "cat", weights, output=tmp_path / "cat")
    run = json.loads((out / "tunelab.json").read_text())
    assert run["method"] == "merge" and run["output_kind"] == "peft" and run["rank"] == 6 and run["base_model"] == "tiny-random"
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == cfg["lora_alpha"] == 6 and not cfg["use_rslora"]

    expected: dict[str, torch.Tensor] = {}
    for w, src in zip(weights, (adapters["a"], adapters["c"])):
        for name, d in raw_deltas(src).items():
            expected[name] = expected.get(name, 0) + w * d
    got = raw_deltas(out)
    assert got.keys() == expected.keys()
    for name in expected:  # modules missing from c contribute zeros: exact there too
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=0)

    # plain PEFT loads it; its merged logits == the --to-model dir's == base + Σ ΔW computed here
    base, _ = load_model("tiny-random")
    via_peft = logits(PeftModel.from_pretrained(base, str(out)).merge_and_unload())
    model_dir = merge_adapters([adapters["a"], adapters["c"]], "cat", weights, output=tmp_path / "cat-model", to_model=True)
    assert json.loads((model_dir / "tunelab.json").read_text())["output_kind"] == "model"
    via_dir = logits(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32))
    direct, _ = load_model("tiny-random")
    params = dict(direct.named_parameters())
    with torch.no_grad():
        for name, d in expected.items():
            params[name].add_(d)
    torch.testing.assert_close(via_peft, via_dir, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(via_dir, logits(direct), atol=1e-5, rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(weights=st.lists(st.floats(-2, 2, allow_nan=False), min_size=1, max_size=4), seed=st.integers(0, 2**16))
def test_cat_factors_equal_weighted_sum_property(weights, seed):
    gen = torch.Generator().manual_seed(seed)
    factors = [LoraFactors(torch.randn(r, 5, generator=gen), torch.randn(3, r, generator=gen), float(s))
               for r, s in zip(range(1, 5), (0.5, 2.0, 1 / math.sqrt(3), 4.0))][: len(weights)]
    merged = Cat().merge_factors(factors, weights)
    assert merged.rank == sum(f.rank for f in factors) and merged.scale == 1.0
    expected = sum(w * f.delta() for f, w in zip(factors, weights))
    torch.testing.assert_close(merged.delta(), expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- linear
def test_linear_matches_peft_add_weighted_adapter(adapters, tmp_path: Path):
    weights = [0.6, 0.4]
    out = merge_adapters([adapters["a"], adapters["b"]], "linear", weights, output=tmp_path / "lin")
    base, _ = load_model("tiny-random")
    pm = PeftModel.from_pretrained(base, str(adapters["a"]), adapter_name="a")
    pm.load_adapter(str(adapters["b"]), adapter_name="b")
    pm.add_weighted_adapter(["a", "b"], weights, "m", combination_type="linear")
    ours = raw_deltas(out)
    n = 0
    for name, module in pm.named_modules():
        if hasattr(module, "lora_A") and "m" in module.lora_A:
            key = name.removeprefix(PREFIX) + ".weight"
            torch.testing.assert_close(ours[key], module.get_delta_weight("m"), atol=1e-6, rtol=1e-5)
            n += 1
    assert n == 14


def test_linear_negative_weight_puts_sign_on_b_with_cross_terms(adapters, tmp_path: Path):
    out = merge_adapters([adapters["a"], adapters["b"]], "linear", [1.0, -1.0], output=tmp_path / "neg")
    a, b = read_source(adapters["a"]), read_source(adapters["b"])
    key = "model.layers.1.mlp.up_proj"
    fa, fb = a.factors[key], b.factors[key]
    sa, sb = math.sqrt(fa.scale), math.sqrt(fb.scale)
    expected = (sa * fa.b - sb * fb.b) @ (sa * fa.a + sb * fb.a)  # cross terms included
    torch.testing.assert_close(raw_deltas(out)[key + ".weight"], expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(expected, fa.delta() - fb.delta(), atol=1e-4)


def test_linear_refuses_different_ranks(adapters, tmp_path: Path):
    with pytest.raises(TunelabError, match="same rank"):
        merge_adapters([adapters["a"], adapters["c"]], "linear", [0.5, 0.5], output=tmp_path / "x")


# --------------------------------------------------------------------------- task vectors
def test_dare_is_reproducible_with_a_seed(adapters):
    sources = [read_source(adapters["a"]), read_source(adapters["b"])]
    name = "model.layers.0.self_attn.v_proj.weight"

    def run(method: str, seed: int, density: float = 0.5) -> torch.Tensor:
        return merged_delta_fn(sources, MERGE_METHODS.get(method), [0.5, 0.5], density, seed)[1](name)

    for method in ("dare-linear", "dare-ties"):
        assert torch.equal(run(method, 1), run(method, 1))
        assert not torch.equal(run(method, 1), run(method, 2))
    kept = (run("dare-linear", 3) != 0).float().mean().item()
    assert 0.55 < kept < 0.95  # each source keeps ~half; union of two ~75%
    # density 1: nothing dropped, DARE-linear is task arithmetic
    torch.testing.assert_close(run("dare-linear", 5, 1.0), run("task-arithmetic", 0), atol=1e-7, rtol=0)


def test_ties_on_a_hand_made_example():
    d1 = torch.tensor([3.0, -1.0, 2.0, 0.5])
    d2 = torch.tensor([1.5, -2.0, 0.1, -0.2])
    # trim (top 50%): [3, 0, 2, 0] and [1.5, -2, 0, 0]; sign of the sum: + - + 0;
    # entry 0: both agree → mean 2.25; entry 1: only d2; entry 2: only d1; entry 3: nothing kept.
    out = Ties().merge_deltas("w", [d1, d2], [1.0, 1.0], density=0.5, seed=0)
    torch.testing.assert_close(out, torch.tensor([2.25, -2.0, 2.0, 0.0]))
    # weighted mean: weights 3:1 on the agreeing entry
    out = Ties().merge_deltas("w", [d1, d2], [3.0, 1.0], density=0.5, seed=0)
    torch.testing.assert_close(out, torch.tensor([(9 + 1.5) / 4, -2.0, 2.0, 0.0]))
    assert torch.equal(trim_top_magnitude(d1, 1.0), d1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.floats(-5, 5, allow_nan=False), min_size=6, max_size=6), min_size=1, max_size=4),
       st.floats(0.1, 3.0))
def test_ties_merge_agrees_with_elected_sign_and_stays_in_range(rows, w):
    stacked = torch.tensor(rows, dtype=torch.float64)
    weights = [w] * len(rows)
    merged = elect_and_merge(stacked * w, weights)
    elected = torch.sign((stacked * w).sum(0))
    assert torch.all((torch.sign(merged) == elected) | (merged == 0))
    assert torch.all(merged.abs() <= stacked.abs().max(0).values + 1e-9)  # a mean of agreeing entries


def test_lota_task_vector_merges_by_task_arithmetic(adapters, lota, tmp_path: Path):
    lota_dir, deltas = lota
    src = read_source(lota_dir)
    assert src.is_task_vector and src.base_model == "tiny-random"
    out = merge_adapters([lota_dir, adapters["a"]], "task-arithmetic", [0.5, 1.0], output=tmp_path / "ta")
    merged = load_file(out / "model.safetensors")
    base = dict(load_model("tiny-random")[0].named_parameters())
    lora = raw_deltas(adapters["a"])
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "model.layers.0.mlp.up_proj.weight"):
        expected = base[name].detach() + 0.5 * deltas.get(name, 0) + lora[name]
        torch.testing.assert_close(merged[name], expected, atol=1e-6, rtol=1e-6)
    # one task vector alone: negation
    neg = merge_adapters([lota_dir], "task-arithmetic", [-1.0], output=tmp_path / "neg")
    name = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(load_file(neg / "model.safetensors")[name], base[name].detach() - deltas[name], atol=1e-7, rtol=0)
    # cat cannot make a PEFT adapter from a task vector, only a model
    with pytest.raises(TunelabError, match="--to-model"):
        merge_adapters([lota_dir, adapters["a"]], "cat", [0.5, 0.5], output=tmp_path / "c1")
    merge_adapters([lota_dir, adapters["a"]], "cat", [0.5, 0.5], output=tmp_path / "c2", to_model=True)


def test_output_is_refused_unless_overwrite(adapters, tmp_path: Path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(TunelabError, match="--overwrite"):
        merge_adapters([adapters["a"], adapters["b"]], "cat", [1, 1], output=out)
    merge_adapters([adapters["a"], adapters["b"]], "cat", [1, 1], output=out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "tunelab.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_run_merge_is_a_job(adapters, tmp_path: Path):
    """``run_merge(cfg, run_dir)`` merges into ``run_dir`` (not ``--output``), with --output's rules, and returns it."""
    from tunelab.merge import MergeConfig, run_merge
    from tunelab.merge.config import merge_run_dir

    cfg = MergeConfig(adapters=[adapters["a"], adapters["b"]], output=tmp_path / "elsewhere", weights="0.5,0.5")
    out = run_merge(cfg, merge_run_dir(tmp_path / "x"))
    assert out == tmp_path / "x" and json.loads((out / "tunelab.json").read_text())["merge_method"] == "cat"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
    with pytest.raises(TunelabError, match="not empty; pass --overwrite"):
        run_merge(cfg, merge_run_dir(tmp_path / "x"))
    assert run_merge(cfg) == tmp_path / "elsewhere"  # None: the config's --output


# --------------------------------------------------------------------------- interference
def _src(name: str, factors: dict[str, LoraFactors], masks=None) -> AdapterSource:
    return AdapterSource(path=Path(name), method="lora", base_model="tiny-random", factors=factors, masks=masks, name=name)


def test_interference_on_hand_made_factors():
    gen = torch.Generator().manual_seed(0)
    eye = torch.eye(16)
    fa = LoraFactors(eye[:4] * 2, torch.randn(8, 4, generator=gen), 2.0)
    fb = LoraFactors(eye[4:8], torch.randn(8, 4, generator=gen), 1.0)  # orthogonal A rows
    mask_a = {"m.q_proj": torch.tensor([[True, False], [True, True]])}
    mask_b = {"m.q_proj": torch.tensor([[True, False], [False, False]])}
    srcs = [_src("a", {"m.q_proj": fa}, mask_a), _src("a2", {"m.q_proj": fa}, mask_a), _src("b", {"m.q_proj": fb}, mask_b)]
    res = analyze(srcs)
    assert res["kind"] == "interference"
    assert res["cosine"][0][1] == pytest.approx(1.0) and res["subspace_overlap"][0][1] == pytest.approx(1.0)
    assert res["cosine"][0][2] == pytest.approx(0.0, abs=1e-7) and res["subspace_overlap"][0][2] == pytest.approx(0.0, abs=1e-7)
    assert res["cosine_by_module_type"]["q"][0][1] == pytest.approx(1.0)
    assert res["mask_intersection_over_min"][0][2] == pytest.approx(1.0)  # |∩| = 1, min = 1
    assert res["mask_jaccard"][0][2] == pytest.approx(1 / 3)
    assert res["mask_jaccard"][0][1] == pytest.approx(1.0)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**16))
def test_trace_formula_equals_dense_inner_product(seed):
    gen = torch.Generator().manual_seed(seed)
    x = LoraFactors(torch.randn(3, 7, generator=gen), torch.randn(5, 3, generator=gen), 0.5)
    y = LoraFactors(torch.randn(2, 7, generator=gen), torch.randn(5, 2, generator=gen), 3.0)
    assert factor_inner(x, y) == pytest.approx(float((x.delta() * y.delta()).sum()), rel=1e-4, abs=1e-4)
    dense = torch.randn(5, 7, generator=gen) * (torch.rand(5, 7, generator=gen) < 0.3)
    idx = torch.nonzero(dense.flatten()).flatten()
    sparse = SparseDelta(idx, dense.flatten()[idx], (5, 7))
    assert factor_sparse_inner(x, sparse) == pytest.approx(float((x.delta() * dense).sum()), rel=1e-4, abs=1e-4)


def test_interference_task_vector_support_overlap(lota, tmp_path: Path):
    lota_dir, _ = lota
    res = inspect_interference(InterferenceConfig(adapters=[lota_dir, lota_dir], output=tmp_path / "default"),
                               RunDir(tmp_path / "iv"))
    assert not (tmp_path / "default").exists()  # the job writes where it is told
    assert isinstance(res, InterferenceResult) and res.to_dict() == read_result(tmp_path / "iv" / "metrics.json").to_dict()
    assert res.mask_intersection_over_min[0][1] == 1.0 and res.mask_jaccard[0][1] == 1.0
    assert res.cosine[0][1] == pytest.approx(1.0) and res.subspace_overlap[0][1] is None
    again = inspect_interference(InterferenceConfig(adapters=[lota_dir, lota_dir], output=tmp_path / "iv2"))
    assert again.to_dict() == res.to_dict() and (tmp_path / "iv2" / "metrics.json").read_bytes() == \
        (tmp_path / "iv" / "metrics.json").read_bytes()  # no run_dir: the config's --output


def test_merge_analyze_with_tasks_and_report_section(adapters, tmp_path: Path):
    from tunelab.report import render_report

    out = merge_adapters([adapters["a"], adapters["b"]], "ties", [0.5, 0.5], output=tmp_path / "m", analyze=True,
                         tasks=["arithmetic", "reverse_words"], limit=2)
    res = json.loads((out / "interference" / "metrics.json").read_text())
    assert res["kind"] == "interference" and res["merged"] == str(out) and res["merge_method"] == "ties"
    assert [r["task"] for r in res["tasks"]] == ["arithmetic", "reverse_words"]
    assert all(r["drop"] == pytest.approx(r["single"] - r["merged"]) for r in res["tasks"])
    page = render_report([out])
    assert 'id="merge"' in page and "Merging and interference" in page and "single adapter vs merged" in page
    assert "section-error" not in page
    page = render_report([out / "interference"])  # the analysis dir alone also shows it
    assert "Merging and interference" in page and "section-error" not in page


# --------------------------------------------------------------------------- CLI
def _cli(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    from tunelab import cli

    monkeypatch.setattr(sys, "argv", ["tunelab", *args])
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit) as exc:
        cli.main()
    cap = capsys.readouterr()
    return int(exc.value.code or 0), cap.out, cap.err


def test_cli_merge_and_inspect(adapters, tmp_path: Path, capsys, monkeypatch):
    code, out, _ = _cli(["merge", str(adapters["a"]), str(adapters["b"]), "--method", "cat", "--weights", "0.5,0.5",
                         "--output", str(tmp_path / "m")], capsys, monkeypatch)
    assert code == 0 and "rank 8" in out
    code, out, _ = _cli(["inspect", "interference", str(adapters["a"]), str(adapters["b"]), "--output", str(tmp_path / "i")],
                        capsys, monkeypatch)
    assert code == 0 and "cos(ΔW)" in out and (tmp_path / "i" / "metrics.json").is_file()


@pytest.mark.parametrize("extra, expected", [
    (["--weights", "0.5"], "--weights has 1 values for 2 adapters"),
    (["--weights", "0.5,x"], "--weights must be comma-separated numbers"),
    (["--weights", "0.5,0.5", "--method", "svd"], "unknown merge method 'svd'; choose one of cat, linear"),
    (["--weights", "0.5,0.5", "--method", "ties", "--density", "1.5"], "--density must be in (0, 1]"),
])
def test_cli_bad_inputs_exit_2_with_one_line(adapters, tmp_path: Path, capsys, monkeypatch, extra, expected):
    code, _, err = _cli(["merge", str(adapters["a"]), str(adapters["b"]), "--output", str(tmp_path / "x"), *extra], capsys, monkeypatch)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_cli_refuses_mismatched_bases_missing_dirs_and_single_adapter(adapters, tmp_path: Path, capsys, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        (other / f).write_bytes((adapters["b"] / f).read_bytes())
    (other / "tunelab.json").write_text(json.dumps({"method": "lora", "base_model": "smollm2-135m"}))
    cases = [
        ([str(adapters["a"]), str(other)], "mismatched base models"),
        ([str(adapters["a"]), str(tmp_path / "nope")], "adapter directory not found"),
        ([str(adapters["a"]), str(tmp_path)], "not an adapter"),
        ([str(adapters["a"])], "cat needs at least 2 adapters"),
    ]
    for dirs, expected in cases:
        weights = ",".join(["1"] * len(dirs))
        code, _, err = _cli(["merge", *dirs, "--weights", weights, "--output", str(tmp_path / "x")], capsys, monkeypatch)
        assert code == 2 and expected in err and len(err.strip().splitlines()) == 1, err


def test_merge_warns_when_lori_adapters_share_their_projections(tmp_path: Path, qa_file: Path):
    from tests.conftest import tiny_config
    from tunelab.finetune import train

    a = train(tiny_config(qa_file, tmp_path / "a", "lori-d", seed=5))
    b = train(tiny_config(qa_file, tmp_path / "b", "lori-d", seed=5, max_steps=2))
    c = train(tiny_config(qa_file, tmp_path / "c", "lori-d", seed=6))
    with pytest.warns(UserWarning, match="identical A matrices"):
        merge_adapters([a, b], "cat", [0.5, 0.5], output=tmp_path / "ab")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        merge_adapters([a, c], "cat", [0.5, 0.5], output=tmp_path / "ac")
