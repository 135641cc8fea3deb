"""Streaming input: detrec shards -> batches of (images, labels), tf.data on CPU or DALI on GPU.

The contract (the same for both decoders; the trainer, benchmarks and tests rely on it)::

    make_dataset(data_dir, split, *, batch_size, image_size, training,
                 decoder="auto", preprocess="inception", seed=None,
                 num_workers=1, worker_index=0, repeat=False,
                 skip_corrupt=False, counter=None,
                 with_boxes=False, with_keys=False, max_boxes=MAX_BOXES, dtype=None,
                 shuffle_buffer=SHUFFLE_BUFFER, device_id=None)
        -> tf.data.Dataset of (images, labels[, boxes, box_labels][, keys])

    epoch_plan(...) / take_epoch(iterator, plan)   one worker's epoch, for both decoders
    dataset_fn(...) / input_options(decoder)      tf.distribute.distribute_datasets_from_function
    split_size(data_dir, split)                    examples in a split (dataset_info.json)
    shard_errors() / CorruptShardError / SkipCounter   corruption, see below

* images: [B, H, W, 3] of `output_dtype(preprocess, dtype)`; `image_size` is an int or (H, W).
  - preprocess="inception": pixels scaled to [-1, 1] (x / 127.5 - 1). Training takes an
    Inception random-resized crop (decoding only the crop window) and a random flip;
    evaluation decodes the whole image and resizes it to (H, W). Default dtype float32, or
    float16 when the Keras policy is mixed_float16.
  - preprocess="seed": the original article's transform, identical in training and
    evaluation: resize_with_crop_or_pad to (H, W), cast float16, per_image_standardization
    (zero mean, unit variance per image). Default dtype float16, as the article's net saw it.
  - dtype=... overrides: tf.float32, tf.float16, or tf.bfloat16 (tf.data only: DALI has no
    bfloat16; with a bfloat16 policy the default is float32 and Keras casts on input).
* labels: [B] int64, `image/class/label` (0 = background).
* boxes (with_boxes): [B, max_boxes, 4] float32 (ymin, xmin, ymax, xmax) normalised to the
  *output* image (mapped through the crop/pad window and the flip, clipped to [0, 1]);
  box_labels: [B, max_boxes] int64, 0 on padding rows. keys (with_keys): [B, 64] uint8, the
  ASCII hex sha256 of each JPEG (`key_strings` turns them into str) - the record's identity
  for tests and tools. Extras come as a flat tuple: DALI datasets cannot be restructured.
* B: training batches always hold `batch_size` (drop_remainder). Evaluation batches of the
  tf.data path are short at the end of an epoch; DALI pads its last batch with repeats of
  the last example (a GPU-placed DALIDataset cannot be followed by any tf.data op, so it
  cannot be trimmed there). `take_epoch(iterator, epoch_plan(...))` yields exactly one epoch
  with the padding cut off, for both decoders: use it and evaluation sees every example once.
* repeat: True gives an endless stream of whole epochs, each ending with its own last batch
  (training reshuffles files and records every epoch), so `take_epoch` can be called again
  on the same iterator and each call sees every example of the epoch once.
  False stops after one epoch; this only applies to tf.data - a DALIDataset is always
  endless, so trainers should pass repeat=True and count steps with `epoch_plan`.
* Workers: `num_workers`/`worker_index` give disjoint parts that together cover the split.
  tf.data splits shard *files* (every k-th file; when there are fewer files than workers, every
  worker reads all files and keeps every k-th record); DALI splits records (`shard_id`).
  `dataset_fn` + `input_options` plug this into `strategy.distribute_datasets_from_function`.
* Corruption: every shard's readable record count is checked against dataset_info.json. A
  corrupt, truncated or unreadable shard stops iteration with a TF error whose message names
  the file; inside `with shard_errors():` it is raised as `CorruptShardError` (a UserError:
  one line from the CLI). skip_corrupt=True drops what cannot be read instead, prints a line
  naming the shard and adds to `counter` (a SkipCounter: records and shards skipped).
  DALI reads without CRCs, so it checks every shard's size and .idx against
  dataset_info.json before it starts (truncation, wrong file); flipped bits inside a record
  are only caught by the tf.data path (or `detrec inspect --verify`).

The shard list always comes from dataset_info.json (never a glob), and records are parsed
only with `detrec.core.schema.parse_spec()`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import sys
from typing import Callable, Iterator

import tensorflow as tf

from detrec.core import dataset_info, fs, schema
from detrec.core.errors import UserError
from detrec.train import augment

DECODERS = ("auto", "cpu", "dali")
PREPROCESS = ("inception", "seed")
MAX_BOXES = 32
# Records held for shuffling *before* decode (~100 KB of JPEG each, not 600 KB of pixels).
SHUFFLE_BUFFER = 2048
# Records read, counted and parsed per step of a shard: one parse_example op per 64 records.
PARSE_BATCH = 64
# Shards read at once; each contributes one record in turn, which also mixes classes.
CYCLE_LENGTH = 16
# Large sequential reads: few requests per shard on gs://, little seeking on disks.
READ_BUFFER = 8 << 20

_CORRUPT_TAG = "detrec corrupt shard"
# Assert prints its data as `[...]`; the message ends at that bracket.
_CORRUPT_RE = re.compile(_CORRUPT_TAG + r" (?P<path>[^\s:]+(?::\S+?)?): (?P<detail>.*?pass skip_corrupt)")


class CorruptShardError(UserError):
    """A shard could not be read completely; names the file and what was readable."""

    def __init__(self, path: str, detail: str):
        super().__init__(f"corrupt shard {path}: {detail}")
        self.path = path
        self.detail = detail


@contextlib.contextmanager
def shard_errors() -> Iterator[None]:
    """Re-raises the pipeline's corrupt-shard TF error as CorruptShardError (naming the file).

    Errors raised inside tf.data can only be TF errors; the message carries the file name,
    and this turns it back into a typed exception for the trainer and the CLI.
    """
    try:
        yield
    except tf.errors.OpError as exc:
        match = _CORRUPT_RE.search(exc.message)
        if match is None:
            raise
        raise CorruptShardError(match["path"], match["detail"].strip()) from None


class SkipCounter:
    """What skip_corrupt=True dropped: records lost and shards affected (tf.Variables).

    Create it outside any distribution-strategy scope and pass it as `counter=`.
    """

    def __init__(self) -> None:
        self.records = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_records")
        self.shards = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_shards")

    def add(self, records, shards=1) -> None:
        self.records.assign_add(tf.cast(records, tf.int64))
        self.shards.assign_add(tf.cast(shards, tf.int64))

    def result(self) -> dict[str, int]:
        return {"records": int(self.records.numpy()), "shards": int(self.shards.numpy())}


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """How one worker walks one epoch: `steps` batches, the first `rows(step)` rows real."""

    batch_size: int
    num_examples: int  # this worker's examples per epoch
    steps: int

    def rows(self, step: int) -> int:
        return max(0, min(self.batch_size, self.num_examples - step * self.batch_size))


# --- small contract helpers ---------------------------------------------------------------
def as_size(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(height, width) from an int or a pair; ValueError unless both are positive."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"image_size must be a positive int or (height, width), got {image_size!r}")
    return size  # type: ignore[return-value]


def _policy_compute_dtype() -> str:
    # Only a program that imported Keras can have set a mixed-precision policy; not importing
    # it here keeps `detrec bench input` and the tests free of Keras' start-up time.
    keras = sys.modules.get("keras")
    return keras.mixed_precision.global_policy().compute_dtype if keras else "float32"


def output_dtype(preprocess: str = "inception", dtype: tf.DType | str | None = None) -> tf.DType:
    """The images' dtype: `dtype` if given, else float16 for "seed" (the article) or under a
    mixed_float16 policy, float32 otherwise (a bfloat16 policy casts in its first layer)."""
    if preprocess not in PREPROCESS:
        raise ValueError(f"preprocess must be one of {PREPROCESS}, got {preprocess!r}")
    if dtype is not None:
        dtype = tf.as_dtype(dtype)
        if dtype not in (tf.float32, tf.float16, tf.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype.name}")
        return dtype
    if preprocess == "seed" or _policy_compute_dtype() == "float16":
        return tf.float16
    return tf.float32


def gpu_visible() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def dali_available() -> bool:
    try:
        import nvidia.dali.plugin.tf  # noqa: F401
    except Exception:  # ImportError, or the plugin failing to load against this TF
        return False
    return True


def resolve_decoder(decoder: str = "auto") -> str:
    """"cpu" or "dali": auto picks DALI where a GPU is visible and DALI loads, else tf.data."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "auto":
        return "dali" if gpu_visible() and dali_available() else "cpu"
    if decoder == "dali" and not dali_available():
        raise UserError("decoder 'dali' needs nvidia-dali and its TF plugin (see the Makefile)")
    return decoder


