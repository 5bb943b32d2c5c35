"""Merge task adapters and LoTA task vectors; measure how much they interfere.

    from tunelab.merge import merge_adapters
    merge_adapters(["runs/a", "runs/b"], "cat", [0.5, 0.5], output="runs/ab")

Methods (:data:`MERGE_METHODS` in :mod:`tunelab.merge.registry`, one file each; a new method is one file plus one registry line):

* ``cat`` — exact, PEFT adapter of rank Σrᵢ (ΔW = Σ wᵢsᵢBᵢAᵢ);
* ``linear`` — PEFT's, same rank, has cross terms BᵢAⱼ;
* ``task-arithmetic``, ``ties``, ``dare-linear``, ``dare-ties`` — on dense ΔW per base weight
  (LoRA's s·B·A, or a LoTA task vector); they write a merged model directory.

``cat``/``linear`` write a PEFT adapter unless ``to_model`` (then base + ΔW as a model dir); a LoTA
source needs ``to_model`` there. Every merge needs at least two sources, except task arithmetic,
which takes one (to rescale or negate a single task vector). The output is built in a temp dir
and renamed into place; its ``tunelab.json`` (``method: "merge"``) is written last.

This file only re-exports, lazily (:func:`tunelab.registry.lazy_exports`): importing a light module of
the room does not load its heavy ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunelab.registry import lazy_exports

if TYPE_CHECKING:
    from tunelab.merge.base import MergeMethod
    from tunelab.merge.deltas import apply_deltas, merged_delta_fn, merged_factors
    from tunelab.merge.registry import MERGE_METHODS, get_merge_method
    from tunelab.merge.config import MergeConfig
    from tunelab.merge.run import INTERFERENCE_DIR, merge_adapters, parse_weights, run_merge, shared_projections

__getattr__, __all__ = lazy_exports(__name__, {
    "tunelab.merge.base": ("MergeMethod",),
    "tunelab.merge.deltas": ("apply_deltas", "merged_delta_fn", "merged_factors"),
    "tunelab.merge.registry": ("MERGE_METHODS", "get_merge_method"),
    "tunelab.merge.config": ("MergeConfig",),
    "tunelab.merge.run": ("INTERFERENCE_DIR", "merge_adapters", "parse_weights", "run_merge", "shared_projections"),
})
