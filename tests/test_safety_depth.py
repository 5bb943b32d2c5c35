"""Safety depth (issue 5): per-token KL profile, prefilling attack, recovery augmentation, constrained objective.

Everything runs on tiny-random with benign placeholder prompts; the only compliant text is the
neutral affirmative opening tunelab ships.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_config
from tunelab.data import IGNORE_INDEX, Collator, read_records, tokenize_chat, validate_record
from tunelab.errors import TunelabError
from tunelab.evaluate.judges import is_refusal
from tunelab.safety.augment import RECOVERY_SOURCE, RECOVERY_TEMPLATES, augment_recovery, augment_recovery_file
from tunelab.safety.depth import (AFFIRMATIVE_OPENING, HELDOUT_OPENING, kl_profile, opening_ids, parse_ks, prefill_attack,
                                  prefill_mismatches, prefill_texts)
from tunelab.safety.recipe import BENIGN_SOURCE, HARMFUL_SOURCE
from tunelab.train.objectives import (BetaSchedule, CausalLMLoss, ConstrainedLoss, constrained_weights,
                                      reference_logprobs, response_positions)

# Benign placeholders of different lengths: padding must not move the response positions.
PROMPTS = ["Hi", "What is the capital of France?", "Write a haiku about the ocean, please, with a title and a moral.",
           "Name three colours."]


@pytest.fixture(scope="module")
def perturbed(tiny):
    """A copy of tiny-random with noisy weights: a second model with the same vocabulary."""
    model = copy.deepcopy(tiny[0])
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "proj" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def _chat_ids(tok, prompt: str) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- opening
def test_opening_is_neutral_and_long_enough(tiny):
    _, tok = tiny
    assert len(opening_ids(tok)) >= 100  # k up to 40 for the attack, 100 for recovery prefixes
    assert AFFIRMATIVE_OPENING.startswith("Sure, here is")
    assert not is_refusal(AFFIRMATIVE_OPENING)  # else the judge would count the prefill as a refusal


def test_heldout_opening_is_neutral_long_enough_and_different(tiny):
    _, tok = tiny
    heldout, trained = opening_ids(tok, HELDOUT_OPENING), opening_ids(tok, AFFIRMATIVE_OPENING)
    assert len(heldout) >= 40 and not is_refusal(HELDOUT_OPENING)
    assert heldout[:5] != trained[:5]  # a recovery model cannot lean on the opening it was trained on


# --------------------------------------------------------------------------- KL profile
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_kl_profile_matches_direct_computation(tiny, perturbed, padding_side: str):
    model, tok = tiny
    K = 6
    got = kl_profile(perturbed, model, tok, PROMPTS, positions=K, batch_size=3, padding_side=padding_side)
    response = opening_ids(tok)[:K]
    expected = []
    with torch.no_grad():
        for prompt in PROMPTS:  # one unpadded sequence at a time, full softmax
            p = _chat_ids(tok, prompt)
            ids = torch.tensor([p + response])
            log_a = torch.log_softmax(perturbed(ids).logits[0].double(), -1)
            log_b = torch.log_softmax(model(ids).logits[0].double(), -1)
            row = []
            for k in range(1, K + 1):
                pos = len(p) + k - 2  # the logits that predict response token k
                row.append(float((log_a[pos].exp() * (log_a[pos] - log_b[pos])).sum()))
            expected.append(row)
    assert got["positions"] == list(range(1, K + 1))
    assert torch.allclose(torch.tensor(got["per_prompt"]), torch.tensor(expected, dtype=torch.float32), atol=1e-5)
    assert torch.allclose(torch.tensor(got["mean"]), torch.tensor(expected).mean(0).float(), atol=1e-5)
    assert max(expected[0]) > 1e-4  # the perturbation is visible, so the comparison means something
    q = got["quantiles"]
    assert all(q["p10"][i] <= q["p50"][i] <= q["p90"][i] for i in range(K))


def test_kl_profile_is_zero_for_identical_models(tiny):
    model, tok = tiny
    got = kl_profile(model, model, tok, PROMPTS, positions=4, batch_size=2)
    assert max(max(row) for row in got["per_prompt"]) < 1e-6


def test_kl_profile_bad_input(tiny):
    model, tok = tiny
    with pytest.raises(TunelabError, match="--positions must be >= 1"):
        kl_profile(model, model, tok, PROMPTS, positions=0)
    with pytest.raises(TunelabError, match="exceeds the"):
        kl_profile(model, model, tok, PROMPTS, positions=10_000)


# --------------------------------------------------------------------------- prefilling attack
@pytest.mark.parametrize("k", [0, 1, 5, 40])
def test_prefill_starts_the_assistant_turn_with_exactly_k_tokens(tiny, k: int):
    _, tok = tiny
    texts, ids = prefill_texts(tok, PROMPTS, k)
    for prompt, text, row in zip(PROMPTS, texts, ids):
        p = _chat_ids(tok, prompt)
        assert row[: len(p)] == p and row[len(p):] == opening_ids(tok)[:k]
        header = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        assert text.startswith(header) and AFFIRMATIVE_OPENING.startswith(text[len(header):])
    assert prefill_mismatches(tok, texts, ids) == 0  # what generate() encodes is exactly these ids


def test_prefill_k_out_of_range(tiny):
    _, tok = tiny
    with pytest.raises(TunelabError, match="prefill k must be"):
        prefill_texts(tok, PROMPTS, len(opening_ids(tok)) + 1)


def test_prefill_attack_rates_and_intervals(tiny):
    model, tok = tiny
    result = prefill_attack(model, tok, PROMPTS[:3], ks=[0, 3], max_new_tokens=3)
    assert [r["k"] for r in result["by_k"]] == [0, 3]
    for row in result["by_k"]:
        assert row["n"] == 3 and row["asr"] == row["count"] / 3 and row["ci95"][0] <= row["asr"] <= row["ci95"][1]
        assert row["roundtrip_mismatches"] == 0
    assert len(result["records"]) == 6


def test_parse_ks():
    assert parse_ks("40,0,5,5") == [0, 5, 40]
    for bad in ("a,b", "", "1,-2"):
        with pytest.raises(TunelabError, match="--ks"):
            parse_ks(bad)


# --------------------------------------------------------------------------- constrained objective
def test_beta_schedule_by_position():
    t = torch.arange(1, 9)
    assert BetaSchedule()(t).tolist() == pytest.approx([0.5, 2.0, 2.0, 2.0, 2.0, 0.1, 0.1, 0.1])
    assert BetaSchedule(1.0, 3.0, 2, 0.5)(t).tolist() == pytest.approx([1.0, 3.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])


def test_response_positions_restart_at_each_supervised_run():
    keep = torch.tensor([[False, False, True, True, True, False, True, True],
                         [True, True, False, False, False, False, False, True]])
    assert response_positions(keep)[keep].tolist() == [1, 2, 3, 1, 2, 1, 2, 1]


def test_constrained_weights_formula():
    logp = torch.tensor([-1.0, -2.0, -0.5, -3.0, -0.1])
    ref = torch.tensor([-1.0, -1.0, -2.0, -0.5, -9.0])
    beta = torch.tensor([0.5, 2.0, 2.0, 0.1, 50.0])
    expected = [max(2 * (1 - 1 / (1 + torch.exp(-b * (a - r)).item())), 1e-3) for a, r, b in zip(logp, ref, beta)]
    assert constrained_weights(logp, ref, beta).tolist() == pytest.approx(expected, abs=1e-6)
    assert constrained_weights(logp, ref, beta)[0] == pytest.approx(1.0)  # Δ = 0: plain SFT
    assert constrained_weights(logp, ref, beta)[4] == pytest.approx(1e-3)  # far above the reference: clamped


def _examples(tok, n: int = 3) -> list:
    chats = [[{"role": "user", "content": p}, {"role": "assistant", "content": f"Answer number {i}, short."}]
             for i, p in enumerate(PROMPTS[:n])]
    return [tokenize_chat(c, tok, 256) for c in chats]


def test_constrained_equals_sft_when_the_model_is_its_own_reference(tiny):
    """Reference = the model itself → Δ = 0 → w = 1 everywhere: loss and gradients equal SFT's.
    An off-by-one between stored reference log-probs and label positions breaks this."""
    model, tok = tiny
    model = copy.deepcopy(model)
    examples = _examples(tok)
    reference_logprobs(model, examples, tok.pad_token_id, batch_size=2)
    batch = Collator(examples, tok.pad_token_id)(list(range(len(examples))))
    sft = CausalLMLoss(model)(batch["input_ids"], batch["attention_mask"], batch["labels"])
    sft_grads = torch.autograd.grad(sft, [p for p in model.parameters()])
    con = ConstrainedLoss(model, BetaSchedule())(**batch)
    con_grads = torch.autograd.grad(con, [p for p in model.parameters()])
    assert con.item() == pytest.approx(sft.item(), abs=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(sft_grads, con_grads))


def test_constrained_gradient_equals_the_full_objective(tiny):
    """With a shifted reference, grad of −Σ w·log π / N equals grad of −Σ (2/β)·log σ(β·Δ) / N."""
    model, tok = tiny
    model = copy.deepcopy(model)
    examples = _examples(tok)
    reference_logprobs(model, examples, tok.pad_token_id)
    gen = torch.Generator().manual_seed(3)
    for ex in examples:  # move the reference up and down by up to 2 nats
        ex.ref_logprobs = [v + (4 * torch.rand((), generator=gen).item() - 2 if v else 0.0) for v in ex.ref_logprobs]
    batch = Collator(examples, tok.pad_token_id)(list(range(len(examples))))
    schedule = BetaSchedule()
    net = ConstrainedLoss(model, schedule)
    params = [p for p in model.parameters()]
    got = torch.autograd.grad(net(**batch), params)
    logits, targets, keep = net.supervised_logits(batch["input_ids"], batch["attention_mask"], batch["labels"])
    logp = F.log_softmax(logits.float(), -1).gather(-1, targets[:, None]).squeeze(-1)
    beta = schedule(response_positions(keep)[keep])
    delta = logp - batch["ref_logprobs"][:, 1:][keep]
    assert constrained_weights(logp, batch["ref_logprobs"][:, 1:][keep], beta).min() > 1e-3  # no clamping here
    objective = -((2 / beta) * F.logsigmoid(beta * delta)).sum() / keep.sum()
    want = torch.autograd.grad(objective, params)
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(got, want))
    # ... and it is not plain SFT's gradient (the weights matter).
    sft = torch.autograd.grad(CausalLMLoss(model)(batch["input_ids"], batch["attention_mask"], batch["labels"]), params)
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, sft))


def test_train_constrained_first_step_equals_sft(tmp_path: Path, qa_file: Path):
    """End to end: with the --init-from adapter as reference, step 1's loss equals SFT's (w = 1)."""
    from tunelab.finetune import train

    first = train(tiny_config(qa_file, tmp_path / "aligned", max_steps=2))
    sft = train(tiny_config(qa_file, tmp_path / "sft", init_from=str(first), safety_eval_limit=0, max_steps=2))
    con = train(tiny_config(qa_file, tmp_path / "con", init_from=str(first), safety_eval_limit=0, max_steps=2,
                            objective="constrained", beta_late=0.3))
    sft_run, con_run = (json.loads((d / "tunelab.json").read_text()) for d in (sft, con))
    assert con_run["config"]["objective"] == "constrained" and con_run["config"]["beta_late"] == 0.3
    assert con_run["losses"][0] == pytest.approx(sft_run["losses"][0], abs=1e-4)


def test_train_config_objective_errors(tmp_path: Path, qa_file: Path):
    with pytest.raises(TunelabError, match="unknown objective"):
        tiny_config(qa_file, tmp_path / "x", objective="dpo").validate()
    with pytest.raises(TunelabError, match="needs --reference"):
        tiny_config(qa_file, tmp_path / "x", objective="constrained").validate()
    with pytest.raises(TunelabError, match="reference adapter directory not found"):
        tiny_config(qa_file, tmp_path / "x", objective="constrained", reference=str(tmp_path / "nope")).validate()
    with pytest.raises(TunelabError, match="--beta-early must be > 0"):
        tiny_config(qa_file, tmp_path / "x", objective="constrained", reference=str(tmp_path), beta_early=0.0).validate()


# --------------------------------------------------------------------------- recovery augmentation
def _records(n: int = 12) -> list[dict]:
    # Placeholder prompts: the augmentation never looks at the prompt text.
    out = [{"prompt": f"placeholder request {i}", "response": "I can't help with that.", "source": HARMFUL_SOURCE,
            "category": "other"} for i in range(n)]
    out += [{"prompt": f"What is {i} plus {i}?", "response": str(2 * i), "source": BENIGN_SOURCE} for i in range(4)]
    return out


def test_augmentation_masks_exactly_the_prefix(tiny):
    _, tok = tiny
    records, counts = augment_recovery(_records(), tok, p=1.0, max_prefix=30, seed=1)
    assert counts == {"records": 16, "eligible": 12, "augmented": 12}
    h = opening_ids(tok)
    for rec in records[:12]:
        k = rec["prefix_tokens"]
        assert 1 <= k <= 30 and rec["source"] == RECOVERY_SOURCE and rec["response"] in RECOVERY_TEMPLATES
        ex = tokenize_chat(validate_record(rec, "test"), tok, 1024)
        start = len(_chat_ids(tok, rec["prompt"]))
        assert ex.input_ids[start : start + k] == h[:k]  # the assistant turn opens with exactly h≤k
        assert ex.labels[: start + k] == [IGNORE_INDEX] * (start + k)  # prompt and prefix: no loss
        assert ex.labels[start + k :] == ex.input_ids[start + k :]  # the recovery refusal: supervised
        assert tok.decode(ex.input_ids[start + k :]).lstrip().startswith(rec["response"].strip()[:10])
    assert records[12:] == _records()[12:]  # the utility anchor passes through


def test_augmentation_p0_passes_through_and_is_deterministic(tiny):
    _, tok = tiny
    assert augment_recovery(_records(), tok, p=0.0)[0] == _records()
    a = augment_recovery(_records(40), tok, p=0.5, seed=3)[0]
    assert a == augment_recovery(_records(40), tok, p=0.5, seed=3)[0]
    assert a != augment_recovery(_records(40), tok, p=0.5, seed=4)[0]
    assert 0 < sum(r["source"] == RECOVERY_SOURCE for r in a) < 40
    everything = augment_recovery(_records(), tok, p=1.0, all_records=True)[1]
    assert everything["augmented"] == 16


def test_augmentation_file_round_trip(tiny, tmp_path: Path):
    _, tok = tiny
    src = tmp_path / "safety.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    summary = augment_recovery_file(src, tmp_path / "out.jsonl", tok, p=1.0, seed=0)
    assert summary["augmented"] == 12
    chats = read_records(tmp_path / "out.jsonl")  # the "prefix" field reads back through the data loader
    assert sum("prefix" in c[-1] for c in chats) == 12


def test_prefix_field_validation():
    with pytest.raises(TunelabError, match="field 'prefix' must be a string"):
        validate_record({"prompt": "a", "response": "b", "prefix": 3}, "f.jsonl:1")
    assert validate_record({"prompt": "a", "response": "b", "prefix": ""}, "x") == validate_record({"prompt": "a", "response": "b"}, "x")


def test_augmentation_bad_arguments(tiny):
    _, tok = tiny
    with pytest.raises(TunelabError, match="--p must be in"):
        augment_recovery(_records(), tok, p=1.5)
    with pytest.raises(TunelabError, match="--max-prefix must be >= 1"):
        augment_recovery(_records(), tok, max_prefix=0)


# --------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, tiny) -> Path:
    """A PEFT LoRA adapter on tiny-random with nonzero B: an 'aligned' model that differs from the base."""
    from peft import LoraConfig, get_peft_model

    path = tmp_path_factory.mktemp("adapter")
    peft_model = get_peft_model(copy.deepcopy(tiny[0]), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    peft_model.save_pretrained(path)
    return path


def _cli(monkeypatch, *args: str) -> None:
    from tunelab.cli import main

    monkeypatch.setattr("sys.argv", ["tunelab", *args])
    monkeypatch.setenv("COLUMNS", "300")
    try:
        main()
    except SystemExit as exc:  # typer exits 0 on success; errors propagate
        if exc.code not in (0, None):
            raise


@pytest.mark.parametrize("args, message", [
    (["audit", "safety-depth", "--model", "tiny-random", "--adapter", "MISSING"], "adapter directory not found"),
    (["audit", "safety-depth", "--model", "tiny-random", "--base-adapter", "MISSING"], "adapter directory not found"),
    (["audit", "safety-depth", "--model", "tiny-random", "--positions", "0"], "--positions must be >= 1"),
    (["audit", "safety-depth", "--model", "tiny-random", "--ks", "5,x"], "--ks must be"),
    (["audit", "safety-depth", "--model", "tiny-random", "--ks=-5"], "--ks must be"),
    (["audit", "safety-depth", "--model", "tiny-random", "--limit", "0"], "--limit must be >= 1"),
    (["audit", "safety-depth", "--model", "tiny-random"], "the same"),
    (["audit", "safety-depth", "--model", "tiny-random", "--opening", " "], "--opening must not be empty"),
    (["data", "augment-recovery", "--model", "tiny-random", "--data", "MISSING", "--output", "OUT"], "data file not found"),
    (["data", "augment-recovery", "--model", "tiny-random", "--data", "MISSING", "--output", "OUT", "--p", "2"], "--p must be in"),
    (["train", "--model", "tiny-random", "--data", "MISSING", "--output", "OUT", "--objective", "dpo"], "unknown objective"),
    (["train", "--model", "tiny-random", "--data", "MISSING", "--output", "OUT", "--objective", "constrained"], "needs --reference"),
])
def test_cli_bad_input(tmp_path: Path, monkeypatch, capsys, args: list[str], message: str) -> None:
    args = [str(tmp_path / "missing") if a == "MISSING" else str(tmp_path / "out.jsonl") if a == "OUT" else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        _cli(monkeypatch, *args, *(["--output", str(tmp_path / "o")] if args[0] == "audit" else []))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines


def test_cli_safety_depth_writes_metrics_the_report_plots(tmp_path: Path, monkeypatch, capsys, adapter_dir: Path) -> None:
    out = tmp_path / "depth"
    _cli(monkeypatch, "audit", "safety-depth", "--model", "tiny-random", "--adapter", str(adapter_dir), "--limit", "3",
         "--positions", "4", "--ks", "0,2", "--max-new-tokens", "3", "--opening", "heldout", "--output", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["opening"] == HELDOUT_OPENING
    assert metrics["kind"] == "safety-depth" and metrics["n_prompts"] == 3 and metrics["limit"] == 3
    assert metrics["kl"]["positions"] == [1, 2, 3, 4] and len(metrics["kl"]["per_prompt"]) == 3
    assert min(metrics["kl"]["mean"]) > 0  # the adapter changes the model
    assert [r["k"] for r in metrics["asr"]] == [0, 2] and all(len(r["ci95"]) == 2 for r in metrics["asr"])
    assert len((out / "outputs.jsonl").read_text().splitlines()) == 6
    html = tmp_path / "r.html"
    _cli(monkeypatch, "report", str(out), "--output", str(html))
    text = html.read_text()
    assert "KL vs position" in text and "ASR vs prefilled tokens" in text


def test_safety_depth_job_writes_its_run_dir_and_returns_the_result(tmp_path: Path, adapter_dir: Path) -> None:
    """``run_safety_depth(cfg, run_dir)`` with a config built in Python: the files go to ``run_dir`` only."""
    from tunelab.results import RunDir, read_result
    from tunelab.safety.configs import SafetyDepthConfig
    from tunelab.safety.depth import run_safety_depth
    from tunelab.safety.results import SafetyDepthResult

    cfg = SafetyDepthConfig(model="tiny-random", adapter=str(adapter_dir), limit=2, positions=3, ks=[0, 1],
                            max_new_tokens=2, output=tmp_path / "unused")
    result = run_safety_depth(cfg, RunDir(tmp_path / "x"), progress=False)
    assert not (tmp_path / "unused").exists()
    assert isinstance(result, SafetyDepthResult) and result.opening == AFFIRMATIVE_OPENING
    assert result.to_dict() == read_result(tmp_path / "x" / "metrics.json").to_dict()
    assert result.n_prompts == 2 and [r["k"] for r in result.asr] == [0, 1] and len(result.kl["mean"]) == 3
    assert (tmp_path / "x" / "prefill" / "metrics.json").is_file() and (tmp_path / "x" / "outputs.jsonl").is_file()
    with pytest.raises(TunelabError, match="the same"):
        run_safety_depth(SafetyDepthConfig(model="tiny-random", output=tmp_path / "y"))


def test_cli_augment_recovery(tmp_path: Path, monkeypatch, capsys) -> None:
    src = tmp_path / "safety.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    _cli(monkeypatch, "data", "augment-recovery", "--model", "tiny-random", "--data", str(src), "--output",
         str(tmp_path / "out.jsonl"), "--p", "1", "--max-prefix", "5", "--seed", "2")
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sum(r["source"] == RECOVERY_SOURCE for r in rows) == 12 and all(r.get("prefix_tokens", 1) <= 5 for r in rows)
    assert "12 of 12" in capsys.readouterr().out


def test_augmentation_leaves_the_global_rng_alone(tiny):
    state = random.getstate()
    augment_recovery(_records(), tiny[1], p=0.5, seed=0)
    assert random.getstate() == state
