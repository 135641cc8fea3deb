"""Top-k classes of image files with a model exported by `detrec train`.

An image reaches the model along the same road a training image did: `detrec.core.images.
prepare` (what the Beam job does to every source file: good JPEG bytes kept as they are, any
other format or CMYK converted to an RGB JPEG with Pillow, an EXIF-rotated photo turned
upright), then the evaluation side of the transform the model was trained with (its
`predict`, detrec.train.transforms, found by name in detrec.train.registry). Nothing here
re-implements either step, so predict cannot drift from training.

One bad file costs that file only: whatever reading, preparing or decoding one file raises
(an ImageError for a file that is no image or too large, an OSError, Pillow's decompression-
bomb error, a TensorFlow error, running out of memory) becomes that file's error line, and
the other files are still answered. Files are read with a size cap (`MAX_FILE_MB`) and never
from a FIFO or device, so no single file can hang the call or take all memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Sequence

import numpy as np
import tensorflow as tf

from detrec.core import dataset_info, fs, images
from detrec.core.errors import UserError
from detrec.train import input as input_lib
from detrec.train import registry, rundir

BATCH = 32
# The largest image file read: preprocess's default --max-image-mb (128), so predict accepts
# every file a training run could have been given.
MAX_FILE_MB = 128


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
    return registry.transform(preprocess).predict(encoded, size, dtype)


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


def file_error(exc: BaseException) -> str:
    """One line saying why a file has no answer, quoting none of its bytes."""
    if isinstance(exc, images.ImageError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "not enough memory to decode it"
    if isinstance(exc, tf.errors.OpError):
        text = " ".join((exc.message or "").split())
        text = re.sub(r"\{\{[^}]*\}\}|\[\[.*", "", text).strip()
        return f"TensorFlow cannot decode it ({text[:160] or type(exc).__name__})"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return f"cannot be read as an image ({type(exc).__name__})"


class Predictor:
    """An exported model with its labels and preprocessing, from DIR/export."""

    def __init__(self, model_dir: str) -> None:
        import keras

        from detrec.train import models  # noqa: F401  (registers detrec's custom layers for loading)

        export_dir = os.path.join(model_dir, rundir.EXPORT)
        model_path = os.path.join(export_dir, rundir.EXPORT_MODEL)
        labels_path = os.path.join(export_dir, rundir.EXPORT_LABELS)
        for path in (model_path, labels_path):
            if not fs.exists(path):
                raise UserError(f"{path} not found: {model_dir} has no exported model "
                                "(a `detrec train` run exports when it finishes)")
        try:
            meta = json.loads(fs.read_text(labels_path))
            self.image_size = int(meta["image_size"])
            self.preprocess = str(meta["preprocess"])
            self.classes = {int(c["id"]): c for c in meta["classes"]}
            input_lib.as_size(self.image_size)  # ValueError outside 1..MAX_IMAGE_SIZE
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{labels_path}: not a detrec labels file ({exc})") from None
        dataset_info.check_class_count(len(meta["classes"]), labels_path)  # before the model is loaded
        try:
            self.model = keras.saving.load_model(model_path)
        except (ValueError, OSError) as exc:
            raise UserError(f"{model_path}: cannot load the model ({exc})") from None
        if not all(np.isfinite(w).all() for w in self.model.get_weights()):
            # A model trained to NaN (detrec no longer exports one) would answer "nan%".
            raise UserError(f"{model_path}: the model's weights are not finite (NaN or inf), so it has no "
                            "answer for any image; train it again (a lower --lr)")

    def _read(self, path: str) -> tf.Tensor:
        limit = MAX_FILE_MB << 20
        try:
            data = fs.read_capped(path, limit)
        except fs.NotARegularFile:
            raise images.ImageError("not_a_file", "not a regular file (a FIFO, device, socket or folder)") from None
        except OSError as exc:
            raise images.ImageError("unreadable", exc.strerror or str(exc)) from None
        if len(data) > limit:
            raise images.ImageError("file_too_large", f"file larger than {MAX_FILE_MB} MB, the most predict reads")
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
            except Exception as exc:  # noqa: BLE001 - one file's problem, whatever it is (module docstring)
                results[i] = Result(path, error=file_error(exc))
        k = max(1, min(top, len(self.classes)))
        for start in range(0, len(ready), BATCH):
            chunk = ready[start:start + BATCH]
            try:
                probs = self.probabilities(tf.stack([image for _, image in chunk]))
            except (tf.errors.OpError, MemoryError) as exc:  # e.g. out of GPU memory: these files only
                for i, _ in chunk:
                    results[i] = Result(paths[i], error=f"the model could not run on it ({file_error(exc)})")
                continue
            for (i, _), row in zip(chunk, probs):
                best = np.argsort(-row, kind="stable")[:k]
                results[i] = Result(paths[i], tuple(
                    Prediction(int(c), self.classes[c]["synset"], self.classes[c]["name"], float(row[c]))
                    for c in best))
        return [results[i] for i in range(len(paths))]
