"""The config of ``tunelab audit multi-turn`` (answer stability under "Think again.").

Light on purpose (no torch): the CLI builds the command's flags from :class:`MultiTurnConfig`
when it is imported; the run is the job :func:`tunelab.inspect.multiturn.run_multiturn`
(``run_multiturn(cfg, run_dir=None, *, model=None, tokenizer=None, progress=True) -> MultiTurnResult``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.options import check_fields, int_ranges, option
from tunelab.results import RunDir


@dataclass
class MultiTurnConfig:
    """Everything ``tunelab audit multi-turn`` needs; ``validate`` runs before any model is loaded.

    There is no plain-text mode: a conversation needs the chat template.
    """

    model: str = option("smollm2-135m", help="alias, local dir or hub id", show_default="smollm2-135m")
    adapter: str | None = option(None, help="PEFT adapter or tunelab run dir (merged before hooking)")
    task: str = option("arc-easy", help="a benchmark, arithmetic, reverse_words, or a task file with --scorer",
                       show_default="arc-easy")
    scorer: str | None = option(None, help="for a task file: choice, numeric, exact or contains")  # task files only
    limit: int = option(100, min=1, help="questions", show_default="100")
    seed: int = option(0, help="question sample and bootstrap seed", show_default="0")
    turns: int = option(9, min=2, why="a first answer and at least one follow-up", help="turns, the first answer included",
                        show_default="9")
    follow_up: str = option("Think again.", help="what the user says after each answer", show_default="'Think again.'")
    reword: bool = option(False, flag="--reword/--no-reword", help="the follow-up also restates the question",
                          show_default="--no-reword")
    layers: list[int] | None = option(None, parse=int_ranges("--layers"), help="probe layers, e.g. 3,6,9",
                                      show_default="every 3rd layer and the last")  # None: every 3rd plus the last
    batch_size: int = option(16, min=1, help="sequences per forward", show_default="16")
    max_new_tokens: int = option(32, min=1, help="text-scored tasks: answer length", show_default="32")
    bootstrap: int = option(1000, min=0, why="0: no confidence intervals", help="bootstrap resamples for the CIs; 0: none",
                            show_default="1000")
    bf16: bool = option(False, flag="--bf16/--no-bf16", help="bf16 autocast")
    output: str | None = option(None, help="results dir",
                                show_default="ADAPTER/inspect/multiturn-TASK or runs/inspect/multiturn-MODEL-TASK")

    def validate(self) -> None:
        """Raise TunelabError for anything wrong that can be seen without loading a model."""
        check_fields(self)  # --turns >= 2, --limit, --batch-size, --max-new-tokens >= 1, --bootstrap >= 0
        if not self.follow_up.strip():
            raise TunelabError("--follow-up must not be empty (e.g. 'Think again.')")
        if self.layers is not None:
            if not self.layers:
                raise TunelabError("--layers needs at least one layer index")
            if any(layer < 0 for layer in self.layers):
                raise TunelabError(f"--layers must be >= 0, got {','.join(map(str, self.layers))}")
        if self.adapter is not None and not Path(self.adapter).is_dir():
            raise TunelabError(f"adapter directory not found: {self.adapter}")

    def output_dir(self) -> Path:
        """``--output``, else next to the adapter, else under ``runs/inspect``."""
        from tunelab.inspect.run import _default_output

        task = Path(self.task).stem if Path(self.task).suffix else self.task  # a task file: its name only
        return Path(self.output) if self.output else _default_output("multiturn", self.model, self.adapter, task)

    def run_dir(self) -> RunDir:
        """The job's default :class:`RunDir` (:meth:`output_dir`; rewritten on every run, as always)."""
        return RunDir(self.output_dir(), what="a multi-turn audit")


__all__ = ["MultiTurnConfig"]
