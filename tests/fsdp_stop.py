"""``python -m tests.fsdp_stop train ...``: the CLI's train, "killed" right after step 2's checkpoint.

tests/test_fsdp.py runs it under torchrun to get an interrupted FSDP run to resume.
"""

from __future__ import annotations

from typing import Any

import tunelab.finetune
from tunelab.cli import main

_train = tunelab.finetune.train


def _stopped_train(cfg: Any, **kwargs: Any) -> None:
    kwargs["stop_after_step"] = 2  # run_train passes its own (None); this one wins
    _train(cfg, **kwargs)
    raise SystemExit(0)  # like a killed process: the CLI's summary of a finished run never comes


if __name__ == "__main__":
    tunelab.finetune.train = _stopped_train
    main()
