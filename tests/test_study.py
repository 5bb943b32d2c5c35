"""`tunelab study`: the spec and its errors, one footing for every arm, paired seeds, skip/resume, study.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tunelab.errors import TunelabError
from tunelab.results import read_result
from tunelab.study.config import StudyConfig, apply_preset, parse_arm
from tunelab.study.plan import ARM_RECORD
from tunelab.study.results import STUDY_FILE, StudyResult

def _spec(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def _error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    """``tunelab ARGS`` through ``main()``: exit 2 and exactly one line, ``error: ...``."""
    import sys

    from tunelab.cli import main

    capsys.readouterr()
    old, sys.argv = sys.argv, ["tunelab", *args]
    try:
        with pytest.raises(SystemExit) as exit:
            main()
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if line.strip()]
    assert exit.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# --------------------------------------------------------------------------- the spec
def test_arm_shorthands() -> None:
    assert parse_arm("lora").train == {"method": "lora"}
    assert parse_arm("lori-s").train == {"method": "lori-s"}
    assert parse_arm("dp-sgd@4").train == {"optimizer": "dp-sgd", "target_epsilon": 4.0}
    assert parse_arm("dp-zo@0.5").train == {"optimizer": "dp-zo", "target_epsilon": 0.5}
    with pytest.raises(TunelabError, match="private optimizer"):
        parse_arm("full@3")
    with pytest.raises(TunelabError, match="did you mean|unknown arm"):
        parse_arm("lorx")


@pytest.mark.parametrize("body, expected", [
    ("arms:\n  - lora\n  - name: x\n    method: lora\n    bogus: 3\n", "study.yaml:7: arms[1].bogus: unknown `tunelab train` option 'bogus'"),
    ("arms:\n  - lora\n  - lora\n", "study.yaml:5: arms[1]: arm 'lora' is given twice"),
    ("arms:\n  - lora\n  - name: e\n    method: lora\n    epsilon: 4\n", "study.yaml:5: arms[1]: arm 'e' sets ε but its optimizer 'adamw' is not private"),
    ("arms:\n  - name: s\n    seed: 3\n", "study.yaml:5: arms[0].seed: 'seed' is the study's shared footing"),
    ("arms:\n  - name: s\n    lr: fast\n", "study.yaml:5: arms[0].lr: expected a number, got 'fast'"),
    ("arms: [lora]\nbogus: 1\n", "study.yaml:4: unknown option 'bogus'"),
    ("arms: [lora]\ntask_scorer: numeric\n", "study.yaml:4: task_scorer: task 'reverse_words' is scored by 'exact'"),
    ("arms: [lora]\nreference: full\n", "study.yaml:4: reference: 'full' is not an arm"),
    ("arms: [base]\n", "'base' is measured in every study"),
])
def test_spec_errors_name_the_line(tmp_path: Path, capsys, body: str, expected: str) -> None:
    path = _spec(tmp_path, "model: tiny-random\ntask: reverse_words\n" + body)
    line = _error(capsys, ["study", str(path), "--output", str(tmp_path / "out")])
    assert expected.replace("study.yaml", str(path)) in line
    assert not (tmp_path / "out").exists()  # nothing written before the spec is right


def test_flag_errors(tmp_path: Path, capsys) -> None:
    out = ["--output", str(tmp_path / "out")]
    assert "give --task" in _error(capsys, ["study", "--arms", "lora", *out])
    assert "--data needs --task-scorer" in _error(capsys, ["study", "--data", str(_spec(tmp_path, "")), *out])
    assert "unknown arm 'lorx'" in _error(capsys, ["study", "--task", "reverse_words", "--arms", "lora,lorx", *out])
    assert "distinct seeds" in _error(capsys, ["study", "--task", "reverse_words", "--seeds", "0,0", *out])


def test_flags_override_the_file_and_presets_fill_defaults(tmp_path: Path) -> None:
    from tunelab.cli.build import build_config

    path = _spec(tmp_path, "task: reverse_words\nmax_steps: 7\narms: [lora, dp-sgd@4]\n")
    cfg = build_config(StudyConfig, {"max_steps": 9}, path)
    assert cfg.max_steps == 9 and cfg.arms == ["lora", "dp-sgd@4"]
    quick = apply_preset(StudyConfig(preset="quick", seeds=[0, 1]))
    assert quick.task == "reverse_words" and quick.seeds == [0, 1]  # a set option wins over the preset


# --------------------------------------------------------------------------- a real (tiny) study
def _config(tmp_path: Path, arms: list, **over) -> StudyConfig:
    values = dict(model="tiny-random", task="reverse_words", n_train=24, arms=arms, seeds=[0, 1], max_steps=2,
                  batch_size=4, max_length=128, utility_limit=4, forgetting="off", safety=True, safety_limit=2,
                  max_new_tokens=4, prefill_k=[1], canaries=4, output=str(tmp_path / "study"))
    values.update(over)
    return StudyConfig(**values)


@pytest.fixture
def inline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Jobs run in this process; returns the list of jobs that ran (by dir)."""
    import tunelab.study.worker as worker

    ran: list[str] = []
    real = worker.run_job

    def counting(job, root):
        ran.append(job.dir)
        return real(job, root)

    monkeypatch.setenv("TUNELAB_STUDY_INLINE", "1")
    monkeypatch.setattr(worker, "run_job", counting)
    return ran


