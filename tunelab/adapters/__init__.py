"""Fine-tuning methods. Adding one = one file in this package + one line in ``METHODS``."""

from __future__ import annotations

from tunelab.adapters.base import DEFAULT_TARGET_MODULES, AdapterMethod, AdapterSettings, PreparedModel
from tunelab.adapters.full import Full
from tunelab.adapters.lora import LoRA
from tunelab.adapters.lori import LoRID, LoRIS
from tunelab.adapters.lota import LoTA
from tunelab.errors import TunelabError

METHODS: dict[str, type[AdapterMethod]] = {
    "lora": LoRA,
    "lori-d": LoRID,
    "lori-s": LoRIS,
    "lota": LoTA,
    "full": Full,
}


def get_method(name: str) -> AdapterMethod:
    """The method registered under ``name``."""
    if name not in METHODS:
        raise TunelabError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}")
    return METHODS[name]()


__all__ = ["METHODS", "get_method", "AdapterMethod", "AdapterSettings", "PreparedModel", "DEFAULT_TARGET_MODULES"]
