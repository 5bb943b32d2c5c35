"""tunelab: sparse, safe and private fine-tuning of language models."""

from __future__ import annotations

__version__ = "0.1.0"
