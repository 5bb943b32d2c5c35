"""``python -m tests.study_stop JOB --train-only``: a study worker's training process, "killed" right
after step 1's checkpoint.

tests/test_study.py runs it under torchrun to get an interrupted arm of 2 processes to resume.
"""

from __future__ import annotations

import sys
from typing import Any

import tunelab.train
from tunelab.study import worker

_fit = tunelab.train.fit


def _stopped_fit(cfg: Any, plugins: Any, rule: Any, **kwargs: Any) -> Any:
    return _fit(cfg, plugins, rule, stop_after_step=1, **kwargs)


if __name__ == "__main__":
    tunelab.train.fit = _stopped_fit  # train_arm imports fit when it is called: it gets this one
    sys.exit(worker.main())
