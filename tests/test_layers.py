"""The layer map (tunelab.layers) holds over the whole package: no import of a higher layer, no
import cycle, no use of another room's private names. Imports at any depth count (function bodies,
``TYPE_CHECKING`` blocks), relative imports resolved. The checker itself must catch planted violations.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tunelab.layers import LAYERS, Layer, cycles, layer_index, layer_violations, private_violations, scan

ROOT = Path(__file__).resolve().parents[1]

# Violations in files other helpers of issue 24 own; each names the part that removes it. The
# integrator empties this after merging those parts: an entry that no longer occurs fails the test.
KNOWN_PENDING: dict[str, str] = {
}


@pytest.fixture(scope="module")
def graph():
    return scan(ROOT)


def _findings(graph) -> list[str]:
    return ([f"layer: {v}" for v in layer_violations(graph)]
            + [f"cycle: {' -> '.join(c)}" for c in cycles(graph)]
            + [f"private: {v}" for v in private_violations(graph)])


def test_the_package_keeps_to_the_layer_map(graph) -> None:
    found = _findings(graph)
    new = [f for f in found if f not in KNOWN_PENDING]
    assert not new, "layer map violations:\n" + "\n".join(new)


def test_known_pending_entries_still_occur(graph) -> None:
    """A fixed violation must leave KNOWN_PENDING, so the list never hides a new one."""
    gone = sorted(set(KNOWN_PENDING) - set(_findings(graph)))
    assert not gone, "fixed; remove from KNOWN_PENDING:\n" + "\n".join(gone)


def test_every_module_has_a_layer(graph) -> None:
    assert [m for m in graph.modules if layer_index(m) is None] == []


def test_train_loads_no_room_above_it() -> None:
    """Importing the trainer must not pull in safety or evaluation (folded from test_plugins)."""
    code = ("import sys, tunelab.train; print(sorted(m for m in sys.modules if m.startswith("
            "('tunelab.safety', 'tunelab.privacy', 'tunelab.evaluate', 'tunelab.finetune', 'tunelab.cli'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    assert loaded == "[]"


def test_the_evaluation_layer_loads_no_intervention_room() -> None:
    """tunelab.evaluate.runner takes refusal control and steering as objects; importing it loads neither room."""
    code = ("import sys, tunelab.evaluate.runner, tunelab.evaluate.intervention; "
            "print(sorted(m for m in sys.modules if m.startswith(('tunelab.safety', 'tunelab.inspect'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    assert loaded == "[]"


# --------------------------------------------------------------------------- the checker itself
PLANTED = {
    "__init__.py": "",
    "low.py": """
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            from pkg.high import Thing  # a type-only import still counts


        def f():
            from . import high  # relative, inside a function
            return high


        LAZY = "pkg.high:Thing"  # a registry's lazy target names a module too
        """,
    "high.py": "from pkg import low\n",
    "room1/__init__.py": "from pkg.room1.x import f  # a front door re-export is fine\n",
    "room1/x.py": """
        import pkg.room2.y as m
        import pkg.room2.y
        from pkg.room2.y import _secret
        from ._own import _mine  # the room's own private name is fine


        def f():
            return m._other, pkg.room2.y._third, m.public
        """,
    "room1/_own.py": "_mine = 1\n",
    "room2/__init__.py": "from pkg.room2.z import Z\n",
    "room2/y.py": "_secret = _other = _third = public = 1\nfrom pkg.room2 import Z  # the front door loads z (top)\n",
    "room2/z.py": "Z = 1\n",
    "room3.py": "from .room1 import x\n",
}
PLANTED_LAYERS = (
    Layer("bottom", ("pkg", "pkg.low")),
    Layer("rooms", ("pkg.room1", "pkg.room2", "pkg.room3"), independent=True),
    Layer("top", ("pkg.high", "pkg.room2.z")),
)


def test_the_checker_finds_planted_violations(tmp_path: Path) -> None:
    for name, text in PLANTED.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    planted = scan(tmp_path, "pkg")

    layers = layer_violations(planted, PLANTED_LAYERS, allowed={})
    assert "pkg.low (line 4) imports pkg.high: layer 'top' is above 'bottom'" in layers
    assert "pkg.low (line 8) imports pkg.high: layer 'top' is above 'bottom'" in layers
    assert "pkg.low (line 12) names pkg.high: layer 'top' is above 'bottom'" in layers
    assert any(v.startswith("pkg.room1.x (line 1) imports pkg.room2.y: rooms of layer 'rooms'") for v in layers)
    assert any(v.startswith("pkg.room3 (line 1) imports pkg.room1.x: rooms of layer 'rooms'") for v in layers)
    assert ("pkg.room2.y (line 2) imports pkg.room2: layer 'top' (through its __init__'s re-exports) is above 'rooms'"
            in layers)
    assert not any(v.startswith("pkg.room1 ") for v in layers)  # the re-export in room1/__init__
    allowed = layer_violations(planted, PLANTED_LAYERS, allowed={("pkg.room1", "pkg.room2"): "planted"})
    assert not any(v.startswith("pkg.room1.x") for v in allowed)

    assert cycles(planted) == [["pkg.high", "pkg.low", "pkg.high"]]

    assert private_violations(planted) == [
        "pkg.room1.x (line 3) uses pkg.room2.y._secret",
        "pkg.room1.x (line 8) uses pkg.room2.y._other",
        "pkg.room1.x (line 8) uses pkg.room2.y._third",
    ]
    unplaced = layer_violations(planted, PLANTED_LAYERS[1:], allowed={})
    assert any("pkg.low is in no layer" in v for v in unplaced)


def test_the_map_names_each_room_once() -> None:
    members = [m for layer in LAYERS for m in layer.members]
    assert len(members) == len(set(members))
