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
    # an arm across N processes: an int >= 1, a batch that splits, and what `tunelab train --fsdp` refuses
    ("arms:\n  - name: d\n    optimizer: dp-sgd\n    epsilon: 4\n    nproc_per_node: 2\n",
     "study.yaml:7: arms[0].nproc_per_node: arm 'd' in 2 processes trains with --fsdp under torchrun, "
     "and --optimizer dp-sgd does not support --fsdp"),
    ("arms:\n  - name: z\n    optimizer: zo\n    nproc_per_node: 2\n",
     "study.yaml:6: arms[0].nproc_per_node: arm 'z' in 2 processes trains with --fsdp under torchrun, "
     "and --optimizer zo does not support --fsdp"),
    ("monitor_safety: 5\narms:\n  - name: f\n    method: full\n    nproc_per_node: 2\n",
     "study.yaml:7: arms[0].nproc_per_node: arm 'f' in 2 processes trains with --fsdp under torchrun, "
     "and --monitor-safety runs in a single process"),
    ("arms:\n  - name: f\n    method: full\n    nproc_per_node: 3\n",
     "study.yaml:6: arms[0].nproc_per_node: arm 'f' in 3 processes: batch_size 8 does not split over 3 processes"),
    ("arms:\n  - name: f\n    method: full\n    nproc_per_node: two\n",
     "study.yaml:6: arms[0].nproc_per_node: expected an integer >= 1 (processes training the arm), got 'two'"),
    ("arms:\n  - name: f\n    method: full\n    nproc_per_node: 0\n",
     "study.yaml:6: arms[0].nproc_per_node: expected an integer >= 1"),
    ("arms: [lora, dp-zo@4]\nnproc_per_node: 2\n",
     "study.yaml:4: nproc_per_node: arm 'dp-zo@4' in 2 processes trains with --fsdp under torchrun, "
     "and --optimizer dp-zo does not support --fsdp"),
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
    assert ("--nproc-per-node: arm 'zo' in 2 processes trains with --fsdp under torchrun, and --optimizer zo "
            "does not support --fsdp") in _error(capsys, ["study", "--task", "reverse_words", "--arms", "lora,zo",
                                                         "--nproc-per-node", "2", *out])


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
    import tunelab.train
    from tunelab.study.plan import HASH_FILE
    from tunelab.study.run import run_study
    from tunelab.train.checkpoint import find_checkpoint

    real, real_fit = worker.train_arm, tunelab.train.fit
    calls = {"n": 0}
    resumed: list[bool] = []

    def dying(job, out, **kw):  # the first lora seed-0 training dies after its checkpoint (as kill -9 would)
        if job.dir == "arms/lora/seed0" and calls["n"] == 0:
            calls["n"] += 1
            with pytest.MonkeyPatch.context() as m:  # the worker's own train_arm, stopped after step 1
                m.setattr(tunelab.train, "fit", lambda cfg, plugins, rule: real_fit(cfg, plugins, rule, stop_after_step=1))
                real(job, out, **kw)
            raise RuntimeError("killed")
        resumed.append(find_checkpoint(out) is not None)
        return real(job, out, **kw)

    monkeypatch.setattr(worker, "train_arm", dying)
    cfg = _config(tmp_path, ["lora"], seeds=[0], safety=False, canaries=0)
    first = run_study(cfg)
    assert first.runs[1].status == "failed" and "killed" in first.runs[1].error
    run = tmp_path / "study" / "arms" / "lora" / "seed0"
    # the fresh run emptied its dir but kept the study's hash: without it the next run would discard the checkpoint
    assert (run / "checkpoint").is_dir() and (run / HASH_FILE).is_file()
    second = run_study(_config(tmp_path, ["lora"], seeds=[0], safety=False, canaries=0))
    assert second.runs[1].status == "done" and resumed == [True]
    record = json.loads((run / "tunelab.json").read_text())
    assert record["steps"] == 2 and record["processes"] == 1


def test_changed_footing_is_refused(tmp_path: Path, inline: list[str]) -> None:
    from tunelab.study.run import run_study

    run_study(_config(tmp_path, ["lora"], seeds=[0], safety=False, canaries=0, utility_limit=4))
    with pytest.raises(TunelabError, match="holds another test split"):
        run_study(_config(tmp_path, ["lora"], seeds=[0], safety=False, canaries=0, utility_limit=5))
    assert (tmp_path / "study" / ARM_RECORD).exists() is False


