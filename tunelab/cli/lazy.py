"""Config commands whose config class is imported only when the command is used.

:func:`tunelab.cli.build.config_command` needs the config dataclass when the command is
registered, and the configs of ``train``, ``pretrain`` or ``inspect refusal-direction`` live in
modules that import torch: registering them directly would make every ``tunelab`` call (``--help``
included) pay for it. :func:`lazy_config_command` registers a command that knows only its name and
help; its parameters and callback are made by ``config_command`` the first time click asks for them
(this command's ``--help``, parsing its arguments, or the options snapshot test).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import typer
import typer.core

from tunelab.cli.build import config_command

# around(values, proceed): runs instead of the generated command; ``values`` are the parsed flags
# (typer parameter names), ``proceed(values)`` builds, validates and runs the config as usual.
Around = Callable[[dict[str, Any], Callable[[dict[str, Any]], Any]], Any]


def _make(name: str, help: str, load: Callable[[], Mapping[str, Any]], around: Around | None) -> Any:
    """The real click command: ``config_command`` on a one-command app of its own."""
    scratch = typer.Typer(add_completion=False)
    generated = config_command(scratch, name, help=help, **load())
    if around is not None:
        def command(**values: Any) -> Any:
            return around(values, lambda given: generated(**given))

        command.__name__, command.__doc__ = generated.__name__, generated.__doc__
        command.__signature__ = generated.__signature__  # type: ignore[attr-defined]
        command.__annotations__ = generated.__annotations__
        scratch = typer.Typer(add_completion=False)
        scratch.command(name)(command)
    return typer.main.get_command(scratch)  # one command: the command itself, not a group


def lazy_config_command(group: typer.Typer, name: str, *, help: str, load: Callable[[], Mapping[str, Any]],
                        around: Around | None = None) -> None:
    """Register ``name`` on ``group`` as ``config_command(group, name, help=help, **load())`` would,
    with ``load()`` (which imports the config and its room) called only when the command is used."""

    class LazyCommand(typer.core.TyperCommand):
        _real: Any = None

        def _load(self) -> Any:
            if LazyCommand._real is None:
                LazyCommand._real = _make(name, help, load, around)
            return LazyCommand._real

        # click sets both in __init__ (from typer's empty stub); the real ones come from _load()
        params = property(lambda self: self._load().params, lambda self, value: None)  # type: ignore[assignment]
        callback = property(lambda self: self._load().callback, lambda self, value: None)  # type: ignore[assignment]

    def stub() -> None:
        """Replaced by the real callback (see LazyCommand)."""

    group.command(name, cls=LazyCommand, help=help)(stub)


__all__ = ["lazy_config_command"]
