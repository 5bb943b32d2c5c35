from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_config
from tunelab.errors import TunelabError
from tunelab.finetune import TrainConfig, train
from tunelab.train.checkpoint import find_checkpoint


@pytest.mark.parametrize("method", ["lora", "lori-d"])
def test_resumed_run_equals_uninterrupted(qa_file: Path, tmp_path: Path, method: str):
    kw = dict(max_steps=6, save_every=2, scheduler="cosine", warmup_steps=1, grad_accum=2, batch_size=2)
    full = train(tiny_config(qa_file, tmp_path / "full", method, **kw))
    part = tiny_config(qa_file, tmp_path / "part", method, **kw)
    train(part, stop_after_step=3)  # "killed" after step 3
    assert not (tmp_path / "part" / "tunelab.json").exists()
    assert find_checkpoint(tmp_path / "part") is not None
    train(TrainConfig(**{**part.to_dict(), "resume": True}))
    a = load_file(full / "adapter_model.safetensors")
    b = load_file(tmp_path / "part" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra = json.loads((full / "tunelab.json").read_text())
    rb = json.loads((tmp_path / "part" / "tunelab.json").read_text())
    assert ra["losses"] == rb["losses"] and ra["steps"] == rb["steps"] == 6
    assert not (tmp_path / "part" / "checkpoint").exists()  # cleaned up once finished


def test_finished_run_is_refused_unless_overwrite(qa_file: Path, tmp_path: Path):
    cfg = tiny_config(qa_file, tmp_path / "run", max_steps=1)
    train(cfg)
    with pytest.raises(TunelabError, match="already holds a finished run; pass --overwrite"):
        train(cfg)
    with pytest.raises(TunelabError, match="nothing to resume"):
        train(TrainConfig(**{**cfg.to_dict(), "resume": True}))
    train(TrainConfig(**{**cfg.to_dict(), "overwrite": True, "seed": 5}))
    assert json.loads((tmp_path / "run" / "tunelab.json").read_text())["seed"] == 5


def test_unfinished_run_needs_resume_or_overwrite(qa_file: Path, tmp_path: Path):
    cfg = tiny_config(qa_file, tmp_path / "run", max_steps=3)
    train(cfg, stop_after_step=1)
    with pytest.raises(TunelabError, match="unfinished run; pass --resume"):
        train(cfg)


def test_run_record_has_what_reproduces_it(qa_file: Path, tmp_path: Path):
    out = train(tiny_config(qa_file, tmp_path / "run", "lori-d", max_steps=2))
    run = json.loads((out / "tunelab.json").read_text())
    for key in ("method", "base_model", "a_seed", "data_sha256", "steps", "losses", "tokens_per_s", "wall_time_s", "versions", "trainable_params"):
        assert run[key] is not None, key
    assert run["steps"] == 2 and len(run["losses"]) == 2
    assert run["versions"]["peft"] and run["versions"]["torch"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    resolved = TrainConfig.from_sources(out / "config.yaml")
    assert resolved.seed == 123 and resolved.method == "lori-d"


def test_training_lowers_the_loss(qa_file: Path, tmp_path: Path):
    # Full fine-tuning: tiny-random's random embeddings leave low-rank adapters little to move.
    out = train(tiny_config(qa_file, tmp_path / "run", "full", max_steps=12, lr=3e-3))
    losses = json.loads((out / "tunelab.json").read_text())["losses"]
    assert sum(losses[-3:]) / 3 < losses[0] - 1.0


def test_full_finetune_writes_a_loadable_model(qa_file: Path, tmp_path: Path):
    from tunelab.models import load_model

    out = train(tiny_config(qa_file, tmp_path / "full", "full", max_steps=1, lr=1e-3))
    assert not (out / "adapter_config.json").exists()
    model, _ = load_model(str(out))
    base, _ = load_model("tiny-random")
    changed = [n for (n, p), (_, q) in zip(model.named_parameters(), base.named_parameters()) if not torch.equal(p, q)]
    assert changed


def test_yaml_config_and_unknown_keys(tmp_path: Path, qa_file: Path):
    good = tmp_path / "run.yaml"
    good.write_text(f"model: tiny-random\ndata: {qa_file}\nmethod: lori-d\noutput: {tmp_path / 'o'}\nmax-steps: 3\n")
    cfg = TrainConfig.from_sources(good, rank=2)
    assert cfg.method == "lori-d" and cfg.max_steps == 3 and cfg.rank == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny-random\nlearning_rate: 1\n")
    with pytest.raises(TunelabError, match="bad.yaml:2: unknown option 'learning_rate'"):
        TrainConfig.from_sources(bad)


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"method": "dora"}, "unknown method 'dora'"),
        ({"batch_size": 0}, "--batch-size must be >= 1"),
        ({"sparsity": 1.0}, r"--sparsity must be in \[0, 1\)"),
        ({"data": ""}, "no training data"),
        ({"mask_from": "/x"}, "--mask-from only applies to --method lori-s"),
    ],
)
def test_bad_config_values(qa_file: Path, tmp_path: Path, overrides: dict, pattern: str):
    with pytest.raises(TunelabError, match=pattern):
        TrainConfig.from_sources(None, **{**tiny_config(qa_file, tmp_path / "o").to_dict(), **overrides})


