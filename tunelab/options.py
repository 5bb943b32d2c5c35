"""Options declared once: help, bounds and choices live on the config field.

A command's config is a dataclass; each field is one option (its YAML key, and with dashes its
flag). :func:`option` puts what the CLI and validation need into the field's metadata, the way
PEFT keeps help on its config fields::

    @dataclass
    class EvalConfig:
        batch_size: int = option(32, help="prompts per forward", min=1)
        judge: str = option("keyword", help="who decides refusal", choices=JUDGES)

Metadata keys (all optional; read with :func:`meta`):

* ``help`` — the flag's help text (the ``[default: ...]`` is added by the CLI builder);
* ``choices`` — a tuple of names, or a :class:`~tunelab.registry.Registry` (its ``names()``);
* ``min``/``max`` (inclusive) and ``gt``/``lt`` (exclusive) — numeric bounds; ``why`` — a reason the
  error gives after the bound (``--turns must be >= 2 (a first answer and ...), got 1``);
* ``flag`` — the flag's name when it is not the field's (``"--disjoint"``), a bool pair
  (``"--sample/--greedy"``: its first name is the one errors and flat keys use), or ``"-"`` for a
  positional argument;
* ``show_default`` — the default as help shows it when it is not the value (``"32 with --init-from, else 0"``);
  the CLI builder then types the flag ``Optional[X] = None`` ("not given": the config's default applies);
* ``parse`` — a function ``str -> value`` for a flag given as text (comma lists, layer ranges
  ``10-14``); it raises ``TunelabError`` with the project's one-line message. YAML values are
  typed already and are not parsed;
* ``unparse`` — the inverse, ``value -> str``, for the flag's shown default (lists: ``a,b`` by default);
* ``flag_type`` — the flag's type when it is not the field's (``Path`` for a ``str`` field that
  a saved config keeps as text); a ``str`` field gets the flag's value as text;
* ``hidden`` — the flag is left out of ``--help``; ``metavar`` — the placeholder help shows;
* ``plugin`` — the option is implemented by a training plug-in (see ``tunelab.train``).

:func:`check_fields` applies the one-field rules (bounds, choices) with the project's messages
(``--rank must be >= 1, got 0``; ``unknown method 'x'; choose one of: ...``), recursing into
nested section dataclasses; a config's ``validate()`` keeps only rules that involve several fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, field
from typing import Any, Callable, Sequence

from tunelab.errors import TunelabError

_KEYS = ("help", "choices", "min", "max", "gt", "lt", "flag", "show_default", "why", "parse", "unparse", "flag_type", "hidden",
         "metavar",
         "plugin")


def option(
    default: Any = MISSING,
    *,
    default_factory: Callable[[], Any] | Any = MISSING,
    help: str = "",
    choices: Sequence[str] | Any | None = None,
    min: float | None = None,
    max: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
    why: str | None = None,
    flag: str | None = None,
    show_default: str | None = None,
    parse: Callable[[str], Any] | None = None,
    unparse: Callable[[Any], str] | None = None,
    flag_type: type | None = None,
    hidden: bool = False,
    metavar: str | None = None,
    plugin: bool = False,
) -> Any:
    """A dataclass field carrying its option's help, choices and bounds in its metadata."""
    metadata = {k: v for k, v in dict(help=help, choices=choices, min=min, max=max, gt=gt, lt=lt, why=why, flag=flag,
                                      show_default=show_default, parse=parse, unparse=unparse, flag_type=flag_type,
                                      hidden=hidden or None,
                                      metavar=metavar, plugin=plugin or None).items() if v is not None and v != ""}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def meta(f: dataclasses.Field, key: str, fallback: Any = None) -> Any:
    """One metadata value of a config field (``help``, ``choices``, ...)."""
    if key not in _KEYS:
        raise KeyError(f"unknown option metadata '{key}'")
    return f.metadata.get(key, fallback)


def choice_names(choices: Any) -> tuple[str, ...]:
    """The names a ``choices`` entry allows: a tuple as is, a registry's ``names()``."""
    if choices is None:
        return ()
    names = getattr(choices, "names", None)
    return tuple(names()) if callable(names) else tuple(choices)


