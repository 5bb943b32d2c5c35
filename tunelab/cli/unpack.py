"""`tunelab unpack`: rebuild a PEFT adapter (or a LoTA model) from a compact run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.cli.app import app
from tunelab.cli.build import config_command
from tunelab.cli.common import console
from tunelab.errors import TunelabError
from tunelab.options import option


@dataclass(kw_only=True)
class UnpackConfig:
    """``tunelab unpack``: the compact run and where its adapter goes."""

    run_dir: Path = option(flag="-", help="LoRI-S run dir (or its adapter_compact.safetensors)")
    output: Path | None = option(None, help="where to write the PEFT adapter (default: the run dir)")


def _unpack(cfg: UnpackConfig) -> None:
    """Rebuild the PEFT adapter from a LoRI-S compact file, exactly; a LoTA run becomes a full model dir."""
    from tunelab.adapters.storage import TASK_VECTOR_FILE
    from tunelab.adapters.storage import unpack as run_unpack

    run_dir, output = cfg.run_dir, cfg.output
    if (run_dir / TASK_VECTOR_FILE).is_file():
        from tunelab.adapters.lota import materialize
        from tunelab.files import read_json
        from tunelab.layout import RUN_FILE

        if (run_dir / RUN_FILE).is_file():
            read_json(run_dir / RUN_FILE, "run record")  # materialize reads it; a broken one fails here, named
        if output is None:
            raise TunelabError("a lota run unpacks to a full model: pass --output MODEL_DIR")
        materialize(run_dir, output)
        console.print(f"wrote the LoTA model to {output}")
        return
    target = output or (run_dir if run_dir.is_dir() else run_dir.parent)
    run_unpack(run_dir, target)
    console.print(f"unpacked to {target}")


config_command(app, "unpack", UnpackConfig, _unpack,
               help="Rebuild the PEFT adapter from a LoRI-S compact file, exactly; a LoTA run becomes a full model dir.")
