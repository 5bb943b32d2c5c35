"""Canaries in the training loop and ``tunelab audit privacy``: records, files, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import tiny_config
from tests.test_bad_input import assert_one_line, run_cli
from tunelab.privacy.audit_run import CANARY_FILE
from tunelab.privacy.canaries import CanarySet


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "tiny-random", "--data", str(data), "--output", str(out), "--max-steps", "3",
            "--batch-size", "4", "--seed", "5", "--save-every", "0", "--no-bf16", *extra]


@pytest.fixture(scope="module")
def canary_run(tmp_path_factory: pytest.TempPathFactory, qa_file: Path) -> Path:
    """A finished tiny-random run with 40 bigram canaries (the CLI path is covered below)."""
    from tunelab.finetune import train
    from tunelab.finetune import TrainConfig

    out = tmp_path_factory.mktemp("canary") / "run"
    train(TrainConfig(**{**tiny_config(qa_file, out).to_dict(), "canaries": 40, "canary_family": "bigram"}))
    return out


def test_run_records_epsilon_with_its_ceiling(canary_run):
    out = canary_run
    record = json.loads((out / "tunelab.json").read_text())
    privacy = record["privacy"]
    assert 0.0 <= privacy["epsilon_lb"] <= privacy["epsilon_ceiling"]
    assert privacy["m"] == 40 and privacy["family"] == "bigram" and privacy["score"] == "secret_loss"
    assert privacy["tpr_at_1pct_fpr"] is None  # < 100 non-members: refused, not a fake headline
    assert record["canaries"]["members"] == privacy["members"]
    metrics = json.loads((out / "eval" / "privacy" / "metrics.json").read_text())
    assert metrics["kind"] == "privacy-audit" and metrics["epsilon_lb"] == privacy["epsilon_lb"]
    lines = (out / "eval" / "privacy" / "scores.jsonl").read_text().splitlines()
    assert len(lines) == 40 and set(json.loads(lines[0])) == {"index", "member", "secret_loss"}


def test_audit_job_writes_its_run_dir_and_returns_the_result(canary_run, tmp_path):
    """``run_privacy_audit(cfg, run_dir)`` with a config built in Python: the files go to ``run_dir`` only,
    and the result's headline is the run record's."""
    from tunelab.privacy.audit_run import PrivacyAuditConfig, headline, run_privacy_audit
    from tunelab.privacy.results import PrivacyAuditResult
    from tunelab.results import RunDir, read_result

    before = (canary_run / "eval" / "privacy" / "metrics.json").read_bytes()
    result = run_privacy_audit(PrivacyAuditConfig(run=str(canary_run), bootstrap_samples=0), RunDir(tmp_path / "x"))
    assert (canary_run / "eval" / "privacy" / "metrics.json").read_bytes() == before  # the default dir is untouched
    assert isinstance(result, PrivacyAuditResult) and result.output == str(tmp_path / "x")
    assert result.to_dict() == read_result(tmp_path / "x" / "metrics.json").to_dict()
    assert len((tmp_path / "x" / "scores.jsonl").read_text().splitlines()) == 40
    in_loop = json.loads((canary_run / "tunelab.json").read_text())["privacy"]
    assert headline(result) == in_loop == headline(result.to_dict())
    assert PrivacyAuditConfig(run=str(canary_run)).run_dir().path == canary_run / "eval" / "privacy"
    assert PrivacyAuditConfig(canaries="c.jsonl", model="m").run_dir().path == Path("runs/privacy-audit")


def test_secrets_stay_in_the_canary_file(canary_run):
    out = canary_run
    cs = CanarySet.load(out / CANARY_FILE)
    assert len(cs) == 40 and cs.members and cs.non_members
    for name in ("tunelab.json", "metrics.jsonl", "config.yaml", "eval/privacy/metrics.json", "eval/privacy/scores.jsonl"):
        text = (out / name).read_text()
        assert not any(c.secret in text for c in cs.canaries), name


def test_canaries_change_nothing_else(qa_file, tmp_path):
    """Same seed with and without canaries: the user's records keep their order and the adapter starts
    from the same weights (unigram canaries run the model; the run's RNG must not move)."""
    from tunelab.finetune import plugins_for
    from tunelab.finetune import TrainConfig
    from tunelab.train import Plugin, fit

    seen: dict[str, dict] = {}

    class Spy(Plugin):
        def __init__(self, key: str) -> None:
            self.key = key

        def on_prepared(self, run):
            weights = {n: p.detach().clone() for n, p in run.prepared.model.named_parameters() if "lora_A" in n}
            seen[self.key] = {"chats": list(run.chats), "weights": weights}

    base = tiny_config(qa_file, tmp_path / "plain", max_steps=1)
    with_canaries = TrainConfig(**{**base.to_dict(), "output": str(tmp_path / "canary"), "canaries": 10,
                                   "canary_family": "unigram"})
    fit(base, [*plugins_for(base), Spy("plain")])
    fit(with_canaries, [*plugins_for(with_canaries), Spy("canary")])
    plain, canary = seen["plain"], seen["canary"]
    members = CanarySet.load(tmp_path / "canary" / CANARY_FILE).members
    secrets = {c.secret for c in members}
    kept = [chat for chat in canary["chats"] if chat[-1]["content"] not in secrets]
    assert kept == plain["chats"] and len(canary["chats"]) == len(plain["chats"]) + len(members)
    assert plain["weights"].keys() == canary["weights"].keys()
    for name, w in plain["weights"].items():
        assert (w == canary["weights"][name]).all(), name


def test_resumed_run_keeps_its_canaries(qa_file, tmp_path):
    from tunelab.finetune import train
    from tunelab.finetune import TrainConfig

    cfg = TrainConfig(**{**tiny_config(qa_file, tmp_path / "run", max_steps=3, save_every=1).to_dict(),
                         "canaries": 12, "canary_family": "random"})
    train(cfg, stop_after_step=1)
    before = (tmp_path / "run" / CANARY_FILE).read_text()
    train(TrainConfig(**{**cfg.to_dict(), "resume": True}))
    assert (tmp_path / "run" / CANARY_FILE).read_text() == before
    assert json.loads((tmp_path / "run" / "tunelab.json").read_text())["privacy"]["m"] == 12


def test_cli_train_and_audit(capsys, qa_file, tmp_path):
    out = tmp_path / "run"
    code, text = run_cli(capsys, *_train_args(qa_file, out, "--canaries", "20", "--canary-family", "new-token",
                                              "--canary-secret-len", "2"))
    assert code == 0, text
    assert "ε_LB" in text and "ceiling" in text
    cs = CanarySet.load(out / CANARY_FILE)
    assert not any(c.secret in text for c in cs.canaries)
    code, text = run_cli(capsys, "audit", "privacy", str(out), "--score", "secret_loss,min_k,zlib,reference,sequence_loss",
                         "--bootstrap-samples", "20", "--output", str(tmp_path / "audit"))
    assert code == 0, text
    metrics = json.loads((tmp_path / "audit" / "metrics.json").read_text())
    assert list(metrics["scores"]) == ["secret_loss", "min_k", "zlib", "reference", "sequence_loss"]
    assert not any(c.secret in text for c in cs.canaries)
    code, text = run_cli(capsys, "audit", "privacy", str(out), "--show-secrets", "--bootstrap-samples", "0",
                         "--output", str(tmp_path / "audit2"))
    assert code == 0 and all(c.secret in text for c in cs.canaries)


def test_reference_score_of_a_full_run_with_new_tokens(capsys, qa_file, tmp_path):
    """A full fine-tune has no adapter to switch off: the reference is the base, grown by the new tokens."""
    out = tmp_path / "full"
    code, text = run_cli(capsys, *_train_args(qa_file, out, "--method", "full", "--canaries", "10", "--canary-family",
                                              "new-token", "--canary-secret-len", "1"))
    assert code == 0, text
    code, text = run_cli(capsys, "audit", "privacy", str(out), "--score", "secret_loss,reference", "--bootstrap-samples", "0")
    assert code == 0, text
    scores = [json.loads(line) for line in (out / "eval" / "privacy" / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 10 and all(abs(s["reference"]) < 50 for s in scores)


def test_audit_any_adapter_with_a_membership_file(capsys, canary_run, tmp_path):
    out = canary_run
    cs = CanarySet.load(out / CANARY_FILE)
    path = tmp_path / "canaries.jsonl"
    path.write_text("".join(json.dumps({**c.record(), "member": c.member}) + "\n" for c in cs.canaries))
    code, text = run_cli(capsys, "audit", "privacy", "--model", "tiny-random", "--adapter", str(out), "--canaries", str(path),
                         "--bootstrap-samples", "0", "--output", str(tmp_path / "a"))
    assert code == 0, text
    mine = json.loads((tmp_path / "a" / "metrics.json").read_text())
    theirs = json.loads((out / "eval" / "privacy" / "metrics.json").read_text())
    assert mine["epsilon_lb"] == theirs["epsilon_lb"] and mine["auroc"] == theirs["auroc"]


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("extra, fragment", [
    (["--canaries", "1"], "--canaries must be >= 2"),
    (["--canaries", "10", "--canary-secret-len", "0"], "--canary-secret-len must be >= 1"),
    (["--canaries", "10", "--canary-family", "zipf"], "unknown --canary-family 'zipf'"),
    (["--canaries", "10", "--canary-prefix", "fancy"], "unknown --canary-prefix 'fancy'"),
    (["--canary-family", "bigram"], "--canary-family only applies with --canaries M"),
    (["--canaries", "10", "--canary-family", "new-token", "--method", "lota"],
     "new-token canaries work with --method lora, lori-d or full, not lota"),
    (["--canaries", "10", "--canary-family", "new-token", "--method", "full", "--canary-new-token-rows", "frozen"],
     "full fine-tuning trains every row"),
    (["--canaries", "10", "--canary-new-token-rows", "frozen"], "only applies to --canary-family new-token"),
])
def test_bad_canary_options(capsys, qa_file, tmp_path, extra, fragment):
    assert_one_line(*run_cli(capsys, *_train_args(qa_file, tmp_path / "out", *extra)), fragment)
    assert not (tmp_path / "out").exists()


def test_frozen_new_token_rows_warn(capsys, qa_file, tmp_path):
    code, text = run_cli(capsys, *_train_args(qa_file, tmp_path / "out", "--canaries", "10", "--canary-family", "new-token",
                                              "--canary-secret-len", "1", "--canary-new-token-rows", "frozen"))
    assert code == 0, text
    assert "warning:" in text and "frozen embeddings" in " ".join(text.split())


@pytest.mark.parametrize("extra, fragment", [
    (["--fpr", "0"], "--fpr must be in (0, 1), got 0.0"),
    (["--fpr", "0.01,1.5"], "--fpr must be in (0, 1), got 1.5"),
    (["--fpr", "often"], "--fpr: 'often' is not a number"),
    (["--delta", "0"], "--delta must be in (0, 1)"),
    (["--delta", "1"], "--delta must be in (0, 1)"),
    (["--significance", "1.5"], "--significance must be in (0, 1)"),
    (["--score", "loss"], "unknown score 'loss'"),
    (["--threshold-strategy", "max"], "unknown threshold strategy 'max'"),
    (["--bootstrap-samples", "1"], "--bootstrap-samples must be 0 (no CIs) or >= 2"),
])
def test_bad_audit_options(capsys, canary_run, extra, fragment):
    out = canary_run
    assert_one_line(*run_cli(capsys, "audit", "privacy", str(out), *extra), fragment)


def test_audit_inputs_that_cannot_work(capsys, canary_run, qa_file, tmp_path):
    out = canary_run
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "tunelab.json").write_text("{}")
    assert_one_line(*run_cli(capsys, "audit", "privacy", str(plain)), f"{plain}: no canaries.json")
    assert_one_line(*run_cli(capsys, "audit", "privacy"), "nothing to audit")
    assert_one_line(*run_cli(capsys, "audit", "privacy", str(tmp_path / "nope")), "run directory not found")
    # An odd number of canaries cannot be halved for the split strategy.
    cs = CanarySet.load(out / CANARY_FILE)
    odd = tmp_path / "odd.jsonl"
    odd.write_text("".join(json.dumps({**c.record(), "member": c.member}) + "\n" for c in cs.canaries[:39]))
    assert_one_line(*run_cli(capsys, "audit", "privacy", "--model", "tiny-random", "--adapter", str(out), "--canaries", str(odd),
                             "--threshold-strategy", "split", "--output", str(tmp_path / "o")), "m must be even, got m=39")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "response": "b", "member": True}) + "\n"
                   + json.dumps({"prompt": "a", "response": "b", "member": "yes"}) + "\n")
    assert_one_line(*run_cli(capsys, "audit", "privacy", "--adapter", str(out), "--canaries", str(bad)),
                    f"{bad}:2: field 'member' must be true or false")
    one_side = tmp_path / "members.jsonl"
    one_side.write_text("".join(json.dumps({"prompt": "a", "response": str(i), "member": True}) + "\n" for i in range(3)))
    assert_one_line(*run_cli(capsys, "audit", "privacy", "--model", "tiny-random", "--adapter", str(out), "--canaries",
                             str(one_side), "--output", str(tmp_path / "p")), "needs members and non-members")
