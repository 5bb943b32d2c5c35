"""tunelab.cli.build: a typer command from a config dataclass whose fields carry option() metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pytest
import typer
from typer.testing import CliRunner

from tunelab.cli.build import config_command
from tunelab.errors import TunelabError
from tunelab.options import option
from tunelab.registry import Registry

JUDGES = Registry("judge")
JUDGES.register("keyword", object())
JUDGES.register("model", object())


@dataclass
class Steering:
    steer: Optional[str] = option(None, help="steering vector file")
    steer_scale: float = option(1.0, help="vector scale", min=0)


@dataclass
class ToyConfig:
    run_dir: str = option(help="where", flag="-")
    batch_size: int = option(8, help="prompts per forward", min=1)
    judge: str = option("keyword", choices=JUDGES)
    limit: Optional[int] = option(None, help="at most this many", show_default="all")
    steering: Steering = field(default_factory=Steering)
    secret: str = "kept"

    def validate(self) -> None:
        if self.steering.steer is None and self.steering.steer_scale != 1.0:
            raise TunelabError("--steer-scale needs --steer")


def _app() -> tuple[typer.Typer, list]:
    app = typer.Typer()
    seen: list = []
    config_command(app, "toy", ToyConfig, seen.append, help="A toy command.", skip=("secret",))
    app.command("other")(lambda: None)  # a second command keeps "toy" a subcommand
    return app, seen


def test_flags_help_and_nested_sections() -> None:
    app, seen = _app()
    result = CliRunner().invoke(app, ["toy", "d", "--batch-size", "4", "--judge", "model", "--steer", "v.pt", "--steer-scale", "2"])
    assert result.exit_code == 0, result.output
    cfg = seen[0]
    assert (cfg.run_dir, cfg.batch_size, cfg.judge, cfg.steering.steer, cfg.steering.steer_scale, cfg.secret) == \
        ("d", 4, "model", "v.pt", 2.0, "kept")
    text = CliRunner().invoke(app, ["toy", "--help"], env={"COLUMNS": "200"}).output
    assert "A toy command." in text and "keyword or model" in text and "[default: all]" in text
    assert "--secret" not in text


def test_one_field_rules_and_validate() -> None:
    app, seen = _app()
    bad = CliRunner().invoke(app, ["toy", "d", "--batch-size", "0"])
    assert isinstance(bad.exception, TunelabError) and str(bad.exception) == "--batch-size must be >= 1, got 0"
    bad = CliRunner().invoke(app, ["toy", "d", "--judge", "modle"])
    assert "did you mean 'model'" in str(bad.exception)
    bad = CliRunner().invoke(app, ["toy", "d", "--steer-scale", "2"])
    assert str(bad.exception) == "--steer-scale needs --steer"
    assert not seen
