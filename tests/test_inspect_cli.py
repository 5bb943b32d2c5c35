"""`tunelab inspect heads` end to end on tiny-random, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.test_bad_input import assert_one_line, run_cli
from tunelab.inspect.heads import load_head_mask


def test_inspect_heads_writes_sweep_mask_and_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "heads"
    code, text = run_cli(capsys, "inspect", "heads", "--model", "tiny-random", "--task", "piqa", "--limit", "6", "--plain",
                         "--scores", "mean_output_norm_ln,first_token_weight,random", "--fractions", "0,0.5", "--output", out)
    assert code == 0, text
    assert "unablated accuracy" in text and "within 1 point" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "heads" and metrics["task"] == "piqa" and metrics["chat_template"] is False
    assert {r["score"] for r in metrics["rows"]} == {"mean_output_norm_ln", "first_token_weight", "random"}
    assert set(metrics["series"]) == {"mean_output_norm_ln", "first_token_weight", "random"}
    mask = load_head_mask(out / "head_mask.safetensors")
    assert tuple(mask.shape) == (2, 4) and mask.tolist() == metrics["static_mask"]["mask"]
    assert "head_mask" in load_file(out / "head_mask.safetensors")
    from tunelab.report import render_report

    assert "Attention heads" in render_report([out])


@pytest.mark.parametrize("args, fragment", [
    (["--fractions", "0,1.5"], "--fractions: 1.5 is outside [0, 1]"),
    (["--fractions", "0,a"], "--fractions must be comma-separated numbers"),
    (["--scores", "loudest"], "unknown head score 'loudest'; known scores: first_token_weight"),
    (["--task", "mmlu-pro"], "unknown task 'mmlu-pro'"),
    (["--task", "arithmetic"], "inspect needs a multiple-choice task"),
    (["--attn-implementation", "flash_attention_2"], "--attn-implementation must be one of sdpa, eager"),
])
def test_inspect_heads_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], fragment: str) -> None:
    assert_one_line(*run_cli(capsys, "inspect", "heads", "--model", "tiny-random", "--output", tmp_path / "x", *args), fragment)


def test_model_without_llama_blocks_names_what_was_looked_for(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from tunelab.models import resolve_model_path

    model_dir = tmp_path / "gpt2-tiny"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=49152)).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(resolve_model_path("tiny-random")).save_pretrained(model_dir)
    assert_one_line(*run_cli(capsys, "inspect", "heads", "--model", model_dir, "--task", "piqa", "--limit", "2",
                             "--output", tmp_path / "x"), "no decoder layers found", "ModuleList named 'layers'")


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_other_llama_family_models(family: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunelab.inspect.heads import head_scores, zero_heads
    from tunelab.inspect.hooks import geometry, record

    config = AutoConfig.for_model(family, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(0, 64, (2, 7))
    geo = geometry(model)
    scores = head_scores(model, ids, torch.ones_like(ids), ["mean_output_norm_ln", "first_token_weight", "contribution_norm"])
    assert all(tuple(s.shape) == (2, geo.n_layers, geo.n_heads) and torch.isfinite(s).all() for s in scores.values())
    with record(model, ["z", "attn_out"], layers=0) as rec:
        model(ids)
    w = model.model.layers[0].self_attn.o_proj.weight
    by_head = sum(rec[0, "z"][..., h, :] @ w[:, h * geo.head_dim:(h + 1) * geo.head_dim].T for h in range(geo.n_heads))
    assert torch.allclose(by_head, rec[0, "attn_out"], atol=1e-5)
    mask = torch.zeros(2, geo.n_layers, geo.n_heads, dtype=torch.bool)
    mask[1, 0, 0] = True
    plain = model(ids).logits
    with zero_heads(model, mask):
        zeroed = model(ids).logits
    assert torch.equal(zeroed[0], plain[0]) and not torch.equal(zeroed[1], plain[1])


def test_inspect_prune_end_to_end(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "prune"
    code, text = run_cli(capsys, "inspect", "prune", "--model", "tiny-random", "--task", "winogrande", "--limit", "3",
                         "--ppl-limit", "3", "--calibration-limit", "4", "--safety-limit", "2", "--max-new-tokens", "4",
                         "--methods", "dense,pp,aapp", "--ratios", "0.5", "--skip", "0", "--output", out)
    assert code == 0, text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "pruning" and [(r["method"], r["ratio"]) for r in metrics["rows"]] == [("dense", 0.0), ("pp", 0.5), ("aapp", 0.5)]
    dense, pp, aapp = metrics["rows"]
    assert dense["flops_saved"] == 0 and pp["flops_saved"] > 0.2 and aapp["macs"] == pp["macs"]  # matched compute
    assert all("refusal_rate" in r and "accuracy" in r and r["ppl"] > 1 for r in metrics["rows"])
    from tunelab.report import render_report

    assert "FLOPs saved (counted)" in render_report([out])


@pytest.mark.parametrize("args, fragment", [
    (["--ratios", "0.2,1.0"], "--ratios: 1 is outside [0, 1)"),
    (["--methods", "dense,magnitude"], "unknown pruning method 'magnitude'; known methods: dense, pp"),
    (["--protect", "1.5"], "--protect must be in [0, 1)"),
    (["--ppl-data", "missing.jsonl"], "--ppl-data file not found: missing.jsonl"),
    (["--task", "boolq-x"], "unknown task 'boolq-x'"),
])
def test_inspect_prune_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], fragment: str) -> None:
    assert_one_line(*run_cli(capsys, "inspect", "prune", "--model", "tiny-random", "--output", tmp_path / "x", *args), fragment)


def test_ppl_data_rows_need_text(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = tmp_path / "texts.jsonl"
    data.write_text('{"text": "a b c"}\n{"body": "no text"}\n')
    assert_one_line(*run_cli(capsys, "inspect", "prune", "--model", "tiny-random", "--ppl-data", data, "--no-safety",
                             "--output", tmp_path / "x"), f"{data}:2: field 'text' must be a non-empty string")


def test_heads_and_prune_are_jobs(tmp_path: Path) -> None:
    """``run_heads`` / ``run_prune`` write into the RunDir they are given (not the config's --output) and
    return the typed result their metrics.json reads back as."""
    from tunelab.inspect.results import HeadsResult, PruningResult
    from tunelab.inspect.run import HeadsConfig, PruneConfig, load_for_inspect, run_heads, run_prune
    from tunelab.results import RunDir, read_result

    model, tokenizer = load_for_inspect("tiny-random", None)  # its own copy: pruning and eager passes touch it
    heads = run_heads(HeadsConfig(model="tiny-random", task="piqa", limit=2, plain=True, scores=["random"], fractions=[0, 0.5],
                                  output=str(tmp_path / "default")), RunDir(tmp_path / "h"), model=model, tokenizer=tokenizer)
    assert isinstance(heads, HeadsResult) and heads.to_dict() == read_result(tmp_path / "h" / "metrics.json").to_dict()
    assert heads.output_dir == str(tmp_path / "h") and (tmp_path / "h" / "head_mask.safetensors").is_file()
    prune = run_prune(PruneConfig(model="tiny-random", task="winogrande", limit=2, ppl_limit=2, calibration_limit=4, safety=False,
                                  methods=["dense", "pp"], ratios=[0.5], skip=0, output=str(tmp_path / "default")),
                      RunDir(tmp_path / "p"), model=model, tokenizer=tokenizer)
    assert isinstance(prune, PruningResult) and prune.to_dict() == read_result(tmp_path / "p" / "metrics.json").to_dict()
    assert [(r["method"], r["ratio"]) for r in prune.rows] == [("dense", 0.0), ("pp", 0.5)]
    assert not (tmp_path / "default").exists()


def test_inspect_jobs_have_the_job_signature() -> None:
    """Every inspect-room command's run function is ``job(cfg, run_dir=None, *, extras) -> XResult``."""
    import inspect
    import typing

    from tunelab.inspect.multiturn import run_multiturn
    from tunelab.inspect.refusal import run_refusal
    from tunelab.inspect.run import run_heads, run_prune, run_steer_train
    from tunelab.inspect.salt import run_salt
    from tunelab.merge.interference import inspect_interference
    from tunelab.results import Result

    for job in (run_heads, run_prune, run_steer_train, run_refusal, run_salt, run_multiturn, inspect_interference):
        params = list(inspect.signature(job).parameters.values())
        assert [p.name for p in params[:2]] == ["cfg", "run_dir"] and params[1].default is None, job.__name__
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[2:]), job.__name__
        hints = typing.get_type_hints(job)
        assert issubclass(hints["return"], Result) and hasattr(hints["cfg"], "run_dir"), job.__name__
