"""Top-k classes, and a localize model's box, of images with a model exported by `detrec train`.

An image reaches the model along the same road a training image did: `detrec.core.images.
prepare` (what the Beam job does to every source file: good JPEG bytes kept as they are, any
other format or CMYK converted to an RGB JPEG with Pillow, an EXIF-rotated photo turned
upright, one above preprocess's pixel limit refused, as preprocess's default refuses it),
then the evaluation side of the transform the model was trained with (its `example`
and `batch`, detrec.train.transforms, found by name in detrec.train.registry). Nothing here
re-implements either step, so predict cannot drift from training. The export's task
(labels.json "task", detrec.train.tasks; absent: classify) says where the logits are.

Boxes. A localize export answers one box, (ymin, xmin, ymax, xmax) normalised to the model's
input image. The transform says which window of the decoded JPEG it took ((y, x, h, w) in its
pixels; "seed"'s crop-or-pad may overhang the image), so the box goes back to that JPEG's
pixels (y = wy + ny * wh, x = wx + nx * ww), clipped to the picture (`window_box`). For an
image file that JPEG is `prepare`'s, upright and perhaps smaller, so the box is then turned
back (the inverse of the EXIF transpose) and scaled to the file's own stored pixels
(`source_box`): the frame ImageNet's annotations use (core/images.py, "Boxes"). Boxes are
(xmin, ymin, xmax, ymax) in continuous pixel coordinates (0..width), as
detrec.core.localization scores them.

Records (`Predictor.predict_records`): the split's shards as dataset_info.json lists them,
the record headers of each checked first (the framing check of detrec.train.input, per shard:
a shard whose framing is unsound costs its records only), then tf.data's TFRecordDataset and
`tf.io.parse_example` of the four keys predict needs (no class keys: an unlabelled split such
as CLS-LOC test reads as well), BATCH records at a time: memory stays flat. A record whose
data fails its CRC costs that record (the reader resumes after it). Boxes are in the record's
stored pixels (image/height, image/width). What preprocess changed (`image/detrec/
converted_from`) is not undone, since a record keeps neither the EXIF tag nor the source's
size: a photo turned upright ("jpeg-exif-rotated") is answered in the upright frame, a
downscaled or resized one ("*-downscaled", "*-resized": `preprocess --shorter-side`) in the
smaller one; other conversions (format, CMYK, colour)
keep the frame. To score such images against annotations of the source files, predict the
files themselves.

One bad file or record costs that one only: whatever reading, preparing or decoding it raises
(an ImageError for a file that is no image or too large, an OSError, Pillow's decompression-
bomb error, a TensorFlow error, running out of memory) becomes its error line, and the others
are still answered. Files are read with a size cap (`MAX_FILE_MB`) and never from a FIFO or
device, so no single file can hang the call or take all memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf

from detrec.core import dataset_info, fs, images, schema
from detrec.core.errors import UserError
from detrec.train import input as input_lib
from detrec.train import registry, rundir
from detrec.train.input.common import shard_framing

BATCH = 32
# The largest image file read: preprocess's default --max-image-mb (128), so predict accepts
# every file a training run could have been given.
MAX_FILE_MB = 128
# What predict reads of a record: no class keys (an unlabelled split has none).
RECORD_KEYS = (schema.ENCODED, schema.SOURCE_ID, schema.HEIGHT, schema.WIDTH, schema.CONVERTED_FROM)
# images.upright_point turns a point by an orientation; these undo it (the others undo themselves).
_INVERSE_ORIENTATION = {6: 8, 8: 6}

Box = tuple[float, float, float, float]  # xmin, ymin, xmax, ymax in pixels


@dataclasses.dataclass(frozen=True)
class Prediction:
    id: int
    synset: str
    name: str
    probability: float


@dataclasses.dataclass(frozen=True)
class Result:
    """One image's answer: its top-k (and box), or why it could not be read.

    `path` is the file, or a record's image/source_id. `box` (localize models) is in the
    file's own stored pixels, or the record's. With `keep_pictures`, `picture` holds the JPEG
    the model saw (upright) and `picture_box` the box over it, for drawings.
    """

    path: str
    top: tuple[Prediction, ...] = ()
    error: str = ""
    box: Box | None = None
    reframed: str = ""  # a record's converted_from when preprocess turned or shrank its source
    picture: bytes = dataclasses.field(default=b"", repr=False)
    picture_box: Box | None = None


@dataclasses.dataclass(frozen=True)
class _Ready:
    """One image ready for the model: its transformed pixels, the window the transform took,
    and the picture it was decoded from (with the frame its boxes are reported in)."""

    name: str
    image: tf.Tensor
    window: np.ndarray
    picture: images.PreparedImage


def evaluate(encoded: tf.Tensor, image_size: int, preprocess: str) -> tuple[tf.Tensor, np.ndarray]:
    """The input pipeline's evaluation transform of one JPEG (see detrec.train.input's
    contract) and the window it took, (y, x, h, w) in the JPEG's pixels."""
    size = input_lib.as_size(image_size)
    dtype = input_lib.output_dtype(preprocess)
    transform = registry.transform(preprocess)
    image, window, _ = transform.example(encoded, size, False, None, dtype)
    if transform.batch is not None:
        image = transform.batch(image, dtype)
    return image, np.asarray(window)


