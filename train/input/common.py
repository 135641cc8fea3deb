"""What both input lines (tf.data and DALI) share: the shard list, worker shares, errors, dtypes.

Kept apart from either line so that `tfdata` and `dali` each import this module and never
each other, and the package `__init__` alone chooses between them (through
detrec.train.registry's table). Everything here is small and decoder-neutral: the typed
shard list of a split, taken from dataset_info.json (never a glob); how workers divide it;
the GPU probe; the images' dtype; what a corrupt shard raises (`shard_errors`) and how
skipped records are counted; and `take_epoch`, which walks exactly one epoch of either line.

Shard framing is checked here too, for both lines, before either reads a record: a crafted
record length (a valid length CRC on 2^40) makes TensorFlow's reader allocate that much and
die with a segfault, and DALI's reader stop with an error deep in its pipeline. A walk over
the record headers only (`detrec.core.tfrecord.read_frames`, seeking past every payload: a
12-byte read per record) finds any length that runs past the end of the file, or fails its
CRC, before a byte of a record is read (`shard_framing`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import struct
import sys
import threading
from stat import S_ISREG
from typing import Iterator, Sequence

import tensorflow as tf

from detrec.core import dataset_info, fs, tfrecord
from detrec.core.dataset_info import DatasetInfo
from detrec.core.errors import UserError
from detrec.train import registry

MAX_BOXES = 32
# The largest output side: 4x the article's 482x415 and above any backbone's training size
# (EfficientNet-B7 600, FixRes 800). A float32 batch of 64 at this size is 800 MB; a side of
# 20,000 took 9.9 GB before TensorFlow gave up with a traceback.
MAX_IMAGE_SIZE = 1024
# Records held for shuffling *before* decode (~100 KB of JPEG each, not 600 KB of pixels).
SHUFFLE_BUFFER = 2048


# Every function the input lines hand to tf.data is written with tf.cond and friends, never
# Python control flow on tensors, so AutoGraph's source-to-source conversion has nothing to
# do: skipping it saves ~2 s of every run's start-up (it converted `_read_shard` once per
# dataset built, 0.3 s each) with the same graph. train/steps.py does the same for its steps.
plain = tf.autograph.experimental.do_not_convert


class CorruptShardError(UserError):
    """A shard could not be read completely; names the file and what was readable."""

    def __init__(self, path: str, detail: str):
        super().__init__(f"corrupt shard {path}: {detail}")
        self.path = path
        self.detail = detail


class SkipCounter:
    """What skip_corrupt=True dropped: records lost and shards affected (tf.Variables).

    Create it outside any distribution-strategy scope and pass it as `counter=`.
    """

    def __init__(self) -> None:
        self.records = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_records")
        self.shards = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_shards")
        # What Python code counts from inside a running pipeline (DALI's feed, called through
        # tf.numpy_function, where no TensorFlow op may run).
        self._host = [0, 0]
        self._lock = threading.Lock()

    def add(self, records, shards=1) -> None:
        self.records.assign_add(tf.cast(records, tf.int64))
        self.shards.assign_add(tf.cast(shards, tf.int64))

    def add_host(self, records: int, shards: int) -> None:
        with self._lock:
            self._host[0] += records
            self._host[1] += shards

    def result(self) -> dict[str, int]:
        with self._lock:
            records, shards = self._host
        return {"records": int(self.records.numpy()) + records, "shards": int(self.shards.numpy()) + shards}


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """How one worker walks one epoch: `steps` batches, the first `rows(step)` rows real.

    `padding_steps` more batches follow in an endless stream before the next epoch starts
    (DALI pads every worker's training epoch to the same number of batches); `take_epoch`
    and `streams.EpochStream` read past them.
    """

    batch_size: int
    num_examples: int  # this worker's examples per epoch
    steps: int
    padding_steps: int = 0

    @property
    def stream_steps(self) -> int:
        """Batches one epoch of an endless stream holds, padding included."""
        return self.steps + self.padding_steps

    def rows(self, step: int) -> int:
        return max(0, min(self.batch_size, self.num_examples - step * self.batch_size))


# --- dataset_info -> shards -> this worker's shards ---------------------------------------
@dataclasses.dataclass(frozen=True)
class Shard:
    """One shard file of a split, as dataset_info.json lists it."""

    path: str  # full path (local or URL)
    num_examples: int
    num_bytes: int


@dataclasses.dataclass(frozen=True)
class SplitShards:
    """A split's non-empty shards in dataset_info order: what both input lines read.

    `num_classes` bounds the labels a record may carry (0..num_classes-1, what the model's
    logits cover); both lines check every record's label against it. `checked` keeps what
    the DALI line learnt about each shard (its .idx, read and checked once): the trainer
    loads a split once per run and every pipeline, plan and replica of the run shares it.
    """

    data_dir: str
    name: str
    shards: tuple[Shard, ...]
    num_classes: int
    checked: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)


def split_shards(info: DatasetInfo, data_dir: str, split: str) -> SplitShards:
    """The non-empty shards of `split` from the typed dataset_info of `data_dir`.

    Raises:
      UserError: no such split, or it has no examples.
    """
    paths = dataset_info.shard_files(info, data_dir, split)  # UserError for a bad/empty split
    listed = [s for s in info.split(split, data_dir).shards if s.num_examples > 0]
    return SplitShards(data_dir, split, tuple(Shard(path, s.num_examples, s.num_bytes)
                                              for path, s in zip(paths, listed)), len(info.classes))


def check_workers(num_workers: int, worker_index: int) -> None:
    """ValueError unless `worker_index` is one of `num_workers` workers."""
    if num_workers < 1 or not 0 <= worker_index < num_workers:
        raise ValueError(f"need 0 <= worker_index < num_workers, got {worker_index} of {num_workers}")


def worker_shards(shards: Sequence[Shard], num_workers: int,
                  worker_index: int) -> tuple[tuple[Shard, ...], bool]:
    """(shards this worker reads, whether records must be sharded instead of files)."""
    check_workers(num_workers, worker_index)
    if len(shards) >= num_workers:
        return tuple(shards[worker_index::num_workers]), False
    return tuple(shards), True


# --- shard framing: every record header checked before any reader trusts one --------------
@dataclasses.dataclass(frozen=True)
class Framing:
    """What a walk over a shard's record headers found.

    Attributes:
      records: whole, well-framed records before the first problem (all of them when none).
      spans_digest: sha256 of the (offset, framed size) pairs of those records, to compare
        with a DALI index without keeping every pair in memory.
      problem: "" when every header is sound and the last record ends at the end of the
        file; else one line, "offset O, record R: reason" when a record is at fault.
    """

    records: int
    spans_digest: str
    problem: str = ""


def spans_digest(spans) -> str:
    """The digest `Framing.spans_digest` holds, of (offset, framed size) pairs."""
    digest = hashlib.sha256()
    for offset, span in spans:
        digest.update(struct.pack("<QQ", offset, span))
    return digest.hexdigest()


_framing_cache: dict[tuple, Framing] = {}
_framing_lock = threading.Lock()


def _file_identity(path: str) -> tuple:
    """What tells a file's version apart: a rewrite of the same path gets a new identity."""
    if fs.is_url(path):
        stat = tf.io.gfile.stat(path)
        return (path, stat.length, stat.mtime_nsec)
    stat = os.stat(path)
    if not S_ISREG(stat.st_mode):  # a FIFO would block the walk (and TensorFlow) forever
        raise fs.NotARegularFile(f"{path}: not a regular file")
    return (path, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev)


def _walk(path: str, size: int) -> Framing:
    digest = hashlib.sha256()
    records = 0
    # Local files unbuffered: each header is one 12-byte read, nothing of the payload is read.
    opener = (lambda: fs.open(path, "rb")) if fs.is_url(path) else (lambda: open(path, "rb", buffering=0))
    try:
        with opener() as stream:
            for frame in tfrecord.read_frames(stream, size, want=lambda i: False):
                digest.update(struct.pack("<QQ", frame.offset, tfrecord.record_span(frame.length)))
                records += 1
    except tfrecord.FrameError as exc:
        return Framing(records, digest.hexdigest(), f"offset {exc.offset}, record {exc.index}: {exc.reason}")
    return Framing(records, digest.hexdigest())


def shard_framing(path: str) -> Framing:
    """The record headers of a shard, walked once per version of the file (cached).

    Costs one small read per record (measured on 20,000 records in 11 shards of 1.4 GB: 1.1 s
    from a cold disk, 0.07 s from the page cache); a rebuilt pipeline (every epoch for tf.data)
    reuses the answer while the file is unchanged (0.04 ms for the 11 shards).
    A file that cannot be opened is a problem too: TensorFlow would retry it forever under
    `ignore_errors`, and DALI stop with a traceback.
    """
    try:
        identity = _file_identity(path)
    except fs.NotARegularFile:
        return Framing(0, spans_digest([]), "not a regular file (a FIFO, device, socket or folder)")
    except (OSError, tf.errors.OpError):
        if not fs.exists(path):
            return Framing(0, spans_digest([]), "the file is missing")
        return Framing(0, spans_digest([]), "cannot read the file")
    with _framing_lock:
        cached = _framing_cache.get(identity)
    if cached is not None:
        return cached
    try:
        framing = _walk(path, identity[1])
    except (OSError, tf.errors.OpError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        return Framing(0, spans_digest([]), f"cannot read the file ({reason})")
    with _framing_lock:
        _framing_cache[identity] = framing
    return framing


def check_framing(split: SplitShards) -> None:
    """Raises CorruptShardError for the first shard of `split` whose framing is unsound.

    Both lines check the shards they read when they build a pipeline; a trainer calls this
    first, on every worker alike, so that all of them stop on a bad shard before training,
    not only the worker that reads it (the others would wait for it in a collective).
    """
    for shard in split.shards:
        problem = shard_framing(shard.path).problem
        if problem:
            raise corrupt_shard(shard, problem)


def corrupt_shard(shard: Shard, problem: str) -> CorruptShardError:
    """The error for a shard that fails a check made before reading it."""
    return CorruptShardError(shard.path, f"{problem}; rebuild it with `detrec preprocess` or pass "
                                         "--skip-corrupt to go on without it")


# --- data errors raised inside a pipeline -------------------------------------------------
# An error raised while a pipeline runs (a TensorFlow op, or the DALI feed's Python inside
# one) reaches the caller as a TF error with a message only. It names its shard by a number
# from this registry, never by its path (a path may hold spaces, colons, brackets, anything),
# and `shard_error` turns the message back into a CorruptShardError with the path.
_shard_ids: dict[str, int] = {}
_shard_paths: list[str] = []
_shard_lock = threading.Lock()
_TAGGED_RE = re.compile(r"detrec shard #(?P<id>\d+): (?P<detail>.*?) #end")


def shard_id(path: str) -> int:
    """This process's number for a shard path (the same number every time it is asked)."""
    with _shard_lock:
        if path not in _shard_ids:
            _shard_ids[path] = len(_shard_paths)
            _shard_paths.append(path)
        return _shard_ids[path]


def tagged(shard: int, detail: str, path: str) -> str:
    """A data error's message naming shard number `shard` (`shard_id`) of `path`; `detail` is
    one line. The path comes after the end marker: for a reader of the raw TF error only.
    (tfdata builds the same format in the graph, with tf.strings.join.)"""
    return f"detrec shard #{shard}: {detail} #end ({path})"


def shard_error(message: str) -> CorruptShardError | None:
    """The CorruptShardError a message built by `tagged` stands for (None: not one of ours)."""
    match = _TAGGED_RE.search(message)
    if match is None:
        return None
    with _shard_lock:
        path = _shard_paths[int(match["id"])]
    return CorruptShardError(path, match["detail"].strip())


# What a line's `image_error` says of a record whose image does not decode (sound framing and
# CRCs, bad content): `detrec preprocess` never writes one.
BAD_RECORD_HINT = "find it with `detrec inspect --verify` and rebuild the shard with `detrec preprocess`"


@contextlib.contextmanager
def shard_errors() -> Iterator[None]:
    """Re-raises the input pipeline's data errors as UserErrors: one line from the CLI.

    Errors raised inside tf.data can only be TF errors. A corrupt shard's message, from
    either line (a short shard, a record that is no tf.Example, lacks a key or has a label
    outside the classes), names the shard by its number (`tagged`) and becomes a
    CorruptShardError with its path. A record whose image does not decode is named as well
    as the readers allow, by the line that recognises the error (`InputLine.image_error`;
    tf.data drops such a record under skip_corrupt, DALI cannot skip inside a running pipeline).
    """
    try:
        yield
    except tf.errors.OpError as exc:
        corrupt = shard_error(exc.message or "")
        if corrupt is not None:
            raise corrupt from None
        for name in registry.INPUT_LINES:
            error = registry.input_line(name).image_error(exc)
            if error is not None:
                raise error from None
        raise
    except UnicodeDecodeError:  # TensorFlow quoted a record's bytes in its error message
        raise UserError(f"a record could not be read (TensorFlow's error quotes its bytes); {BAD_RECORD_HINT}, "
                        "or pass --skip-corrupt") from None


# --- images: size and dtype ---------------------------------------------------------------
def as_size(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(height, width) from an int or a pair; ValueError unless both are in 1..MAX_IMAGE_SIZE."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) <= 0 or max(size) > MAX_IMAGE_SIZE:
        raise ValueError(f"image_size must be an int or (height, width) in 1..{MAX_IMAGE_SIZE}, "
                         f"got {image_size!r}")
    return size  # type: ignore[return-value]


def _policy_compute_dtype() -> str:
    # Only a program that imported Keras can have set a mixed-precision policy; not importing
    # it here keeps `detrec bench input` and the tests free of Keras' start-up time.
    keras = sys.modules.get("keras")
    return keras.mixed_precision.global_policy().compute_dtype if keras else "float32"


def output_dtype(preprocess: str = registry.DEFAULT_TRANSFORM, dtype: tf.DType | str | None = None) -> tf.DType:
    """The images' dtype: `dtype` if given, else the transform's own (float16 for the article's
    "seed"), else float16 under a mixed_float16 policy, float32 otherwise (a bfloat16 policy
    casts in its first layer)."""
    default = registry.transform(preprocess).DTYPE  # ValueError for an unknown transform
    if dtype is not None:
        dtype = tf.as_dtype(dtype)
        if dtype not in (tf.float32, tf.float16, tf.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype.name}")
        return dtype
    if default is not None:
        return tf.as_dtype(default)
    return tf.float16 if _policy_compute_dtype() == "float16" else tf.float32


# --- the machine ------------------------------------------------------------------------
# The GPU probe: every decision about GPUs in the input package (auto decoder, DALI's device,
# its thread split) goes through these two, so tests can patch them on a machine without one.
def local_gpu_count() -> int:
    """GPUs this process sees (physical devices: listing them initialises nothing)."""
    return len(tf.config.list_physical_devices("GPU"))


def gpu_visible() -> bool:
    return local_gpu_count() > 0


def dali_available() -> bool:
    try:
        import nvidia.dali.plugin.tf  # noqa: F401
    except Exception:  # ImportError, or the plugin failing to load against this TF
        return False
    return True


# --- consuming either line ----------------------------------------------------------------
def key_strings(keys) -> list[str]:
    """[B, 64] uint8 keys -> the sha256 hex strings."""
    return [bytes(row).decode("ascii") for row in tf.convert_to_tensor(keys).numpy().tolist()]


def take_epoch(iterator, plan: EpochPlan) -> Iterator[tuple]:
    """One epoch from a long-lived iterator: `plan.steps` batches, padding rows cut off.

    Works for both decoders (tf.data's short last batch is left as it is) and stops early if
    a finite dataset ends first. Read to its end, it also reads the epoch's padding batches,
    so the next call starts on the next epoch's first batch.
    """
    for step in range(plan.steps):
        try:
            element = next(iterator)
        except StopIteration:
            return
        rows = plan.rows(step)
        if rows < plan.batch_size:
            element = tuple(t[:rows] for t in element)
        yield element
    for _ in range(plan.padding_steps):
        next(iterator, None)
