"""What a tunelab output directory holds, and how files in it are written.

Torch-free on purpose: the report and other light readers import these names without paying
for torch/peft imports.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

RUN_FILE = "tunelab.json"  # written last: its presence marks a finished run
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
MASK_FILE = "mask.safetensors"
COMPACT_FILE = "adapter_compact.safetensors"
EVAL_DIR = "eval"  # RUN/eval/<task or suite>/
EVAL_FILE = "metrics.json"  # written last in an eval dir
JUDGE_CARD = "judge_card.json"  # a trained judge directory (tunelab judge train) holds it
EVAL_OUTPUTS = "outputs.jsonl"


def atomic_write_text(path: Path, text: str) -> None:
    """Write text through a temp file in the same directory + rename, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