def eval_image(encoded: tf.Tensor, image_size: int, preprocess: str) -> tf.Tensor:
    """The evaluation transform of one JPEG, as the model sees it."""
    return evaluate(encoded, image_size, preprocess)[0]


def prepare(data: bytes) -> images.PreparedImage:
    """A file's bytes as a record would store them (`images.prepare` with preprocess's defaults:
    a picture above its pixel limit is refused, as preprocess refuses it, not decoded smaller:
    a header may claim a size its data does not hold).

    Raises:
      ImageError: not an image that can become a record.
    """
    return images.prepare(data, _decodes)


def prepare_image(data: bytes, image_size: int, preprocess: str) -> tf.Tensor:
    """A file's bytes as the model sees them: `prepare`, then the evaluation transform."""
    return eval_image(tf.constant(prepare(data).data), image_size, preprocess)


def _decodes(data: bytes) -> bool:
    """Whether the training decoder, tf.io.decode_jpeg, accepts the bytes (else they are converted)."""
    try:
        tf.io.decode_jpeg(data, channels=3)
        return True
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError):
        return False


def window_box(box: Sequence[float], window: Sequence[int], height: int, width: int) -> Box:
    """A model's box ((ymin, xmin, ymax, xmax) normalised to its input image) in the pixels of
    the height x width picture the transform decoded: through the transform's window
    (y, x, h, w), then clipped to the picture (a crop-or-pad window may overhang it)."""
    ny0, nx0, ny1, nx1 = (float(v) for v in box)
    wy, wx, wh, ww = (float(v) for v in window)
    ys = sorted(min(max(wy + v * wh, 0.0), float(height)) for v in (ny0, ny1))
    xs = sorted(min(max(wx + v * ww, 0.0), float(width)) for v in (nx0, nx1))
    return xs[0], ys[0], xs[1], ys[1]


