"""One study job in its own process: ``python -m tunelab.study.worker STUDY/jobs/NAME.json``.

A job trains its arm (resuming an interrupted run from its checkpoint), then measures it with the
library's own evaluations, each written as an ordinary ``metrics.json`` under ``eval/study-*/`` (a
finished one is reused), and writes its :class:`~tunelab.study.results.RunRecord` to
``study-arm.json`` last. Its own process gives each arm a clean peak RSS, keeps a crash in one arm
from taking the study down, and lets ``--jobs N`` run arms side by side.

An arm with ``nproc_per_node: N > 1`` is trained by torch's own launcher in N processes (FSDP2,
each with ``batch_size / N`` of the study's batch): the worker runs :func:`train_command`, whose
processes are this module with ``--train-only``, then measures the saved run in its own process
as for any arm. Peak RSS is then the largest training process's.
"""

from __future__ import annotations

import json
import resource
import sys
import traceback
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.layout import EVAL_DIR, EVAL_FILE, RUN_FILE
from tunelab.study.plan import ARM_RECORD, HASH_FILE, Job
from tunelab.study.results import Measure, RunRecord, prefill_metric
from tunelab.train.record import TrainRecord

PRIVACY_EVAL = "privacy"  # the canary plug-in's audit: RUN/eval/privacy/metrics.json
TRAIN_ONLY = "--train-only"  # one of an arm's torchrun processes: train, measure nothing


def _rss_mb() -> float:
    """Peak RSS of this process or of the largest one it waited for (an arm's training processes)."""
    return max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024


def _interval(hits: float, n: int) -> list[float]:
    from tunelab.evaluate.safety import wilson_interval

    return list(wilson_interval(round(hits), n))


def _rate(value: float | None, n: int | None, ci: Any = None) -> Measure:
    if value is None or not n:
        return Measure(value)
    if ci is None:
        ci = _interval(value * n, n)
    return Measure(float(value), [float(ci[0]), float(ci[1])], int(n))


def _clear_for_training(out: Path) -> None:
    """Empty ``out`` for a fresh run, keeping its study hash (without it the next study run would
    take a checkpoint written from here on for another arm's and throw it away)."""
    import shutil

    if not out.is_dir():
        return
    for child in out.iterdir():
        if child.name != HASH_FILE:
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def train_arm(job: Job, out: Path, *, clear: bool = True) -> Path:
    """Train the job's arm into ``out`` (resuming a checkpoint, reusing a finished run).

    ``clear=False``: one of several training processes, whose output dir the worker made ready
    (they must not empty it at once).
    """
    from tunelab.finetune import TrainConfig, recipe
    from tunelab.train import fit
    from tunelab.train.checkpoint import find_checkpoint

    if (out / RUN_FILE).is_file():
        return out
    assert job.train is not None
    settings = dict(job.train)
    resume = out.is_dir() and find_checkpoint(out) is not None
    if not resume and clear:
        _clear_for_training(out)
    settings.update(resume=resume, overwrite=False)
    cfg = TrainConfig(**settings)
    cfg, plugins, rule = recipe(cfg)
    if job.canaries:
        from tunelab.privacy.canaries import CanarySet
        from tunelab.privacy.plugin import CanaryPlugin

        shared = CanarySet.load(job.canaries)
        plugins = [CanaryPlugin(shared, insert_seed=0) if isinstance(p, CanaryPlugin) else p for p in plugins]
    fit(cfg, plugins, rule)
    return out


def train_command(job_path: Path, processes: int) -> list[str]:
    """What trains a job in ``processes`` processes: torch's launcher (``torchrun``) on this module."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            "-m", "tunelab.study.worker", str(job_path), TRAIN_ONLY]


def train_env(environ: dict[str, str] | None = None, *, cuda: bool | None = None) -> dict[str, str]:
    """The launcher's environment: on a machine without CUDA, accelerate's gloo CPU mode."""
    import os

    env = dict(os.environ if environ is None else environ)
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if not cuda:
        env["ACCELERATE_USE_CPU"] = "true"  # torchrun + accelerate on CPUs: gloo (accelerate's own wants mpirun)
    return env


def train_distributed(job: Job, root: Path) -> None:
    """Train the job's arm under torchrun in ``job.nproc_per_node`` processes (resuming, or fresh)."""
    import subprocess

    from tunelab.study.plan import job_file
    from tunelab.train.checkpoint import find_checkpoint

    out = root / job.dir
    if (out / RUN_FILE).is_file():
        return
    if find_checkpoint(out) is None:
        _clear_for_training(out)  # here, once: the processes must not each empty it
    path = job_file(job, root)
    if not path.is_file():
        raise TunelabError(f"{path}: the job file the training processes read is missing")
    code = subprocess.run(train_command(path, job.nproc_per_node), env=train_env()).returncode
    if code != 0 or not (out / RUN_FILE).is_file():
        raise TunelabError(f"arm '{job.arm}' seed {job.seed}: training under torchrun ({job.nproc_per_node} processes) "
                           f"exited with code {code}; its processes' output says why")


