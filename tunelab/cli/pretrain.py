"""`tunelab pretrain`: the flags are PretrainConfig's fields (tunelab.moe.pretrain)."""

from __future__ import annotations

from typing import Any, Callable

from tunelab.cli.app import app
from tunelab.cli.common import quiet_libraries
from tunelab.cli.lazy import lazy_config_command
from tunelab.errors import TunelabError


def _load() -> dict[str, Any]:
    from tunelab.moe.pretrain import PretrainConfig, run_pretrain

    return dict(config_cls=PretrainConfig, run=run_pretrain, config="pretrain.yaml; flags override it", skip=("grad_clip",))


def _around(values: dict[str, Any], proceed: Callable[[dict[str, Any]], Any]) -> Any:
    """--resume takes everything but --output from the interrupted run's config.yaml (run_pretrain reads it)."""
    quiet_libraries()
    if not values["resume"]:
        return proceed(values)
    from tunelab.moe.pretrain import PretrainConfig, run_pretrain

    if not values["output"]:
        raise TunelabError("--resume needs --output (the interrupted run's directory)")
    return run_pretrain(PretrainConfig(output=values["output"], resume=True))


lazy_config_command(app, "pretrain", load=_load, around=_around, switches=("resume", "overwrite"),
                    help="Pre-train (or continue pre-training) a small dense or MoE model on raw text; "
                         "the checkpoint loads with AutoModelForCausalLM.")