def source_box(box: Box, picture: images.PreparedImage) -> Box:
    """A box in the pixels `prepare` returned, in the source file's own stored pixels: the
    orientation `prepare` applied undone, and any downscale (see the module docstring)."""
    orientation = _INVERSE_ORIENTATION.get(picture.orientation, picture.orientation)
    width, height = picture.source_size
    corners = [images.upright_point(x / picture.width, y / picture.height, orientation)
               for x, y in ((box[0], box[1]), (box[2], box[3]))]
    xs = sorted(x * width for x, _ in corners)
    ys = sorted(y * height for _, y in corners)
    return xs[0], ys[0], xs[1], ys[1]


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
    """An exported model with its labels, task and preprocessing, from DIR/export."""

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
            # Before the model is loaded: a task's module registers its custom layers.
            self.task = registry.task(str(meta.get("task", registry.DEFAULT_TASK)))
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
        outputs = getattr(self.model, "output", None)
        # A localize export's model answers {"logits", "box"}; a classify one the logits alone.
        self.localize = isinstance(outputs, dict) and "box" in outputs

    def outputs(self, batch: tf.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """(class probabilities [B, K+1], boxes [B, 4] (ymin, xmin, ymax, xmax) normalised to
        the model's input, None for a model without boxes)."""
        out = self.model(batch, training=False)
        probs = tf.nn.softmax(self.task.logits(out), axis=-1).numpy()
        return probs, (np.asarray(out["box"], np.float64) if self.localize else None)

    def probabilities(self, batch: tf.Tensor) -> np.ndarray:
        return self.outputs(batch)[0]

    def predict(self, paths: Sequence[str], top: int = 5, keep_pictures: bool = False) -> list[Result]:
        """Top-`top` classes (and box) for each file; unreadable files get an error, not an exception."""
        return list(self.predict_files(paths, top, keep_pictures))

    def predict_files(self, paths: Sequence[str], top: int = 5, keep_pictures: bool = False) -> Iterator[Result]:
        """`predict`'s results in the order of `paths`, BATCH files at a time (memory flat)."""
        for start in range(0, len(paths), BATCH):
            yield from self._answer([self._read(path) for path in paths[start:start + BATCH]], top, keep_pictures)

    def predict_records(self, split: input_lib.SplitShards, top: int = 5,
                        keep_pictures: bool = False) -> Iterator[Result]:
        """The results of every record of `split` (named by image/source_id), streamed in shard
        order; a record or shard that cannot be read gets an error (module docstring)."""
        batch: list[_Ready | Result] = []
        for item in _records(split):
            batch.append(self._ready_record(*item) if isinstance(item, tuple) else item)
            if len(batch) == BATCH:
                yield from self._answer(batch, top, keep_pictures)
                batch = []
        yield from self._answer(batch, top, keep_pictures)

    def _read(self, path: str) -> _Ready | Result:
        limit = MAX_FILE_MB << 20
        try:
            try:
                data = fs.read_capped(path, limit)
            except fs.NotARegularFile:
                raise images.ImageError("not_a_file", "not a regular file (a FIFO, device, socket or folder)") from None
            except OSError as exc:
                raise images.ImageError("unreadable", exc.strerror or str(exc)) from None
            if len(data) > limit:
                raise images.ImageError("file_too_large", f"file larger than {MAX_FILE_MB} MB, the most predict reads")
            picture = prepare(data)
            image, window = evaluate(tf.constant(picture.data), self.image_size, self.preprocess)
            return _Ready(path, image, window, picture)
        except Exception as exc:  # noqa: BLE001 - one file's problem, whatever it is (module docstring)
            return Result(path, error=file_error(exc))

    def _ready_record(self, name: str, encoded: bytes, height: int, width: int,
                      converted_from: str = "") -> _Ready | Result:
        if height <= 0 or width <= 0:
            return Result(name, error=f"the record's size {width}x{height} is not a picture's")
        try:
            image, window = evaluate(tf.constant(encoded), self.image_size, self.preprocess)
        except Exception as exc:  # noqa: BLE001 - one record's problem, whatever it is
            return Result(name, error=file_error(exc))
        # The record's stored pixels are the frame its boxes are reported in.
        return _Ready(name, image, window, images.PreparedImage(encoded, width, height, converted_from))

    def _answer(self, items: list[_Ready | Result], top: int, keep_pictures: bool) -> list[Result]:
        """Runs the model on the ready items of a batch; the others are already answered."""
        ready = [item for item in items if isinstance(item, _Ready)]
        if not ready:
            return list(items)
        try:
            probs, boxes = self.outputs(tf.stack([r.image for r in ready]))
        except (tf.errors.OpError, MemoryError) as exc:  # e.g. out of GPU memory: these images only
            why = f"the model could not run on it ({file_error(exc)})"
            return [Result(item.name, error=why) if isinstance(item, _Ready) else item for item in items]
        answers = {id(r): self._result(r, probs[i], None if boxes is None else boxes[i], top, keep_pictures)
                   for i, r in enumerate(ready)}
        return [answers[id(item)] if isinstance(item, _Ready) else item for item in items]

    def _result(self, r: _Ready, row: np.ndarray, box: np.ndarray | None, top: int, keep: bool) -> Result:
        k = max(1, min(top, len(self.classes)))
        best = np.argsort(-row, kind="stable")[:k]
        ranked = tuple(Prediction(int(c), self.classes[c]["synset"], self.classes[c]["name"], float(row[c]))
                       for c in best)
        picture = r.picture.data if keep else b""
        if box is None:
            return Result(r.name, ranked, picture=picture)
        if not np.isfinite(box).all():
            return Result(r.name, error="the model's box for it is not a finite number")
        shown = window_box(box, r.window, r.picture.height, r.picture.width)
        reframed = r.picture.converted_from if images.reframed(r.picture.converted_from) else ""
        return Result(r.name, ranked, box=source_box(shown, r.picture), picture=picture, picture_box=shown,
                      reframed=reframed)


# --- records ------------------------------------------------------------------------------
def _records(split: input_lib.SplitShards) -> Iterator[tuple[str, bytes, int, int, str] | Result]:
    """(name, JPEG, height, width, converted_from) of each record of `split`, or a Result saying why a record
    (or a whole shard) cannot be read."""
    full_spec = schema.parse_spec()
    spec = {key: full_spec[key] for key in RECORD_KEYS}
    for shard in split.shards:
        framing = shard_framing(shard.path)  # what input_lib.check_framing asks of each shard
        if framing.problem:
            yield Result(shard.path, error=f"corrupt shard ({framing.problem}); its {shard.num_examples} "
                                           "records are not predicted")
            continue
        pending: list[tuple[str, bytes]] = []
        for where, serialized in _shard_records(shard.path, framing.records):
            if serialized is None:
                yield Result(where, error="corrupt record (its data fails the CRC check)")
                continue
            pending.append((where, serialized))
            if len(pending) == BATCH:
                yield from _parse(pending, spec)
                pending = []
        yield from _parse(pending, spec)


def _shard_records(path: str, count: int) -> Iterator[tuple[str, bytes | None]]:
    """(`path record i`, serialized) of a shard's `count` well-framed records; None for one
    whose data fails its CRC. TFRecordDataset stops at such a record, so reading starts again
    after it (`skip` reads only record headers, already checked)."""
    index = 0
    while index < count:
        try:
            for serialized in tf.data.TFRecordDataset(path).skip(index).take(count - index):
                yield f"{path} record {index}", serialized.numpy()
                index += 1
            return
        except tf.errors.DataLossError:
            yield f"{path} record {index}", None
            index += 1


def _parse(pending: list[tuple[str, bytes]], spec: dict) -> Iterable[tuple[str, bytes, int, int, str] | Result]:
    """Parses records a batch at a time; when a batch fails, one by one, so that a record that
    is not an Example of this schema costs itself only."""
    if not pending:
        return []
    try:
        parsed = {key: value.numpy() for key, value in
                  tf.io.parse_example(tf.constant([s for _, s in pending]), spec).items()}
    except tf.errors.InvalidArgumentError:
        if len(pending) == 1:
            return [Result(pending[0][0], error=f"not a detrec record (needs {', '.join(RECORD_KEYS)})")]
        return [item for one in pending for item in _parse([one], spec)]
    out = []
    for i, (where, _) in enumerate(pending):
        name = parsed[schema.SOURCE_ID][i].decode("utf-8", "replace") or where
        out.append((name, parsed[schema.ENCODED][i], int(parsed[schema.HEIGHT][i]), int(parsed[schema.WIDTH][i]),
                    parsed[schema.CONVERTED_FROM][i].decode("utf-8", "replace")))
    return out
