"""Typed results and the one run directory every command writes into.

A command is a job: a config and ``run(cfg, run_dir) -> Result``. A :class:`Result` is a
versioned dataclass that writes and reads its own ``metrics.json``; its schema is the class, not
the string keys its readers use::

    @result_kind("scaling")
    @dataclass
    class ScalingResult(Result):
        rows: int = 0
        fit: dict[str, float] = field(default_factory=dict)

    run_dir = RunDir(Path("runs/fit"))
    run_dir.prepare(overwrite=cfg.overwrite)
    ScalingResult(rows=90, fit={...}).write(run_dir)
    read_result(Path("runs/fit/metrics.json"))   # -> ScalingResult

On disk a result is ``{"kind": ..., "schema_version": N, <fields in declaration order>,
<keys this version does not know, kept as they were>}`` (``schema_version`` from version 2 on).
Files without ``schema_version`` read as version 1; a file from a newer tunelab is refused in one
line; unknown kinds read as a plain :class:`Result` holding everything in ``extra`` (the report
still shows what it can). A field declared with :func:`not_written` rides on the returned result
but is never written or read (eval's per-example ``records``). Torch-free: light readers import
this module.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Callable, Protocol, TypeVar

from tunelab.errors import TunelabError
from tunelab.files import read_text
from tunelab.layout import EVAL_FILE, atomic_write_text
from tunelab.registry import Registry

R = TypeVar("R", bound="Result")
C_contra = TypeVar("C_contra", contravariant=True)
R_co = TypeVar("R_co", bound="Result", covariant=True)

RESULT_KINDS: Registry[type["Result"]] = Registry("result kind")

NOT_WRITTEN = "tunelab_not_written"  # field metadata: carried on the result, never in metrics.json


def not_written(default: Any = None, *, default_factory: Callable[[], Any] | None = None) -> Any:
    """A :class:`Result` field the job returns but does not write (e.g. eval's per-example ``records``).

    It is left out of :meth:`Result.to_dict` (so ``metrics.json`` keeps its bytes) and of
    :meth:`Result.from_dict` (a result read back has the default), and it takes no part in ``==``.
    """
    meta = {NOT_WRITTEN: True}
    if default_factory is not None:
        return field(default_factory=default_factory, compare=False, repr=False, metadata=meta)
    return field(default=default, compare=False, repr=False, metadata=meta)


def _written(f: dataclasses.Field) -> bool:
    return f.name not in ("extra", "_keys") and not f.metadata.get(NOT_WRITTEN, False)


def result_kind(kind: str, version: int = 1) -> Callable[[type[R]], type[R]]:
    """Class decorator: register a :class:`Result` subclass under ``kind`` at schema ``version``."""
    def register(cls: type[R]) -> type[R]:
        cls.KIND, cls.VERSION = kind, version
        RESULT_KINDS.register(kind, cls)
        return cls

    return register


@dataclass
class Result:
    """A command's result; subclasses add typed fields (all with defaults, so old files load)."""

    KIND: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    INDENT: ClassVar[int] = 1  # the writer's json.dumps indent before results were typed (kept: same bytes)
    TRAILING_NEWLINE: ClassVar[bool] = False
    extra: dict[str, Any] = field(default_factory=dict, repr=False, kw_only=True)
    # Key order of the dict this result was read from (from_dict): writing it back gives the same
    # object, keys a writer left out stay out, and commands that now build a Result from their dict
    # write the same bytes as before.
    _keys: tuple[str, ...] | None = field(default=None, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ dict form
    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to disk (``kind`` and ``schema_version`` first).

        ``schema_version`` is written from version 2 on: a file without it reads as version 1, so
        version-1 files stay exactly what the untyped writers wrote. A result read by
        :meth:`from_dict` keeps the keys and order it was read with.
        """
        kind = self.KIND or self.extra.get("kind", "")
        fields = {f.name: f for f in dataclasses.fields(self) if _written(f)}
        values = {name: _plain(getattr(self, name)) for name in fields}
        if self._keys is None:
            out: dict[str, Any] = {"kind": kind}
            if self.VERSION > 1:
                out["schema_version"] = self.VERSION
            out.update(values)
            for key, value in self.extra.items():
                out.setdefault(key, value)
            return out
        out = {}
        for key in self._keys:
            if key == "kind":
                out[key] = kind
            elif key == "schema_version":
                out[key] = self.VERSION
            elif key in values:
                out[key] = values[key]
            elif key in self.extra:
                out[key] = self.extra[key]
        if "kind" not in out:
            out = {"kind": kind, **out}
        if self.VERSION > 1 and "schema_version" not in out:
            out = {"kind": kind, "schema_version": self.VERSION, **out}
        for name, f in fields.items():  # set after reading: append unless still the default
            if name not in out and values[name] != _plain(_default(f)):
                out[name] = values[name]
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any], source: str | Path = "metrics.json") -> R:
        """Build from a written object; keys this class does not know stay in ``extra``."""
        if cls.KIND and data.get("kind", cls.KIND) != cls.KIND:
            raise TunelabError(f"{source}: a '{data.get('kind')}' result, not '{cls.KIND}'")
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version > cls.VERSION:
            raise TunelabError(f"{source}: schema version {version} of '{cls.KIND or data.get('kind')}' "
                               f"is newer than this tunelab reads ({cls.VERSION}); upgrade tunelab")
        data = cls.upgrade(dict(data), version)
        names = {f.name for f in dataclasses.fields(cls) if f.init and _written(f)}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k not in ("kind", "schema_version")}
        if not cls.KIND and "kind" in data:
            extra = {"kind": data["kind"], **extra}
        try:
            result = cls(**known, extra=extra)
        except TypeError as exc:  # a required field missing from the file
            raise TunelabError(f"{source}: not a '{cls.KIND}' result ({exc})") from None
        result._keys = tuple(data)
        return result

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Rewrite an older schema version's keys into this one's (override when the schema changes)."""
        return data

    # ------------------------------------------------------------------ files
    def write(self, where: "RunDir | Path", name: str = EVAL_FILE, *, indent: int | None = None) -> Path:
        """Write atomically to ``where/name`` (a :class:`RunDir` or a directory path); return the path.

        ``indent`` overrides the class's :attr:`INDENT` (a writer of several kinds keeps its own).
        """
        directory = where.path if isinstance(where, RunDir) else Path(where)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        text = json.dumps(self.to_dict(), indent=self.INDENT if indent is None else indent)
        atomic_write_text(path, text + "\n" if self.TRAILING_NEWLINE else text)
        return path

    @classmethod
    def read(cls: type[R], path: str | Path) -> R:
        """Read ``path`` as this class; a truncated or wrong file is one line naming it."""
        return cls.from_dict(read_json_object(path), source=path)


@result_kind("curve")
@dataclass
class CurveResult(Result):
    """A plotted curve beside a command's main result (``prefill/``, ``by-category/``, ``ser-curve/``).

    Core, not a room's: three rooms write one and the report draws them all the same way; the
    keys each adds (``asr``, ``ser``, ``config``, ...) stay in ``extra``, in the order written.
    """

    INDENT = 2

    name: str | None = None
    title: str | None = None
    xlabel: str | None = None
    ylabel: str | None = None
    model: str | None = None
    adapter: str | None = None
    series: list[dict[str, Any]] = field(default_factory=list)


def read_json_object(path: str | Path, what: str = "metrics file") -> dict[str, Any]:
    """A JSON object from ``path``; missing, truncated or non-object files are one line naming it."""
    text = read_text(path, what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TunelabError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}); is the file truncated?") from None
    if not isinstance(data, dict):
        raise TunelabError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_result(path: str | Path) -> Result:
    """The result in ``path`` as its registered type (``kind``), or a plain :class:`Result`."""
    data = read_json_object(path)
    kind = data.get("kind")
    cls = RESULT_KINDS.get(kind) if isinstance(kind, str) and kind in RESULT_KINDS else Result
    return cls.from_dict(data, source=path)


def as_result(data: dict[str, Any]) -> Result:
    """``data`` (a command's metrics dict) as its registered type by ``kind`` (plain :class:`Result` if none)."""
    kind = data.get("kind")
    cls = RESULT_KINDS.get(kind) if isinstance(kind, str) and kind in RESULT_KINDS else Result
    return cls.from_dict(data, source=f"'{kind}' result")


def _default(f: dataclasses.Field) -> Any:
    """A field's default value (None when it has none)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _plain(value: Any) -> Any:
    """Dataclasses and paths as JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass
class RunDir:
    """A command's output directory: overwrite/resume rules, paths and atomic writes.

    ``marker`` is the file written last; its presence marks the command as finished, so an
    interrupted run never looks complete. With ``overwrite`` the marker goes first, then the rest.
    ``what`` names a finished one in errors, article included ("a finished run", "an attack
    result"); ``not_empty``, when given, refuses any non-empty directory without ``--overwrite``
    (``{path}`` in it is filled in), not just a finished one.
    """

    path: Path
    marker: str = EVAL_FILE
    what: str = "a finished result"
    not_empty: str | None = None

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    def file(self, name: str) -> Path:
        """``path/name``."""
        return self.path / name

    @property
    def finished(self) -> bool:
        """Whether the marker file exists."""
        return self.file(self.marker).is_file()

    def check(self, *, overwrite: bool = False, resume: bool = False,
              checkpoint: Callable[[Path], Path | None] | None = None) -> Path | None:
        """Refuse what the flags do not allow, writing nothing; return the checkpoint to resume from.

        ``checkpoint`` finds a resumable checkpoint in the directory (commands that resume): with
        ``resume`` one must exist, without it an unfinished run is refused unless ``overwrite``.
        """
        found = checkpoint(self.path) if checkpoint is not None and self.path.is_dir() else None
        if resume:
            if self.finished:
                raise TunelabError(f"{self.path} already holds {self.what}; nothing to resume")
            if checkpoint is not None and found is None:
                raise TunelabError(f"{self.path} has no checkpoint to resume from")
            return found
        if overwrite:
            return None
        if self.not_empty is not None and self.path.is_dir() and any(self.path.iterdir()):
            raise TunelabError(self.not_empty.format(path=self.path))
        if self.finished:
            raise TunelabError(f"{self.path} already holds {self.what}; pass --overwrite to replace it")
        if found is not None:
            raise TunelabError(f"{self.path} holds an unfinished run; pass --resume to continue it or --overwrite to restart")
        return None

    def open(self, *, clear: bool = False, marker_only: bool = False) -> None:
        """Create the directory; with ``clear`` empty it first (the marker goes first), or with
        ``marker_only`` drop just the marker (a rerun that reuses the rest must not look finished)."""
        if self.path.exists() and not self.path.is_dir():
            raise TunelabError(f"{self.path} exists and is not a directory")
        if (clear or marker_only) and self.path.is_dir():
            self.unfinish()
            if clear:
                for child in self.path.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        self.path.mkdir(parents=True, exist_ok=True)

    def unfinish(self) -> None:
        """Drop the marker: a rerun into this directory must not look finished if it is interrupted."""
        self.file(self.marker).unlink(missing_ok=True)

    def prepare(self, *, overwrite: bool = False, resume: bool = False) -> None:
        """:meth:`check` then :meth:`open`: refuse a finished directory unless ``overwrite`` (then empty it) or ``resume``."""
        if self.path.exists() and not self.path.is_dir():
            raise TunelabError(f"{self.path} exists and is not a directory")
        self.check(overwrite=overwrite, resume=resume)
        self.open(clear=overwrite)

    def write_text(self, name: str, text: str) -> Path:
        """Write ``name`` atomically (temp file + rename)."""
        target = self.file(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, text)
        return target

    def write_json(self, name: str, obj: Any, indent: int = 1) -> Path:
        """Write ``obj`` as JSON to ``name`` atomically."""
        return self.write_text(name, json.dumps(_plain(obj), indent=indent))


class Job(Protocol[C_contra, R_co]):
    """The shape of every command's run function: ``job(cfg, run_dir=None, **extras) -> Result``.

    ``cfg`` is the command's config dataclass (validated); ``run_dir`` the :class:`RunDir` it writes
    into (``None``: the command's default, from ``cfg``'s ``--output``). The job writes its result
    with :meth:`Result.write` and returns that same object, so a caller (the CLI's printer, the
    study, a test) reads typed fields, never ``metrics.json``'s string keys. Extras (a preloaded
    model and tokenizer, a console, progress bars) are keyword-only.
    """

    def __call__(self, cfg: C_contra, run_dir: "RunDir | None" = None, /) -> R_co: ...


__all__ = ["Job", "Result", "RESULT_KINDS", "result_kind", "not_written", "read_result", "read_json_object", "as_result", "CurveResult", "RunDir"]
