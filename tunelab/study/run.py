"""``tunelab study``: plan the jobs, run each in a worker process, collect, write ``study.json``.

:func:`run_study` is the job (``run_study(cfg, run_dir) -> StudyResult``). It is incremental: a job
whose directory holds a finished record with the same config hash is skipped, an interrupted one
resumes from its checkpoint, a changed one is redone, and adding an arm runs only that arm.
``study.json`` is written last and atomically, so Ctrl-C or ``kill -9`` never leaves half of one.
``--jobs N`` runs N workers at once, each with ``OMP_NUM_THREADS = cores / N`` (never more threads
than cores); an arm with ``nproc_per_node: P`` trains under ``torchrun`` in P processes, which share
its worker's cores (``cores / (N·P)`` threads each) — one arm across P GPUs (docs/study.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from tunelab.errors import TunelabError
from tunelab.layout import atomic_write_text
from tunelab.results import RunDir
from tunelab.study.config import BASE_ARM, StudyConfig
from tunelab.study.plan import ARM_RECORD, HASH_FILE, Job, job_file, make_canary_set, plan_jobs, split_data
from tunelab.study.results import STUDY_FILE, Measure, RunRecord, StudyResult

LOG_FILE = "study.log"     # a worker's output when several run at once
INLINE_ENV = "TUNELAB_STUDY_INLINE"  # "1": run each job in this process (tests, debugging)


class _Done:
    """A job run in this process, shaped like a finished Popen."""

    def __init__(self, returncode: int) -> None:
        self.returncode = returncode

    def poll(self) -> int:
        return self.returncode

    def terminate(self) -> None:
        pass

    def wait(self) -> int:
        return self.returncode


def study_dir(cfg: StudyConfig) -> RunDir:
    """The study's directory (never cleared: a study is incremental)."""
    return RunDir(Path(cfg.output), marker=STUDY_FILE, what="a finished study")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _finished(job: Job, root: Path) -> RunRecord | None:
    """The job's record when it finished with the job's current config hash."""
    from tunelab.study.worker import read_record

    path = root / job.dir / ARM_RECORD
    if not path.is_file():
        return None
    try:
        record = read_record(path)
    except TunelabError:
        return None
    return record if record.status == "done" and record.config_hash == job.config_hash else None


def _ready_dir(job: Job, root: Path) -> None:
    """Clear a job's dir that was started with another config (the arm changed); mark its hash."""
    out = root / job.dir
    mark = out / HASH_FILE
    if out.is_dir() and (not mark.is_file() or mark.read_text().strip() != job.config_hash):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(mark, job.config_hash)


def write_job(job: Job, root: Path) -> Path:
    """``STUDY/jobs/NAME.json``: what a worker runs (``python -m tunelab.study.worker FILE``)."""
    path = job_file(job, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, job.to_json())
    return path


def _deps(job: Job, jobs: list[Job]) -> list[Job]:
    """The jobs whose run this one reads (a LoRI-S arm: its LoRI-D mask run)."""
    mask = (job.train or {}).get("mask_from")
    return [j for j in jobs if mask is not None and j.train and j.train.get("output") == mask]


