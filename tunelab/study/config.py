"""``tunelab study``'s config: the model, the data, the shared budget, the seeds and the arms.

A study is written as YAML (``tunelab study study.yaml``) or as flags for the common case
(``tunelab study --data train.jsonl --task-scorer exact --arms lora,lori-s,dp-sgd@4``); flags override
the file. An **arm** is a name plus a delta over ``tunelab train``'s config::

    arms:
      - lora                        # a method: lora, lori-d, lori-s, lota, full
      - dp-sgd@4                    # an update rule at ε = 4 (on LoRA unless the arm says otherwise)
      - name: safe-lori-s           # a mapping: any `tunelab train` option but the shared footing
        method: lori-s
        init_from: runs/safety-adapter
        disjoint: true
      - name: full-4gpu             # trained under torchrun, 4 processes with --fsdp (measured in one)
        method: full
        nproc_per_node: 4

The shared footing (model, data, seed, output, the budget, the canaries) is the study's, not an
arm's: setting it in an arm is an error, as are unknown keys, duplicate names, an ε on an arm whose
optimizer is not private, and a scorer that does not fit the data — each one line naming the YAML
line and field, before anything is trained. A ``base`` arm (no training) is always measured.
Torch-free until :meth:`StudyConfig.validate` (which checks the arms against ``tunelab train``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.options import option
from tunelab.registry import Registry

BASE_ARM = "base"
# `tunelab train` options that are the study's shared footing, not an arm's to change
FOOTING = ("model", "data", "output", "seed", "overwrite", "resume", "max_steps", "epochs", "batch_size",
           "max_length", "canaries", "canary_family", "canary_secret_len", "canary_prefix", "canary_seed",
           "canary_new_token_rows", "trust_remote_code", "fsdp")
_ARM = re.compile(r"^(?P<name>[A-Za-z][\w.-]*?)(?:@(?P<eps>\d+(?:\.\d+)?))?(?P<safety>\+safety)?$")
SCORERS = ("numeric", "exact", "contains", "choice", "code")
DEFAULT_HARMFUL_SET = "harmbench"  # = EvalConfig.harmful_set's default


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(part) for part in _split(text)]
    except ValueError:
        raise TunelabError(f"--seeds must be comma-separated integers, got '{text}'") from None


def _ks(text: str) -> list[int]:
    if text.strip().lower() in ("", "none", "off"):
        return []
    try:
        return [int(part) for part in _split(text)]
    except ValueError:
        raise TunelabError(f"--prefill-k must be comma-separated integers (or 'off'), got '{text}'") from None


@dataclass(kw_only=True)
class StudyConfig:
    """Everything ``tunelab study`` needs; :meth:`validate` runs before any data is split or model loaded."""

    model: str = option("smollm2-135m", show_default="smollm2-135m", help="alias, local dir or hub id")
    task: str | None = option(None, help="a built-in task (`tunelab tasks list`): its data is generated and split")
    data: str | None = option(None, help="training data (JSONL/CSV/Parquet with prompt/response)")
    test_data: str | None = option(None, help="held-out data scored for utility", show_default="a held-out part of --data")
    heldout: float = option(0.2, gt=0, lt=1, show_default="0.2",
                            help="fraction of --data held out when no --test-data is given (split once, shared)")
    task_scorer: str | None = option(None, choices=SCORERS, help="numeric, exact, contains, choice or code",
                                     show_default="the task's")
    n_train: int = option(600, min=1, show_default="600", help="--task: generated training examples")
    arms: list[Any] = option(default_factory=lambda: ["lora", "lori-s", "full"], parse=_split,
                             show_default="lora,lori-s,full", metavar="ARM,...",
                             help="comma-separated: a method (lora, lori-d, lori-s, lota, full), an optimizer "
                                  "at ε (dp-sgd@4, dp-zo@4), +safety to continue from tunelab's safety adapter "
                                  "(lori-s+safety); YAML: mappings too")
    seeds: list[int] = option(default_factory=lambda: [0], parse=_seeds, show_default="0",
                              help="comma-separated training seeds, paired across arms")
    reference: str = option("lora", show_default="lora", help="the arm paired differences are taken against")
    # the shared budget
    max_steps: int | None = option(60, min=1, show_default="60", help="optimizer steps per arm (None: --epochs)")
    epochs: int = option(1, min=1, show_default="1")
    batch_size: int = option(8, min=1, show_default="8")
    max_length: int = option(256, min=1, show_default="256", help="tokens per training example")
    train: dict[str, Any] = option(default_factory=dict, hidden=True,
                                   help="`tunelab train` options shared by every arm (YAML only)")
    # measurements
    utility_limit: int = option(200, min=1, show_default="200", help="held-out examples scored")
    forgetting: str | None = option("arc-easy", show_default="arc-easy",
                                    help="general benchmark for forgetting ('off' to skip)")
    forgetting_limit: int = option(200, min=1, show_default="200", help="benchmark questions")
    safety: bool = option(True, flag="--safety/--no-safety", show_default="--safety",
                          help="ASR / refusal on held-out HarmBench, over-refusal on benign look-alikes")
    safety_limit: int = option(50, min=1, show_default="50", help="harmful prompts (and benign look-alikes)")
    harmful_set: str = option(DEFAULT_HARMFUL_SET, show_default="harmbench",
                              help="built-in harmful prompts for safety and prefill ASR: harmbench or strongreject")
    max_new_tokens: int = option(64, min=1, show_default="64", help="safety answers' length")
    prefill_k: list[int] = option(default_factory=lambda: [5], parse=_ks, show_default="5", flag="--prefill-k",
                                  help="prefill-attack ASR at these k ('off' to skip)")
    canaries: int = option(32, min=0, show_default="32",
                           help="canaries planted in every training arm (one set for all; 0: no privacy audit)")
    canary_family: str = option("random", show_default="random", help="canary family (`tunelab train --canary-family`)")
    monitor_safety: int = option(0, min=0, show_default="0 (off)", help="safety-drift monitor every K steps in every arm")
    # running
    jobs: int = option(1, min=1, show_default="1", help="arms run at once (subprocesses; the cores are split)")
    nproc_per_node: int = option(1, min=1, show_default="1 (in the worker's process)",
                                 help="train every arm under torchrun with N processes (--fsdp; an arm's "
                                      "own nproc_per_node wins); the batch is split over them")
    preset: str | None = option(None, help="a preset study: quick")
    output: str = option("runs/study", show_default="runs/study", help="study directory")
    config_file: Path | None = option(None, hidden=True)  # set by the CLI: where the YAML came from (errors name it)

    def __post_init__(self) -> None:
        apply_preset(self)  # a preset fills the options left at their defaults (file and flags win)

    # ------------------------------------------------------------------ validation
    def where(self, name: str, at: tuple[int | str, ...] = ()) -> str:
        """``FILE:LINE: name…`` when ``name`` came from the YAML file, else ``--name``."""
        from tunelab.configs import locate

        path = "".join(f"[{a}]" if isinstance(a, int) else f".{a}" for a in at)
        if self.config_file is not None:
            return f"{locate(self.config_file, StudyConfig, name, at)}: {name}{path}"
        return f"--{name.replace('_', '-')}" + (f" {path.lstrip('.')}" if path else "")

    def validate(self) -> None:
        """Every rule that can be checked before data is split or a model is loaded."""
        if (self.task is None) == (self.data is None):
            raise TunelabError("give --task (a built-in task) or --data (a training file), not both" if self.task
                               else "give --task (a built-in task, `tunelab tasks list`) or --data (a training file)")
        if self.test_data is not None and self.data is None:
            raise TunelabError("--test-data goes with --data (a --task generates its own test split)")
        if self.task is not None:
            from tunelab.tasks import get_task

            task = get_task(self.task)
            if self.task_scorer is not None and self.task_scorer != task.scorer:
                raise TunelabError(f"{self.where('task_scorer')}: task '{self.task}' is scored by '{task.scorer}'")
        elif self.task_scorer is None:
            raise TunelabError("--data needs --task-scorer (numeric, exact, contains, choice or code)")
        for name in ("data", "test_data"):
            value = getattr(self, name)
            if value is not None and not Path(value).exists():
                raise TunelabError(f"{self.where(name)}: file not found: {value}")
        if self.forgetting is not None and self.forgetting.lower() not in ("off", "none"):
            from tunelab.evaluate.benchmarks import BENCHMARKS

            BENCHMARKS.get(self.forgetting)  # unknown → one line naming the known ones
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise TunelabError(f"{self.where('seeds')}: give distinct seeds, e.g. 0,1,2")
        from tunelab.evaluate.config import HARMFUL_SETS

        if self.harmful_set not in HARMFUL_SETS:
            raise TunelabError(f"{self.where('harmful_set')}: {HARMFUL_SETS.unknown_message(self.harmful_set)}")
        if any(k < 0 for k in self.prefill_k):
            raise TunelabError(f"{self.where('prefill_k')}: k must be >= 0")
        self._check_train(self.train, "train", ())
        arms = self.arm_specs()
        names = [a.name for a in arms]
        if self.reference not in names and self.reference != BASE_ARM:
            raise TunelabError(f"{self.where('reference')}: '{self.reference}' is not an arm "
                               f"(arms: {', '.join([BASE_ARM, *names])})")

    def _check_train(self, values: dict[str, Any], name: str, at: tuple[int | str, ...]) -> dict[str, Any]:
        """``values`` as `tunelab train` options: known, not the footing, of the right type."""
        from tunelab.configs import check_types, flat_names
        from tunelab.finetune import TrainConfig

        known = {f for f in TrainConfig.__dataclass_fields__} | set(flat_names(TrainConfig))
        for key in values:
            flat = str(key).replace("-", "_")
            if flat in FOOTING:
                raise TunelabError(f"{self.where(name, (*at, key))}: '{key}' is the study's shared footing; "
                                   "set it at the top level of the study, not per arm")
            if flat not in known:
                raise TunelabError(f"{self.where(name, (*at, key))}: unknown `tunelab train` option '{key}'")
        checked: dict[str, Any] = {}
        for key, value in values.items():
            flat = str(key).replace("-", "_")
            try:
                checked.update(check_types(TrainConfig, {flat: value}))
            except TunelabError as exc:  # "--lr: expected a number, got 'fast'" → at the arm's line for `lr`
                why = str(exc).split(": ", 1)[-1]
                raise TunelabError(f"{self.where(name, (*at, key))}: {why}") from None
        return checked

    def arm_specs(self) -> list["ArmSpec"]:
        """The arms, parsed and checked (``base`` not among them: it is always measured)."""
        from tunelab.finetune import RULES

        arms: list[ArmSpec] = []
        for i, item in enumerate(self.arms):
            if BASE_ARM in (item, item.get("name") if isinstance(item, dict) else None):
                raise TunelabError(f"{self.where('arms', (i,))}: 'base' is measured in every study; do not list it")
            if isinstance(item, str):
                arm = parse_arm(item, where=self.where("arms", (i,)))
            elif isinstance(item, dict):
                item = dict(item)
                name = item.pop("name", None)
                if not isinstance(name, str) or not name:
                    raise TunelabError(f"{self.where('arms', (i,))}: an arm mapping needs a 'name'")
                shorthand = parse_arm(name, where=self.where("arms", (i, "name")), strict=False)
                safety_first = item.pop("safety_first", shorthand.safety_first)
                if not isinstance(safety_first, bool):
                    raise TunelabError(f"{self.where('arms', (i, 'safety_first'))}: expected true or false")
                nproc = item.pop("nproc_per_node", item.pop("nproc-per-node", None))
                if nproc is not None and (isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1):
                    raise TunelabError(f"{self.where('arms', (i, 'nproc_per_node'))}: expected an integer >= 1 "
                                       f"(processes training the arm), got {nproc!r}")
                delta = {**shorthand.train, **{str(k).replace("-", "_"): v for k, v in item.items()}}
                if "epsilon" in delta:  # `epsilon: 4` is target_epsilon
                    delta["target_epsilon"] = delta.pop("epsilon")
                arm = ArmSpec(name, delta, safety_first, own_nproc=nproc)
            else:
                raise TunelabError(f"{self.where('arms', (i,))}: an arm is a name (lora, dp-sgd@4) or a mapping")
            if any(a.name == arm.name for a in arms):
                raise TunelabError(f"{self.where('arms', (i,))}: arm '{arm.name}' is given twice")
            at = (i,)
            arm.train = self._check_train(arm.train, "arms", at)
            if arm.safety_first:
                from tunelab.safety.recipe import SAFETY_RECIPE

                method = arm.train.get("method", self.train.get("method", "lora"))
                if method not in SAFETY_RECIPE:
                    raise TunelabError(f"{self.where('arms', at)}: arm '{arm.name}': tunelab's safety recipe trains "
                                       f"{', '.join(SAFETY_RECIPE)}, not {method}")
                if arm.train.get("init_from") is not None:
                    raise TunelabError(f"{self.where('arms', at)}: arm '{arm.name}': safety_first and init_from "
                                       "both say where to start; give one")
            optimizer = arm.train.get("optimizer", self.train.get("optimizer", "adamw"))
            if not RULES.get(optimizer).private and any(
                    arm.train.get(k) is not None for k in ("target_epsilon", "noise_multiplier")):
                raise TunelabError(f"{self.where('arms', at)}: arm '{arm.name}' sets ε but its optimizer "
                                   f"'{optimizer}' is not private (dp-sgd, dp-zo)")
            arm.nproc_per_node = self.nproc_per_node if arm.own_nproc is None else arm.own_nproc
            if arm.nproc_per_node > 1:
                self._check_distributed(arm, (i, "nproc_per_node") if arm.own_nproc is not None else None)
            arms.append(arm)
        if not arms:
            raise TunelabError(f"{self.where('arms')}: give at least one arm")
        return arms

    def _check_distributed(self, arm: "ArmSpec", at: tuple[int | str, ...] | None) -> None:
        """An arm trained in N > 1 processes: the study's batch splits over them, and `tunelab train
        --fsdp` takes the arm's options (what it refuses is said here, before anything is trained)."""
        from tunelab.finetune import TrainConfig

        n = arm.nproc_per_node
        where = self.where("arms", at) if at is not None else self.where("nproc_per_node")
        what = f"arm '{arm.name}' in {n} processes"
        if self.batch_size % n:
            raise TunelabError(f"{where}: {what}: batch_size {self.batch_size} does not split over {n} processes "
                               "(each takes batch_size / N examples, so a step sees the study's batch)")
        settings = {"data": "-", "output": "-", **self.train, **arm.train, "batch_size": self.batch_size // n}
        if self.monitor_safety:
            settings["monitor_safety"] = self.monitor_safety
        try:
            TrainConfig(**settings).validate()
        except (TunelabError, TypeError):
            return  # wrong in one process too: that is said where it always was, not here
        try:
            TrainConfig(**{**settings, "fsdp": True}).validate()
        except TunelabError as exc:
            raise TunelabError(f"{where}: {what} trains with --fsdp under torchrun, and {exc}") from None

    def digest(self) -> str:
        """A short hash of everything shared by the arms (the footing and the measurements)."""
        skip = ("arms", "jobs", "nproc_per_node", "preset", "config_file", "output")
        keep = {k: v for k, v in self.__dict__.items() if k not in skip}
        if keep.get("harmful_set") == DEFAULT_HARMFUL_SET:  # a study from before the option hashes as it did
            del keep["harmful_set"]
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class ArmSpec:
    """One arm: its name and its delta over the shared `tunelab train` config (flat option names)."""

    name: str
    train: dict[str, Any] = field(default_factory=dict)
    safety_first: bool = False  # continue from tunelab's safety adapter of the arm's method (trained once)
    own_nproc: int | None = None  # the arm's own nproc_per_node (None: the study's)
    nproc_per_node: int = 1       # processes that train it (> 1: under torchrun with --fsdp)

    @property
    def epsilon(self) -> float | None:
        value = self.train.get("target_epsilon")
        return None if value is None else float(value)


def parse_arm(text: str, *, where: str = "--arms", strict: bool = True) -> ArmSpec:
    """``lora`` → method lora; ``dp-sgd@4`` → optimizer dp-sgd at target ε 4 (on LoRA).

    ``strict=False`` (an arm mapping's name): a name that is neither a method nor an optimizer is
    just a name, its mapping says what it trains.
    """
    from tunelab.adapters import ADAPTER_METHODS
    from tunelab.finetune import RULES

    match = _ARM.match(text.strip())
    if match is None:
        raise TunelabError(f"{where}: bad arm '{text}' (a method such as lora, or an optimizer at ε such as dp-sgd@4)")
    name, eps = match["name"], match["eps"]
    train: dict[str, Any] = {}
    if name in ADAPTER_METHODS:
        train["method"] = ADAPTER_METHODS.canonical(name)
    elif name in RULES and name != "adamw":
        train["optimizer"] = RULES.canonical(name)
    elif strict:
        known = [*ADAPTER_METHODS.names(), *(r for r in RULES.names() if r != "adamw")]
        raise TunelabError(f"{where}: unknown arm '{name}'; an arm is one of {', '.join(known)} "
                           "(optimizers take @ε), or a mapping with a name")
    if eps is not None:
        if "optimizer" not in train or not RULES.get(train["optimizer"]).private:
            raise TunelabError(f"{where}: '{text}': @ε goes with a private optimizer (dp-sgd@4, dp-zo@4)")
        train["target_epsilon"] = float(eps)
    arm = ArmSpec(text.strip(), train)
    if match["safety"]:
        arm.safety_first = True
        method = train.get("method", "lora")
        if ADAPTER_METHODS.get(method).supports_disjoint:
            train["disjoint"] = True  # LoRI-S, LoTA: the task's updates kept off the safety adapter's
    return arm


# --------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    """Values a preset puts under the file and flags (which still override it)."""

    description: str
    values: dict[str, Any]


PRESETS: Registry[Preset] = Registry("study preset")
PRESETS.register("quick", Preset(
    "smollm2-135m on reverse_words: lora, lori-s, full, dp-sgd@8 and the safety-first pair lora+safety, "
    "lori-s+safety; one seed; small evaluation sets (≤ 30 min on 2 CPU cores)",
    dict(task="reverse_words", n_train=320, arms=["lora", "lori-s", "full", "dp-sgd@8", "lora+safety", "lori-s+safety"],
         seeds=[0], max_steps=40,
         batch_size=8, max_length=128, utility_limit=60, forgetting_limit=60, safety_limit=24, max_new_tokens=48,
         prefill_k=[5], canaries=24, train={"rank": 16, "alpha": 32.0}, output="runs/study-quick")))


def apply_preset(cfg: StudyConfig) -> StudyConfig:
    """``cfg`` with the preset's values for every option left at its default (the file and the
    flags still override a preset: set an option to change it)."""
    if cfg.preset is None:
        return cfg
    preset = PRESETS.get(cfg.preset)
    defaults = StudyConfig()
    for key, value in preset.values.items():
        if getattr(cfg, key) == getattr(defaults, key):
            setattr(cfg, key, value)
    cfg.preset = None  # applied: validating or saving it again changes nothing
    return cfg


__all__ = ["StudyConfig", "ArmSpec", "parse_arm", "PRESETS", "Preset", "apply_preset", "BASE_ARM", "FOOTING"]
