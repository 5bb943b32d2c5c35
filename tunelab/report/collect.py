"""Find training runs, evaluations, demo tables and plots under the given paths; read them.

Nothing here draws or formats: the result is a :class:`ReportData` that the sections in
:mod:`tunelab.report.sections` turn into HTML. Reading is tolerant: a missing file leaves a field
``None``, an unreadable one is skipped with a note (shown in the report), and only "nothing at
all was found" or "that path does not exist" is an error.

What is recognised (a directory may be several at once):

* a training run: ``tunelab.json`` (finished) or ``metrics.jsonl`` without it (unfinished);
* an evaluation: ``metrics.json`` — ``"kind"`` ``task`` / ``safety`` / anything else;
* a study: ``study.json`` (``tunelab study``), an evaluation of kind ``study``; its arms are runs below it;
* a demo table: ``results.json`` with a ``"rows"`` list (``tunelab demo``);
* figures: ``*.png`` inside a directory named ``plots``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from tunelab.errors import TunelabError
from tunelab.files import read_json

from tunelab.layout import COMPACT_FILE, CONFIG_FILE, EVAL_FILE, MASK_FILE, METRICS_FILE, PEFT_WEIGHTS, RUN_FILE

DEMO_FILE = "results.json"
STUDY_FILE = "study.json"  # tunelab.study.results.STUDY_FILE, named again here: the study is a higher layer
PLOTS_DIR = "plots"

MAX_DEPTH = 5  # runs/<group>/<run>/eval/<task> is 4 below "runs"
# Directories that never hold anything to report (and can be large): skip them while walking.
SKIP_DIRS = {"checkpoint", "tensorboard", ".final-tmp", "__pycache__", "node_modules", ".git"}
MAX_FIGURE_BYTES = 8_000_000


@dataclass
class Evaluation:
    """One ``metrics.json``: an evaluation of a model, with or without an adapter."""

    path: Path  # the directory holding metrics.json
    kind: str  # "task", "safety" or whatever the writer put in "kind"
    data: dict[str, Any]
    subject: str = ""  # the column it belongs to: a run's name, "base: MODEL", or the dir's name
    run: Run | None = None  # the training run it evaluates, if known
    file: str = EVAL_FILE  # the file it was read from (study.json for a study)

    @property
    def name(self) -> str:
        """What was evaluated on: the task/suite name, else the directory's name."""
        for key in ("task", "suite", "name"):
            if isinstance(self.data.get(key), str) and self.data[key]:
                return self.data[key]
        return self.path.name

    @property
    def is_base(self) -> bool:
        """True for an evaluation of a model without an adapter (the "before" column).

        Only evaluations that name their model count: an interference analysis has no adapter
        either, but it is not an evaluation of the base model.
        """
        return self.run is None and not self.data.get("adapter") and bool(self.data.get("model"))

    @property
    def score(self) -> float | None:
        """The primary metric in [0, 1] of a task evaluation (``score``, else ``accuracy``)."""
        for value in (self.data.get("score"), self.data.get("accuracy"), (self.data.get("metrics") or {}).get("accuracy")):
            if number(value) is not None:
                return number(value)
        return None

    @property
    def series(self) -> list[Series]:
        """Curves this evaluation carries in ``"series"`` (see :func:`read_series`)."""
        return read_series(self.data.get("series"))


@dataclass
class Series:
    """One named x/y curve from a metrics.json ``"series"`` entry."""

    label: str
    x: list[float]
    y: list[float]


