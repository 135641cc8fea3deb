"""The tf.data input line: shards -> checked, parsed, decoded, augmented batches on the CPU.

One straight line of tf.data ops, so that it can also run on the tf.data service's workers
(every step a TensorFlow op, the source a list of files). It owns what only this line does:
CRC-checked reads whose readable record count is compared with dataset_info.json at the
end of every shard (`_read_shard`), the corrupt-shard TF error that carries the file name
and `shard_errors`, which turns it back into a `CorruptShardError`. Records are parsed only
with `detrec.core.schema.parse_spec()`; images go through train/augment.py.
"""

from __future__ import annotations

import contextlib
import re
import sys
from typing import Callable, Iterator

import tensorflow as tf

from detrec.core import schema
from detrec.train import augment
from detrec.train.input.common import CorruptShardError, SkipCounter, SplitShards, worker_shards
from detrec.train.input.config import InputConfig

# Records read, counted and parsed per step of a shard: one parse_example op per 64 records.
PARSE_BATCH = 64
# Shards read at once; each contributes one record in turn, which also mixes classes.
CYCLE_LENGTH = 16
# Large sequential reads: few requests per shard on gs://, little seeking on disks.
READ_BUFFER = 8 << 20

_CORRUPT_TAG = "detrec corrupt shard"
# Assert prints its data as `[...]`; the message ends at that bracket.
_CORRUPT_RE = re.compile(_CORRUPT_TAG + r" (?P<path>[^\s:]+(?::\S+?)?): (?P<detail>.*?pass skip_corrupt)")


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


def worker_examples(split: SplitShards, num_workers: int = 1, worker_index: int = 0) -> int:
    """Examples one worker reads per epoch: its shard files' records, or every k-th record
    when there are fewer files than workers."""
    shards, by_record = worker_shards(split.shards, num_workers, worker_index)
    total = sum(shard.num_examples for shard in shards)
    return len(range(worker_index, total, num_workers)) if by_record else total


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


def make_dataset(split: SplitShards, config: InputConfig) -> tf.data.Dataset:
    """The tf.data pipeline of `split` for one worker (the package's `make_dataset` contract)."""
    c = config
    dtype = c.images_dtype()
    shards, by_record = worker_shards(split.shards, c.num_workers, c.worker_index)
    # Training order is free to vary unless a seed asks for reproducibility; evaluation is
    # always in file order. Record-level sharding needs every worker to see the same order.
    deterministic = (not c.training) or c.seed is not None or by_record
    paths = [shard.path for shard in shards]
    files = tf.data.Dataset.from_tensor_slices(
        (paths, tf.constant([shard.num_examples for shard in shards], tf.int64)))
    if c.training and not by_record:
        # File order reshuffled every epoch (each pass over `files` draws a new permutation).
        files = files.shuffle(len(paths), seed=c.seed, reshuffle_each_iteration=True)
    spec = _parse_spec(c.with_boxes, c.with_keys)
    ds = files.interleave(
        lambda p, n: _read_shard(p, n, c.skip_corrupt, c.counter, spec),
        cycle_length=min(len(paths), CYCLE_LENGTH),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if c.training:
        # Crops and flips are drawn by stateless ops from per-example seeds, themselves drawn
        # from one random number per parsed batch: reproducible for a seed whatever the
        # parallelism, fresh every epoch.
        randoms = tf.data.Dataset.random(seed=c.seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, randoms).map(_add_seeds)
    ds = ds.unbatch()
    if by_record:
        ds = ds.shard(c.num_workers, c.worker_index)
    if c.training:
        # Parsed records (JPEG bytes, label) are shuffled, not decoded pixels: ~100 KB each.
        ds = ds.shuffle(c.shuffle_buffer, seed=c.seed, reshuffle_each_iteration=True)
    ds = ds.map(_example_fn(c.size, c.training, c.preprocess, dtype, c.with_boxes, c.with_keys, c.max_boxes),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(c.batch_size, drop_remainder=c.training)
    if c.preprocess == "inception":
        ds = ds.map(lambda images, *rest: (augment.normalize_inception(images, dtype), *rest),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if c.repeat:
        # Last, after batching: an epoch is exactly its own batches (training floor(n / B),
        # each example at most once; evaluation ceil(n / B)), so take_epoch lines up with it,
        # and the unordered parallel maps can never let the next epoch's examples overtake
        # this one's. Each repetition reshuffles the files and the buffer.
        ds = ds.repeat()
    return ds.prefetch(tf.data.AUTOTUNE)
