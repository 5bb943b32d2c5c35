"""Command configs from YAML and flags: defaults, then the file, then explicit flags.

Every command has one dataclass config (``TrainConfig``, ``EvalConfig``, ...); its field names
are the YAML keys and, with dashes, the CLI flags. Each value is checked against its field's
type hint before the dataclass is built, so a wrong type is one line naming the file, line and
field (``run.yaml:3: lr: expected a number, got 'fast'``) and ``validate()`` only ever compares
values of the right type.

A config may be made of *sections*: a field whose type is itself a dataclass (``dp: DPConfig``),
owned by the room that implements it. Its options are written nested in YAML
(``dp: {noise_multiplier: 1.0}``) or flat under their flag's name (``noise_multiplier: 1.0``,
``--noise-multiplier 1.0``; a section field's ``flag`` metadata names it, as
``--canary-family`` for ``canary.family``); both give the same config. :func:`sectioned`
makes a config class accept flat keywords, read flat attributes and write a flat ``to_dict()``,
so a saved run stays in the shape older runs have.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from tunelab.errors import TunelabError, first_line
from tunelab.files import read_text
from tunelab.options import flag_name

C = TypeVar("C")

# PyYAML follows YAML 1.1, where `1e-4` (no dot) is a string, not a float; accept such strings
# in float fields rather than reject the way everyone writes a learning rate.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


# --------------------------------------------------------------------------- type checking
class _Mismatch(Exception):
    """A value does not fit a type hint; ``at`` is the index/key path inside the value."""

    def __init__(self, expected: str, value: Any, at: tuple[int | str, ...] = ()) -> None:
        super().__init__(expected)
        self.expected, self.value, self.at = expected, value, at


def _describe(hint: Any) -> str:
    """What a type hint asks for, in words (``expected ...``)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        shown = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(shown) if shown else "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple):
        item = _describe(args[0]) if args else "value"
        return f"a list of {_plural(item)}"
    if origin is dict or hint is dict:
        return "a mapping"
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}
    return simple.get(hint, f"a {getattr(hint, '__name__', hint)}")


def _plural(description: str) -> str:
    for article in ("an ", "a "):
        if description.startswith(article):
            return description.removeprefix(article) + "s"
    return description


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML: true/false/null, quoted strings, short reprs."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def coerce(value: Any, hint: Any) -> Any:
    """``value`` checked against type hint ``hint``; raises ``_Mismatch`` when it does not fit.

    Ints are accepted (and converted) for float fields, bools never count as numbers, lists
    become tuples for tuple fields; hints it does not know (``Any``, classes) pass or isinstance.
    """
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any or hint is object:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # X | None: X's own message (a nested index stays precise)
            return coerce(value, options[0])
        for option in options:
            try:
                return coerce(value, option)
            except _Mismatch:
                continue
        raise _Mismatch(_describe(hint), value)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):  # True must not pass for 1
            return value
        raise _Mismatch(_describe(hint), value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            number = float(value)
        if number is not None and not math.isnan(number):
            return number
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple, set, frozenset) or hint in (list, tuple):
        if isinstance(value, (list, tuple)):
            if origin is tuple and args and args[-1] is not Ellipsis:  # fixed-length tuple[X, Y]
                if len(value) != len(args):
                    raise _Mismatch(f"a list of {len(args)} items", value)
                items = [_item(v, a, i) for i, (v, a) in enumerate(zip(value, args))]
            else:
                items = [_item(v, args[0] if args else Any, i) for i, v in enumerate(value)]
            return (origin or hint)(items) if (origin or hint) is not list else items
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            key_hint, value_hint = args if len(args) == 2 else (Any, Any)
            return {_item(k, key_hint, k): _item(v, value_hint, k) for k, v in value.items()}
    elif hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    elif isinstance(hint, type):
        if isinstance(value, hint):
            return value
    else:
        return value  # a hint we cannot check (Callable, TypeVar, ...)
    raise _Mismatch(_describe(hint), value)