def test_study_end_to_end(tmp_path: Path, inline: list[str]) -> None:
    from tunelab.study.run import run_study

    result = run_study(_config(tmp_path, ["lora", "full"], monitor_safety=1))
    root = tmp_path / "study"
    assert sorted(inline) == ["arms/base", "arms/full/seed0", "arms/full/seed1", "arms/lora/seed0", "arms/lora/seed1"]

    # study.json: written last, typed, every arm × seed (the base once per seed, for pairing)
    saved = read_result(root / STUDY_FILE)
    assert isinstance(saved, StudyResult) and saved.to_dict() == result.to_dict()
    assert [(r.arm, r.seed) for r in saved.runs] == [("base", 0), ("base", 1), ("lora", 0), ("full", 0), ("lora", 1), ("full", 1)]
    assert all(r.status == "done" for r in saved.runs)
    lora0 = saved.runs[2]
    for name in ("utility", "asr", "refusal", "over_refusal", "prefill_asr_k1", "asr_drift", "refusal_drift",
                 "epsilon_lb", "auroc", "wall_time_s", "tokens_per_s", "peak_rss_mb", "trainable_params", "adapter_bytes"):
        assert name in lora0.metrics, name
    assert lora0.metrics["utility"].n == 4 and lora0.metrics["utility"].ci95 is not None
    assert {s.arm for s in saved.summary} == {"base", "lora", "full"}
    assert [p.arm for p in saved.paired] == ["base", "full"] and saved.paired[1].reference == "lora"

    # the same footing: one split, one canary set (same secrets, membership, positions), paired seeds
    canaries = (root / "canaries.json").read_text()
    records = []
    for arm in ("lora", "full"):
        for seed in (0, 1):
            run = root / "arms" / arm / f"seed{seed}"
            assert (run / "canaries.json").read_text() == canaries
            record = json.loads((run / "tunelab.json").read_text())
            assert record["seed"] == seed and record["data"] == str(root / "data" / "train.jsonl")
            records.append(record["canaries"]["insert_seed"])
    assert set(records) == {0}

    # the safety monitor ran in every training arm (and its curve is in the run)
    monitor = json.loads((root / "arms" / "full" / "seed1" / "tunelab.json").read_text())["safety_monitor"]
    assert [p["step"] for p in monitor["series"]] == [0, 1, 2]

    # every arm × seed is an ordinary run dir the other commands read
    assert read_result(root / "arms" / "lora" / "seed0" / "eval" / "study-safety" / "metrics.json").KIND == "safety"

    # the report leads with the study and draws every arm's monitor curve
    from tunelab.report import build_report

    html = build_report([root], tmp_path / "report.html").read_text()
    assert html.index("<h2>Study") < html.index("<h2>Runs") and "<h2>Safety during training" in html

    # re-running skips everything; adding an arm runs only that arm
    inline.clear()
    run_study(_config(tmp_path, ["lora", "full"], monitor_safety=1))
    assert inline == []
    run_study(_config(tmp_path, ["lora", "full", "lori-d"], monitor_safety=1))
    assert sorted(inline) == ["arms/lori-d/seed0", "arms/lori-d/seed1"]

    # a changed arm is redone, the rest kept
    inline.clear()
    run_study(_config(tmp_path, ["lora", {"name": "full", "method": "full", "lr": 1e-5}, "lori-d"], monitor_safety=1))
    assert sorted(inline) == ["arms/full/seed0", "arms/full/seed1"]