def test_jobs_split_the_cores_never_oversubscribe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tunelab.study.run as run
    from tunelab.study.plan import Job

    monkeypatch.setattr(run, "cores", lambda: 16)
    assert run._Runner(tmp_path, [], 4, None)._env()["OMP_NUM_THREADS"] == "4"
    # an arm in N torchrun processes: its worker's share of the cores is split over them
    spread = Job("f", 0, "arms/f/seed0", "train", "tiny-random", {}, nproc_per_node=4)
    assert run._Runner(tmp_path, [], 2, None)._env(spread)["OMP_NUM_THREADS"] == "2"  # 16 // (2 × 4)
    assert run._Runner(tmp_path, [], 1, None)._env(spread)["MKL_NUM_THREADS"] == "4"
    monkeypatch.setattr(run, "cores", lambda: 2)
    capped = run._Runner(tmp_path, [], 4, None)
    assert capped.parallel == 2 and capped._env()["OMP_NUM_THREADS"] == "1"
    assert run._Runner(tmp_path, [], 1, None)._env()["OMP_NUM_THREADS"] == "2"
    assert run._Runner(tmp_path, [], 1, None)._env(spread)["OMP_NUM_THREADS"] == "1"  # at least one


# --------------------------------------------------------------------------- an arm across N processes
# What main's plan_jobs gave these jobs before nproc_per_node existed (a study in progress relies on
# them: a changed hash reruns its finished arms). Paths and data hashes are fixed, so the hash is too.
PINNED = {
    "arms/base": "206b263643a8678c",
    "arms/_lori-d-mask/seed0": "51815a9199e667cf",
    "arms/_lori-d-mask/seed1": "220c1083e384aa8d",
    "arms/lora/seed0": "ba3e757aeac8d0b8",
    "arms/lori-s/seed0": "a89f1b9d4f995764",
    "arms/full/seed0": "afc677e8949e82fc",
    "arms/dp-sgd@4/seed0": "4677a901bfbadbd1",
    "arms/lota-x/seed0": "21ed2e4e33da6429",
    "arms/lora/seed1": "0ee3cd9d7d3fcab8",
    "arms/lori-s/seed1": "a65ef299a620d9b1",
    "arms/full/seed1": "267bb0e344d418fb",
    "arms/dp-sgd@4/seed1": "a505fe5af52f99e6",
    "arms/lota-x/seed1": "a3ed76aa4f20cd8c",
}


def _plan(arms: list, **over) -> dict[str, "Job"]:
    from tunelab.study.plan import Footing, plan_jobs

    values = dict(model="tiny-random", task="reverse_words", arms=arms, seeds=[0, 1], monitor_safety=5,
                  train={"rank": 16, "alpha": 32.0})
    cfg = StudyConfig(**{**values, **over})
    root = Path("/study")
    footing = Footing(root / "data/train.jsonl", root / "data/test.jsonl", "exact", "reverse_words", 600, 200,
                      "a" * 64, "b" * 64, None)
    return {job.dir: job for job in plan_jobs(cfg, cfg.arm_specs(), footing, root)}


PINNED_ARMS = ["lora", "lori-s", "full", "dp-sgd@4", {"name": "lota-x", "method": "lota", "lr": 1e-3}]


def test_arms_in_one_process_keep_their_config_hash() -> None:
    assert {d: j.config_hash for d, j in _plan(PINNED_ARMS).items()} == PINNED
    # nproc_per_node: 1, said or not, is the arm as it always was
    explicit = [*PINNED_ARMS[:2], {"name": "full", "method": "full", "nproc_per_node": 1}, *PINNED_ARMS[3:]]
    assert {d: j.config_hash for d, j in _plan(explicit).items()} == PINNED
    assert {d: j.config_hash for d, j in _plan(PINNED_ARMS, nproc_per_node=1).items()} == PINNED


def test_an_arm_in_n_processes_is_its_own_job() -> None:
    arms = [*PINNED_ARMS[:2], {"name": "full", "method": "full", "nproc_per_node": 2}, PINNED_ARMS[3]]
    jobs = _plan(arms, monitor_safety=0)
    spread = jobs["arms/full/seed0"]
    assert spread.nproc_per_node == 2 and spread.train["fsdp"] is True
    assert spread.train["batch_size"] == 4  # 8 over 2 processes: a step still sees the study's 8 examples
    single = _plan([*PINNED_ARMS[:3], PINNED_ARMS[3]], monitor_safety=0)
    assert spread.config_hash != single["arms/full/seed0"].config_hash
    for name in ("arms/lora/seed0", "arms/lori-s/seed1", "arms/dp-sgd@4/seed0", "arms/_lori-d-mask/seed0"):
        assert jobs[name].config_hash == single[name].config_hash and jobs[name].nproc_per_node == 1
    assert _plan(arms[:3], monitor_safety=0, nproc_per_node=2)["arms/lora/seed0"].train["fsdp"] is True
    # the study-level default; an arm's own 1 wins over it
    own = _plan([{"name": "lora", "method": "lora", "nproc_per_node": 1}], monitor_safety=0, nproc_per_node=2)
    assert own["arms/lora/seed0"].nproc_per_node == 1 and "fsdp" not in own["arms/lora/seed0"].train


