"""A study's plan: the shared footing (one split, one canary set) and one job per arm × seed.

A :class:`Job` is a JSON-able description of what one worker does: train an arm (or nothing, for
the base model and for the "before" of an ``init_from`` adapter) and measure it. Its
``config_hash`` covers everything that shapes its numbers (the resolved training config, the data's
hash, the measurement settings), so a re-run skips a job whose directory holds a finished record
with the same hash and redoes one whose arm changed.

Layout of a study directory::

    STUDY/
      data/train.jsonl, data/test.jsonl     the one split every arm uses
      canaries.json                         the one canary set every training arm plants
      jobs/NAME-sSEED.json                  each job, as its worker reads it
      arms/NAME/seedSEED/                   an ordinary `tunelab train` run dir (+ eval/study-*/)
      arms/base/                            the base model's measurements
      study.json                            written last, atomically (tunelab.study.results)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.layout import atomic_write_text
from tunelab.study.config import BASE_ARM, DEFAULT_HARMFUL_SET, ArmSpec, StudyConfig

ARM_RECORD = "study-arm.json"  # a job's RunRecord, written last in its directory
HASH_FILE = ".study-hash"      # in a job's dir: the config hash it was started with
CANARIES = "canaries.json"


@dataclass
class Footing:
    """What every arm shares: the split, the scorer, the canary set."""

    train: Path
    test: Path
    scorer: str
    task: str
    n_train: int
    n_test: int
    train_sha256: str
    test_sha256: str
    canaries: Path | None


@dataclass
class Job:
    """One worker's work: train ``train`` (None: nothing) into ``dir``, then measure it."""

    arm: str
    seed: int
    dir: str                       # relative to the study dir
    kind: str                      # "base" | "before" | "train" | "mask" (a LoRI-D run a LoRI-S arm needs)
    model: str
    train: dict[str, Any] | None   # `tunelab train` options (flat), None for base/before
    adapter: str | None = None     # before: the adapter measured (the init_from run)
    before: str | None = None      # the job whose safety is this arm's "before" (its dir)
    measure: dict[str, Any] = field(default_factory=dict)
    canaries: str | None = None    # the shared canary file (absolute)
    config_hash: str = ""
    nproc_per_node: int = 1        # > 1: trained under torchrun in this many processes (then measured in one)

    def name(self) -> str:
        return f"{self.arm}-s{self.seed}" if self.kind in ("train", "mask") else self.arm

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=str)

    @classmethod
    def read(cls, path: Path) -> "Job":
        from tunelab.results import read_json_object

        return cls(**read_json_object(path, "study job"))


def job_file(job: Job, root: Path) -> Path:
    """``STUDY/jobs/NAME.json``: where a job's worker reads it."""
    return root / "jobs" / f"{job.name().replace(':', '-')}.json"


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def split_data(cfg: StudyConfig, root: Path) -> Footing:
    """Write (once) the split every arm uses; a study dir split differently is refused."""
    from tunelab.data import data_sha256, read_rows

    data_dir = root / "data"
    train, test = data_dir / "train.jsonl", data_dir / "test.jsonl"
    if cfg.task is not None:
        from tunelab.tasks import get_task

        task = get_task(cfg.task)
        scorer, name = task.scorer, cfg.task
        rows = {"train": task.examples("train", cfg.n_train, seed=0),
                "test": task.examples("test", cfg.utility_limit, seed=0)}
    else:
        scorer, name = str(cfg.task_scorer), Path(str(cfg.data)).stem
        records = [row for _, row in read_rows(cfg.data)]
        if cfg.test_data is not None:
            rows = {"train": records, "test": [row for _, row in read_rows(cfg.test_data)]}
        else:
            import random

            order = list(range(len(records)))
            random.Random("tunelab-study-split").shuffle(order)  # fixed: the split never depends on a seed
            cut = max(1, round(len(records) * cfg.heldout))
            if cut >= len(records):
                raise TunelabError(f"{cfg.data}: {len(records)} rows are too few to hold out {cfg.heldout:g} of them")
            held = set(order[:cut])
            rows = {"train": [r for i, r in enumerate(records) if i not in held],
                    "test": [r for i, r in enumerate(records) if i in held]}
    text = {k: "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in v) for k, v in rows.items()}
    for split, path in (("train", train), ("test", test)):
        if path.is_file() and path.read_text() != text[split]:
            raise TunelabError(f"{path} holds another {split} split (the study's data or task changed); "
                               "use a new --output for a new study")
        if not path.is_file():
            data_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text[split])
    return Footing(train, test, scorer, name, len(rows["train"]), len(rows["test"]), data_sha256(train),
                   data_sha256(test), None)