@dataclass
class Run:
    """One training run directory."""

    path: Path
    name: str = ""
    record: dict[str, Any] = field(default_factory=dict)  # tunelab.json ({} while unfinished)
    steps: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl rows
    config: dict[str, Any] = field(default_factory=dict)  # config.yaml
    finished: bool = True
    adapter_file: str | None = None  # the file adapter_bytes measures
    adapter_bytes: int | None = None
    peft_bytes: int | None = None
    evals: list[Evaluation] = field(default_factory=list)

    def get(self, key: str) -> Any:
        """A value from tunelab.json, falling back to config.yaml (unfinished runs have only that)."""
        value = self.record.get(key)
        if value is None:
            value = self.config.get({"base_model": "model"}.get(key, key))
        return value

    @property
    def method(self) -> str:
        """The training method (``lora``, ``lori-d``, ...), or ``"?"``."""
        return str(self.get("method") or "?")

    def curve(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of one per-step metric; the loss falls back to tunelab.json's list."""
        xs, ys = [], []
        for i, row in enumerate(self.steps):
            y = number(row.get(key))
            if y is not None:
                step = number(row.get("step"))
                xs.append(float(i + 1) if step is None else step)
                ys.append(y)
        if not ys and key == "loss":
            ys = [v for v in (number(v) for v in self.record.get("losses") or []) if v is not None]
            xs = [float(i + 1) for i in range(len(ys))]
        return xs, ys


@dataclass
class DemoResults:
    """A ``tunelab demo`` results.json."""

    path: Path  # the directory holding results.json
    data: dict[str, Any]
    name: str = ""

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The per-method rows (dicts), skipping anything malformed."""
        return [r for r in self.data.get("rows") or [] if isinstance(r, dict)]


@dataclass
class Figure:
    """A PNG found in a ``plots/`` directory."""

    path: Path
    owner: str  # the run/eval/dir name it belongs to


def by_subject(evals: Iterable[Evaluation]) -> list[Evaluation]:
    """``evals`` in the order sections list them: by subject, then by path."""
    return sorted(evals, key=lambda e: (e.subject, str(e.path)))


@dataclass
class ReportData:
    """Everything found under the report's input paths."""

    inputs: list[Path]
    runs: list[Run] = field(default_factory=list)
    evals: list[Evaluation] = field(default_factory=list)  # all of them, the runs' own included
    demos: list[DemoResults] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # files skipped and why

    def evals_of_kind(self, *kinds: str) -> list[Evaluation]:
        """The evaluations whose ``kind`` is one of ``kinds``."""
        return [e for e in self.evals if e.kind in kinds]

    def subjects(self, evals: Iterable[Evaluation] | None = None) -> list[str]:
        """Column names in display order: base models first, then runs, then the rest."""
        evals = list(self.evals if evals is None else evals)
        run_order = {r.name: i for i, r in enumerate(self.runs)}
        names = {e.subject for e in evals}
        return sorted(names, key=lambda s: (0 if s.startswith("base") else 1 if s in run_order else 2, run_order.get(s, 0), s))


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None (bools, strings, NaN and junk are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def read_series(raw: Any) -> list[Series]:
    """Parse a ``"series"`` value: ``{label: {"x": [...], "y": [...]}}``, ``{label: [y...]}``
    or ``[{"label", "x", "y"}, ...]``; a missing ``x`` means 0, 1, 2, ..."""
    if isinstance(raw, dict):
        items = [(str(k), v) for k, v in raw.items()]
    elif isinstance(raw, list):
        items = [(str(v.get("label", i)), v) for i, v in enumerate(raw) if isinstance(v, dict)]
    else:
        return []
    out = []
    for label, value in items:
        ys_raw = value.get("y") if isinstance(value, dict) else value
        if not isinstance(ys_raw, list):
            continue
        xs_raw = value.get("x") if isinstance(value, dict) and isinstance(value.get("x"), list) else list(range(len(ys_raw)))
        pairs = [(number(x), number(y)) for x, y in zip(xs_raw, ys_raw)]
        pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
        if pairs:
            out.append(Series(label, [p[0] for p in pairs], [p[1] for p in pairs]))
    return out


def collect(paths: Sequence[str | os.PathLike[str]]) -> ReportData:
    """Discover and read everything under ``paths``; raise TunelabError if a path is missing
    or nothing reportable is found."""
    if not paths:
        raise TunelabError("no run directories given")
    inputs = [Path(p) for p in paths]
    for p in inputs:
        if not p.exists():
            raise TunelabError(f"{p}: no such file or directory")
    data = ReportData(inputs=inputs)
    seen: set[Path] = set()
    found: list[tuple[Path, Path]] = []  # (directory, the input it was found under)
    for root in inputs:
        start = root.parent if root.is_file() else root  # a file names its directory
        for d in _walk(start, depth=0 if root.is_file() else MAX_DEPTH):
            if d.resolve() not in seen:
                seen.add(d.resolve())
                found.append((d, start))

    for d, root in found:
        if (d / RUN_FILE).is_file() or ((d / METRICS_FILE).is_file() and not _is_pretrain(d)):
            run = _read_run(d, data.notes)
            if run is not None:
                run.name = _display_name(d, root)
                data.runs.append(run)
    for d, root in found:
        for name in (EVAL_FILE, STUDY_FILE):
            if (d / name).is_file():
                ev = _read_eval(d, data.notes, name)
                if ev is not None:
                    data.evals.append(ev)
        if (d / DEMO_FILE).is_file():
            demo = _read_demo(d, data.notes)
            if demo is not None:
                demo.name = _display_name(d, root)
                data.demos.append(demo)
    _unique_names(data.runs)
    _unique_names(data.demos)
    _attach_evals(data)
    for d, root in found:
        if d.name == PLOTS_DIR:
            data.figures += _read_figures(d, root, data)
    if not (data.runs or data.evals or data.demos or data.figures):
        shown = ", ".join(str(p) for p in inputs)
        skipped = f"; {'; '.join(data.notes)}" if data.notes else ""  # name the files that could not be read
        raise TunelabError(f"no tunelab runs, evaluations or demo results found under {shown}{skipped}")
    return data


def _walk(root: Path, depth: int) -> list[Path]:
    """``root`` and its subdirectories down to ``depth`` levels, sorted, skipping SKIP_DIRS and
    hidden directories (symlinked directories are not followed, so no loops)."""
    out = [root]
    if depth <= 0:
        return out
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return out
    for child in children:
        if child.name in SKIP_DIRS or child.name.startswith("."):
            continue
        out += _walk(child, depth - 1)
    return out


def _read_json(path: Path, notes: list[str]) -> Any:
    """A JSON file the report reads; an unreadable one is noted (file, line, why) and skipped."""
    try:
        return read_json(path, "metrics file", expect=None)
    except TunelabError as exc:  # e.g. "FILE:1: malformed JSON (...)": a truncated write
        notes.append(f"skipped {exc}")
        return None


def _is_pretrain(d: Path) -> bool:
    """A ``tunelab pretrain`` dir: its ``metrics.jsonl`` rows carry a ``split`` (train/eval); the
    finished run is shown by the pre-training sections from its ``metrics.json``, not as a fine-tuning run."""
    try:
        with (d / METRICS_FILE).open() as fh:
            first = json.loads(fh.readline() or "{}")
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and "split" in first


def _read_run(d: Path, notes: list[str]) -> Run | None:
    run = Run(path=d)
    if (d / RUN_FILE).is_file():
        record = _read_json(d / RUN_FILE, notes)
        if not isinstance(record, dict):
            return None
        run.record = record
    else:
        run.finished = False  # tunelab.json is written last: still training, or killed
    if (d / METRICS_FILE).is_file():
        run.steps = _read_jsonl(d / METRICS_FILE, notes)
    if (d / CONFIG_FILE).is_file():
        try:
            config = yaml.safe_load((d / CONFIG_FILE).read_text(encoding="utf-8"))
            run.config = config if isinstance(config, dict) else {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            notes.append(f"skipped {d / CONFIG_FILE}: {type(exc).__name__}")
    if not run.finished and not run.steps:
        return None
    run.adapter_file, run.adapter_bytes = _adapter_size(d, run.method)
    if (d / PEFT_WEIGHTS).is_file():
        run.peft_bytes = (d / PEFT_WEIGHTS).stat().st_size
    return run


def _read_jsonl(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        notes.append(f"skipped {path}: {type(exc).__name__}")
        return rows
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            # A run killed mid-write leaves a torn last line; anything else is worth a note.
            if i != len(lines):
                notes.append(f"{path}:{i}: malformed JSON line skipped")
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _adapter_size(d: Path, method: str) -> tuple[str | None, int | None]:
    """The file that is "the adapter" on disk and its size: LoRI-S's compact file, the PEFT
    weights, or for full fine-tuning all model weight files."""
    for name in (COMPACT_FILE, PEFT_WEIGHTS):
        if (d / name).is_file():
            return name, (d / name).stat().st_size
    weights = [p for p in d.glob("*.safetensors") if p.name != MASK_FILE]
    if weights:
        label = weights[0].name if len(weights) == 1 else f"{len(weights)} *.safetensors files"
        return label, sum(p.stat().st_size for p in weights)
    return None, None


def _read_eval(d: Path, notes: list[str], name: str = EVAL_FILE) -> Evaluation | None:
    raw = _read_json(d / name, notes)
    if not isinstance(raw, dict):
        if raw is not None:
            notes.append(f"skipped {d / name}: not a JSON object")
        return None
    kind = raw.get("kind")
    if name == STUDY_FILE:
        return Evaluation(path=d, kind=kind if isinstance(kind, str) and kind else "study", data=raw, file=name)
    if not isinstance(kind, str) or not kind:
        # Files written before "kind" existed: {"task", "n", "accuracy", ...}.
        kind = "safety" if "asr" in raw else "task" if "task" in raw else "metrics"
    return Evaluation(path=d, kind=kind, data=raw)


def _read_demo(d: Path, notes: list[str]) -> DemoResults | None:
    raw = _read_json(d / DEMO_FILE, notes)
    if isinstance(raw, dict) and isinstance(raw.get("rows"), list):
        return DemoResults(path=d, data=raw)
    return None  # some other results.json: not ours


def _read_figures(d: Path, root: Path, data: ReportData) -> list[Figure]:
    owner = _owner_run(d, data.runs)
    name = owner.name if owner else _display_name(d.parent, root)
    out = []
    for png in sorted(d.glob("*.png")):
        try:
            size = png.stat().st_size
            with png.open("rb") as fh:
                magic = fh.read(8)
        except OSError:
            continue
        if magic != b"\x89PNG\r\n\x1a\n":
            data.notes.append(f"skipped {png}: not a PNG file")
        elif size > MAX_FIGURE_BYTES:
            data.notes.append(f"skipped {png}: {size / 1e6:.1f} MB is too large to embed")
        else:
            out.append(Figure(png, name))
    return out


def _display_name(d: Path, root: Path) -> str:
    """The path below the input it was found under; the input itself goes by its own name."""
    try:
        rel = d.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(d.name)
    return rel.as_posix() if rel.parts else (d.resolve().name or str(d))


def _unique_names(items: Sequence[Run | DemoResults]) -> None:
    """Make display names unique by adding parent directories (``a/lora`` vs ``b/lora``)."""
    for _ in range(8):
        counts: dict[str, int] = {}
        for item in items:
            counts[item.name] = counts.get(item.name, 0) + 1
        clashing = [i for i in items if counts[i.name] > 1]
        if not clashing:
            return
        for item in clashing:
            parts = item.path.resolve().parts
            depth = len(Path(item.name).parts) + 1
            item.name = "/".join(parts[-depth:]) if depth <= len(parts) else str(item.path.resolve())


def _owner_run(d: Path, runs: Sequence[Run]) -> Run | None:
    """The innermost run whose directory contains ``d`` (``RUN/eval/TASK`` → RUN)."""
    d = d.resolve()
    best: Run | None = None
    for run in runs:
        root = run.path.resolve()
        if d != root and d.is_relative_to(root) and (best is None or root.is_relative_to(best.path.resolve())):
            best = run
    return best


def _attach_evals(data: ReportData) -> None:
    """Give each evaluation its run (the directory it lives in, else the adapter path it names)
    and its display column."""
    by_path = {r.path.resolve(): r for r in data.runs}
    for ev in data.evals:
        run = _owner_run(ev.path, data.runs)
        adapter = ev.data.get("adapter")
        if run is None and isinstance(adapter, str) and adapter:
            # Relative adapter paths were relative to where `tunelab eval` ran; try both anchors.
            for anchor in (Path.cwd(), ev.path):
                candidate = (anchor / adapter).resolve()
                if candidate in by_path:
                    run = by_path[candidate]
                    break
        ev.run = run
        if ev.file == STUDY_FILE:
            # a study names a model but is no evaluation of the base model: its column is the study
            ev.subject = f"study: {ev.data.get('name') or ev.path.resolve().name}"
        elif run is not None:
            run.evals.append(ev)
            ev.subject = run.name
        elif ev.is_base:
            ev.subject = f"base: {ev.data['model']}"
        elif isinstance(adapter, str) and Path(adapter).name:
            ev.subject = Path(adapter).name  # an adapter that is not among the inputs: name it
        else:
            # A dir named after what it evaluates (evals/x/arithmetic) is named by its parent.
            ev.subject = ev.path.name if ev.path.name != ev.name else ev.path.parent.name or ev.path.name
