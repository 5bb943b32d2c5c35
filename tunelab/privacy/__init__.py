"""Privacy auditing: membership-inference metrics and one-run ε lower bounds from canary scores.

Torch-free (numpy, scipy, scikit-learn); see :mod:`tunelab.privacy.audit`.

This file only re-exports, lazily (:func:`tunelab.registry.lazy_exports`): the CLI imports the room's light config modules without
loading scipy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunelab.registry import lazy_exports

if TYPE_CHECKING:
    from tunelab.privacy.audit import (DEFAULT_FPRS, BootstrapParams, CanaryScoreAuditor, EpsilonLowerBound, RocData,
                                       epsilon_ceiling, one_run_p_value)

__getattr__, __all__ = lazy_exports(__name__, {
    "tunelab.privacy.audit": ("DEFAULT_FPRS", "BootstrapParams", "CanaryScoreAuditor", "EpsilonLowerBound", "RocData", "epsilon_ceiling", "one_run_p_value"),
})