def make_canary_set(cfg: StudyConfig, root: Path, footing: Footing) -> Path | None:
    """The one canary set of the study (drawn once with the model's tokenizer, seed 0)."""
    if not cfg.canaries:
        return None
    path = root / CANARIES
    if path.is_file():
        from tunelab.privacy.canaries import CanarySet

        saved = CanarySet.load(path)
        if len(saved) != cfg.canaries or saved.family != cfg.canary_family:
            raise TunelabError(f"{path} holds {len(saved)} '{saved.family}' canaries, the study asks for "
                               f"{cfg.canaries} '{cfg.canary_family}'; use a new --output")
        return path
    from transformers import AutoTokenizer

    from tunelab.data import read_rows
    from tunelab.models import resolve_model_path
    from tunelab.privacy.canaries import make_canaries
    from tunelab.privacy.train_config import CanaryConfig

    spec = CanaryConfig(count=cfg.canaries, family=cfg.canary_family)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(cfg.model))
    rows = [row for _, row in read_rows(footing.train)]
    canary_set = make_canaries(spec.family, spec.count, spec.secret_len, 0, tokenizer, data_rows=rows,
                               prefix_style=spec.prefix)
    canary_set.save(path)
    return path


def measure_spec(cfg: StudyConfig, footing: Footing) -> dict[str, Any]:
    """The measurements every job makes (the same prompts and questions for every arm)."""
    forgetting = None if cfg.forgetting is None or cfg.forgetting.lower() in ("off", "none") else cfg.forgetting
    spec = {"test": str(footing.test), "scorer": footing.scorer, "utility_limit": cfg.utility_limit,
            "forgetting": forgetting, "forgetting_limit": cfg.forgetting_limit, "safety": cfg.safety,
            "safety_limit": cfg.safety_limit, "max_new_tokens": cfg.max_new_tokens,
            "prefill_k": list(cfg.prefill_k) if cfg.safety else []}
    # Only when it is not the default: the jobs' config hashes of studies that never set it stay
    # what they were (a finished arm is reused only when its hash matches).
    if cfg.harmful_set != DEFAULT_HARMFUL_SET:
        spec["harmful_set"] = cfg.harmful_set
    return spec