def _item(value: Any, hint: Any, at: int | str) -> Any:
    """One element of a container, its position prefixed to any mismatch path."""
    try:
        return coerce(value, hint)
    except _Mismatch as exc:
        raise _Mismatch(exc.expected, exc.value, (at, *exc.at)) from None


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that cannot be evaluated at run time: check nothing
        return {}


@dataclass
class _Source:
    """Where a config value came from: a YAML file and its key/value nodes (for line numbers), or a flag."""

    path: Path | None = None
    key: yaml.Node | None = None
    node: yaml.Node | None = None

    def locate(self, name: str, at: tuple[int | str, ...]) -> str:
        """``FILE:LINE: name[0]`` for a YAML value, ``--name`` for a flag."""
        field = name + "".join(f"[{a}]" if isinstance(a, int) else f".{a}" for a in at)
        if self.path is None:
            return "--" + field.replace("_", "-")
        return f"{self.where(at)}: {field}"

    def where(self, at: tuple[int | str, ...] = ()) -> str:
        """``FILE:LINE`` of the value at ``at`` (the key's line for a whole value)."""
        # A whole value is reported at its key (a block list starts on the line after it);
        # an element of a list or mapping at its own line.
        node = self.node if at else self.key
        for step in at:
            child = _child(node, step)
            if child is None:
                break
            node = child
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return f"{self.path}{line}"


def _child(node: yaml.Node | None, step: int | str) -> yaml.Node | None:
    if isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
        return node.value[step]
    if isinstance(node, yaml.MappingNode):
        return next((v for k, v in node.value if k.value == str(step)), None)
    return None


def check_types(cls: type[C], values: dict[str, Any], sources: dict[str, _Source] | None = None) -> dict[str, Any]:
    """``values`` checked (and ints widened to floats, ...) against ``cls``'s field types.

    A section given as a mapping has each of its keys checked against the section's fields;
    a flat section option against the section field it names.
    """
    hints, sections, flat = _type_hints(cls), section_types(cls), flat_names(cls)
    checked = {}
    for name, value in values.items():
        source = (sources or {}).get(name, _Source())
        if name in sections and isinstance(value, dict):
            checked[name] = _check_section(name, sections[name], value, source)
            continue
        hint = hints.get(name)
        if hint is None and name in flat:
            section, sub = flat[name]
            hint = _type_hints(sections[section]).get(sub)
        if hint is None:
            checked[name] = value
            continue
        try:
            checked[name] = coerce(value, hint)
        except _Mismatch as exc:
            raise TunelabError(f"{source.locate(name, exc.at)}: expected {exc.expected}, got {_show(exc.value)}") from None
    return checked


def _check_section(name: str, section: type, values: dict[Any, Any], source: _Source) -> dict[str, Any]:
    """A section's mapping (``dp: {noise: gaussian}``): known keys, values of the right type."""
    hints = _type_hints(section)
    known = {f.name for f in fields(section)}
    checked = {}
    for key, value in values.items():
        sub = str(key).replace("-", "_")
        if sub not in known:
            where = source.where((key,)) if source.path is not None else ""
            raise TunelabError(f"{where + ': ' if where else ''}unknown option '{name}.{key}'; "
                               f"{name} takes: {', '.join(sorted(known))}")
        try:
            checked[sub] = coerce(value, hints[sub]) if sub in hints else value
        except _Mismatch as exc:
            raise TunelabError(f"{source.locate(name, (key, *exc.at))}: expected {exc.expected}, "
                               f"got {_show(exc.value)}") from None
    return checked


# --------------------------------------------------------------------------- sections
@functools.cache
def section_types(cls: type) -> dict[str, type]:
    """The fields of config ``cls`` that are sections (their type is a dataclass), by field name."""
    hints = _type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)
            if isinstance(hints.get(f.name), type) and is_dataclass(hints[f.name])}


def flat_name(f: dataclasses.Field) -> str:
    """A section option's flat key: its flag's name (``canary_family`` for ``canary.family``,
    whose flag is ``--canary-family``)."""
    return flag_name(f)[2:].replace("-", "_")


