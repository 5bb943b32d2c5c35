"""Privacy auditing: membership-inference metrics and one-run ε lower bounds from canary scores.

Torch-free (numpy, scipy, scikit-learn); see :mod:`tunelab.privacy.audit`.
"""

from tunelab.privacy.audit import (
    DEFAULT_FPRS,
    BootstrapParams,
    CanaryScoreAuditor,
    EpsilonLowerBound,
    RocData,
    epsilon_ceiling,
    one_run_p_value,
)

__all__ = ["DEFAULT_FPRS", "BootstrapParams", "CanaryScoreAuditor", "EpsilonLowerBound", "RocData",
           "epsilon_ceiling", "one_run_p_value"]
