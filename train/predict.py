"""Top-k classes of image files with a model exported by `detrec train`.

An image reaches the model along the same road a training image did: `detrec.core.images.
prepare` (what the Beam job does to every source file: good JPEG bytes kept as they are, any
other format or CMYK converted to an RGB JPEG with Pillow, an EXIF-rotated photo turned
upright), then the input pipeline's own per-image evaluation transform from train/augment.py
for the preprocessing the model was trained with. Nothing here re-implements either step,
so predict cannot drift from training.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from detrec.core import images
from detrec.core.errors import UserError
from detrec.train import augment
from detrec.train import input as input_lib
from detrec.train import rundir

BATCH = 32


@dataclasses.dataclass(frozen=True)
class Prediction:
    id: int
    synset: str
    name: str
    probability: float


@dataclasses.dataclass(frozen=True)
class Result:
    """One file's answer: its top-k, or why it could not be read."""

    path: str
    top: tuple[Prediction, ...] = ()
    error: str = ""


def eval_image(encoded: tf.Tensor, image_size: int, preprocess: str) -> tf.Tensor:
    """The input pipeline's evaluation transform of one JPEG (see detrec.train.input's contract)."""
    size = input_lib.as_size(image_size)
    dtype = input_lib.output_dtype(preprocess)
    if preprocess == "seed":
        image, _ = augment.seed_transform(encoded, size, dtype)
    else:
        image, _ = augment.decode_eval(encoded, size)
        image = augment.normalize_inception(image, dtype)
    return image


def prepare_image(data: bytes, image_size: int, preprocess: str) -> tf.Tensor:
    """A file's bytes as the model sees them: `images.prepare`, then the evaluation transform.

    Raises:
      ImageError: not an image that can become a record.
    """
    prepared = images.prepare(data, _decodes)
    return eval_image(tf.constant(prepared.data), image_size, preprocess)


def _decodes(data: bytes) -> bool:
    """Whether the training decoder, tf.io.decode_jpeg, accepts the bytes (else they are converted)."""
    try:
        tf.io.decode_jpeg(data, channels=3)
        return True
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError):
        return False


class Predictor:
    """An exported model with its labels and preprocessing, from DIR/export."""

    def __init__(self, model_dir: str) -> None:
        import keras

        from detrec.train import models  # noqa: F401  (registers detrec's custom layers for loading)

        export_dir = os.path.join(model_dir, rundir.EXPORT)
        model_path = os.path.join(export_dir, rundir.EXPORT_MODEL)
        labels_path = os.path.join(export_dir, rundir.EXPORT_LABELS)
        for path in (model_path, labels_path):
            if not tf.io.gfile.exists(path):
                raise UserError(f"{path} not found: {model_dir} has no exported model "
                                "(a `detrec train` run exports when it finishes)")
        try:
            with tf.io.gfile.GFile(labels_path) as f:
                meta = json.load(f)
            self.image_size = int(meta["image_size"])
            self.preprocess = str(meta["preprocess"])
            self.classes = {int(c["id"]): c for c in meta["classes"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{labels_path}: not a detrec labels file ({exc})") from None
        try:
            self.model = keras.saving.load_model(model_path)
        except (ValueError, OSError) as exc:
            raise UserError(f"{model_path}: cannot load the model ({exc})") from None
        self.meta = meta

    def _read(self, path: str) -> tf.Tensor:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise images.ImageError("unreadable", exc.strerror or str(exc)) from None
        return prepare_image(data, self.image_size, self.preprocess)

    def probabilities(self, batch: tf.Tensor) -> np.ndarray:
        logits = self.model(batch, training=False)
        return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1).numpy()

    def predict(self, paths: Sequence[str], top: int = 5) -> list[Result]:
        """Top-`top` classes for each file; unreadable files get an error, not an exception."""
        results: dict[int, Result] = {}
        ready: list[tuple[int, tf.Tensor]] = []
        for i, path in enumerate(paths):
            try:
                ready.append((i, self._read(path)))
            except images.ImageError as exc:
                results[i] = Result(path, error=str(exc))
        k = max(1, min(top, len(self.classes)))
        for start in range(0, len(ready), BATCH):
            chunk = ready[start:start + BATCH]
            probs = self.probabilities(tf.stack([image for _, image in chunk]))
            for (i, _), row in zip(chunk, probs):
                best = np.argsort(-row, kind="stable")[:k]
                results[i] = Result(paths[i], tuple(
                    Prediction(int(c), self.classes[c]["synset"], self.classes[c]["name"], float(row[c]))
                    for c in best))
        return [results[i] for i in range(len(paths))]
