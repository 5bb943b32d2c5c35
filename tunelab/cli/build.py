"""Build a typer command from a config dataclass: each option is declared once, on its field.

A command is a config dataclass whose fields carry :func:`tunelab.options.option` metadata
(help, flag name, bounds, choices) and a function ``run(cfg)``. :func:`config_command` turns the
fields into typer options — nested section dataclasses (refusal control, steering, generation
options) flatten into the same flat flags — and on invocation rebuilds the config, applies the
one-field rules (:func:`tunelab.options.check_fields`), then the config's own ``validate()``
(the rules that involve several fields), and calls ``run``.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import MISSING
from typing import Annotated, Any, Callable, get_type_hints

import typer

from tunelab.options import check_fields, flag_name, meta


def _help(f: dataclasses.Field) -> str:
    """The flag's help: the field's text, a registry's ``a, b or c`` when it has none, and a shown default."""
    text = meta(f, "help", "")
    choices = meta(f, "choices")
    if not text and hasattr(choices, "help"):
        text = choices.help()
    shown = meta(f, "show_default")
    if shown is not None:
        text = f"{text} \\[default: {shown}]"
    return text


def _flat_fields(cls: type, skip: tuple[str, ...]) -> list[tuple[dataclasses.Field, Any]]:
    """(field, type hint) of every option of ``cls``, nested section dataclasses flattened in place."""
    hints = get_type_hints(cls)
    out: list[tuple[dataclasses.Field, Any]] = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out += _flat_fields(hint, skip)
        else:
            out.append((f, hint))
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return inspect.Parameter.empty


def _rebuild(cls: type, values: dict[str, Any], skip: tuple[str, ...]) -> Any:
    """The config from the flat flag values (nested sections built from their own fields)."""
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _rebuild(hints[f.name], values, skip)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def config_command(
    group: typer.Typer,
    name: str,
    config_cls: type,
    run: Callable[[Any], Any],
    *,
    help: str,
    skip: tuple[str, ...] = (),
) -> Callable[..., Any]:
    """Register command ``name`` on ``group``: one flag per field of ``config_cls``, then ``run(cfg)``.

    ``skip`` names fields that are not flags (they keep their defaults). A field whose ``flag`` is
    ``"-"`` becomes a positional argument. Returns the generated command function.
    """
    params: list[inspect.Parameter] = []
    annotations: dict[str, Any] = {}
    for f, hint in _flat_fields(config_cls, skip):
        default = _default(f)
        if meta(f, "flag") == "-":
            info: Any = typer.Argument(help=_help(f), show_default=meta(f, "show_default") is None)
        else:
            info = typer.Option(flag_name(f), help=_help(f), show_default=meta(f, "show_default") is None)
        annotations[f.name] = Annotated[hint, info]
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotations[f.name]))

    def command(**values: Any) -> Any:
        cfg = _rebuild(config_cls, values, skip)
        check_fields(cfg)  # one-field rules (bounds, choices) with the project's messages
        validate = getattr(cfg, "validate", None)
        if callable(validate):
            validate()  # only the rules that involve several fields
        return run(cfg)

    command.__name__ = name.replace("-", "_")
    command.__doc__ = help
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = annotations
    return group.command(name)(command)


__all__ = ["config_command"]
