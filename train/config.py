"""`TrainConfig`, a training run's settings, and the identity of a run stored in run_config.json.

Its own module because three others read it and the trainer is only one of them: the
export records the model and its input transform from it, and the model dir's resume check
compares `run_config_dict` with what an earlier run stored (train/rundir.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from detrec.core.dataset_info import ClassInfo
from detrec.train import models, registry


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run is, apart from its data."""

    model_dir: str
    model: models.ModelConfig
    epochs: int
    batch_size: int  # global: summed over replicas and workers
    steps_per_epoch: int
    lr: float = 1e-3
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0 = only at epoch ends
    seed: int = 0
    preprocess: str = registry.DEFAULT_TRANSFORM
    mixed_precision: bool = False
    jit_compile: bool = False
    keep_checkpoints: int = 3

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")


def run_config_dict(cfg: TrainConfig, classes: Sequence[ClassInfo]) -> dict:
    """run_config.json's content: the run's identity (`rundir.RESUME_KEYS`) plus epochs and lr."""
    return {
        "model": cfg.model.name, "num_classes": cfg.model.num_classes,
        "image_size": cfg.model.image_size, "weights": cfg.model.weights,
        "synsets": [c.synset for c in classes], "preprocess": cfg.preprocess,
        "batch_size": cfg.batch_size, "steps_per_epoch": cfg.steps_per_epoch, "seed": cfg.seed,
        "mixed_precision": cfg.mixed_precision, "epochs": cfg.epochs, "lr": cfg.lr,
        "task": cfg.model.task,
    }
