"""The shared flag groups (generation, refusal control, steering) are declared once and reused.

They are sections of the commands' configs (tunelab/evaluate/options.py); YAML keys, keywords,
attributes and the saved config stay flat, and every command that takes a group shows the same flag.
"""

from __future__ import annotations

import dataclasses

import pytest
import typer

from tunelab.cli import app
from tunelab.configs import from_sources
from tunelab.errors import TunelabError
from tunelab.evaluate.config import EvalConfig, GenerateConfig
from tunelab.evaluate.options import GenerationOptions, RefusalOptions, SteeringOptions


def _params(*path: str) -> dict:
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return {p.name: p for p in cmd.params}


def test_refusal_temperature_is_one_flag_everywhere() -> None:
    shown = {path: (p["refusal_temperature"].default, p["refusal_temperature"].help.endswith("\\[default: 1.0]"))
             for path in (("generate",), ("eval",), ("audit", "refusal-calibration"))
             for p in [_params(*path)]}
    assert set(shown.values()) == {(None, True)}, shown  # no drift: Optional, the config's 1.0 when not given
    for path in (("generate",), ("eval",)):
        params = _params(*path)
        for f in dataclasses.fields(RefusalOptions):
            assert f.name in params


def test_eval_keeps_flat_yaml_keys_attributes_and_saved_config(tmp_path) -> None:
    (tmp_path / "eval.yaml").write_text("task: arithmetic\nrefusal_threshold: 0.5\ntemperature: 0.3\nsteer_layers: [1, 2]\n")
    cfg = from_sources(EvalConfig, tmp_path / "eval.yaml", top_p=0.5)
    assert isinstance(cfg.refusal, RefusalOptions) and isinstance(cfg.steering, SteeringOptions)
    assert (cfg.refusal_threshold, cfg.temperature, cfg.top_p, cfg.steer_layers) == (0.5, 0.3, 0.5, [1, 2])
    assert cfg.max_new_tokens is None and cfg.generation.max_new_tokens is None  # eval's own defaults
    assert GenerateConfig().max_new_tokens == 128 and GenerateConfig().temperature == 0.7
    saved = cfg.to_dict()
    assert saved["refusal_threshold"] == 0.5 and saved["temperature"] == 0.3 and "refusal" not in saved
    assert cfg.asks_for_interventions()
    assert not EvalConfig(task="arithmetic", refusal_temperature=2.0).asks_for_interventions()


def test_one_field_rules_come_from_the_fields() -> None:
    with pytest.raises(TunelabError, match=r"^--limit must be >= 1, got 0$"):
        EvalConfig(task="arithmetic", limit=0).validate()
    with pytest.raises(TunelabError, match=r"^--max-new-tokens must be >= 1, got 0$"):
        EvalConfig(task="arithmetic", max_new_tokens=0).validate()
    assert [f.name for f in dataclasses.fields(GenerationOptions)] == [
        "max_new_tokens", "sample", "temperature", "top_p", "batch_size", "bf16"]


def test_generate_parses_layer_ranges_and_categories() -> None:
    from typer.testing import CliRunner

    from tunelab.cli.build import config_command

    seen: list = []
    local = typer.Typer()  # generate's config on a private app whose run only records the config
    config_command(local, "generate", GenerateConfig, seen.append, help="g", skip=("bf16",))
    local.command("other")(lambda: None)
    result = CliRunner().invoke(local, ["generate", "hi", "--steer", "v.pt", "--steer-layers", "2-4",
                                        "--refusal-categories", "cyber,weapons"])
    assert result.exit_code == 0, result.output
    cfg = seen[0]
    assert (cfg.prompt, cfg.steer_layers, cfg.refusal_categories) == (["hi"], [2, 3, 4], ["cyber", "weapons"])
    bad = CliRunner().invoke(local, ["generate", "hi", "--steer-layers", "4-2"])
    assert str(bad.exception) == "--steer-layers must be comma-separated layer numbers or ranges like 10-14, got '4-2'"
    bad = CliRunner().invoke(local, ["generate", "hi", "--refusal-categories", "nope"])
    assert str(bad.exception).startswith("unknown refusal category nope; choose from: cyber")


def test_a_bound_can_give_its_reason() -> None:
    from tunelab.inspect.multiturn_config import MultiTurnConfig

    with pytest.raises(TunelabError, match=r"^--turns must be >= 2 \(a first answer and at least one follow-up\), got 1$"):
        MultiTurnConfig(turns=1).validate()
    with pytest.raises(TunelabError, match=r"^--bootstrap must be >= 0 \(0: no confidence intervals\), got -1$"):
        MultiTurnConfig(bootstrap=-1).validate()
