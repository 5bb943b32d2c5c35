"""The CLI end to end on tiny-random, as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def tunelab(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "tunelab.cli", *args], capture_output=True, text=True, env=ENV, timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_cli_end_to_end(tmp_path: Path):
    data = tmp_path / "data"
    tunelab("tasks", "export", "reverse_words", "--output", str(data), "--n-train", "32", "--n-test", "8")
    assert len((data / "train.jsonl").read_text().splitlines()) == 32
    common = ["--model", "tiny-random", "--data", str(data / "train.jsonl"), "--rank", "4", "--alpha", "8",
              "--max-steps", "3", "--batch-size", "4", "--seed", "1", "--no-bf16"]
    tunelab("train", *common, "--method", "lori-d", "--output", str(tmp_path / "d"))
    tunelab("train", *common, "--method", "lori-s", "--mask-from", str(tmp_path / "d"), "--output", str(tmp_path / "s"))
    run = json.loads((tmp_path / "s" / "tunelab.json").read_text())
    assert run["method"] == "lori-s" and run["steps"] == 3
    assert (tmp_path / "s" / "adapter_compact.safetensors").is_file()

    tunelab("unpack", str(tmp_path / "s"), "--output", str(tmp_path / "unpacked"))
    assert (tmp_path / "unpacked" / "adapter_model.safetensors").read_bytes() == (tmp_path / "s" / "adapter_model.safetensors").read_bytes()

    proc = tunelab("eval", "--model", "tiny-random", "--adapter", str(tmp_path / "s"), "--task", "reverse_words",
                   "--limit", "4", "--output", str(tmp_path / "eval"))
    assert "accuracy" in proc.stdout
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n"] == 4

    proc = tunelab("generate", "Hello there", "--model", "tiny-random", "--adapter", str(tmp_path / "d"), "--max-new-tokens", "4")
    assert ">>> Hello there" in proc.stdout

    # a YAML config, overridden by a flag; the resolved config lands in the run dir
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: tiny-random\ndata: {data / 'train.jsonl'}\nmethod: lora\nrank: 2\nmax-steps: 2\nbf16: false\n")
    tunelab("train", "--config", str(cfg), "--output", str(tmp_path / "y"), "--rank", "3")
    assert "rank: 3" in (tmp_path / "y" / "config.yaml").read_text()


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("d") / "ok.jsonl"
    path.write_text('{"prompt": "hi", "response": "yo"}\n' * 4)
    return path


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["train", "--data", "/nonexistent.jsonl"], "data file not found: /nonexistent.jsonl"),
        (["train", "--data", "BAD"], "BAD.jsonl:2: malformed JSON"),
        (["train", "--data", "MISSING"], "MISSING.jsonl:1: field 'response' missing"),
        (["train", "--data", "EMPTY"], "no records (the dataset is empty)"),
        (["train", "--method", "lori-s"], "--method lori-s needs --mask-from DIR"),
        (["eval", "--model", "tiny-random", "--task", "nope"], "unknown task 'nope'"),
        (["unpack", "/nonexistent"], "compact adapter file not found"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path: Path, data_file: Path, args: list[str], message: str):
    (tmp_path / "BAD.jsonl").write_text('{"prompt": "a", "response": "b"}\n{oops\n')
    (tmp_path / "MISSING.jsonl").write_text('{"prompt": "a"}\n')
    (tmp_path / "EMPTY.jsonl").write_text("")
    args = [str(tmp_path / f"{a}.jsonl") if a in ("BAD", "MISSING", "EMPTY") else a for a in args]
    if args[0] == "train":
        defaults = {"--model": "tiny-random", "--data": str(data_file), "--output": str(tmp_path / "out")}
        args += [x for k, v in defaults.items() if k not in args for x in (k, v)]
    proc = tunelab(*args, ok=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_finished_output_dir_is_refused(tmp_path: Path, data_file: Path):
    args = ["train", "--model", "tiny-random", "--data", str(data_file), "--output", str(tmp_path / "o"), "--max-steps", "1", "--rank", "2", "--no-bf16"]
    tunelab(*args)
    before = (tmp_path / "o" / "tunelab.json").read_bytes()
    proc = tunelab(*args, ok=False)
    assert proc.returncode == 2 and "already holds a finished run; pass --overwrite" in proc.stderr
    assert (tmp_path / "o" / "tunelab.json").read_bytes() == before
    tunelab(*args, "--overwrite")
