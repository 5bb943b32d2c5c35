"""The config of ``tunelab merge``: each option declared once, on its field.

Light on purpose (no torch): the CLI builds the command's flags from it when it is imported, and a
caller in Python (a study) builds one without the CLI. :func:`tunelab.merge.run.run_merge` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.layout import RUN_FILE
from tunelab.options import option
from tunelab.results import RunDir

# PEFT pitfall: add_weighted_adapter silently does nothing when the target exists. Refuse loudly.
NOT_EMPTY = "--output {path} exists and is not empty; pass --overwrite to replace it"


def merge_run_dir(out: str | Path) -> RunDir:
    """A merge's :class:`~tunelab.results.RunDir`: ``tunelab.json`` marks it finished; any non-empty directory
    is refused without ``--overwrite``."""
    return RunDir(Path(out), marker=RUN_FILE, not_empty=NOT_EMPTY)


def _names(text: str) -> list[str] | None:
    return text.split(",") if text else None


@dataclass(kw_only=True)
class MergeConfig:
    """Everything ``tunelab merge`` needs (:func:`tunelab.merge.run.merge_adapters` checks the values)."""

    adapters: list[Path] = option(flag="-", metavar="DIR...", help="adapter / LoTA run dirs to merge")
    output: Path = option(help="the merged adapter or model directory")
    weights: str = option(help="one weight per adapter, comma-separated, e.g. 0.5,0.5 (negative subtracts)")
    method: str = option("cat", help="cat, linear, task-arithmetic, ties, dare-linear or dare-ties")
    density: float | None = option(None, show_default="ties 0.2, dare 0.5", help="ties/dare: fraction kept, in (0, 1]")
    seed: int = option(0, help="dare: seed of the random drops")
    to_model: bool = option(False, flag="--to-model", help="cat/linear: write base + ΔW as a model instead of a PEFT adapter")
    model: str | None = option(None, show_default="the one the adapters record", help="base model")
    overwrite: bool = option(False, flag="--overwrite", help="replace a non-empty --output")
    analyze: bool = option(False, flag="--analyze", help="also write OUTPUT/interference/metrics.json")
    tasks: list[str] | None = option(None, parse=_names,
                                     help="with --analyze: one task per adapter, comma-separated (`tunelab tasks list`)")
    limit: int = option(50, help="examples per task for --tasks")

    def output_dir(self) -> Path:
        """``--output`` (required)."""
        return Path(self.output)

    def run_dir(self) -> RunDir:
        """The job's default :class:`~tunelab.results.RunDir` (:func:`merge_run_dir` of ``--output``)."""
        return merge_run_dir(self.output_dir())


__all__ = ["MergeConfig", "merge_run_dir"]
