"""tunelab.cli.lazy: config commands whose config (and its room's heavy imports) load only when used."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import typer
from typer.testing import CliRunner

from tunelab.cli.lazy import lazy_config_command
from tunelab.errors import TunelabError
from tunelab.options import option

ROOT = Path(__file__).resolve().parents[1]


def test_tunelab_help_imports_nothing_heavy() -> None:
    """Building the whole app (what every `tunelab ...` call does) imports no torch, numpy or transformers."""
    code = ("import sys, typer, tunelab.cli; typer.main.get_command(tunelab.cli.app); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'scipy', 'transformers', 'peft') "
            "or m.startswith(('tunelab.finetune', 'tunelab.moe.pretrain', 'tunelab.scaling.run'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    assert loaded == "[]"


@dataclass
class Toy:
    limit: int = option(10, min=1, help="at most this many", show_default="10")
    resume: bool = option(False, flag="--resume", help="continue")


def _app(loads: list, seen: list) -> typer.Typer:
    app = typer.Typer()

    def load() -> dict:
        loads.append(1)
        return dict(config_cls=Toy, run=seen.append, config="toy.yaml; flags override it")

    def around(values, proceed):
        seen.append(("around", values["resume"]))
        return proceed(values)

    lazy_config_command(app, "toy", help="A toy.", load=load, around=around, switches=("resume",))
    app.command("other")(lambda: None)
    return app


def test_the_config_loads_on_first_use_and_flags_behave(tmp_path) -> None:
    loads: list = []
    seen: list = []
    app = _app(loads, seen)
    command = typer.main.get_command(app).commands["toy"]
    assert not loads and command.help == "A toy."  # registered, listed, not loaded
    params = {p.name: p for p in command.params}
    assert loads == [1] and list(params) == ["limit", "resume", "config"]
    assert params["limit"].help == "at most this many \\[default: 10]" and params["resume"].default is False
    (tmp_path / "t.yaml").write_text("limit: 3\nresume: true\n")
    result = CliRunner().invoke(app, ["toy", "--config", str(tmp_path / "t.yaml")])
    assert result.exit_code == 0, result.output
    assert seen[0] == ("around", None)  # an unset switch is "not given": the file's resume: true stands
    assert (seen[1].limit, seen[1].resume) == (3, True)
    bad = CliRunner().invoke(app, ["toy", "--limit", "0"])
    assert isinstance(bad.exception, TunelabError) and str(bad.exception) == "--limit must be >= 1, got 0"
    assert loads == [1]  # built once