@functools.cache
def flat_names(cls: type) -> dict[str, tuple[str, str]]:
    """Flat key → (section, field) for every section option of ``cls``."""
    return {flat_name(f): (section, f.name) for section, sub in section_types(cls).items() for f in fields(sub)}


def fold(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with flat section options folded into their section's mapping (``noise: x`` →
    ``dp: {noise: x}``); a section given as an instance takes them with ``dataclasses.replace``."""
    sections, flat = section_types(cls), flat_names(cls)
    out = {k: v for k, v in values.items() if k not in flat}
    for key, value in values.items():
        if key not in flat:
            continue
        section, sub = flat[key]
        base = out.get(section)
        if is_dataclass(base):
            out[section] = dataclasses.replace(base, **{sub: value})
            continue
        base = dict(base or {})
        if sub in base:
            raise TunelabError(f"option '{key}' is given twice (also as {section}.{sub})")
        out[section] = {**base, sub: value}
    return out


def nest(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """:func:`fold`, then each section mapping made an instance of its section class.

    The mapping updates the section's default as ``cls`` declares it (a command may give a shared
    section its own defaults with ``default_factory``), else the section class's defaults.
    """
    sections = section_types(cls)
    out = fold(cls, values)
    declared = {f.name: f for f in fields(cls)}
    for section, sub_cls in sections.items():
        if isinstance(out.get(section), dict):
            base = _default(declared[section])
            out[section] = (dataclasses.replace(base, **out[section]) if is_dataclass(base)
                            else sub_cls(**out[section]))
    return out


def merge(cls: type, base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update`` (both folded); a section's mapping is updated key by key,
    so a flag overrides one option of a section the YAML file gives."""
    sections = section_types(cls)
    out = dict(base)
    for key, value in update.items():
        if key in sections and isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING  # type: ignore[misc]


def sectioned(cls: type[C]) -> type[C]:
    """Make dataclass ``cls`` take, read and write its section options flat as well as nested.

    ``cls(noise_multiplier=1.0)`` is ``cls(dp=DPConfig(noise_multiplier=1.0))``;
    ``cfg.noise_multiplier`` reads ``cfg.dp.noise_multiplier`` (for callers written before the
    sections; new code reads the section); ``cfg.to_dict()`` is flat, the shape of a saved run.
    """
    generated = cls.__init__

    def __init__(self: Any, **values: Any) -> None:
        generated(self, **nest(type(self), values))

    def __getattr__(self: Any, name: str) -> Any:  # only reached when ordinary lookup fails
        where = flat_names(type(self)).get(name)
        if where is None:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        return getattr(getattr(self, where[0]), where[1])

    def to_dict(self: Any) -> dict[str, Any]:
        """The config flat (section options under their flat names), as runs save it."""
        sections = section_types(type(self))
        values: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in sections:
                values.update({flat_name(s): v for s, v in zip(fields(value), dataclasses.astuple(value))})
            else:
                values[f.name] = dataclasses.asdict(self)[f.name] if is_dataclass(value) else _copy(value)
        return values

    __init__.__doc__ = generated.__doc__
    cls.__init__ = __init__  # type: ignore[misc]
    cls.__getattr__ = __getattr__  # type: ignore[attr-defined]
    cls.to_dict = to_dict  # type: ignore[attr-defined]
    return cls


def _copy(value: Any) -> Any:
    """A plain copy of a config value (as ``dataclasses.asdict`` copies lists and dicts)."""
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- sources
def _compose(path: Path) -> yaml.Node | None:
    """The YAML node tree of a config file (kept for line numbers); malformed YAML is one line."""
    text = read_text(path, "config file")
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise TunelabError(f"{where}: malformed YAML ({exc.problem or exc.context})") from None
    except yaml.reader.ReaderError as exc:  # a control character: the reader knows only its offset
        line = text.count("\n", 0, exc.position) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise TunelabError(f"{path}:{line}: malformed YAML (control character U+{code:04X} is not allowed)") from None
    except yaml.YAMLError as exc:
        raise TunelabError(f"{path}: malformed YAML ({first_line(exc)})") from None


