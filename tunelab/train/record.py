"""``tunelab.json``, typed: what a finished run records, for readers that must not use string keys.

The trainer writes the record as a dict (plug-ins add their entries in ``on_finish``); this reads it
back as a :class:`TrainRecord`. The entries plug-ins own stay dicts here and are typed by their rooms
(``tunelab.privacy.results.PrivacyHeadline``, ``tunelab.privacy.accounting.Ledger``,
``tunelab.safety.monitor.MonitorRecord``): the loop knows nothing of them. Torch-free.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.layout import RUN_FILE


@dataclass
class TrainRecord:
    """A finished run's ``tunelab.json``; keys this version does not name stay in ``extra``."""

    method: str | None = None
    base_model: str | None = None
    data: str | None = None
    data_sha256: str | None = None
    examples: int | None = None
    seed: int | None = None
    steps: int | None = None
    losses: list[float] = field(default_factory=list)
    trainable_params: int | None = None
    tokens: int | None = None
    tokens_per_s: float | None = None
    wall_time_s: float | None = None
    bf16: bool | None = None
    processes: int | None = None                   # training ranks (None: a run from before it was recorded)
    config: dict[str, Any] = field(default_factory=dict)
    privacy: dict[str, Any] | None = None          # the canary plug-in's audit headline
    dp: dict[str, Any] | None = None               # a DP update rule's ledger
    safety_monitor: dict[str, Any] | None = None   # the safety-drift monitor
    safety: dict[str, Any] | None = None           # the init_from safety check: {before, after}
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    output_dir: Path | None = field(default=None, compare=False)  # where it was read from (not a key of the file)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainRecord:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "output_dir"}
        return cls(**{k: v for k, v in data.items() if k in names},
                   extra={k: v for k, v in data.items() if k not in names})

    @classmethod
    def read(cls, run_dir: str | Path) -> TrainRecord:
        """``RUN_DIR/tunelab.json``; a missing or truncated file is one line naming it."""
        from tunelab.results import read_json_object

        record = cls.from_dict(read_json_object(Path(run_dir) / RUN_FILE, "run record"))
        record.output_dir = Path(run_dir)
        return record


__all__ = ["TrainRecord"]
