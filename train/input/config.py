"""`InputConfig`: how to read a split, as one validated value instead of eighteen keywords.

The trainer builds its input pipelines long after it has parsed its flags (at the start of
every epoch, once per replica), and they pass through `dataset_fn` and tf.distribute on
the way. One frozen value carries the settings along that road: it is checked once, when
made (the ValueErrors `make_dataset` has always raised), and each step changes only what
it owns with `replace` (a replica's batch and worker index, an epoch's seed).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from detrec.train.input.common import (MAX_BOXES, SHUFFLE_BUFFER, SkipCounter, as_size, check_workers,
                                       output_dtype)


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """Everything `make_dataset` takes besides the dataset and the split.

    The fields are `make_dataset`'s keyword arguments, with the same meaning and defaults
    (see the package docstring). Under `dataset_fn`, `batch_size` is the global batch that
    each input pipeline divides by the replicas.

    Raises:
      ValueError: a batch size below 1, a bad image size, preprocessing or dtype, or a
        worker index outside the workers.
    """

    batch_size: int
    image_size: int | tuple[int, int]
    training: bool
    decoder: str = "auto"
    preprocess: str = "inception"
    seed: int | None = None
    num_workers: int = 1
    worker_index: int = 0
    repeat: bool = False
    skip_corrupt: bool = False
    counter: SkipCounter | None = None
    with_boxes: bool = False
    with_keys: bool = False
    max_boxes: int = MAX_BOXES
    dtype: tf.DType | str | None = None
    shuffle_buffer: int = SHUFFLE_BUFFER
    device_id: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        as_size(self.image_size)
        output_dtype(self.preprocess, self.dtype)
        check_workers(self.num_workers, self.worker_index)

    @property
    def size(self) -> tuple[int, int]:
        """The output (height, width)."""
        return as_size(self.image_size)

    def images_dtype(self) -> tf.DType:
        """The images' dtype, resolved when a pipeline is built: the Keras policy in force
        then counts (the trainer sets its mixed-precision policy after making its config)."""
        return output_dtype(self.preprocess, self.dtype)

    def replace(self, **changes) -> InputConfig:
        """A copy with `changes`, validated again."""
        return dataclasses.replace(self, **changes)