def key_strings(keys) -> list[str]:
    """[B, 64] uint8 keys -> the sha256 hex strings."""
    return [bytes(row).decode("ascii") for row in tf.convert_to_tensor(keys).numpy().tolist()]


# --- dataset_info -> this worker's shards -------------------------------------------------
def split_size(data_dir: str, split: str) -> int:
    """Examples in a split, from dataset_info.json."""
    info = dataset_info.load(data_dir)
    return info.split(split, data_dir).num_examples


def _check_workers(num_workers: int, worker_index: int) -> None:
    if num_workers < 1 or not 0 <= worker_index < num_workers:
        raise ValueError(f"need 0 <= worker_index < num_workers, got {worker_index} of {num_workers}")


def shard_entries(data_dir: str, split: str) -> list[tuple[str, int]]:
    """(full path, num_examples) of a split's non-empty shards, in dataset_info order."""
    info = dataset_info.load(data_dir)
    paths = dataset_info.shard_files(info, data_dir, split)  # UserError for a bad/empty split
    counts = {fs.join(data_dir, s.file): s.num_examples for s in info.split(split, data_dir).shards}
    return [(p, counts[p]) for p in paths]


def worker_shards(entries: list[tuple[str, int]], num_workers: int,
                  worker_index: int) -> tuple[list[tuple[str, int]], bool]:
    """(shards this worker reads, whether records must be sharded instead of files)."""
    _check_workers(num_workers, worker_index)
    if len(entries) >= num_workers:
        return entries[worker_index::num_workers], False
    return entries, True


