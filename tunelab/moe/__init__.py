"""Pre-training small dense and mixture-of-experts models: routers, Default MoE, balancing losses,
diagnostics and continual pre-training (``tunelab pretrain``).

Rooms: ``routers.py`` (top-k, Sinkhorn), ``default_moe.py`` (Default MoE block), ``block.py`` (the
MoE block they share), ``balancing.py`` (aux and z-loss, MRI), ``model.py`` (size spec → transformers
model, save/load), ``corpora.py`` (text, tokenizer, held-out split), ``diagnostics.py`` (loads,
router-gradient cosine, expert changes), ``pretrain.py`` (the config and loop), ``plots.py``.

This file only re-exports, lazily (:func:`tunelab.registry.lazy_exports`): importing a light module of
the room does not load its heavy ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunelab.registry import lazy_exports

if TYPE_CHECKING:
    from tunelab.moe.model import ModelSpec, build_model, load_pretrained, moe_blocks, save_model
    from tunelab.moe.pretrain import PretrainConfig, run_pretrain

__getattr__, __all__ = lazy_exports(__name__, {
    "tunelab.moe.model": ("ModelSpec", "build_model", "load_pretrained", "moe_blocks", "save_model"),
    "tunelab.moe.pretrain": ("PretrainConfig", "run_pretrain"),
})
