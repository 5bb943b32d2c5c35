"""Scaling laws from a table of runs: approach 3 (a parametric law), approach 1 (the hull), FLOPs.

``approach3`` fits L = E + Σ_j A_j / x_j^α_j (Huber in log space, L-BFGS-B from a grid of starts
with the analytic gradient, bootstrap CIs, a degeneracy guard) and gives the compute-optimal
N*, D* of a budget; ``approach1`` takes the lower convex hull of loss vs FLOPs and fits
N_opt(C), D_opt(C); ``flops`` counts a dense Llama-style model's parameters and training FLOPs
per token, attention included; ``table`` reads JSONL/JSON/CSV tables with declared columns;
``run`` is ``tunelab scaling fit`` (``ScalingFitConfig``, ``run_scaling_fit``).
"""

from __future__ import annotations

from tunelab.scaling.approach1 import approach1, lower_hull, power_fit
from tunelab.scaling.approach3 import Fit, Law, bootstrap_laws, compute_optimal, degeneracy, fit_law, grid_starts, objective
from tunelab.scaling.flops import DenseShape, FlopsCount, dense_params, flops_per_token
from tunelab.scaling.run import ScalingFitConfig, run_scaling_fit
from tunelab.scaling.table import ColumnSpec, Table, read_table

__all__ = ["ColumnSpec", "DenseShape", "Fit", "FlopsCount", "Law", "ScalingFitConfig", "Table", "approach1",
           "bootstrap_laws", "compute_optimal", "degeneracy", "dense_params", "fit_law", "flops_per_token", "grid_starts",
           "lower_hull", "objective", "power_fit", "read_table", "run_scaling_fit"]
