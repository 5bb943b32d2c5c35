"""One registry type for everything tunelab looks up by name.

Adapter methods, update rules, merge methods, pruning methods, routers, scores, judges, tasks
and report sections are each a :class:`Registry`: names in registration order (for help texts
and validation), targets that may be lazy (``"module:attr"`` strings, imported on first use, so
a heavy dependency such as opacus is only imported when its entry is used), aliases, and one
error for an unknown name that suggests the closest one (as lm-evaluation-harness's does)::

    RULES = Registry("optimizer")
    RULES.register("adamw", "tunelab.train.update_rules:AdamW")

    @RULES.register("zo")
    class ZO: ...

    RULES.get("adamw")    # the class, imported now
    RULES.names()         # ("adamw", "zo")
    RULES.get("adamv")    # TunelabError: unknown optimizer 'adamv' (did you mean 'adamw'?); choose one of: adamw, zo
"""

from __future__ import annotations

import difflib
import importlib
import re
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar, overload

from tunelab.errors import TunelabError

T = TypeVar("T")

_LAZY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # "package.module:attr" (other strings are plain targets)


def join_names(names: Iterable[str], word: str = "or") -> str:
    """``a, b or c`` (``word="and"``: ``a, b and c``), for help texts and messages that list names."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" {word} " + names[-1]


class Registry(Generic[T]):
    """Names → targets. ``kind`` names the thing in errors ("unknown {kind} 'x'")."""

    def __init__(self, kind: str, *, normalize: Callable[[str], str] | None = None,
                 listing: str = "choose one of: ") -> None:
        self.kind = kind
        self._normalize = normalize or (lambda name: name)
        # what precedes the names in the unknown-name error (kept per registry so that messages
        # users already know stay as they were: "known methods: ...", "choose one of ...")
        self._listing = listing
        self._targets: dict[str, T | str] = {}
        self._aliases: dict[str, str] = {}

    # ------------------------------------------------------------------ registering
    @overload
    def register(self, name: str, target: T | str, *, aliases: tuple[str, ...] = ()) -> T | str: ...

    @overload
    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]: ...

    def register(self, name: str, target: Any = None, *, aliases: tuple[str, ...] = ()) -> Any:
        """Register ``target`` (an object, or a lazy ``"module:attr"`` string) under ``name``.

        Without ``target`` it is a decorator. A name registered twice is a programming error.
        """
        def add(obj: Any) -> Any:
            if name in self._targets or name in self._aliases:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._targets[name] = obj
            for alias in aliases:
                self._aliases[alias] = name
            return obj

        return add if target is None else add(target)

    # ------------------------------------------------------------------ looking up
    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order (aliases left out)."""
        return tuple(self._targets)

    def canonical(self, name: str) -> str:
        """``name`` as registered (aliases and normalisation resolved); unknown → one-line error."""
        key = self._normalize(name)
        key = self._aliases.get(key, key)
        if key not in self._targets:
            raise TunelabError(self.unknown_message(name))
        return key

    def get(self, name: str) -> T:
        """The target registered under ``name``, imported now if it was registered lazily."""
        key = self.canonical(name)
        target = self._targets[key]
        if isinstance(target, str) and _LAZY.match(target):
            module, attr = target.split(":", 1)
            target = getattr(importlib.import_module(module), attr)
            self._targets[key] = target
        return target  # type: ignore[return-value]

    def unknown_message(self, name: str) -> str:
        """``unknown {kind} 'name' (did you mean 'x'?); choose one of: a, b, c``."""
        close = difflib.get_close_matches(self._normalize(name), [*self._targets, *self._aliases], n=1)
        hint = f" (did you mean '{self._aliases.get(close[0], close[0])}'?)" if close else ""
        return f"unknown {self.kind} '{name}'{hint}; {self._listing}{', '.join(self._targets)}"

    def help(self) -> str:
        """``a, b or c`` for a help text."""
        return join_names(self._targets)

    def __getitem__(self, name: str) -> T:
        """``registry[name]`` is :meth:`get` (an unknown name is a one-line ``TunelabError``)."""
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = self._normalize(name)
        return key in self._targets or key in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def __len__(self) -> int:
        return len(self._targets)

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, target) pairs in registration order, lazy targets imported."""
        for name in list(self._targets):
            yield name, self.get(name)

    def values(self) -> Iterator[T]:
        """The targets in registration order, lazy ones imported."""
        for _, target in self.items():
            yield target

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._targets)})"


def lazy_exports(package: str, exports: Mapping[str, tuple[str, ...]]) -> tuple[Callable[[str], Any], list[str]]:
    """A package front door that imports what it re-exports on first use (PEP 562).

    ``exports`` maps a module to the names it lends the package; returns ``(__getattr__, __all__)``
    for the package's ``__init__.py``, so importing a light module of a room (its config, its
    report section) does not load the room's heavy modules (torch) through the front door::

        __getattr__, __all__ = lazy_exports(__name__, {"tunelab.merge.run": ("merge_adapters",)})
    """
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        return getattr(importlib.import_module(where[name]), name)

    return __getattr__, sorted(where)


__all__ = ["Registry", "lazy_exports", "join_names"]