class _Runner:
    """Runs pending jobs in worker processes, at most ``parallel`` at once, dependencies first."""

    def __init__(self, root: Path, jobs: list[Job], parallel: int, console: Console) -> None:
        self.root, self.jobs, self.console = root, jobs, console
        self.parallel = max(1, min(parallel, cores()))  # more workers than cores would oversubscribe them
        self.threads = max(1, cores() // self.parallel)

    def threads_for(self, job: Job | None = None) -> int:
        """Threads per process of ``job``'s worker: its share of the cores, split over its torchrun
        processes (``cores // (parallel × nproc_per_node)``, at least 1)."""
        return max(1, cores() // (self.parallel * (job.nproc_per_node if job is not None else 1)))

    def _env(self, job: Job | None = None) -> dict[str, str]:
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # torchrun passes them on to its processes
            env[var] = str(self.threads_for(job))
        env.setdefault("HF_HUB_OFFLINE", "1")
        return env

    def _start(self, job: Job) -> subprocess.Popen | _Done:
        _ready_dir(job, self.root)
        path = write_job(job, self.root)
        if os.environ.get(INLINE_ENV) == "1":  # tests and debugging: no process per job (peak RSS is then the study's)
            from tunelab.study.worker import main

            return _Done(main([str(path)]))
        cmd = [sys.executable, "-m", "tunelab.study.worker", str(path)]
        if self.parallel == 1:
            return subprocess.Popen(cmd, env=self._env(job))
        log = open(self.root / job.dir / LOG_FILE, "w")
        return subprocess.Popen(cmd, env=self._env(job), stdout=log, stderr=subprocess.STDOUT)

    def run(self, pending: list[Job], done_before: int, total: int) -> None:
        started = time.perf_counter()
        finished = done_before
        waiting = list(pending)
        running: dict[str, tuple[Job, subprocess.Popen | _Done]] = {}
        failed: set[str] = set()
        try:
            while waiting or running:
                for job in list(waiting):
                    if len(running) >= self.parallel:
                        break
                    deps = _deps(job, self.jobs)
                    if any(d.dir in failed for d in deps):
                        waiting.remove(job)
                        failed.add(job.dir)
                        self._fail(job, "its LoRI-D mask run failed")
                        continue
                    if any(d.dir in running or d in waiting for d in deps):
                        continue
                    waiting.remove(job)
                    self.console.rule(_bar(finished, total, started, f"{job.arm} · seed {job.seed}" if job.kind == "train"
                                           else f"{job.arm} ({job.kind})"))
                    running[job.dir] = (job, self._start(job))
                for key, (job, proc) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[key]
                    finished += 1
                    if proc.returncode != 0:
                        failed.add(job.dir)
                        if not (self.root / job.dir / ARM_RECORD).is_file():
                            self._fail(job, f"worker exited with code {proc.returncode}")
                        self.console.print(f"[red]{job.arm} seed {job.seed} failed[/] "
                                           f"({self.root / job.dir / (LOG_FILE if self.parallel > 1 else ARM_RECORD)})")
                time.sleep(0.2)
        except KeyboardInterrupt:
            for _, proc in running.values():
                proc.terminate()
            for _, proc in running.values():
                proc.wait()
            self.console.print("interrupted: run the same command again to continue (finished arms are kept)")
            raise
        self.console.rule(_bar(finished, total, started, "done"))

    def _fail(self, job: Job, why: str) -> None:
        from tunelab.study.worker import _write

        (self.root / job.dir).mkdir(parents=True, exist_ok=True)
        _write(RunRecord(job.arm, job.seed, job.dir, "failed", job.config_hash, error=why), self.root / job.dir)


def _bar(done: int, total: int, started: float, what: str) -> str:
    width = 24
    filled = round(width * done / max(total, 1))
    elapsed = time.perf_counter() - started
    return f"study {'━' * filled}{'╌' * (width - filled)} {done}/{total} · {elapsed / 60:.1f} min · {what}"


def _drift(record: RunRecord, before: RunRecord | None) -> None:
    """``asr_drift`` and ``refusal_drift``: after − before (the base, or the init_from adapter)."""
    if before is None:
        return
    for name, drift in (("asr", "asr_drift"), ("refusal", "refusal_drift")):
        after, was = record.metrics.get(name), before.metrics.get(name)
        if after is not None and was is not None and after.value is not None and was.value is not None:
            record.metrics[drift] = Measure(after.value - was.value, n=after.n)


def collect(cfg: StudyConfig, jobs: list[Job], root: Path) -> list[RunRecord]:
    """Every arm × seed's record (the base once per seed, for pairing), drift filled in."""
    from tunelab.study.worker import read_record

    records: dict[str, RunRecord] = {}
    for job in jobs:
        path = root / job.dir / ARM_RECORD
        try:
            records[job.dir] = read_record(path) if path.is_file() else RunRecord(job.arm, job.seed, job.dir, "pending")
        except TunelabError as exc:
            records[job.dir] = RunRecord(job.arm, job.seed, job.dir, "failed", error=str(exc))
    out: list[RunRecord] = []
    base = next(j for j in jobs if j.kind == "base")
    for seed in cfg.seeds:  # the base is greedy-decoded: one measurement stands for every seed
        record = records[base.dir]
        out.append(RunRecord(BASE_ARM, seed, record.dir, record.status, record.config_hash, record.error,
                             metrics=dict(record.metrics)))
    for job in jobs:
        if job.kind != "train":
            continue
        record = records[job.dir]
        if record.status == "done":
            _drift(record, records.get(job.before or ""))
        out.append(record)
    return out


def run_study(cfg: StudyConfig, run_dir: RunDir | None = None, *, console: Console | None = None) -> StudyResult:
    """Run (or continue) the study ``cfg`` into ``run_dir``; write and return its :class:`StudyResult`."""
    from tunelab.study.summary import summarize

    console = console or Console()
    cfg.validate()
    arms = cfg.arm_specs()
    run_dir = run_dir or study_dir(cfg)
    root = run_dir.path.resolve()
    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    footing = split_data(cfg, root)
    footing.canaries = make_canary_set(cfg, root, footing)
    for arm in arms:
        if arm.safety_first:
            arm.train["init_from"] = str(_safety_adapter(cfg, root, arm.train.get("method", "lora"), console))
    jobs = plan_jobs(cfg, arms, footing, root)
    for job in jobs:
        if job.kind == "mask":
            console.print(f"{job.arm}: a LoRI-D run for the LoRI-S arms' mask (seed {job.seed}; not an arm, not measured)")
    for job in jobs:  # all of them up front: a worker can also be started by hand (one per GPU)
        write_job(job, root)
    pending = [j for j in jobs if _finished(j, root) is None]
    skipped = len(jobs) - len(pending)
    console.print(f"[bold]tunelab study[/] {root}: {len(arms)} arms + base × {len(cfg.seeds)} seeds = {len(jobs)} jobs"
                  + (f"; {skipped} already finished (skipped)" if skipped else "")
                  )
    runner = _Runner(root, jobs, cfg.jobs, console)
    if cfg.jobs > 1:
        capped = f" (--jobs {cfg.jobs} capped at the {cores()} cores)" if runner.parallel < cfg.jobs else ""
        console.print(f"{runner.parallel} arms at once, {runner.threads} threads each{capped}")
    for arm in arms:
        if arm.nproc_per_node > 1:
            console.print(f"{arm.name}: trained under torchrun in {arm.nproc_per_node} processes (--fsdp, batch "
                          f"{cfg.batch_size // arm.nproc_per_node} each), measured in one")
    runner.run(pending, skipped, len(jobs))
    runs = collect(cfg, jobs, root)
    names = [BASE_ARM, *(a.name for a in arms)]
    summary, paired = summarize(runs, names, cfg.reference)
    result = StudyResult(
        name=root.name, model=cfg.model, task=footing.task, scorer=footing.scorer,
        data={"train": str(footing.train.relative_to(root)), "test": str(footing.test.relative_to(root)),
              "train_sha256": footing.train_sha256, "test_sha256": footing.test_sha256,
              "n_train": footing.n_train, "n_test": footing.n_test},
        budget={"max_steps": cfg.max_steps, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
                "max_length": cfg.max_length},
        seeds=list(cfg.seeds), reference=cfg.reference,
        canaries=_canaries(footing.canaries),
        arms=[{"name": BASE_ARM, "train": None, "epsilon": None, "private": False},
              *({"name": a.name, "train": a.train, "epsilon": a.epsilon, "private": a.epsilon is not None,
                 **({"nproc_per_node": a.nproc_per_node} if a.nproc_per_node > 1 else {})}
                for a in arms)],
        runs=runs, summary=summary, paired=paired, wall_time_s=time.perf_counter() - started,
        config={k: v for k, v in asdict(cfg).items() if k != "config_file"})
    result.write(run_dir, STUDY_FILE)
    _plots(result, root, console)
    return result


def _safety_adapter(cfg: StudyConfig, root: Path, method: str, console: Console) -> Path:
    """tunelab's safety adapter of ``method`` (``tunelab.safety.recipe``), trained once into ``STUDY/safety/``."""
    from tunelab.layout import RUN_FILE
    from tunelab.safety.recipe import train_safety_adapter

    out = root / "safety" / method
    if not (out / RUN_FILE).is_file():
        console.rule(f"safety adapter ({method}): tunelab's refusal recipe, trained once for the safety-first arms")
        train_safety_adapter(method, out, model=cfg.model, seed=0)
    return out


def _canaries(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    from tunelab.privacy.canaries import CanarySet
    from tunelab.data import data_sha256

    cs = CanarySet.load(path)
    return {"file": path.name, "count": len(cs), "members": len(cs.members), "family": cs.family,
            "sha256": data_sha256(path)}


def _plots(result: StudyResult, root: Path, console: Console) -> None:
    from tunelab.study.plots import bars_plot, pareto_plot

    try:
        pareto_plot(result, root / "pareto.png")
        bars_plot(result, root / "bars.png")
    except (ValueError, RuntimeError) as exc:  # a plot is a view of study.json, never worth the study
        console.print(f"[yellow]warning:[/] plots not drawn ({exc})")


__all__ = ["run_study", "study_dir", "collect", "cores"]
