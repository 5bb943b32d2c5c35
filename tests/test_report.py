"""`tunelab report`: one self-contained HTML file from fake and real run directories."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.conftest import tiny_config
from tunelab.cli import app
from tunelab.errors import TunelabError
from tunelab.report import build_report, render_report
from tunelab.report.collect import collect, read_series

# A 1x1 PNG, for plots/ directories.
PNG_1PX = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def fake_run(d: Path, method: str, params: int, adapter_bytes: int, steps: int = 6, tps: float = 292.4, compact_bytes: int | None = None) -> Path:
    """A finished run as the trainer writes it (weights are just bytes of the right size)."""
    losses = [3.0 / (i + 1) for i in range(steps)]
    record = {"method": method, "base_model": "smollm2-135m", "a_seed": "7", "rank": 16, "trainable_params": params,
              "steps": steps, "losses": losses, "tokens_per_s": tps, "wall_time_s": 61.9, "seed": 0,
              "versions": {"tunelab": "0.1.0", "torch": "2.13.0+cpu"}}
    if method == "lori-s":
        record["sparsity"] = 0.9
    write_json(d / "tunelab.json", record)
    (d / "metrics.jsonl").write_text("".join(
        json.dumps({"step": i + 1, "loss": loss, "lr": 1e-3, "grad_norm": 1.5, "tokens": 100 * (i + 1)}) + "\n" for i, loss in enumerate(losses)))
    (d / "adapter_model.safetensors").write_bytes(b"\0" * adapter_bytes)
    if compact_bytes is not None:
        (d / "adapter_compact.safetensors").write_bytes(b"\0" * compact_bytes)
    return d


def task_eval(d: Path, task: str, score: float, adapter: str | None, **extra: Any) -> None:
    write_json(d / "metrics.json", {"kind": "task", "task": task, "scorer": "exact_match", "n": 100, "score": score,
                                    "metrics": {"accuracy": score}, "model": "smollm2-135m", "adapter": adapter, **extra})
    (d / "outputs.jsonl").write_text('{"prompt": "p", "output": "o", "score": 1}\n')


def safety_eval(d: Path, asr: float, refusal: float, over: float, adapter: str | None) -> None:
    write_json(d / "metrics.json", {"kind": "safety", "asr": asr, "refusal_rate": refusal, "over_refusal": over, "n_harmful": 200,
                                    "n_benign": 50, "judge": "keyword", "model": "smollm2-135m", "adapter": adapter,
                                    "by_category": {"cybercrime": {"asr": 0.375, "n": 40}, "harassment": 0.0625}})


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """runs/demo-like tree: two runs with evals, a base-model eval, a demo table, extra kinds."""
    root = tmp_path / "runs"
    group = root / "demo"
    lora = fake_run(group / "lora", "lora", 1_234_567, 19_593_064)
    lori_s = fake_run(group / "lori-s", "lori-s", 248_831, 14_800_952, compact_bytes=1_388_604, tps=307.2)
    task_eval(lora / "eval" / "reverse_words", "reverse_words", 0.79, str(lora))
    task_eval(lori_s / "eval" / "reverse_words", "reverse_words", 0.96, str(lori_s))
    safety_eval(lora / "eval" / "harmbench", 0.42, 0.58, 0.125, str(lora))
    safety_eval(lori_s / "eval" / "harmbench", 0.18, 0.82, 0.16, str(lori_s))
    (lora / "checkpoint").mkdir()
    write_json(lora / "checkpoint" / "metrics.json", {"kind": "task", "task": "from_checkpoint", "score": 0.5})  # must be ignored
    task_eval(root / "base-eval", "reverse_words", 0.0, None)
    # An eval written before "kind" existed (what `tunelab eval --output` wrote at first).
    write_json(root / "base-arith" / "metrics.json", {"task": "arithmetic", "n": 50, "accuracy": 0.22, "model": "smollm2-135m", "adapter": None})
    write_json(lora / "eval" / "merge" / "metrics.json", {"kind": "merge", "cosine_dw": 0.0123, "mask_overlap": 0.5,
                                                          "adapter": str(lora), "per_task": {"drop": 0.031}})
    write_json(lori_s / "eval" / "depth" / "metrics.json", {"kind": "curve", "title": "KL by position", "xlabel": "token",
                                                           "series": {"kl": {"x": [1, 2, 3], "y": [2.5, 0.4, 0.1]}}})
    (lori_s / "plots").mkdir()
    (lori_s / "plots" / "extra.png").write_bytes(PNG_1PX)
    write_json(group / "results.json", {"model": "smollm2-135m", "plan": {"task": "reverse_words", "n_train": 600, "n_test": 100,
                                                                          "steps": 40, "batch_size": 8, "rank": 16, "seed": 0},
                                        "rows": [{"method": "lora", "trainable_params": 1_234_567, "adapter_mb": 19.593064, "train_s": 61.9,
                                                  "tokens_per_s": 292.4, "accuracy_before": 0.0, "accuracy_after": 0.79},
                                                 {"method": "lori-s", "trainable_params": 248_831, "adapter_mb": 1.388604, "train_s": 58.9,
                                                  "tokens_per_s": 307.2, "accuracy_before": 0.0, "accuracy_after": 0.96}],
                                        "total_s": 270.7})
    return root


def section_ids(page: str) -> set[str]:
    return set(re.findall(r'<section id="([^"]+)"', page))


def visible(page: str) -> str:
    """The page without its inline images, so a value cannot "appear" inside base64."""
    return re.sub(r"<img[^>]*>", "", page)


def assert_self_contained(page: str) -> None:
    assert "section-error" not in page
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:|//)', page, re.I)
    assert "@import" not in page and "url(" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    for href in re.findall(r'href="([^"]*)"', page):
        assert href.startswith("#"), href
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    assert srcs
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_shows_everything_found(runs: Path, tmp_path: Path):
    out_dir = tmp_path / "out"
    path = build_report([runs], out_dir / "report.html", title="My runs")
    assert path == out_dir / "report.html" and [p.name for p in out_dir.iterdir()] == ["report.html"]
    page = path.read_text()
    assert_self_contained(page)
    text = visible(page)
    assert section_ids(page) == {"runs", "demo", "training", "tasks", "safety", "sizes", "curves", "other", "figures"}
    assert "<title>My runs</title>" in page and "tunelab 0.1.0" in page.replace("<b>", "").replace("</b>", "")
    for name in ("demo/lora", "demo/lori-s", "base: smollm2-135m"):
        assert name in page, name
    for value in ("1,234,567", "248,831",  # trainable params
                  "19.59", "1.39 compact (PEFT 14.80)",  # MB on disk, LoRI-S compact
                  "292", "307", "62 s", "90%",  # tokens/s, wall time, sparsity
                  "79.0%", "96.0%", "(+79.0 pt)", "(+96.0 pt)", "22.0%",  # task scores, before/after
                  "42.0%", "58.0%", "12.5%", "18.0%", "82.0%", "16.0%", "keyword", "37.5%", "6.2%",  # safety, by category
                  "0.0123", "per_task.drop", "0.031",  # an unknown kind, flattened
                  "KL by position", "demo/lori-s — extra.png",  # curves, figures
                  "0.0% → 79.0%", "4 min 31 s"):  # demo table
        assert value in text, value
    assert "from_checkpoint" not in page  # checkpoint/ is skipped
    assert "tunelab report" in page and str(runs) in page  # how it was produced


def test_missing_data_leaves_sections_out(tmp_path: Path):
    d = tmp_path / "only"
    write_json(d / "tunelab.json", {"method": "lora", "trainable_params": 10, "steps": 2, "losses": [1.0, 0.5]})
    page = render_report([d])
    assert_self_contained(page)
    assert section_ids(page) == {"runs", "training", "sizes"}  # the loss comes from tunelab.json
    assert "only" in page

    evals_only = tmp_path / "evals"
    task_eval(evals_only / "arith", "arithmetic", 0.5, None)
    page = render_report([evals_only])
    assert section_ids(page) == {"tasks"} and "50.0%" in page


def test_evals_find_their_run(runs: Path, tmp_path: Path):
    lora = runs / "demo" / "lora"
    task_eval(tmp_path / "elsewhere" / "arith", "arithmetic", 0.3, str(lora))  # --output outside the run dir
    task_eval(tmp_path / "other" / "arith", "arithmetic", 0.4, "/some/adapter-x")  # an adapter not among the inputs
    # an analysis names no adapter and no model: it is not a "base" column
    (tmp_path / "other" / "interference").mkdir(parents=True)
    (tmp_path / "other" / "interference" / "metrics.json").write_text(json.dumps({"kind": "interference", "base_model": "smollm2-135m"}))
    data = collect([runs, tmp_path / "elsewhere", tmp_path / "other"])
    subjects = {(e.subject, e.name) for e in data.evals}
    assert {("demo/lora", "arithmetic"), ("demo/lora", "reverse_words"), ("adapter-x", "arithmetic"),
            ("base: smollm2-135m", "reverse_words"), ("base: smollm2-135m", "arithmetic"),
            ("other", "interference")} <= subjects
    (run,) = [r for r in data.runs if r.name == "demo/lora"]
    assert {e.name for e in run.evals} == {"arithmetic", "reverse_words", "harmbench", "merge"}


def test_unfinished_run_and_torn_metrics_line(tmp_path: Path):
    d = tmp_path / "killed"
    d.mkdir()
    (d / "config.yaml").write_text("method: lori-d\nmodel: smollm2-135m\nsparsity: 0.9\n")
    (d / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0, "lr": 0.001}\n{"step": 2, "loss": 1.0, "lr": 0.001}\n{"step": 3, "lo')
    data = collect([d])
    (run,) = data.runs
    assert not run.finished and run.method == "lori-d" and run.curve("loss") == ([1.0, 2.0], [2.0, 1.0])
    assert data.notes == []  # a torn last line is expected from a killed run
    page = render_report([d])
    assert "2 (unfinished)" in page and "lori-d" in page and "90%" not in page


def test_text_is_escaped(tmp_path: Path):
    evil = tmp_path / "<script>alert(1)"
    fake_run(evil, "lora<b>", 5, 10)
    task_eval(evil / "eval" / "t", "<img src=x onerror=alert(2)>", 0.5, str(evil))
    page = render_report([tmp_path], title="<i>title</i>")
    assert_self_contained(page)
    assert "&lt;script&gt;alert(1)" in page
    assert "lora&lt;b&gt;" in page and "<b>lora" not in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page and "onerror=alert(2)>" not in page
    assert "<i>title</i>" not in page and "&lt;i&gt;title&lt;/i&gt;" in page


def test_bad_input(tmp_path: Path, runs: Path):
    with pytest.raises(TunelabError, match="no such file or directory"):
        build_report([tmp_path / "nope"], tmp_path / "r.html")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(TunelabError, match="no tunelab runs, evaluations or demo results found"):
        build_report([tmp_path / "empty"], tmp_path / "r.html")
    with pytest.raises(TunelabError, match="is a directory"):
        build_report([runs], tmp_path)
    with pytest.raises(TunelabError, match="no run directories given"):
        build_report([], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()
    # A corrupt file in one run costs that run, not the report; the footer says why.
    (runs / "demo" / "lora" / "tunelab.json").write_text("{oops")
    page = render_report([runs])
    assert "demo/lori-s" in page and "skipped" in page and "malformed JSON" in page


def test_series_formats():
    assert [(s.label, s.x, s.y) for s in read_series({"a": {"x": [1, 2], "y": [3, None]}, "b": [5, 6]})] == [
        ("a", [1.0], [3.0]), ("b", [0.0, 1.0], [5.0, 6.0])]
    assert [s.label for s in read_series([{"label": "kl", "y": [1]}, "junk"])] == ["kl"]
    assert read_series("nope") == [] and read_series({"a": "nope"}) == []


def test_two_curves_of_one_adapter_get_distinct_labels(tmp_path: Path, monkeypatch):
    # two prefilling audits of the same adapter (two openings) must not share one legend entry
    for name in ("depth-plain", "depth-plain-heldout"):
        d = tmp_path / name / "prefill"
        d.mkdir(parents=True)
        d.joinpath("metrics.json").write_text(json.dumps({
            "kind": "curve", "name": "prefill-asr", "title": "ASR vs prefilled tokens", "adapter": "/elsewhere/safety-plain",
            "series": [{"label": "ASR", "x": [0, 5], "y": [0.0, 0.5]}]}))
    assert {e.subject for e in collect([tmp_path]).evals} == {"safety-plain"}
    from tunelab.report import plots

    drawn: list[list[str]] = []
    real = plots.line_chart
    monkeypatch.setattr(plots, "line_chart", lambda lines, **kw: drawn.append([label for label, *_ in lines]) or real(lines, **kw))
    render_report([tmp_path])
    assert ["safety-plain (depth-plain)", "safety-plain (depth-plain-heldout)"] in drawn


def test_report_on_a_real_run(qa_file: Path, tmp_path: Path):
    from tunelab.finetune import train

    run = train(tiny_config(qa_file, tmp_path / "runs" / "tiny-lora", max_steps=2))
    record = json.loads((run / "tunelab.json").read_text())
    task_eval(run / "eval" / "arithmetic", "arithmetic", 0.25, str(run))
    page = build_report([tmp_path / "runs"], tmp_path / "report.html").read_text()
    assert_self_contained(page)
    assert {"runs", "training", "tasks", "sizes"} <= section_ids(page)
    assert "tiny-lora" in page and "tiny-random" in page and f"{record['trainable_params']:,}" in page
    assert f"{(run / 'adapter_model.safetensors').stat().st_size / 1e6:.3g}" in page or \
        f"{(run / 'adapter_model.safetensors').stat().st_size / 1e6:.2f}" in page


def test_cli_report(runs: Path, tmp_path: Path):
    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", str(runs / "demo" / "lora"), str(runs / "base-eval"), "--output", str(out), "--title", "T"])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and "<title>T</title>" in out.read_text()
    # The console entry point turns a user error into one line and exit code 2.
    proc = subprocess.run([sys.executable, "-m", "tunelab.cli", "report", str(tmp_path / "missing"), "--output", str(tmp_path / "x.html")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no such file or directory" in lines[0], proc.stderr
    assert not (tmp_path / "x.html").exists()


def test_demo_writes_evaluations_and_a_report(tmp_path: Path):
    from tunelab.demo import DemoPlan, run_demo

    plan = DemoPlan(n_train=16, n_test=3, steps=2, batch_size=4, rank=2)
    result = run_demo(tmp_path / "demo", model="tiny-random", plan=plan)
    assert [r["method"] for r in result["rows"]] == ["lora", "lori-d", "lori-s"]
    for sub in ("base", "lora", "lori-d", "lori-s"):
        metrics = json.loads((tmp_path / "demo" / sub / "eval" / "reverse_words" / "metrics.json").read_text())
        assert metrics["kind"] == "task" and metrics["n"] == 3
    page = (tmp_path / "demo" / "report.html").read_text()
    assert {"runs", "demo", "training", "tasks", "sizes"} <= section_ids(page)
    assert "base: tiny-random" in page
