"""Write every command's options (flags, types, defaults, help) as JSON: the CLI's snapshot.

``tests/test_cli_options.py`` compares the live app with ``tests/data/cli_options.json``, so a
refactor of ``tunelab/cli`` that changes any flag, default or help text fails a test. Rewrite the
snapshot only for an intended change, in its own commit::

    python scripts/dump_cli_options.py > tests/data/cli_options.json
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _plain(value: Any) -> Any:
    """A JSON-able form of a click default (tuples → lists, other objects → repr)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)


def _type_name(p: Any) -> str:
    """The parameter's type: click's name, or (this typer vendors click lazily) the annotation."""
    kind = getattr(p, "type", None)
    if kind is not None:
        return getattr(kind, "name", repr(kind))
    annotation = p.type_descriptor.annotation
    return getattr(annotation, "__name__", None) or repr(annotation)


def _param(p: Any) -> dict[str, Any]:
    """What a user sees of one parameter."""
    return {
        "name": p.name,
        "kind": type(p).__name__,
        "opts": list(p.opts),
        "secondary_opts": list(p.secondary_opts),
        "type": _type_name(p),
        "min": _plain(getattr(p, "min", None)),
        "max": _plain(getattr(p, "max", None)),
        "show_default": _plain(getattr(p, "show_default", None)),
        "default": _plain(p.default),
        "required": p.required,
        "is_flag": bool(getattr(p, "is_flag", False)),
        "multiple": p.multiple,
        "hidden": bool(getattr(p, "hidden", False)),
        "help": getattr(p, "help", None),
    }


def dump(cmd: Any, path: str, out: dict[str, Any]) -> None:
    """Record ``cmd`` under ``path`` and recurse into a group's commands."""
    out[path] = {
        "help": cmd.help,
        "short_help": cmd.short_help,
        "params": [_param(p) for p in cmd.params],
    }
    if hasattr(cmd, "commands"):  # a group (typer vendors its own click, so no isinstance)
        for name in sorted(cmd.commands):
            dump(cmd.commands[name], f"{path} {name}", out)


def snapshot() -> dict[str, Any]:
    """The whole app, keyed by command path (``tunelab``, ``tunelab inspect steer train``, ...)."""
    import typer

    from tunelab.cli import app

    out: dict[str, Any] = {}
    dump(typer.main.get_command(app), "tunelab", out)
    return out


if __name__ == "__main__":
    json.dump(snapshot(), sys.stdout, indent=1, ensure_ascii=False, sort_keys=True)
    sys.stdout.write("\n")