def test_interrupted_arm_resumes_and_failed_arm_is_recorded(tmp_path: Path, inline: list[str], monkeypatch) -> None:
    import tunelab.study.worker as worker
    from tunelab.study.run import run_study

    real = worker.train_arm
    calls = {"n": 0}

    def dying(job, out):  # the first lora seed-0 training dies after its checkpoint (as kill -9 would)
        if job.dir == "arms/lora/seed0" and calls["n"] == 0:
            calls["n"] += 1
            from tunelab.finetune import TrainConfig, train

            train(TrainConfig(**{**job.train, "save_every": 1}), stop_after_step=1)
            raise RuntimeError("killed")
        return real(job, out)

    monkeypatch.setattr(worker, "train_arm", dying)
    cfg = _config(tmp_path, ["lora"], seeds=[0], safety=False, canaries=0)
    first = run_study(cfg)
    assert first.runs[1].status == "failed" and "killed" in first.runs[1].error
    assert (tmp_path / "study" / "arms" / "lora" / "seed0" / "checkpoint").is_dir()
    second = run_study(_config(tmp_path, ["lora"], seeds=[0], safety=False, canaries=0))
    assert second.runs[1].status == "done"
    record = json.loads((tmp_path / "study" / "arms" / "lora" / "seed0" / "tunelab.json").read_text())
    assert record["steps"] == 2


def test_changed_footing_is_refused(tmp_path: Path, inline: list[str]) -> None:
    from tunelab.study.run import run_study

    run_study(_config(tmp_path, ["lora"], seeds=[0], safety=False, canaries=0, utility_limit=4))
    with pytest.raises(TunelabError, match="holds another test split"):
        run_study(_config(tmp_path, ["lora"], seeds=[0], safety=False, canaries=0, utility_limit=5))
    assert (tmp_path / "study" / ARM_RECORD).exists() is False


def test_jobs_split_the_cores_never_oversubscribe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tunelab.study.run as run

    monkeypatch.setattr(run, "cores", lambda: 16)
    assert run._Runner(tmp_path, [], 4, None)._env()["OMP_NUM_THREADS"] == "4"
    monkeypatch.setattr(run, "cores", lambda: 2)
    capped = run._Runner(tmp_path, [], 4, None)
    assert capped.parallel == 2 and capped._env()["OMP_NUM_THREADS"] == "1"
    assert run._Runner(tmp_path, [], 1, None)._env()["OMP_NUM_THREADS"] == "2"


def test_safety_first_arms() -> None:
    assert parse_arm("lora+safety").safety_first and parse_arm("lora+safety").train == {"method": "lora"}
    lori = parse_arm("lori-s+safety")
    assert lori.safety_first and lori.train == {"method": "lori-s", "disjoint": True}  # disjoint where supported
    cfg = StudyConfig(task="reverse_words", arms=["lora", {"name": "mine", "method": "lori-s", "safety_first": True}])
    assert [a.safety_first for a in cfg.arm_specs()] == [False, True]
    with pytest.raises(TunelabError, match="safety recipe trains"):
        StudyConfig(task="reverse_words", arms=["lota+safety"]).validate()
    with pytest.raises(TunelabError, match="give one"):
        StudyConfig(task="reverse_words", arms=[{"name": "x", "method": "lora", "safety_first": True,
                                                 "init_from": "runs/x"}]).validate()
