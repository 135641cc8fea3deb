"""`InputConfig`: how to read a split, as one validated value instead of a keyword per setting.

The trainer builds its input pipelines long after it has parsed its flags (once per run
and replica for DALI, every epoch for tf.data), and they pass through `dataset_fn`,
`streams` and tf.distribute on the way. One frozen value carries the settings along that
road: it is checked once, when made (the ValueErrors `make_dataset` has always raised; the
decoder's name when a pipeline is built, where "auto" resolves), and
each step changes only what it owns with `replace` (a replica's batch and worker index, an
epoch's seed, the epoch a DALI stream starts at). `DaliTuning` holds the knobs only the DALI line has.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from detrec.train import registry
from detrec.train.input.common import (MAX_BOXES, SHUFFLE_BUFFER, SkipCounter, as_size, check_workers,
                                       output_dtype)


# DALI's defaults until a GPU session measures better ones with `pipelines/dali_bench.py
# --sweep` (it tries hardware-decoder shares, thread counts and ImageNet's preallocation,
# its IMAGENET_PREALLOCATE): the 0.65 share is NVIDIA's A100 measurement (DALI's default).
# No preallocation hint: DALI preallocates the hardware decoder's pool anyway; NVIDIA's
# ImageNet example hints the largest ImageNet image, 5980x6430, for every slot of the
# hardware decoder's batch, which can take gigabytes of GPU memory next to the model -
# measure before making it a default.
HW_DECODER_LOAD = 0.65
PREALLOCATE = (0, 0)  # (width, height); 0x0: no hint


@dataclasses.dataclass(frozen=True)
class DaliTuning:
    """How a DALI pipeline uses its host and GPU (ignored by tf.data and by DALI's CPU mode).

    Attributes:
      threads: CPU threads per pipeline; None divides this process's cores among its local
        GPUs (one pipeline each), at most `dali.MAX_THREADS` - `min(cores, 8)` per pipeline
        would put 64 threads plus nvJPEG's host work on an 8-GPU host's cores.
      hw_decoder_load: share of each batch's JPEGs sent to the A100/H100 hardware decoder
        (the rest go to nvJPEG's CUDA decoder, whose Huffman stage runs on these threads).
      preallocate: (width, height) the hardware decoder preallocates for; (0, 0) = off.
    """

    threads: int | None = None
    hw_decoder_load: float = HW_DECODER_LOAD
    preallocate: tuple[int, int] = PREALLOCATE

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"DALI threads must be positive, got {self.threads}")
        if not 0.0 <= self.hw_decoder_load <= 1.0:
            raise ValueError(f"hw_decoder_load must be in [0, 1], got {self.hw_decoder_load}")
        if len(self.preallocate) != 2 or min(self.preallocate) < 0:
            raise ValueError(f"preallocate must be (width, height) >= 0, got {self.preallocate!r}")


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """Everything `make_dataset` takes besides the dataset and the split.

    The fields are `make_dataset`'s keyword arguments, with the same meaning and defaults
    (see the package docstring). `epoch` is the epoch a DALI stream starts at: its order and
    draws are a function of (seed, epoch, position) (train/input/draws.py), so a stream
    started at epoch e gives what a stream started earlier gives when it reaches e. The
    tf.data line takes each epoch's seed instead (`train.data.epoch_seed`) and ignores it.
    Under `dataset_fn`, `batch_size` is the global batch that each input pipeline divides
    by the replicas.

    Raises:
      ValueError: a batch size below 1, a bad image size, preprocessing or dtype, or a
        worker index outside the workers.
    """

    batch_size: int
    image_size: int | tuple[int, int]
    training: bool
    decoder: str = registry.AUTO
    preprocess: str = registry.DEFAULT_TRANSFORM
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
    dali: DaliTuning = DaliTuning()
    epoch: int = 0
    # Training windows keep at least this share of the largest box of the image's class
    # (Inception's min_object_covered; the "localize" task's crops). 0: windows ignore boxes.
    min_object_covered: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_object_covered <= 1.0:
            raise ValueError(f"min_object_covered must be in [0, 1], got {self.min_object_covered!r}")
        if self.min_object_covered and not self.with_boxes:
            raise ValueError("min_object_covered needs with_boxes=True (the crops follow the boxes)")
        if self.epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {self.epoch}")
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
