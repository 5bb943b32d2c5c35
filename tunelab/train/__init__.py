"""Training: config, loop, checkpoints, objectives."""

from tunelab.train.config import TrainConfig
from tunelab.train.trainer import train

__all__ = ["TrainConfig", "train"]
