"""The config of ``tunelab inspect interference`` (how much adapters interfere).

Light on purpose (no torch): the CLI builds the command's flags from :class:`InterferenceConfig`
when it is imported; the run is the job :func:`tunelab.merge.interference.inspect_interference`
(``inspect_interference(cfg, run_dir=None, *, progress=False) -> InterferenceResult``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.options import option
from tunelab.results import RunDir


def _split(text: str) -> list[str] | None:
    return text.split(",") if text else None


@dataclass(kw_only=True)
class InterferenceConfig:
    """``tunelab inspect interference``: the adapters compared (and, with --tasks, scored)."""

    adapters: list[Path] = option(flag="-", metavar="DIR...", help="adapter / LoTA run dirs")
    output: Path = option(Path("interference"), help="directory for metrics.json")
    model: str | None = option(None, show_default="the one the adapters record", help="base model")
    merged: Path | None = option(None, help="a `tunelab merge` output to compare with (needed by --tasks)")
    tasks: list[str] | None = option(None, parse=_split,
                                     help="one task per adapter, comma-separated (`tunelab tasks list`)")
    limit: int = option(50, help="examples per task")
    seed: int = option(0, help="task data seed")

    def output_dir(self) -> Path:
        """``--output``."""
        return Path(self.output)

    def run_dir(self) -> RunDir:
        """The job's default :class:`RunDir` (:meth:`output_dir`; rewritten on every run, as always)."""
        return RunDir(self.output_dir(), what="an interference analysis")


__all__ = ["InterferenceConfig"]