def _evaluate(model: Any, tokenizer: Any, job: Job, adapter: str | None, out: Path, name: str,
              **options: Any) -> Any:
    """One ``tunelab eval`` job into ``out/eval/study-NAME`` (a finished one is read back)."""
    from tunelab.evaluate.config import EvalConfig
    from tunelab.eval_recipe import run_eval
    from tunelab.results import RunDir, read_result

    where = out / EVAL_DIR / f"study-{name}"
    if (where / EVAL_FILE).is_file():
        return read_result(where / EVAL_FILE)
    cfg = EvalConfig(model=job.model, adapter=adapter, output=str(where), **options)
    return run_eval(cfg, RunDir(where), model=model, tokenizer=tokenizer)


def _prefill(model: Any, tokenizer: Any, job: Job, out: Path) -> dict[int, Measure]:
    """Prefill-attack ASR at each k on the safety suite's held-out harmful prompts."""
    from tunelab.evaluate.prompts import harmful_prompts
    from tunelab.results import CurveResult, read_result
    from tunelab.safety.depth import prefill_attack

    ks = [int(k) for k in job.measure["prefill_k"]]
    where = out / EVAL_DIR / "study-prefill"
    if (where / EVAL_FILE).is_file():
        saved = read_result(where / EVAL_FILE)
        rows = saved.extra.get("by_k", [])
    else:
        prompts = [p["prompt"] for p in harmful_prompts(limit=job.measure["safety_limit"], split="test",
                                                        harmful_set=job.measure.get("harmful_set", "harmbench"))]
        found = prefill_attack(model, tokenizer, prompts, ks=ks, max_new_tokens=job.measure["max_new_tokens"])
        rows = [{k: v for k, v in row.items() if k != "records"} for row in found["by_k"]]
        curve = CurveResult(name="prefill", title="prefill-attack ASR vs k", xlabel="prefilled tokens k",
                            ylabel="ASR", model=job.model, adapter=job.adapter,
                            series=[{"label": job.arm, "x": [r["k"] for r in rows], "y": [r["asr"] for r in rows]}],
                            extra={"by_k": rows})
        curve.write(where)
    return {int(r["k"]): _rate(r["asr"], r["n"], r.get("ci95")) for r in rows}


def measure(job: Job, out: Path, adapter: str | None) -> dict[str, Measure]:
    """The job's measurements: utility, forgetting, safety, prefill ASR (privacy and cost: see :func:`run_job`)."""
    from tunelab.evaluate.loading import load_with_adapter

    m = job.measure
    metrics: dict[str, Measure] = {}
    model, tokenizer = load_with_adapter(job.model, adapter)
    model.eval()
    utility = _evaluate(model, tokenizer, job, adapter, out, "utility", task=m["test"], scorer=m["scorer"],
                        limit=m["utility_limit"])
    metrics["utility"] = _rate(utility.score, utility.n)
    if m.get("forgetting"):
        bench = _evaluate(model, tokenizer, job, adapter, out, "forgetting", task=m["forgetting"],
                          limit=m["forgetting_limit"])
        metrics["forgetting"] = _rate(bench.accuracy if bench.accuracy is not None else bench.score, bench.n)
    if m.get("safety"):
        safety = _evaluate(model, tokenizer, job, adapter, out, "safety", suite="safety", limit=m["safety_limit"],
                           max_new_tokens=m["max_new_tokens"], harmful_set=m.get("harmful_set", "harmbench"))
        ci = safety.intervals or {}
        metrics["asr"] = _rate(safety.asr, safety.n_harmful, ci.get("asr"))
        metrics["refusal"] = _rate(safety.refusal_rate, safety.n_harmful, ci.get("refusal_rate"))
        metrics["over_refusal"] = _rate(safety.over_refusal, safety.n_benign, ci.get("over_refusal"))
        if m.get("prefill_k"):
            for k, value in _prefill(model, tokenizer, job, out).items():
                metrics[prefill_metric(k)] = value
    return metrics