def test_bad_data_leaves_no_output(tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(TunelabError, match=r"bad\.jsonl:2: field 'response' missing"):
        train(tiny_config(bad, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def _bf16_lora_step():
    """A tiny-random LoRA loss (non-zero adapter) and a function giving its bf16-autocast loss and grads."""
    from tunelab.adapters import AdapterSettings, get_method
    from tunelab.models import load_model
    from tunelab.train.objectives import CausalLMLoss

    model, _ = load_model("tiny-random")
    net = CausalLMLoss(get_method("lora").prepare(model, AdapterSettings(method="lora", rank=4, alpha=8, seed=0)).model)
    for p in net.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    ids = torch.randint(0, 1000, (2, 12))
    labels = ids.clone()
    labels[:, :6] = -100

    def loss_and_grads():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = net(ids, torch.ones_like(ids), labels)
        loss.backward()
        grads = [p.grad.clone() for p in net.parameters() if p.requires_grad]
        net.zero_grad()
        return loss.detach(), grads

    return net, loss_and_grads


def test_bf16_frozen_storage_changes_nothing_under_autocast(tiny):
    """Storing frozen linears in bf16 gives the same loss and grads as autocast's own casts."""
    from tunelab.train.precision import prepare_for_bf16

    net, loss_and_grads = _bf16_lora_step()
    loss32, grads32 = loss_and_grads()
    assert prepare_for_bf16(net.model) > 0
    loss16, grads16 = loss_and_grads()
    assert torch.equal(loss32, loss16)
    assert all(torch.equal(a, b) for a, b in zip(grads32, grads16))


def test_cached_bf16_head_matches_autocast_and_follows_weight_changes():
    """The loss's bf16 copy of a frozen LM head gives autocast's logits, also after the weight changes."""
    from tunelab.models import load_model
    from tunelab.train.objectives import CausalLMLoss

    net = CausalLMLoss(load_model("tiny-random")[0].requires_grad_(False))
    head = net.model.get_output_embeddings()
    hidden = torch.randn(5, head.in_features, requires_grad=True)
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cached, plain = net._head(head, hidden), head(hidden)
        assert cached.dtype == torch.bfloat16 and torch.equal(cached, plain)
        (g_cached,) = torch.autograd.grad(cached.float().sum(), hidden)
        (g_plain,) = torch.autograd.grad(plain.float().sum(), hidden)
        assert torch.equal(g_cached, g_plain)
        head.weight.mul_(3.0)  # an in-place change must refresh the copy
    assert torch.equal(net._head(head, hidden), head(hidden))  # no autocast: the fp32 head itself


def test_norm_outputs_cast_once_give_the_same_loss(tiny):
    """RMSNorm outputs handed on in bf16: the loss autocast gives, gradients within bf16 rounding."""
    from tunelab.train.precision import cast_norm_outputs, prepare_for_bf16

    net, loss_and_grads = _bf16_lora_step()
    prepare_for_bf16(net.model)
    loss_ref, grads_ref = loss_and_grads()
    handles = cast_norm_outputs(net.model)
    assert len(handles) == 2 * net.model.config.num_hidden_layers + 1
    loss, grads = loss_and_grads()
    assert torch.equal(loss, loss_ref)
    for g, ref in zip(grads, grads_ref):  # bf16 keeps 8 mantissa bits: ~0.4% per sum
        assert (g - ref).norm() <= 1e-2 * ref.norm()
    for handle in handles:
        handle.remove()
    assert torch.equal(loss_and_grads()[0], loss_ref)
