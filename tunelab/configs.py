"""Command configs from YAML and flags: defaults, then the file, then explicit flags.

Every command has one dataclass config (``TrainConfig``, ``EvalConfig``, ...); its field names
are the YAML keys and, with dashes, the CLI flags. Each value is checked against its field's
type hint before the dataclass is built, so a wrong type is one line naming the file, line and
field (``run.yaml:3: lr: expected a number, got 'fast'``) and ``validate()`` only ever compares
values of the right type.
"""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from tunelab.errors import TunelabError, first_line
from tunelab.files import read_text

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
        # A whole value is reported at its key (a block list starts on the line after it);
        # an element of a list or mapping at its own line.
        node = self.node if at else self.key
        for step in at:
            child = _child(node, step)
            if child is None:
                break
            node = child
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return f"{self.path}{line}: {field}"


def _child(node: yaml.Node | None, step: int | str) -> yaml.Node | None:
    if isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
        return node.value[step]
    if isinstance(node, yaml.MappingNode):
        return next((v for k, v in node.value if k.value == str(step)), None)
    return None


def check_types(cls: type[C], values: dict[str, Any], sources: dict[str, _Source] | None = None) -> dict[str, Any]:
    """``values`` checked (and ints widened to floats, ...) against ``cls``'s field types."""
    hints = _type_hints(cls)
    checked = {}
    for name, value in values.items():
        if name not in hints:
            checked[name] = value
            continue
        try:
            checked[name] = coerce(value, hints[name])
        except _Mismatch as exc:
            where = (sources or {}).get(name, _Source()).locate(name, exc.at)
            raise TunelabError(f"{where}: expected {exc.expected}, got {_show(exc.value)}") from None
    return checked


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


def _read_yaml(path: Path, cls: type) -> tuple[dict[str, Any], dict[str, _Source]]:
    if not path.is_file():
        raise TunelabError(f"config file not found: {path}")
    root = _compose(path)
    if root is None:
        return {}, {}
    if not isinstance(root, yaml.MappingNode):
        raise TunelabError(f"{path}:{root.start_mark.line + 1}: a config must be a mapping of option: value")
    known = {f.name for f in fields(cls)}
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


def from_sources(cls: type[C], yaml_path: str | Path | None = None, **overrides: Any) -> C:
    """Build and validate ``cls``: defaults, then ``yaml_path``, then non-``None`` ``overrides``."""
    values: dict[str, Any] = {}
    if yaml_path:
        path = Path(yaml_path)
        from_file, sources = _read_yaml(path, cls)
        values.update(check_types(cls, from_file, sources))
    # Flags are usually typed by typer already; checking them too covers Python callers.
    values.update(check_types(cls, {k: v for k, v in overrides.items() if v is not None}))
    try:
        cfg = cls(**values)
    except TypeError as exc:  # an override that is not a field of cls
        raise TunelabError(f"bad config: {exc}") from None
    cfg.validate()  # type: ignore[attr-defined]
    return cfg