def test_worker_trains_an_n_process_arm_under_torchrun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    from tunelab.study import worker
    from tunelab.study.plan import HASH_FILE, Job, job_file

    path = tmp_path / "jobs" / "f-s0.json"
    assert worker.train_command(path, 2) == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                             "--nproc_per_node", "2", "-m", "tunelab.study.worker", str(path),
                                             "--train-only"]
    assert worker.train_env({"OMP_NUM_THREADS": "3"}, cuda=False) == {"OMP_NUM_THREADS": "3", "ACCELERATE_USE_CPU": "true"}
    assert worker.train_env({}, cuda=True) == {}  # GPUs: nccl, one per process

    job = Job("f", 0, "arms/f/seed0", "train", "tiny-random", {"method": "full"}, nproc_per_node=2)
    path = job_file(job, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(job.to_json())
    out = tmp_path / job.dir
    out.mkdir(parents=True)
    (out / HASH_FILE).write_text("h")
    (out / "stale.txt").write_text("from a run of another config")
    launched = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: launched.append((cmd, kw)) or subprocess.CompletedProcess(cmd, 3))
    with pytest.raises(TunelabError, match=r"arm 'f' seed 0: training under torchrun \(2 processes\) exited with code 3"):
        worker.run_job(job, tmp_path)
    (cmd, kw), = launched
    assert cmd == worker.train_command(path, 2) and "env" in kw
    assert sorted(p.name for p in out.iterdir()) == [HASH_FILE]  # emptied once, here, before the processes start
    # a training process trains and measures nothing (the launching worker does)
    monkeypatch.setattr(worker, "train_arm", lambda job, out, clear=True: launched.append(("train", clear)))
    monkeypatch.setattr(worker, "run_job", lambda *a: pytest.fail("a training process measured"))
    assert worker.main([str(path), "--train-only"]) == 0 and launched[-1] == ("train", False)


@pytest.mark.slow
def test_study_arm_under_torchrun_two_gloo_processes(tmp_path: Path, inline: list[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """One arm trained by torchrun in 2 gloo processes: an ordinary run, interrupted and resumed, then skipped."""
    import subprocess

    from tests.conftest import ROOT
    import tunelab.study.worker as worker
    from tunelab.study.plan import HASH_FILE, job_file
    from tunelab.study.run import run_study

    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def dying(job, root):  # the 2 processes stop after step 1's checkpoint (tests/study_stop.py), then "kill -9"
        cmd = worker.train_command(job_file(job, root), job.nproc_per_node)
        cmd[cmd.index("tunelab.study.worker")] = "tests.study_stop"
        subprocess.run(cmd, env=worker.train_env(), check=True, timeout=420)
        raise RuntimeError("killed")

    arms = [{"name": "lora2", "method": "lora", "nproc_per_node": 2}]
    config = lambda: _config(tmp_path, arms, seeds=[0], batch_size=4, safety=False, reference="base")  # noqa: E731
    with monkeypatch.context() as m:
        m.setattr(worker, "train_distributed", dying)
        first = run_study(config())
    run = tmp_path / "study" / "arms" / "lora2" / "seed0"
    assert first.runs[1].status == "failed" and (run / "checkpoint").is_dir() and (run / HASH_FILE).is_file()
    (run / "kept.txt").write_text("a fresh run would empty the dir; a resumed one keeps this")

    result = run_study(config())
    assert result.runs[1].status == "done", result.runs[1].error
    assert (run / "kept.txt").is_file()  # resumed from the checkpoint, not restarted
    record = json.loads((run / "tunelab.json").read_text())
    assert record["processes"] == 2 and record["config"]["fsdp"] is True and record["config"]["batch_size"] == 2
    assert record["steps"] == 2 and record["privacy"] is not None  # rank 0 audited the shared canaries
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert (run / "canaries.json").read_text() == (tmp_path / "study" / "canaries.json").read_text()
    metrics = result.runs[1].metrics
    assert metrics["utility"].n == 4 and metrics["peak_rss_mb"].value > 0 and "epsilon_lb" in metrics
    saved = read_result(tmp_path / "study" / STUDY_FILE)
    assert saved.arms[1]["nproc_per_node"] == 2

    # an ordinary run dir: `tunelab eval` reads the adapter the 2 processes saved
    assert read_result(run / "eval" / "study-utility" / "metrics.json").n == 4
    inline.clear()
    run_study(config())
    assert inline == []  # finished: skipped like any arm


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
