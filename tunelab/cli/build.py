"""Build a typer command from a config dataclass: each option is declared once, on its field.

A command is a config dataclass whose fields carry :func:`tunelab.options.option` metadata
(help, flag name, bounds, choices, a text parser) and a function ``run(cfg)``.
:func:`config_command` turns the fields into typer parameters — nested section dataclasses
(refusal control, steering, generation options) flatten into the same flat flags — and on
invocation:

1. applies each field's ``parse`` to its flag's text (``"10-14"`` → ``[10, 11, 12, 13, 14]``);
2. builds the config as :func:`tunelab.configs.from_sources` does: defaults (a section's from
   its parent's default instance), then the ``--config`` YAML file, then the flags that were given
   (a flag whose value is ``None`` was not given);
3. applies the one-field rules (:func:`tunelab.options.check_fields`), then the config's own
   ``validate()`` (the rules that involve several fields);
4. calls ``run(cfg)`` and, when given, ``show(cfg, result)`` — the cli module's summary printer.

How a field becomes a flag (metadata keys in :mod:`tunelab.options`):

* ``flag`` names it (``"--k"``, a bool pair ``"--sample/--greedy"``, ``"-"`` for an argument);
  the typer parameter is named after the flag (``--k`` → ``k``), as click reports it;
* in a command with ``--config``, and for a field with ``show_default``, the flag is typed
  ``Optional[X] = None``: the config's default (or the file's value) applies when the flag is not
  given, and ``show_default`` ends the help with ``[default: ...]``; otherwise the flag's default
  is the config's and typer shows it;
* with ``parse`` the flag takes text (its default the config default written back by ``unparse``);
* ``flag_type`` types the flag differently from the field (a ``Path`` flag for a ``str`` field);
* ``hidden`` and ``metavar`` go to typer as they are.

A command whose flags read differently from the shared declaration (a section used by several
commands) passes ``overrides={field: {metadata key: value}}``; ``order`` lists the parameters
when the flags do not follow the fields' order.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Mapping, Optional, Sequence, Union, get_args, get_origin, get_type_hints

import typer

from tunelab.errors import TunelabError
from tunelab.options import check_fields, flag_name


@dataclass
class _Param:
    """One typer parameter made from one (possibly nested) config field."""

    field: dataclasses.Field
    path: tuple[str, ...]  # section names from the config down to the field's dataclass
    hint: Any
    default: Any  # the config's default (inspect.Parameter.empty: required)
    meta: dict[str, Any]

    @property
    def key(self) -> str:
        """The keyword the config takes this value under: the field's name, a section option's flat name."""
        if not self.path:
            return self.field.name
        return flag_name(self.field)[2:].replace("-", "_")

    @property
    def is_argument(self) -> bool:
        return self.meta.get("flag") == "-"

    @property
    def name(self) -> str:
        """The typer parameter's name: the argument's field name, or the flag's without dashes."""
        if self.is_argument:
            return self.field.name
        return _primary(self.meta.get("flag") or "--" + self.field.name.replace("_", "-"))[2:].replace("-", "_")

    @property
    def decls(self) -> str:
        return self.meta.get("flag") or "--" + self.field.name.replace("_", "-")


def _primary(decl: str) -> str:
    """``--sample`` of ``--sample/--greedy``."""
    return decl.split("/", 1)[0]


def _help(meta: Mapping[str, Any]) -> str:
    """The flag's help: the field's text, a registry's ``a, b or c`` when it has none, and a shown default."""
    text = meta.get("help", "")
    choices = meta.get("choices")
    if not text and hasattr(choices, "help"):
        text = choices.help()
    shown = meta.get("show_default")
    if shown is not None:
        text = f"{text} \\[default: {shown}]" if text else f"\\[default: {shown}]"
    return text


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return inspect.Parameter.empty


def _flat(cls: type, skip: Sequence[str], overrides: Mapping[str, Mapping[str, Any]],
          path: tuple[str, ...] = (), base: Any = None) -> list[_Param]:
    """Every option of ``cls``, nested section dataclasses flattened in place.

    ``base`` is the section's default instance as its parent declares it, so a command can give
    a shared section its own defaults (``field(default_factory=lambda: Generation(temperature=0.9))``).
    """
    hints = get_type_hints(cls)
    out: list[_Param] = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        hint = hints[f.name]
        default = getattr(base, f.name) if base is not None else _field_default(f)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            section = default if default is not inspect.Parameter.empty else None
            out += _flat(hint, skip, overrides, (*path, f.name), section)
            continue
        meta = {**f.metadata, **overrides.get(f.name, {})}
        out.append(_Param(f, path, hint, default, meta))
    return out


