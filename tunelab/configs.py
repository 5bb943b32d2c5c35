"""Command configs from YAML and flags: defaults, then the file, then explicit flags.

Every command has one dataclass config (``TrainConfig``, ``EvalConfig``, ...); its field names
are the YAML keys and, with dashes, the CLI flags.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tunelab.errors import TunelabError

C = TypeVar("C")


def load_yaml(path: str | Path, cls: type) -> dict[str, Any]:
    """Read a config file for dataclass ``cls``; keys may use dashes or underscores. Unknown keys are errors."""
    path = Path(path)
    if not path.is_file():
        raise TunelabError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise TunelabError(f"{where}: malformed YAML") from None
    if not isinstance(raw, dict):
        raise TunelabError(f"{path}: a config must be a mapping of option: value")
    known = {f.name for f in fields(cls)}
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise TunelabError(f"{path}: unknown option '{key}'")
        values[name] = value
    return values


def from_sources(cls: type[C], yaml_path: str | Path | None = None, **overrides: Any) -> C:
    """Build and validate ``cls``: defaults, then ``yaml_path``, then non-``None`` ``overrides``."""
    values: dict[str, Any] = {}
    if yaml_path:
        values.update(load_yaml(yaml_path, cls))
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        cfg = cls(**values)
    except TypeError as exc:  # a wrongly typed YAML value surfaces here
        raise TunelabError(f"bad config: {exc}") from None
    cfg.validate()  # type: ignore[attr-defined]
    return cfg
