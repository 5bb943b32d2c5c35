"""The CLI's flags, defaults and help stay as they are (issue 24: declare each option once).

``tests/data/cli_options.json`` is the snapshot written by ``scripts/dump_cli_options.py``
against the app before the refactor; the live app must equal it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _dump_module():
    spec = importlib.util.spec_from_file_location("dump_cli_options", ROOT / "scripts" / "dump_cli_options.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_options_equal_snapshot() -> None:
    want = json.loads((ROOT / "tests" / "data" / "cli_options.json").read_text(encoding="utf-8"))
    got = json.loads(json.dumps(_dump_module().snapshot()))
    problems = []
    for path in sorted(set(want) | set(got)):
        if path not in got:
            problems.append(f"{path}: command missing")
            continue
        if path not in want:
            problems.append(f"{path}: new command")
            continue
        w, g = want[path], got[path]
        for key in ("help", "short_help"):
            if w[key] != g[key]:
                problems.append(f"{path}: {key} {w[key]!r} != {g[key]!r}")
        wp = {p["name"]: p for p in w["params"]}
        gp = {p["name"]: p for p in g["params"]}
        if [p["name"] for p in w["params"]] != [p["name"] for p in g["params"]]:
            problems.append(f"{path}: param order/set {list(wp)} != {list(gp)}")
        for name in wp:
            if name not in gp:
                continue
            for key in wp[name]:
                if wp[name][key] != gp[name].get(key):
                    problems.append(f"{path} {name}: {key} {wp[name][key]!r} != {gp[name].get(key)!r}")
    assert not problems, "\n".join(problems[:40])
