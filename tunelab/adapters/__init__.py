"""Fine-tuning methods. Adding one = one file in this package + one line in ``ADAPTER_METHODS``.

What a method can do (train new token rows, take ``--mask-from``, whether weight decay applies,
...) is declared as class attributes on its :class:`AdapterMethod` subclass; callers look it up
with ``ADAPTER_METHODS.get(name).<capability>`` (see :func:`methods_with`).
"""

from __future__ import annotations

from typing import Any

from tunelab.adapters.base import DEFAULT_TARGET_MODULES, AdapterMethod, AdapterSettings, PreparedModel
from tunelab.registry import Registry

# --method name → its AdapterMethod subclass, imported on first use; the order is the help's
ADAPTER_METHODS: Registry[type[AdapterMethod]] = Registry("method")
ADAPTER_METHODS.register("lora", "tunelab.adapters.lora:LoRA")
ADAPTER_METHODS.register("lori-d", "tunelab.adapters.lori:LoRID")
ADAPTER_METHODS.register("lori-s", "tunelab.adapters.lori:LoRIS")
ADAPTER_METHODS.register("lota", "tunelab.adapters.lota:LoTA")
ADAPTER_METHODS.register("full", "tunelab.adapters.full:Full")


def get_method(name: str) -> AdapterMethod:
    """An instance of the method registered under ``name`` (unknown → one-line error with a hint)."""
    return ADAPTER_METHODS.get(name)()


def method_class(name: str | None) -> type[AdapterMethod] | None:
    """The method class registered under ``name``; ``None`` for anything else (a run record's
    ``"merge"``, an older or foreign record), for readers that must not fail on such names."""
    return ADAPTER_METHODS.get(name) if isinstance(name, str) and name in ADAPTER_METHODS else None


def methods_with(capability: str, value: Any = True) -> tuple[str, ...]:
    """The registered method names whose ``capability`` attribute equals ``value``, in registry order."""
    return tuple(name for name, cls in ADAPTER_METHODS.items() if getattr(cls, capability) == value)


__all__ = ["ADAPTER_METHODS", "get_method", "method_class", "methods_with",
           "AdapterMethod", "AdapterSettings", "PreparedModel", "DEFAULT_TARGET_MODULES"]