def plan_jobs(cfg: StudyConfig, arms: list[ArmSpec], footing: Footing, root: Path) -> list[Job]:
    """The jobs in the order they run: base, the "before" of each init_from, masks, then arm × seed."""
    from tunelab.adapters import ADAPTER_METHODS
    from tunelab.data import data_sha256

    measure = measure_spec(cfg, footing)
    data_key = (footing.train_sha256, footing.test_sha256)
    base = Job(BASE_ARM, cfg.seeds[0], f"arms/{BASE_ARM}", "base", cfg.model, None, measure=measure)
    base.config_hash = _hash("base", cfg.model, measure, data_key)
    jobs = [base]
    befores: dict[str, Job] = {}
    masks: dict[tuple[str, int], str] = {}
    for arm in arms:
        init = arm.train.get("init_from", cfg.train.get("init_from"))
        if init is not None and str(init) not in befores:
            if not Path(str(init)).is_dir():
                raise TunelabError(f"arm '{arm.name}': init_from directory not found: {init}")
            job = Job(f"before:{Path(str(init)).name}", cfg.seeds[0], f"arms/before-{Path(str(init)).name}", "before",
                      cfg.model, None, adapter=str(Path(str(init)).resolve()), measure=measure)
            job.config_hash = _hash("before", cfg.model, job.adapter, measure, data_key)
            befores[str(init)] = job
            jobs.append(job)
    # safety_eval_limit 0: the study measures safety itself (the init_from check would do it twice)
    shared = {"model": cfg.model, "data": str(footing.train), "max_steps": cfg.max_steps, "epochs": cfg.epochs,
              "batch_size": cfg.batch_size, "max_length": cfg.max_length, "save_every": 10, "safety_eval_limit": 0,
              "canaries": cfg.canaries, "canary_family": cfg.canary_family, **cfg.train}
    if cfg.monitor_safety:
        shared["monitor_safety"] = cfg.monitor_safety
    canary_hash = data_sha256(footing.canaries) if footing.canaries else None
    train_jobs: list[Job] = []
    for seed in cfg.seeds:
        for arm in arms:
            settings = {**shared, **arm.train, "seed": seed, "output": str(root / "arms" / arm.name / f"seed{seed}")}
            if arm.nproc_per_node > 1:  # FSDP over N processes, each taking its share of the study's batch
                settings.update(fsdp=True, batch_size=cfg.batch_size // arm.nproc_per_node)
            method = settings.get("method", "lora")
            spec = ADAPTER_METHODS.get(method)
            source = spec.mask_source if spec.needs_mask_from else None
            if source and settings.get("mask_from") is None:
                # LoRI-S: the mask comes from a LoRI-D run of the same seed (an arm, or a run of its own)
                mask_arm = next((a.name for a in arms if a.train.get("method") == source
                                 and set(a.train) <= {"method"}), None)
                # (continuing from an init_from adapter: a LoRI-D run that continued from the same one)
                start = settings.get("init_from")
                if start is not None:
                    mask_arm = None
                key = (source, seed, str(start))
                if mask_arm is None and key not in masks:
                    label = f"_{source}-mask" + (f"-{Path(str(start)).name}" if start is not None else "")
                    mdir = root / "arms" / label / f"seed{seed}"
                    extra = {"init_from": start} if start is not None else {}
                    mjob = Job(label, seed, str(mdir.relative_to(root)), "mask", cfg.model,
                               {**shared, "method": source, "seed": seed, "output": str(mdir), "canaries": 0, **extra})
                    mjob.config_hash = _hash("mask", mjob.train, data_key)
                    train_jobs.append(mjob)
                    masks[key] = str(mdir)
                settings["mask_from"] = (masks[key] if mask_arm is None
                                         else str(root / "arms" / mask_arm / f"seed{seed}"))
            init = settings.get("init_from")
            job = Job(arm.name, seed, f"arms/{arm.name}/seed{seed}", "train", cfg.model, settings, measure=measure,
                      canaries=str(footing.canaries) if footing.canaries else None,
                      before=befores[str(init)].dir if init is not None else base.dir,
                      nproc_per_node=arm.nproc_per_node)
            # an arm in one process hashes exactly as before nproc_per_node existed (a study's finished
            # arms stay finished); N processes are part of the hash only when N > 1
            spread = ({"nproc_per_node": arm.nproc_per_node},) if arm.nproc_per_node > 1 else ()
            job.config_hash = _hash("train", settings, measure, data_key, canary_hash, *spread)
            train_jobs.append(job)
    # masks and the LoRI-D arms they come from run before the LoRI-S arms that read them
    needed = {j.train["mask_from"] for j in train_jobs if j.train and j.train.get("mask_from")}
    first = [j for j in train_jobs if j.train and j.train["output"] in needed]
    jobs += first + [j for j in train_jobs if j not in first]
    return jobs


__all__ = ["ARM_RECORD", "CANARIES", "HASH_FILE", "Footing", "Job", "job_file", "split_data", "make_canary_set", "measure_spec", "plan_jobs"]
