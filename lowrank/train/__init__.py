"""Training, checkpoints, reports, multi-process training, prediction: ``lowrank train`` and friends.

Example:
    >>> from lowrank.train import TrainConfig
    >>> TrainConfig(steps=10, dims=2).patch
    (24, 24)
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import (
    DEFAULT_SPEC,
    DEFAULT_STEPS,
    RESUMABLE,
    TrainConfig,
    load_config_file,
)
from .evaluate import evaluate
from .infer import segmentation_metrics, sliding_window_predict
from .loop import train
from .predict import evaluate_files, load_model, predict_cases, predict_file
from .split import DataSplit, load_split

__all__ = [
    "DEFAULT_SPEC",
    "DEFAULT_STEPS",
    "CheckpointError",
    "DataSplit",
    "RESUMABLE",
    "TrainConfig",
    "evaluate",
    "evaluate_files",
    "load_checkpoint",
    "load_model",
    "load_config_file",
    "load_split",
    "predict_cases",
    "predict_file",
    "save_checkpoint",
    "segmentation_metrics",
    "sliding_window_predict",
    "train",
]
