"""Tables of training runs for scaling-law fits: JSONL, JSON or CSV with declared column names.

A fit names the columns it needs (``--params-column``, ``--tokens-column``, ``--loss-column``,
...); every row must have each of them as a finite number, and sizes and losses must be > 0 (the
law is fitted on their logarithms). A problem is one line naming the file, the line and the
column: ``runs.csv:7: column 'loss' must be > 0, got -0.5``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.errors import TunelabError
from tunelab.files import json_type, parse_json, read_text

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}


@dataclass(frozen=True)
class ColumnSpec:
    """A column a fit needs: its name in the table and the flag that declared it (for messages)."""

    name: str
    flag: str
    positive: bool = True  # sizes and losses: > 0


@dataclass
class Table:
    """The declared columns of a table as float arrays, and the file line each row came from."""

    path: Path
    columns: dict[str, np.ndarray]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def take(self, names: Sequence[str]) -> np.ndarray:
        """The named columns side by side, shape ``(rows, len(names))``."""
        return np.stack([self.columns[n] for n in names], axis=1)


def read_table(path: str | Path, specs: Sequence[ColumnSpec]) -> Table:
    """Read ``path`` and check the declared columns on every row; any problem is a one-line ``TunelabError``."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise TunelabError(f"{path}: unsupported table format '{path.suffix or '(none)'}' (use .jsonl, .json, .csv or .tsv)")
    text = read_text(path, "table")
    specs = list({s.name: s for s in specs}.values())  # a column declared twice is read once
    if kind in ("csv", "tsv"):
        header, rows = _csv_rows(text, path, kind)
        for spec in specs:
            if header and spec.name not in header:
                shown = ", ".join(header[:12]) + (", ..." if len(header) > 12 else "")
                raise TunelabError(f"{path}:1: no column '{spec.name}' (declared by {spec.flag}); the header has: {shown}")
    else:
        rows = _json_rows(text, path, kind)
    if not rows:
        raise TunelabError(f"{path}: the table has no rows")
    values: dict[str, list[float]] = {s.name: [] for s in specs}
    for line, row in rows:
        for spec in specs:
            values[spec.name].append(_number(row, spec, path, line))
    return Table(path, {k: np.asarray(v, dtype=float) for k, v in values.items()}, [line for line, _ in rows])


def _json_rows(text: str, path: Path, kind: str) -> list[tuple[int, dict[str, Any]]]:
    """(line, object) per row: one object per line (JSONL), or a JSON list of objects (line = -position)."""
    if kind == "json" and text.lstrip().startswith("["):  # a JSON list of objects: rows are named by position
        data = parse_json(text, path)
        rows = []
        for i, item in enumerate(data, start=1):
            if not isinstance(item, dict):
                raise TunelabError(f"{path}: row {i}: expected an object, got {json_type(item)}")
            rows.append((-i, item))
        return rows
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        item = parse_json(line, path, number)
        if not isinstance(item, dict):
            raise TunelabError(f"{path}:{number}: expected a JSON object per line, got {json_type(item)}")
        rows.append((number, item))
    return rows


def _csv_rows(text: str, path: Path, kind: str) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """The header (line 1) and (line, {header: cell}) per data row."""
    reader = csv.reader(io.StringIO(text), delimiter="\t" if kind == "tsv" else ",")
    try:
        header = next(reader, None)
        if header is None:
            return [], []
        header = [h.strip() for h in header]
        rows = []
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if len(cells) > len(header):
                raise TunelabError(f"{path}:{reader.line_num}: {len(cells)} cells but the header has {len(header)} columns")
            rows.append((reader.line_num, dict(zip(header, cells))))  # a short row lacks its last columns
    except csv.Error as exc:
        raise TunelabError(f"{path}:{reader.line_num}: malformed {kind.upper()} ({exc})") from None
    return header, rows


def _where(path: Path, line: int) -> str:
    return f"{path}:{line}" if line > 0 else f"{path}: row {-line}"


def _number(row: dict[str, Any], spec: ColumnSpec, path: Path, line: int) -> float:
    """The value of ``spec``'s column in ``row`` as a finite float, > 0 where required."""
    where = _where(path, line)
    if spec.name not in row:
        known = ", ".join(list(row)[:12]) + (", ..." if len(row) > 12 else "")
        raise TunelabError(f"{where}: no column '{spec.name}' (declared by {spec.flag}); this row has: {known or 'nothing'}")
    raw = row[spec.name]
    value: float | None = None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            value = None
    if value is None:
        shown = repr(raw) if isinstance(raw, str) else json_type(raw)
        raise TunelabError(f"{where}: column '{spec.name}': expected a number, got {shown if raw != '' else 'an empty cell'}")
    if not math.isfinite(value):
        raise TunelabError(f"{where}: column '{spec.name}': expected a finite number, got {raw!r}")
    if spec.positive and value <= 0:
        raise TunelabError(f"{where}: column '{spec.name}' must be > 0 (the law is fitted on its logarithm), got {value:g}")
    return value