def epoch_plan(data_dir: str, split: str, *, batch_size: int, training: bool, decoder: str = "auto",
               num_workers: int = 1, worker_index: int = 0, skip_corrupt: bool = False) -> EpochPlan:
    """Steps per epoch and real rows per batch for one worker, as make_dataset will deliver.

    Training: floor(n / batch) full batches. Evaluation: ceil(n / batch) batches for tf.data;
    DALI pads every worker to the batches of the largest worker (its `pad_last_batch`).
    With skip_corrupt, DALI's plan leaves out the shards it will skip, but tf.data only learns
    what is unreadable while reading: evaluate with repeat=False there, so that take_epoch
    stops at the end of the (shorter) epoch instead of running into the next one.
    """
    _check_workers(num_workers, worker_index)
    if resolve_decoder(decoder) == "dali":
        from detrec.train import dali

        sizes = dali.worker_sizes(data_dir, split, num_workers, skip_corrupt)
        n = sizes[worker_index]
        steps = n // batch_size if training else math.ceil(max(sizes) / batch_size)
        return EpochPlan(batch_size, n, steps)
    shards, by_record = worker_shards(shard_entries(data_dir, split), num_workers, worker_index)
    total = sum(count for _, count in shards)
    n = len(range(worker_index, total, num_workers)) if by_record else total
    steps = n // batch_size if training else math.ceil(n / batch_size)
    return EpochPlan(batch_size, n, steps)