def _privacy(record: TrainRecord) -> tuple[dict[str, Measure], list[str]]:
    """ε_LB (with its ceiling), TPR@1%FPR, AUROC from the run's canary audit; the ledger's ε for DP runs."""
    from tunelab.privacy.accounting import Ledger
    from tunelab.privacy.results import PrivacyHeadline

    metrics: dict[str, Measure] = {}
    flags: list[str] = []
    if record.privacy:
        head = PrivacyHeadline.from_dict(record.privacy)
        metrics["epsilon_lb"] = Measure(head.epsilon_lb, n=head.audited_m or head.m, ceiling=head.epsilon_ceiling)
        if head.tpr_at_1pct_fpr is not None:
            metrics["tpr_at_1pct_fpr"] = Measure(head.tpr_at_1pct_fpr, n=head.m)
        metrics["auroc"] = Measure(head.auroc, n=head.m)
    if record.dp:
        ledger = Ledger(**record.dp)
        metrics["epsilon"] = Measure(float(ledger.epsilon))
        lb = metrics.get("epsilon_lb")
        if lb is not None and lb.value is not None and lb.value > ledger.epsilon:
            flags.append(f"ε_LB {lb.value:.2f} > ε {ledger.epsilon:.2f}: the audit contradicts the ledger")
    return metrics, flags


def _cost(out: Path, record: TrainRecord, peak_rss: float) -> dict[str, Measure]:
    from tunelab.adapters.storage import COMPACT_FILE, PEFT_WEIGHTS

    metrics = {"wall_time_s": Measure(record.wall_time_s), "tokens_per_s": Measure(record.tokens_per_s),
               "peak_rss_mb": Measure(round(peak_rss, 1)), "trainable_params": Measure(record.trainable_params)}
    files = [out / COMPACT_FILE] if (out / COMPACT_FILE).is_file() else [out / PEFT_WEIGHTS]
    if not files[0].is_file():  # full fine-tuning: the model's weights
        files = sorted(out.glob("*.safetensors"))
    metrics["adapter_bytes"] = Measure(float(sum(f.stat().st_size for f in files)))
    try:
        import torch

        if torch.cuda.is_available():
            metrics["peak_cuda_mb"] = Measure(torch.cuda.max_memory_allocated() / 2**20)
    except ImportError:  # pragma: no cover
        pass
    return metrics


def run_job(job: Job, root: Path) -> RunRecord:
    """Train (if the job trains) and measure; write and return the record."""
    out = root / job.dir
    record = RunRecord(job.arm, job.seed, job.dir, "pending", job.config_hash)
    out.mkdir(parents=True, exist_ok=True)
    (out / ARM_RECORD).unlink(missing_ok=True)
    from tunelab.layout import atomic_write_text

    atomic_write_text(out / HASH_FILE, job.config_hash)  # a worker started by hand resumes as the study's would
    if job.train is not None:
        if job.nproc_per_node > 1:
            train_distributed(job, root)
        else:
            train_arm(job, out)
        peak = _rss_mb()
        run = TrainRecord.read(out)
        adapter: str | None = str(out)
        if job.kind == "mask":  # a LoRI-D run only a LoRI-S arm needs: not measured
            record.status = "done"
            _write(record, out)
            return record
        record.metrics.update(_cost(out, run, peak))
        privacy, record.flags = _privacy(run)
        record.metrics.update(privacy)
        if run.safety_monitor:
            from tunelab.safety.monitor import MonitorRecord

            record.stopped = MonitorRecord.from_dict(run.safety_monitor).stopped
    else:
        adapter = job.adapter
    record.metrics = {**measure(job, out, adapter), **record.metrics}
    record.status = "done"
    _write(record, out)
    return record


def _write(record: RunRecord, out: Path) -> None:
    from dataclasses import asdict

    from tunelab.layout import atomic_write_text

    atomic_write_text(out / ARM_RECORD, json.dumps(asdict(record), indent=1))


def read_record(path: Path) -> RunRecord:
    from tunelab.results import read_json_object

    return RunRecord.of(read_json_object(path, "study arm record"))


def _train_only(job: Job, root: Path) -> int:
    """One of the arm's torchrun processes: train (the worker that launched it measures)."""
    try:
        train_arm(job, root / job.dir, clear=False)
    except TunelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tunelab.study.worker STUDY/jobs/NAME.json [--train-only]``."""
    args = sys.argv[1:] if argv is None else argv
    job_file = Path(args[0])
    job = Job.read(job_file)
    root = job_file.parent.parent
    from tunelab.cli.common import quiet_libraries

    quiet_libraries()
    if TRAIN_ONLY in args[1:]:
        return _train_only(job, root)
    try:
        run_job(job, root)
    except TunelabError as exc:
        record = RunRecord(job.arm, job.seed, job.dir, "failed", job.config_hash, error=str(exc))
        (root / job.dir).mkdir(parents=True, exist_ok=True)
        _write(record, root / job.dir)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 — a crash in one arm is that arm's failure, with its traceback logged
        traceback.print_exc()
        record = RunRecord(job.arm, job.seed, job.dir, "failed", job.config_hash,
                           error=f"{type(exc).__name__}: {exc}".splitlines()[0])
        (root / job.dir).mkdir(parents=True, exist_ok=True)
        _write(record, root / job.dir)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