def _optional(hint: Any) -> Any:
    """``Optional[X]`` for typer (which reads ``typing.Optional``, not always ``X | None``)."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return Optional[args[0]] if len(args) == 1 else hint
    return Optional[hint]


def _unparse(p: _Param, value: Any) -> Any:
    """The config default written as the flag's text (``[0, 5]`` → ``"0,5"``)."""
    if value is None or value is inspect.Parameter.empty:
        return value
    if "unparse" in p.meta:
        return p.meta["unparse"](value)
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _parameter(p: _Param, not_given: bool) -> inspect.Parameter:
    """The typer parameter of one field: annotation, typer info and default.

    ``not_given``: every flag defaults to ``None`` (a command with ``--config``, whose file the
    flags override only when given).
    """
    hint, default = p.hint, p.default
    if "parse" in p.meta:
        hint, default = str, _unparse(p, default)
    if "flag_type" in p.meta:  # e.g. a Path flag for a str field (the value goes back through the field's type)
        hint = p.meta["flag_type"]
        default = default if default in (None, inspect.Parameter.empty) else hint(default)
    if not_given or p.meta.get("show_default") is not None:  # "not given": the config's default applies
        hint, default = _optional(hint), None
    elif default is None:
        hint = _optional(hint)
    kwargs: dict[str, Any] = {"help": _help(p.meta) or None}
    for key in ("hidden", "metavar"):
        if key in p.meta:
            kwargs[key] = p.meta[key]
    info = typer.Argument(**kwargs) if p.is_argument else typer.Option(p.decls, **kwargs)
    return inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[hint, info])


def build_config(config_cls: type, given: Mapping[str, Any], yaml_path: str | Path | None = None) -> Any:
    """The config from its defaults, then ``yaml_path``, then the ``given`` values that are not ``None``.

    ``given`` is keyed as the config takes keywords (a section option under its flat name).
    Nothing is validated here; see :func:`config_command`.
    """
    from tunelab.configs import from_sources

    return from_sources(config_cls, yaml_path, validate=False, **given)


def config_command(
    group: typer.Typer,
    name: str,
    config_cls: type,
    run: Callable[[Any], Any],
    *,
    help: str,
    skip: Sequence[str] = (),
    config: str | None = None,
    show: Callable[[Any, Any], None] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    order: Sequence[str] | None = None,
    config_argument: str | None = None,
) -> Callable[..., Any]:
    """Register command ``name`` on ``group``: one flag per field of ``config_cls``, then ``run(cfg)``.

    ``skip`` names fields that are not flags (they keep their defaults). ``config`` is the help
    of a ``--config YAML`` option (last; none when ``None``) whose values the flags override.
    ``show(cfg, result)`` prints the result. ``overrides`` changes a field's option metadata for
    this command only; ``order`` gives the parameters' order by name (``config`` last if omitted).
    ``config_argument`` makes the YAML file a positional argument (its metavar, e.g.
    ``STUDY.yaml``) instead of ``--config``. A config with a ``config_file`` attribute is told
    which file it was read from (for its own line-numbered errors). Returns the generated command function.
    """
    fields = _flat(config_cls, tuple(skip), overrides or {})
    params = [_parameter(p, not_given=config is not None) for p in fields]
    if config is not None:
        info = (typer.Argument(help=config, metavar=config_argument, show_default=False) if config_argument
                else typer.Option(help=config))
        params.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[Optional[Path], info]))
    if order is not None:
        by_name = {p.name: p for p in params}
        wanted = [*order, *(["config"] if config is not None and "config" not in order else [])]
        if sorted(wanted) != sorted(by_name):
            raise ValueError(f"order for '{name}' must list exactly: {', '.join(by_name)}")
        params = [by_name[n] for n in wanted]
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ValueError(f"'{name}': two fields make the same flag: {names}")
    by_param = {p.name: p for p in fields}

    def command(**values: Any) -> Any:
        given: dict[str, Any] = {}
        for pname, value in values.items():
            p = by_param.get(pname)
            if p is None:
                continue
            if value is not None and "parse" in p.meta:
                value = p.meta["parse"](value)
            elif value is not None and "flag_type" in p.meta and p.hint is str:
                value = str(value)
            given[p.key] = value
        cfg = build_config(config_cls, given, values.get("config"))
        if hasattr(cfg, "config_file"):
            cfg.config_file = values.get("config")
        check_fields(cfg)  # one-field rules (bounds, choices) with the project's messages
        validate = getattr(cfg, "validate", None)
        if callable(validate):
            validate()  # the rules that involve several fields
        result = run(cfg)
        if show is not None:
            show(cfg, result)
        return result

    command.__name__ = name.replace("-", "_")
    command.__doc__ = help
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return group.command(name)(command)


__all__ = ["build_config", "config_command"]
