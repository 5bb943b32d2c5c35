"""Config commands whose config class is imported only when the command is used.

:func:`tunelab.cli.build.config_command` needs the config dataclass when the command is
registered, and the configs of ``train``, ``pretrain`` or ``inspect refusal-direction`` live in
modules that import torch: registering them directly would make every ``tunelab`` call (``--help``
included) pay for it. :func:`lazy_config_command` registers a command that knows only its name and
help; its parameters and callback are made by ``config_command`` the first time click asks for them
(this command's ``--help``, parsing its arguments, or the options snapshot test).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import typer
import typer.core

from tunelab.cli.build import config_command

# around(values, proceed): runs instead of the generated command; ``values`` are the parsed flags
# (typer parameter names), ``proceed(values)`` builds, validates and runs the config as usual.
Around = Callable[[dict[str, Any], Callable[[dict[str, Any]], Any]], Any]


def _make(name: str, help: str, load: Callable[[], Mapping[str, Any]], around: Around | None,
          switches: Sequence[str]) -> Any:
    """The real click command: ``config_command`` on a one-command app of its own."""
    scratch = typer.Typer(add_completion=False)
    generated = config_command(scratch, name, help=help, **load())
    if around is not None or switches:
        def command(**values: Any) -> Any:
            for key in switches:  # an unset switch is "not given": the --config file's value stands
                values[key] = values[key] or None
            return around(values, lambda given: generated(**given)) if around else generated(**values)

        command.__name__, command.__doc__ = generated.__name__, generated.__doc__
        command.__signature__ = generated.__signature__  # type: ignore[attr-defined]
        command.__annotations__ = generated.__annotations__
        scratch = typer.Typer(add_completion=False)
        scratch.command(name)(command)
    real = typer.main.get_command(scratch)  # one command: the command itself, not a group
    for param in real.params:
        if param.name in switches:
            param.default = False  # --resume, not --resume/--no-resume: off unless given, as typer shows it
    return real


def lazy_config_command(group: typer.Typer, name: str, *, help: str, load: Callable[[], Mapping[str, Any]],
                        around: Around | None = None, switches: Sequence[str] = ()) -> None:
    """Register ``name`` on ``group`` as ``config_command(group, name, help=help, **load())`` would,
    with ``load()`` (which imports the config and its room) called only when the command is used.

    ``around(values, proceed)`` runs instead of the generated command (e.g. ``--resume`` reading a
    saved config). ``switches`` are on-only flags (``--resume``) of a ``--config`` command: shown
    with default ``False`` as before, and passed on as "not given" (``None``) when not set.
    """

    class LazyCommand(typer.core.TyperCommand):
        _real: Any = None

        def _load(self) -> Any:
            if LazyCommand._real is None:
                LazyCommand._real = _make(name, help, load, around, tuple(switches))
            return LazyCommand._real

        # click sets both in __init__ (from typer's empty stub); the real ones come from _load()
        params = property(lambda self: self._load().params, lambda self, value: None)  # type: ignore[assignment]
        callback = property(lambda self: self._load().callback, lambda self, value: None)  # type: ignore[assignment]

    def stub() -> None:
        """Replaced by the real callback (see LazyCommand)."""

    group.command(name, cls=LazyCommand, help=help)(stub)


__all__ = ["lazy_config_command"]