def _read_yaml(path: Path, cls: type, strict: bool = True) -> tuple[dict[str, Any], dict[str, _Source]]:
    if not path.is_file():
        raise TunelabError(f"config file not found: {path}")
    root = _compose(path)
    if root is None:
        return {}, {}
    if not isinstance(root, yaml.MappingNode):
        raise TunelabError(f"{path}:{root.start_mark.line + 1}: a config must be a mapping of option: value")
    known = {f.name for f in fields(cls)} | set(flat_names(cls))
    values: dict[str, Any] = {}
    sources: dict[str, _Source] = {}
    loader = yaml.SafeLoader("")
    explicit = {id(k) for k, _ in root.value}
    try:
        loader.flatten_mapping(root)  # resolve `<<: *defaults` merge keys the way safe_load would
        for key_node, value_node in root.value:
            where = f"{path}:{key_node.start_mark.line + 1}"
            key = loader.construct_object(key_node, deep=True)
            name = str(key).replace("-", "_")
            if name not in known:
                if not strict:
                    continue
                raise TunelabError(f"{where}: unknown option '{key}'")
            merged = name in sources and id(sources[name].key) not in explicit  # a key may override a merged one
            if name in values and not merged:  # PyYAML would silently keep the last one
                raise TunelabError(f"{where}: option '{key}' is given twice")
            values[name] = loader.construct_object(value_node, deep=True)
            sources[name] = _Source(path, key_node, value_node)
    except yaml.MarkedYAMLError as exc:  # e.g. an unknown !tag
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise TunelabError(f"{where}: malformed YAML ({exc.problem or exc.context})") from None
    finally:
        loader.dispose()
    return values, sources


def load_yaml(path: str | Path, cls: type) -> dict[str, Any]:
    """Read a config file for dataclass ``cls``; keys may use dashes or underscores.

    Unknown or repeated keys and values of the wrong type are errors naming the file and line.
    """
    path = Path(path)
    values, sources = _read_yaml(path, cls)
    return check_types(cls, values, sources)


def locate(path: str | Path, cls: type, name: str, at: tuple[int | str, ...] = ()) -> str:
    """``FILE:LINE`` of option ``name`` of config file ``path`` (or of the element ``at`` inside it,
    e.g. ``(2, "lr")`` for ``arms[2].lr``), for a config's own checks after it was built."""
    _, sources = _read_yaml(Path(path), cls, strict=False)
    source = sources.get(name)
    return source.where(at) if source is not None else str(path)


def read_option(path: str | Path, cls: type, name: str) -> Any:
    """One option of a saved config file for ``cls`` (checked; its default when absent); keys
    ``cls`` does not know (e.g. options of sections a recipe adds) are not looked at."""
    path = Path(path)
    values, sources = _read_yaml(path, cls, strict=False)
    if name in values:
        return check_types(cls, {name: values[name]}, sources)[name]
    return _default(next(f for f in fields(cls) if f.name == name))


def from_sources(cls: type[C], yaml_path: str | Path | None = None, *, validate: bool = True, **overrides: Any) -> C:
    """Build and validate ``cls``: defaults, then ``yaml_path``, then non-``None`` ``overrides``.

    Section options may come nested or flat from either source; a flag overrides one option
    of a section the YAML file gives. ``validate=False`` leaves the checks to the caller (the CLI
    builder applies the one-field rules first).
    """
    values: dict[str, Any] = {}
    if yaml_path:
        path = Path(yaml_path)
        from_file, sources = _read_yaml(path, cls)
        values = fold(cls, check_types(cls, from_file, sources))
    # Flags are usually typed by typer already; checking them too covers Python callers.
    flags = check_types(cls, {k: v for k, v in overrides.items() if v is not None})
    values = nest(cls, merge(cls, values, fold(cls, flags)))
    try:
        cfg = cls(**values)
    except TypeError as exc:  # an override that is not a field of cls
        raise TunelabError(f"bad config: {exc}") from None
    if validate:
        cfg.validate()  # type: ignore[attr-defined]
    return cfg
