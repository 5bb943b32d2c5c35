"""Privacy auditing: membership-inference metrics and one-run ε lower bounds from canary scores.

Torch-free (numpy, scipy, scikit-learn); see :mod:`tunelab.privacy.audit`.

This file only re-exports, lazily: the CLI imports the room's light config modules without
loading scipy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunelab.privacy.audit import (DEFAULT_FPRS, BootstrapParams, CanaryScoreAuditor, EpsilonLowerBound, RocData,
                                       epsilon_ceiling, one_run_p_value)

_EXPORTS = {
    "DEFAULT_FPRS": "tunelab.privacy.audit",
    "BootstrapParams": "tunelab.privacy.audit",
    "CanaryScoreAuditor": "tunelab.privacy.audit",
    "EpsilonLowerBound": "tunelab.privacy.audit",
    "RocData": "tunelab.privacy.audit",
    "epsilon_ceiling": "tunelab.privacy.audit",
    "one_run_p_value": "tunelab.privacy.audit",
}


def __getattr__(name: str) -> Any:
    """The re-exported names, imported on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tunelab.privacy' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = ["DEFAULT_FPRS", "BootstrapParams", "CanaryScoreAuditor", "EpsilonLowerBound", "RocData",
           "epsilon_ceiling", "one_run_p_value"]
