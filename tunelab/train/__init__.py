"""Training: config, the loop (:func:`fit`), update rules, plug-ins, checkpoints, objectives.

``tunelab.finetune.train`` runs ``tunelab train`` (the loop plus the plug-ins its options need);
``tunelab.finetune.TrainConfig`` is this package's ``TrainConfig`` plus the plug-ins' config sections.
"""

from tunelab.train.config import TrainConfig
from tunelab.train.plugins import Plugin, Run, StepInfo
from tunelab.train.trainer import fit
from tunelab.train.update_rules import AdamW, UpdateRule

__all__ = ["AdamW", "Plugin", "Run", "StepInfo", "TrainConfig", "UpdateRule", "fit"]
