"""The training side's extension points by name: image transforms, input lines and tasks.

A task (`--task`) is one module of detrec.train.tasks holding what the model learns to
answer: its output head, its loss, its evaluation sums and what the input must carry (`Task`).
A transform (`--preprocess`) is one module of detrec.train.transforms holding every side of
it: the tf.data ops, the DALI graph and its feed's draws, the predict transform, the images'
default dtype (`Transform`). An input line (`--decoder`) is one module of
detrec.train.input holding what the input package, the trainer and the CLI ask of it
(`InputLine`). Each table below names the module and gives the line `--help` shows; nothing
outside the tables and the entries' own modules compares their names.

The tables import nothing heavy: the CLI builds `choices=` and `--help` from them without
loading TensorFlow (as `detrec.pipelines.cli.COMMANDS` does for commands), and an entry's
module is imported the first time it is asked for (`transform`, `input_line`).

Adding one: write the module (the protocol below says what it must define), add its line
to the table, and test it (see README, "Adding an image transform or an input line").
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, Protocol

from detrec.core.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import tensorflow as tf
# SplitShards, EpochPlan (detrec.train.input.common) and InputConfig (.config) below are not
# imported, not even for type checkers: the input package imports this module.

# name -> (module, one line of --help)
TRANSFORMS: dict[str, tuple[str, str]] = {
    "inception": ("detrec.train.transforms.inception", "random-resized crops and flips in training, pixels in [-1,1]"),
    "seed": ("detrec.train.transforms.seed", "the article's transform (crop or pad, per-image standardization)"),
}
DEFAULT_TRANSFORM = "inception"

# name -> (module, one line of --help), in the order `auto` tries them (and `shard_errors`
# asks them to recognise a decode error: DALI's messages can also mention JPEG).
INPUT_LINES: dict[str, tuple[str, str]] = {
    "dali": ("detrec.train.input.dali", "DALI (nvJPEG on a GPU, its CPU decoder without one)"),
    "cpu": ("detrec.train.input.tfdata", "tf.data on the CPU"),
}
# name -> (module, one line of --help)
TASKS: dict[str, tuple[str, str]] = {
    "classify": ("detrec.train.tasks.classify", "the class of the image's largest object (softmax cross-entropy)"),
    "localize": ("detrec.train.tasks.localize", "its class and its box (cross-entropy + L1 + GIoU), ILSVRC metrics"),
}
DEFAULT_TASK = "classify"

AUTO = "auto"  # the first input line that wants this machine (`InputLine.auto_picks`)
AUTO_HELP = "DALI where a GPU is visible and DALI loads, else tf.data"


class Transform(Protocol):
    """What a transform module defines (detrec.train.transforms.<name>).

    Windows are (y, x, h, w) in source pixels; boxes follow the window and the flip, so a
    transform only says which window it took.
    """

    DTYPE: str | None  # the images' dtype when none is asked for; None: the Keras policy's

    # tf.data
    def example(self, encoded: tf.Tensor, size: tuple[int, int], training: bool, seed: tf.Tensor | None,
                dtype: tf.DType, cover: tuple[tf.Tensor, tf.Tensor] | None = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """One JPEG -> (image [H, W, 3], window, flipped); `seed` (training only) is the
        example's stateless seed; `cover` (box, share): a random window keeps at least `share`
        of the normalised box (None: the window ignores the objects)."""

    batch: Callable[[tf.Tensor, tf.DType], tf.Tensor] | None  # per batch after `example` (None: nothing)

    # DALI
    def dali_inputs(self, training: bool) -> tuple[str, ...]:
        """The feed inputs the graph reads besides the JPEG and the label ("window", "flip")."""

    def dali_draws(self, seed: int, epoch: int, records: np.ndarray, hw: np.ndarray, size: tuple[int, int],
                   training: bool, cover: tuple[np.ndarray, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(windows [n, 4] int32, flips [n] int32) of records whose images are `hw` ([n, 2]):
        pure functions of their arguments (train/input/draws.py), so resume is exact.
        `cover` (boxes [n, 4] normalised, NaN rows for none; share): as `example`'s."""

    def dali_graph(self, encoded: Any, *, feed: Callable, decode: Callable, size: tuple[int, int],
                   training: bool, out_type: Any) -> Any:
        """The DALI operators from JPEG bytes to images of `out_type`: `feed(name, type, ndim)`
        is one of `dali_inputs`, `decode(encoded, window=None)` the line's JPEG decoder."""

    # predict
    def predict(self, encoded: tf.Tensor, size: tuple[int, int], dtype: tf.DType) -> tf.Tensor:
        """One JPEG as the model saw it in evaluation."""