def flag_name(f: dataclasses.Field) -> str:
    """``--batch-size`` for field ``batch_size`` (or the field's own ``flag``; a bool pair's first name)."""
    flag = meta(f, "flag")
    if flag == "-":  # a positional argument: named as its field
        return f.name.upper()
    return flag.split("/", 1)[0] if flag else "--" + f.name.replace("_", "-")


def check_field(f: dataclasses.Field, value: Any) -> None:
    """Raise ``TunelabError`` when ``value`` breaks field ``f``'s bounds or choices (``None`` passes)."""
    if value is None:
        return
    name = flag_name(f)
    choices = meta(f, "choices")
    if choices is not None:
        allowed = choice_names(choices)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if hasattr(choices, "unknown_message"):  # a Registry: aliases count, did-you-mean in the error
                if item not in choices:
                    raise TunelabError(choices.unknown_message(item))
            elif item not in allowed:
                raise TunelabError(f"unknown {f.name.replace('_', ' ')} '{item}'; choose one of: {', '.join(allowed)}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo, hi, gt, lt = (meta(f, k) for k in ("min", "max", "gt", "lt"))
    why = f" ({meta(f, 'why')})" if meta(f, "why") else ""
    if (lo is not None or gt is not None) and (hi is not None or lt is not None):  # a range
        bad = (lo is not None and value < lo) or (gt is not None and value <= gt) or \
              (hi is not None and value > hi) or (lt is not None and value >= lt)
        if bad:
            left = f"[{lo:g}" if lo is not None else f"({gt:g}"
            right = f"{hi:g}]" if hi is not None else f"{lt:g})"
            raise TunelabError(f"{name} must be in {left}, {right}{why}, got {value:g}")
        return
    if lo is not None and value < lo:
        raise TunelabError(f"{name} must be >= {lo:g}{why}, got {value:g}")
    if gt is not None and not value > gt:
        raise TunelabError(f"{name} must be > {gt:g}{why}, got {value:g}")
    if hi is not None and value > hi:
        raise TunelabError(f"{name} must be <= {hi:g}{why}, got {value:g}")
    if lt is not None and not value < lt:
        raise TunelabError(f"{name} must be < {lt:g}{why}, got {value:g}")


# --------------------------------------------------------------------------- parse functions
def parse_int_ranges(text: str | None, flag: str = "--layers") -> list[int] | None:
    """``"10,12,14"`` or ``"10-14"`` → layer indices; None stays None; one-line error otherwise."""
    if text is None or not text.strip():
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else (part, "")
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                out += list(range(lo, hi + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise TunelabError(f"{flag} must be comma-separated layer numbers or ranges like 10-14, got '{text}'") from None
    return list(dict.fromkeys(out))


def comma_list(text: str | None, flag: str) -> list[str] | None:
    """``"q_proj, v_proj"`` → ``["q_proj", "v_proj"]``; an empty name is an error here, not a PEFT one later."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise TunelabError(f"{flag} has an empty name in '{text}'; give comma-separated names such as q_proj,v_proj")
    return names


def float_item(text: str, flag: str) -> float:
    """``"0.1"`` → ``0.1``; one-line error naming ``flag`` otherwise."""
    try:
        return float(text)
    except ValueError:
        raise TunelabError(f"{flag}: '{text}' is not a number") from None


def int_ranges(flag: str) -> Callable[[str], list[int] | None]:
    """A ``parse`` for layer lists such as ``10-14`` or ``3,6,9`` given as ``flag``."""
    return lambda text: parse_int_ranges(text, flag)


def check_fields(cfg: Any) -> None:
    """Every one-field rule of a config dataclass (and of its nested section dataclasses)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_fields(value)
        else:
            check_field(f, value)


__all__ = ["option", "meta", "choice_names", "flag_name", "check_field", "check_fields", "int_ranges", "parse_int_ranges",
           "comma_list", "float_item"]
