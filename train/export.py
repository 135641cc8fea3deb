"""The export a finished run leaves for `detrec predict`: DIR/export/model.keras + labels.json.

Separate from the trainer because it is a file format with its own reader (train/predict.py):
labels.json carries, next to the classes, what predict needs to give an image the same
evaluation transform the model was trained and validated with (image size, preprocessing).
The file names live in train/rundir.py, so predict reads them without importing this.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import keras

from detrec.core import fs
from detrec.core.dataset_info import ClassInfo
from detrec.train import rundir
from detrec.train.config import TrainConfig


def export_model(model: keras.Model, model_dir: str, cfg: TrainConfig,
                 classes: Sequence[ClassInfo], best_epoch: int, val_top1: float) -> str:
    """DIR/export/model.keras + labels.json (classes and the eval preprocessing to apply).

    Both files appear complete or not at all: each is written to a temporary sibling that
    `rundir.remove_leftovers` recognises, then renamed.

    Returns:
      The export dir.
    """
    export_dir = os.path.join(model_dir, rundir.EXPORT)
    fs.makedirs(export_dir)
    final = os.path.join(export_dir, rundir.EXPORT_MODEL)
    tmp = fs.temp_path(final) + ".keras"  # Keras saves only to a name ending in .keras
    model.save(tmp)
    fs.replace(tmp, final)
    labels = {
        "model": cfg.model.name, "task": cfg.model.task, "image_size": cfg.model.image_size,
        "preprocess": cfg.preprocess, "epoch": best_epoch, "val_top1": val_top1,
        "classes": [dataclasses.asdict(c) for c in classes],
    }
    fs.write_atomic(os.path.join(export_dir, rundir.EXPORT_LABELS), json.dumps(labels, indent=2) + "\n")
    return export_dir