class Task(Protocol):
    """What a task module defines (detrec.train.tasks.<name>). Batches are (images, labels,
    *extras): extras are (boxes, box_labels) when WITH_BOXES (detrec.train.input's contract)."""

    WITH_BOXES: bool  # the input must deliver every record's boxes
    MIN_OBJECT_COVERED: float  # training crops keep this share of the labelled object (0: crops ignore boxes)
    EVAL_SUMS: tuple[str, ...]  # the per-batch sums `eval_sums` returns, by name

    def head(self, features: Any, num_classes: int) -> Any:
        """The model's outputs on a backbone's pooled features (Keras tensors)."""

    def logits(self, outputs: Any) -> tf.Tensor:
        """The class logits among the model's outputs."""

    def loss(self, outputs: Any, labels: tf.Tensor, extras: tuple) -> tf.Tensor:
        """[B] float32 per-example loss."""

    def eval_sums(self, outputs: Any, labels: tf.Tensor, extras: tuple) -> list[tf.Tensor]:
        """The batch's sums named by EVAL_SUMS (float64 scalars)."""

    def eval_record(self, sums: dict[str, float]) -> dict[str, float]:
        """An epoch's validation figures (metrics.json keys, without "val_") from EVAL_SUMS' totals."""


class InputLine(Protocol):
    """What an input line module defines (detrec.train.input.<module>); see the package
    docstring of detrec.train.input for the contract its datasets keep."""

    PORTABLE: bool  # plain tf.data graphs: the tf.data service runs them, tf.distribute splits them
    PER_REPLICA: bool  # one endless pipeline per replica, built once per run (train/input/streams.py)

    def unavailable(self) -> str | None:
        """Why this line cannot run in this process (None: it can)."""

    def auto_picks(self) -> bool:
        """Whether `auto` takes this line on this machine."""

    def make_dataset(self, split: SplitShards, config: InputConfig) -> tf.data.Dataset: ...

    def plan_epoch(self, split: SplitShards, *, batch_size: int, training: bool, num_workers: int,
                   worker_index: int, skip_corrupt: bool) -> EpochPlan: ...

    def input_options(self, strategy: tf.distribute.Strategy | None) -> tf.distribute.InputOptions: ...

    def pipeline_device(self, device_id: int | None, pipeline_id: int) -> int | None:
        """The device input pipeline `pipeline_id` of `dataset_fn` runs on (`device_id`: asked for)."""

    def image_error(self, exc: Exception) -> UserError | None:
        """The one-line error for this line's failure to decode a record's image (None: not one)."""


def _load(table: dict[str, tuple[str, str]], name: str, what: str):
    if name not in table:
        raise ValueError(f"{what} must be one of {tuple(table)}, got {name!r}")
    return importlib.import_module(table[name][0])


def transform(name: str) -> Transform:
    """The transform module called `name`; ValueError for an unknown one."""
    return _load(TRANSFORMS, name, "preprocess")


def task(name: str) -> Task:
    """The task module called `name`; ValueError for an unknown one."""
    return _load(TASKS, name, "task")


def input_line(name: str) -> InputLine:
    """The input line module called `name` (not "auto": see `resolve_decoder`)."""
    return _load(INPUT_LINES, name, "decoder")


def decoder_choices() -> tuple[str, ...]:
    return (AUTO, *INPUT_LINES)


def resolve_decoder(decoder: str = AUTO) -> str:
    """The input line `decoder` names: auto takes the first that wants this machine (DALI
    where a GPU is visible and DALI loads, else tf.data).

    The same answer under every tf.distribute strategy: the trainer feeds a per-replica
    line to several replicas and workers through `streams` (one pipeline per local GPU),
    which needs none of the input replication modes MultiWorkerMirroredStrategy refuses.

    Raises:
      ValueError: no such line. UserError: a line this process cannot run.
    """
    if decoder == AUTO:
        return next(name for name in INPUT_LINES if input_line(name).auto_picks())
    if decoder not in INPUT_LINES:
        raise ValueError(f"decoder must be one of {decoder_choices()}, got {decoder!r}")
    problem = input_line(decoder).unavailable()
    if problem:
        raise UserError(problem)
    return decoder


def portable_decoder() -> str:
    """The first line whose datasets are plain tf.data graphs (`InputLine.PORTABLE`)."""
    return next(name for name in INPUT_LINES if input_line(name).PORTABLE)


def choices_help(table: dict[str, tuple[str, str]]) -> str:
    """`--help` text listing a table's entries: "name: what it does; ..."."""
    return "; ".join(f"{name}: {text}" for name, (_, text) in table.items())