def take_epoch(iterator, plan: EpochPlan) -> Iterator[tuple]:
    """One epoch from a long-lived iterator: `plan.steps` batches, padding rows cut off.

    Works for both decoders (tf.data's short last batch is left as it is) and stops early if
    a finite dataset ends first.
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


# --- the tf.data pipeline -----------------------------------------------------------------
def _read_shard(path: tf.Tensor, expected: tf.Tensor, skip_corrupt: bool, counter: SkipCounter | None,
                spec: dict) -> tf.data.Dataset:
    """One shard's parsed records, in batches of up to PARSE_BATCH, checked at the end of the
    file against its dataset_info count.

    TFRecordDataset moves to the next file after a DataLossError (so ignore_errors ends just
    this file's stream); an end marker then compares how many records were readable with
    what dataset_info.json promises - which also catches a shard cut at a record boundary.
    Counting and parsing per batch keeps the per-record cost of both near zero.
    """
    # A file that cannot be opened would make ignore_errors retry forever, so a missing one is
    # read as no file at all (matching_files: [] or [path]) and fails the count like any other.
    present = tf.io.matching_files(path)
    batches = tf.data.TFRecordDataset(present, buffer_size=READ_BUFFER).ignore_errors().batch(PARSE_BATCH)
    end = tf.data.Dataset.from_tensors((tf.constant([], tf.string), True))
    marked = batches.map(lambda b: (b, False)).concatenate(end)

    def count(n, element):
        batch, is_end = element
        n = n + tf.size(batch, out_type=tf.int64)
        return n, (batch, is_end, n)

    def check(batch, is_end, n):
        def at_end():
            short = n < expected
            message = tf.strings.join([
                _CORRUPT_TAG, " ", path, ": only ", tf.strings.as_string(n), " of its ",
                tf.strings.as_string(expected), " records are readable (corrupt, truncated or missing); "
                "rebuild it with `detrec preprocess` or pass skip_corrupt"])
            if skip_corrupt:
                def skip():
                    if counter is not None:
                        counter.add(expected - n)
                    tf.print(tf.strings.join(["detrec: skipping the rest of corrupt shard ", path, ": read ",
                             tf.strings.as_string(n), " of ", tf.strings.as_string(expected), " records"]),
                             output_stream=sys.stderr)
                    return tf.constant(True)
                return tf.cond(short, skip, lambda: tf.constant(True))
            with tf.control_dependencies([tf.debugging.Assert(tf.logical_not(short), [message], summarize=1)]):
                return tf.constant(True)

        done = tf.cond(is_end, at_end, lambda: tf.constant(True))
        with tf.control_dependencies([done]):
            return tf.identity(batch), is_end

    checked = marked.scan(tf.constant(0, tf.int64), count).map(check)
    records = checked.filter(lambda batch, is_end: tf.logical_not(is_end))
    return records.map(lambda batch, is_end: tf.io.parse_example(batch, spec))


def _parse_spec(with_boxes: bool, with_keys: bool) -> dict:
    full = schema.parse_spec()
    keys = [schema.ENCODED, schema.CLASS_LABEL]
    if with_boxes:
        keys += [schema.YMIN, schema.XMIN, schema.YMAX, schema.XMAX, schema.OBJECT_LABEL]
    if with_keys:
        keys.append(schema.SHA256)
    return {k: full[k] for k in keys}


_SEED = "detrec/seed"  # the per-example random seed travelling with the parsed features


def _add_seeds(features: dict, seed: tf.Tensor) -> dict:
    """Gives every example of a parsed batch its own stateless seed, from one random draw."""
    n = tf.shape(features[schema.ENCODED])[0]
    return {**features, _SEED: tf.random.stateless_uniform([n, 2], seed=seed, minval=None, maxval=None,
                                                           dtype=tf.int64)}


def _example_fn(size, training, preprocess, dtype, with_boxes, with_keys, max_boxes) -> Callable:
    """Parsed features -> (image, label[, boxes, box_labels][, key]).

    "inception" images leave this as float32 0..255: they are normalised a batch at a time
    (one vectorised op over the batch costs a third less than one per image).
    """

    def fn(features):
        encoded = features[schema.ENCODED]
        flip = tf.constant(False)
        if preprocess == "seed":
            image, window = augment.seed_transform(encoded, size, dtype)
        elif training:
            image, window, flip = augment.decode_train(encoded, size, features[_SEED])
        else:
            image, window = augment.decode_eval(encoded, size)
        out = [tf.ensure_shape(image, [size[0], size[1], 3]), features[schema.CLASS_LABEL]]
        if with_boxes:
            coords = [tf.sparse.to_dense(features[k]) for k in (schema.YMIN, schema.XMIN, schema.YMAX, schema.XMAX)]
            boxes = augment.transform_boxes(tf.stack(coords, axis=-1), augment.jpeg_shape(encoded), window, flip)
            out += augment.pad_boxes(boxes, tf.sparse.to_dense(features[schema.OBJECT_LABEL]), max_boxes)
        if with_keys:
            out.append(tf.ensure_shape(tf.io.decode_raw(features[schema.SHA256], tf.uint8), [64]))
        return tuple(out)

    return fn


def _tf_dataset(shards, by_record, *, batch_size, size, training, preprocess, dtype, seed, num_workers,
                worker_index, repeat, skip_corrupt, counter, with_boxes, with_keys, max_boxes,
                shuffle_buffer) -> tf.data.Dataset:
    # Training order is free to vary unless a seed asks for reproducibility; evaluation is
    # always in file order. Record-level sharding needs every worker to see the same order.
    deterministic = (not training) or seed is not None or by_record
    paths, counts = zip(*shards)
    files = tf.data.Dataset.from_tensor_slices((list(paths), tf.constant(counts, tf.int64)))
    if training and not by_record:
        # File order reshuffled every epoch (each pass over `files` draws a new permutation).
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    spec = _parse_spec(with_boxes, with_keys)
    ds = files.interleave(
        lambda p, n: _read_shard(p, n, skip_corrupt, counter, spec),
        cycle_length=min(len(paths), CYCLE_LENGTH),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if training:
        # Crops and flips are drawn by stateless ops from per-example seeds, themselves drawn
        # from one random number per parsed batch: reproducible for a seed whatever the
        # parallelism, fresh every epoch.
        randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, randoms).map(_add_seeds)
    ds = ds.unbatch()
    if by_record:
        ds = ds.shard(num_workers, worker_index)
    if training:
        # Parsed records (JPEG bytes, label) are shuffled, not decoded pixels: ~100 KB each.
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(_example_fn(size, training, preprocess, dtype, with_boxes, with_keys, max_boxes),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=training)
    if preprocess == "inception":
        ds = ds.map(lambda images, *rest: (augment.normalize_inception(images, dtype), *rest),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if repeat:
        # Last, after batching: an epoch is exactly its own batches (training floor(n / B),
        # each example at most once; evaluation ceil(n / B)), so take_epoch lines up with it,
        # and the unordered parallel maps can never let the next epoch's examples overtake
        # this one's. Each repetition reshuffles the files and the buffer.
        ds = ds.repeat()
    return ds.prefetch(tf.data.AUTOTUNE)


def make_dataset(data_dir: str, split: str, *, batch_size: int, image_size: int | tuple[int, int],
                 training: bool, decoder: str = "auto", preprocess: str = "inception",
                 seed: int | None = None, num_workers: int = 1, worker_index: int = 0,
                 repeat: bool = False, skip_corrupt: bool = False, counter: SkipCounter | None = None,
                 with_boxes: bool = False, with_keys: bool = False, max_boxes: int = MAX_BOXES,
                 dtype: tf.DType | str | None = None, shuffle_buffer: int = SHUFFLE_BUFFER,
                 device_id: int | None = None) -> tf.data.Dataset:
    """The input pipeline of a split; see the module docstring for the full contract.

    Args:
      data_dir: the OUT folder of `detrec preprocess` (local or gs://).
      split: a split of its dataset_info.json ("train", "val").
      batch_size: examples per batch for this worker (per replica under tf.distribute).
      image_size: output size, int or (height, width).
      training: random crops/flips and shuffling, full batches only.
      decoder: "cpu" (tf.data), "dali", or "auto" (DALI on a GPU machine).
      preprocess: "inception" ([-1, 1]) or "seed" (the original article's transform).
      seed: makes the order and the augmentation reproducible; None draws fresh randomness.
      num_workers, worker_index: this worker's disjoint part of the split.
      repeat: an endless stream instead of one epoch (DALI is always endless).
      skip_corrupt: drop unreadable records and count them in `counter` instead of failing.
      counter: a SkipCounter to count what skip_corrupt dropped.
      with_boxes, with_keys, max_boxes: extra outputs (see the module docstring).
      dtype: images' dtype; None chooses by `output_dtype`.
      shuffle_buffer: records in the training shuffle buffer (tf.data; DALI uses it as
        its reader's `initial_fill`).
      device_id: DALI's GPU (None: the first visible GPU, CPU-only DALI when there is none).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    size = as_size(image_size)
    out_dtype = output_dtype(preprocess, dtype)
    _check_workers(num_workers, worker_index)
    kwargs = dict(batch_size=batch_size, size=size, training=training, preprocess=preprocess,
                  dtype=out_dtype, seed=seed, num_workers=num_workers, worker_index=worker_index,
                  skip_corrupt=skip_corrupt, counter=counter, with_boxes=with_boxes,
                  with_keys=with_keys, max_boxes=max_boxes, shuffle_buffer=shuffle_buffer)
    if resolve_decoder(decoder) == "dali":
        from detrec.train import dali

        return dali.make_dataset(data_dir, split, device_id=device_id, **kwargs)
    shards, by_record = worker_shards(shard_entries(data_dir, split), num_workers, worker_index)
    return _tf_dataset(shards, by_record, repeat=repeat, **kwargs)


# --- tf.distribute ------------------------------------------------------------------------
def dataset_fn(data_dir: str, split: str, *, global_batch_size: int, decoder: str = "auto",
               **kwargs) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """A function for `strategy.distribute_datasets_from_function(fn, input_options(decoder))`.

    Each input pipeline gets `global_batch_size / replicas` per batch and its own disjoint
    part (worker_index = input_pipeline_id). With DALI on GPUs the pipelines are per replica
    and each runs on the GPU of its replica.
    """
    decoder = resolve_decoder(decoder)

    def fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        extra = dict(kwargs)
        if decoder == "dali" and gpu_visible():
            gpus = len(tf.config.list_physical_devices("GPU"))
            extra.setdefault("device_id", context.input_pipeline_id % gpus)
        return make_dataset(
            data_dir, split, batch_size=context.get_per_replica_batch_size(global_batch_size),
            decoder=decoder, num_workers=context.num_input_pipelines,
            worker_index=context.input_pipeline_id, **extra)

    return fn


def input_options(decoder: str = "auto") -> tf.distribute.InputOptions:
    """InputOptions matching `dataset_fn`: DALI on GPU builds one pipeline per replica, on
    that replica's device, and must not be copied again; tf.data uses the defaults."""
    if resolve_decoder(decoder) == "dali" and gpu_visible():
        return tf.distribute.InputOptions(
            experimental_place_dataset_on_device=True,
            experimental_fetch_to_device=False,
            experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA,
        )
    return tf.distribute.InputOptions()
