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
    params = {p.name: p for p in typer.main.get_command(app).commands["toy"].params}
    assert params["batch_size"].default == 8 and params["steer_scale"].default == 1.0  # no --config: the config's defaults
    assert params["limit"].default is None and params["run_dir"].required


def test_one_field_rules_and_validate() -> None:
    app, seen = _app()
    bad = CliRunner().invoke(app, ["toy", "d", "--batch-size", "0"])
    assert isinstance(bad.exception, TunelabError) and str(bad.exception) == "--batch-size must be >= 1, got 0"
    bad = CliRunner().invoke(app, ["toy", "d", "--judge", "modle"])
    assert "did you mean 'model'" in str(bad.exception)
    bad = CliRunner().invoke(app, ["toy", "d", "--steer-scale", "2"])
    assert str(bad.exception) == "--steer-scale needs --steer"
    assert not seen


# --------------------------------------------------------------------------- --config, parse, bool pairs
def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TunelabError(f"--k must be comma-separated integers, got '{text}'") from None


@dataclass
class Sampling:
    sample: bool = option(False, flag="--sample/--greedy", help="sample instead of greedy", show_default="--greedy")
    temperature: float = option(0.7, gt=0, help="sampling temperature")


@dataclass
class FileConfig:
    prompts: Optional[list[str]] = option(None, flag="-", help="prompt(s)")
    model: str = option("small", help="the model", show_default="small")
    ks: list[int] = option(default_factory=lambda: [1], flag="--k", parse=_ints, help="k for pass@k",
                           show_default="1")
    depth: list[int] = option(default_factory=lambda: [0, 5], parse=_ints, help="prefill depths")
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.9))  # this command's own default

    def validate(self) -> None:
        if self.model == "bad":
            raise TunelabError("--model bad is refused")


def _file_app(**kwargs) -> tuple[typer.Typer, list]:
    app = typer.Typer()
    seen: list = []
    config_command(app, "score", FileConfig, lambda cfg: seen.append(cfg) or "done", help="Score.",
                   config="score.yaml; flags override it", show=lambda cfg, result: seen.append(result), **kwargs)
    app.command("other")(lambda: None)
    return app, seen


def test_defaults_then_yaml_then_given_flags(tmp_path) -> None:
    app, seen = _file_app()
    assert CliRunner().invoke(app, ["score"]).exit_code == 0
    cfg = seen[0]
    assert (cfg.prompts, cfg.model, cfg.ks, cfg.depth, cfg.sampling.sample, cfg.sampling.temperature) == \
        (None, "small", [1], [0, 5], False, 0.9)
    assert seen[1] == "done"  # show(cfg, result) ran after run
    (tmp_path / "s.yaml").write_text("model: big\nks: [1, 2]\ntemperature: 0.5\nsample: true\n")
    seen.clear()
    result = CliRunner().invoke(app, ["score", "p1", "p2", "--config", str(tmp_path / "s.yaml"), "--k", "3", "--greedy"])
    assert result.exit_code == 0, result.output
    cfg = seen[0]
    # the file's model and temperature; the flags' k and --greedy; flat YAML keys reach the section
    assert (cfg.prompts, cfg.model, cfg.ks, cfg.sampling.sample, cfg.sampling.temperature) == \
        (["p1", "p2"], "big", [3], False, 0.5)


def test_flags_typed_as_today(tmp_path) -> None:

    app, _ = _file_app()
    cmd = typer.main.get_command(app).commands["score"]
    params = {p.name: p for p in cmd.params}
    assert list(params) == ["prompts", "model", "k", "depth", "sample", "temperature", "config"]
    assert type(params["prompts"]).__name__ == "TyperArgument" and params["prompts"].default is None
    assert params["model"].default is None and params["model"].help == "the model \\[default: small]"
    assert params["k"].opts == ["--k"] and params["k"].default is None  # parsed text, "not given"
    assert params["depth"].default is None
    plain = typer.Typer()
    config_command(plain, "depth", FileConfig, lambda cfg: None, help="Depth.")
    plain.command("other")(lambda: None)
    depth = next(p for p in typer.main.get_command(plain).commands["depth"].params if p.name == "depth")
    assert depth.default == "0,5"  # the config default written back as the flag's text
    assert params["sample"].opts == ["--sample"] and params["sample"].secondary_opts == ["--greedy"]
    assert params["sample"].default is None and params["temperature"].default is None  # --config: all "not given"
    assert params["config"].help == "score.yaml; flags override it"


def test_parse_errors_and_yaml_errors_are_one_line(tmp_path) -> None:
    app, seen = _file_app()
    bad = CliRunner().invoke(app, ["score", "--k", "1,x"])
    assert isinstance(bad.exception, TunelabError) and str(bad.exception) == "--k must be comma-separated integers, got '1,x'"
    bad = CliRunner().invoke(app, ["score", "--temperature", "0"])
    assert str(bad.exception) == "--temperature must be > 0, got 0"
    (tmp_path / "s.yaml").write_text("temperature: hot\n")
    bad = CliRunner().invoke(app, ["score", "--config", str(tmp_path / "s.yaml")])
    assert str(bad.exception) == f"{tmp_path / 's.yaml'}:1: temperature: expected a number, got 'hot'"
    (tmp_path / "s.yaml").write_text("temperature: 0\n")  # a YAML value meets the same one-field rule
    bad = CliRunner().invoke(app, ["score", "--config", str(tmp_path / "s.yaml")])
    assert str(bad.exception) == "--temperature must be > 0, got 0"
    bad = CliRunner().invoke(app, ["score", "--model", "bad"])
    assert str(bad.exception) == "--model bad is refused"
    assert not seen


def test_overrides_and_order() -> None:
    app, _ = _file_app(overrides={"temperature": {"help": "T", "show_default": "0.9"}},
                       order=["model", "prompts", "temperature", "sample", "k", "depth"])
    cmd = typer.main.get_command(app).commands["score"]
    assert [p.name for p in cmd.params] == ["model", "prompts", "temperature", "sample", "k", "depth", "config"]
    temperature = next(p for p in cmd.params if p.name == "temperature")
    assert (temperature.help, temperature.default) == ("T \\[default: 0.9]", None)
    with pytest.raises(ValueError, match="must list exactly"):
        _file_app(order=["model"])


@dataclass
class PathConfig:
    output: str = option("runs/x", flag_type=__import__("pathlib").Path, help="results dir")
    overwrite: bool = option(False, flag="--overwrite", help="replace")


def test_flag_type_and_bare_bool_flag() -> None:
    from pathlib import Path

    app = typer.Typer()
    seen: list = []
    config_command(app, "p", PathConfig, seen.append, help="P.")
    app.command("other")(lambda: None)
    params = {p.name: p for p in typer.main.get_command(app).commands["p"].params}
    assert params["output"].default == Path("runs/x")  # the flag is a Path ...
    assert params["overwrite"].opts == ["--overwrite"] and params["overwrite"].secondary_opts == []
    assert CliRunner().invoke(app, ["p", "--output", "o", "--overwrite"]).exit_code == 0
    assert (seen[0].output, seen[0].overwrite) == ("o", True)  # ... the config keeps text
