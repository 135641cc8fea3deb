"""The tf.data input line: shards -> checked, parsed, decoded, augmented batches on the CPU.

One straight line of tf.data ops, so that it can also run on the tf.data service's workers
(every step a TensorFlow op, the source a list of files). It owns what only this line does:
CRC-checked reads whose readable record count is compared with dataset_info.json at the
end of every shard, every record's label checked against the classes (`_read_shard`), the
corrupt-shard TF error that names the shard by its number (`common.tagged`; `common.
shard_errors` turns it back into a `CorruptShardError`), and what TensorFlow says of an
image it cannot decode (`image_error`). Records are parsed only with `detrec.core.schema.
parse_spec()`; images go through the config's transform (detrec.train.transforms).
"""

from __future__ import annotations

import math
import re
import sys
from typing import Callable

import tensorflow as tf

from detrec.core import schema
from detrec.core.errors import UserError
from detrec.train import augment, registry
import detrec.train.input.common as common
from detrec.train.input.common import EpochPlan, Shard, SkipCounter, SplitShards, plain, worker_shards
from detrec.train.input.config import InputConfig

# Records read, counted and parsed per step of a shard: one parse_example op per 64 records.
PARSE_BATCH = 64
# Shards read at once; each contributes one record in turn, which also mixes classes.
CYCLE_LENGTH = 16
# Large sequential reads: few requests per shard on gs://, little seeking on disks.
READ_BUFFER = 8 << 20

# A record without its label or image parses to these (a tf.Example parse cannot tell a
# missing key from its default), and the record check below names what it lacks.
_NO_LABEL = -(1 << 63)
_NO_BYTES = b""
_HINT = "rebuild it with `detrec preprocess` or pass --skip-corrupt"

# A record with sound framing and CRCs whose image TensorFlow cannot decode (`image_error`).
_TF_DECODE_RE = re.compile(r"Invalid JPEG data|jpeg::|JPEG", re.IGNORECASE)

# --- this line's entry in detrec.train.registry.INPUT_LINES (`InputLine`) -----------------
PORTABLE = True  # one tf.data graph on the CPU: the tf.data service and tf.distribute take it as it is
PER_REPLICA = False  # one pipeline per worker, rebuilt every epoch (milliseconds)


def unavailable() -> str | None:
    return None  # TensorFlow is all it needs


def auto_picks() -> bool:
    return True  # runs anywhere: auto's last resort


def plan_epoch(split: SplitShards, *, batch_size: int, training: bool, num_workers: int = 1,
               worker_index: int = 0, skip_corrupt: bool = False) -> EpochPlan:
    """Training: floor(n / batch) full batches; evaluation: ceil(n / batch), the last one short.

    With skip_corrupt this line only learns what is unreadable while reading: evaluate with
    repeat=False, so that take_epoch stops at the end of the (shorter) epoch instead of
    running into the next one.
    """
    n = worker_examples(split, num_workers, worker_index)
    steps = n // batch_size if training else math.ceil(n / batch_size)
    return EpochPlan(batch_size, n, steps)


def input_options(strategy: tf.distribute.Strategy | None = None) -> tf.distribute.InputOptions:
    return tf.distribute.InputOptions()


def pipeline_device(device_id: int | None, pipeline_id: int) -> int | None:
    return device_id  # tf.data places nothing itself


def image_error(exc: Exception) -> UserError | None:
    """TensorFlow's JPEG decoder refused a record's image."""
    message = getattr(exc, "message", "") or ""
    if not (isinstance(exc, tf.errors.InvalidArgumentError) and _TF_DECODE_RE.search(message)):
        return None
    line = next(line for line in message.splitlines() if _TF_DECODE_RE.search(line))
    first = " ".join(re.sub(r"\{\{function_node[^}]*\}\}", "", line).split())[:200]
    return UserError(f"the image of a record does not decode ({first}), which `detrec preprocess` never "
                     f"writes; {common.BAD_RECORD_HINT}, or pass --skip-corrupt to drop such records")


# --- the pipeline -------------------------------------------------------------------------
def worker_examples(split: SplitShards, num_workers: int = 1, worker_index: int = 0) -> int:
    """Examples one worker reads per epoch: its shard files' records, or every k-th record
    when there are fewer files than workers."""
    shards, by_record = worker_shards(split.shards, num_workers, worker_index)
    total = sum(shard.num_examples for shard in shards)
    return len(range(worker_index, total, num_workers)) if by_record else total


def _read_limits(shards: tuple[Shard, ...], skip_corrupt: bool) -> list[int]:
    """How many records TensorFlow may read of each shard (-1: all), from its framing.

    TensorFlow's reader trusts each record's length: a crafted one (2^40 with a valid CRC)
    makes it allocate that much and segfault, so every header is walked first
    (`common.shard_framing`). A shard with a bad header is an error; with skip_corrupt only
    its sound records before the bad one are read, and the end-of-shard count (below) skips
    and counts the rest like any other damage.
    """
    limits = []
    for shard in shards:
        framing = common.shard_framing(shard.path)
        if not framing.problem:
            limits.append(-1)
            continue
        if not skip_corrupt:
            raise common.corrupt_shard(shard, framing.problem)
        print(f"detrec: corrupt shard {shard.path}: {framing.problem}; reading only the "
              f"{framing.records} records before it", file=sys.stderr, flush=True)
        limits.append(framing.records)
    return limits


def glob_escape(path: str) -> str:
    """`path` as a tf.io.matching_files pattern that matches that one file: `[`, `]`, `*`, `?`
    and the escape character itself are literal characters of a data folder's name."""
    return re.sub(r"([][*?\\])", r"\\\1", path)


def _record_problems(features: dict, first: tf.Tensor, num_classes: int, with_keys: bool) -> tf.Tensor:
    """[n] strings, one per record of a parsed batch: "" for a sound record, else "record R: why"
    (R: its number in the shard, counted from `first`). Computed only for a batch with a bad record."""
    labels = features[schema.CLASS_LABEL]
    records = tf.strings.as_string(first + tf.range(tf.size(labels, out_type=tf.int64)))
    why = tf.where((labels < 0) | (labels >= num_classes),
                   tf.strings.join(["label ", tf.strings.as_string(labels), f" is outside 0..{num_classes - 1} "
                                    f"(dataset_info.json lists {num_classes} classes)"]), "")
    why = tf.where(labels == _NO_LABEL, f"it has no `{schema.CLASS_LABEL}`", why)
    why = tf.where(tf.strings.length(features[schema.ENCODED]) == 0, f"it has no `{schema.ENCODED}`", why)
    if with_keys:
        why = tf.where(tf.strings.length(features[schema.SHA256]) != 64, f"its `{schema.SHA256}` is not 64 "
                       "hex digits", why)
    return tf.where(why == "", "", tf.strings.join(["record ", records, ": ", why]))


def _bad_records(features: dict, num_classes: int, with_keys: bool) -> tf.Tensor:
    """[n] bool: which records of a parsed batch no model can train on (cheap: no strings)."""
    labels = features[schema.CLASS_LABEL]
    bad = (labels < 0) | (labels >= num_classes) | (tf.strings.length(features[schema.ENCODED]) == 0)
    if with_keys:
        bad |= tf.strings.length(features[schema.SHA256]) != 64
    return bad


_KEEP = "detrec/keep"  # whether a record passed its check (skip_corrupt drops the others after unbatch)


def _read_shard(path: tf.Tensor, pattern: tf.Tensor, shard: tf.Tensor, expected: tf.Tensor, limit: tf.Tensor,
                num_classes: int, skip_corrupt: bool, counter: SkipCounter | None, spec: dict,
                with_keys: bool) -> tf.data.Dataset:
    """One shard's parsed records, in batches of up to PARSE_BATCH, each record checked
    (label within the classes, image and label present) and the shard checked at its end
    against its dataset_info count.

    Records are parsed before they are counted, so a record that is no tf.Example costs its
    parse batch (at most PARSE_BATCH records) and is caught by the count, like a bad CRC.
    A bad record stops the pipeline with an error naming the shard (by its number,
    `common.tagged`) and the record; with skip_corrupt it is dropped, named on stderr and
    counted.

    TFRecordDataset moves to the next file after a DataLossError (so ignore_errors ends just
    this file's stream); an end marker then compares how many records were readable with
    what dataset_info.json promises - which also catches a shard cut at a record boundary.
    Counting and parsing per batch keeps the per-record cost of both near zero. `limit`
    (-1: no limit) stops the reader before a record header `_read_limits` found unsound.
    """
    # A file that cannot be opened would make ignore_errors retry forever, so a missing one is
    # read as no file at all (matching_files: [] or [path], `pattern` is the path escaped)
    # and fails the count like any other.
    present = tf.io.matching_files(pattern)
    records = tf.data.TFRecordDataset(present, buffer_size=READ_BUFFER).take(limit).ignore_errors()
    # A record with sound framing and CRCs can still be no tf.Example (crafted or a bug): its
    # parse batch fails and is dropped, and the count below finds the shard short. Batches are
    # numbered first, so a record's number in the shard survives a dropped batch before it.
    parsed = records.batch(PARSE_BATCH).enumerate().map(
        plain(lambda b, batch: (tf.io.parse_example(batch, spec), b * PARSE_BATCH))).ignore_errors()
    empty = tf.io.parse_example(tf.constant([], tf.string), spec)
    end = tf.data.Dataset.from_tensors((empty, tf.constant(-1, tf.int64), True))
    marked = parsed.map(plain(lambda features, first: (features, first, False))).concatenate(end)
    shard_tag = tf.strings.join(["detrec shard #", shard, ": "])
    path_tail = tf.strings.join([" #end (", path, ")"])

    def count(state, element):
        n, flagged = state
        features, first, is_end = element
        n = n + tf.shape(features[schema.ENCODED], out_type=tf.int64)[0]
        bad = _bad_records(features, num_classes, with_keys)
        flagged = flagged + tf.reduce_sum(tf.cast(bad, tf.int64))
        return (n, flagged), (features, first, is_end, bad, n, flagged)

    def check_records(features, first, bad):
        def report():
            problems = tf.boolean_mask(_record_problems(features, first, num_classes, with_keys), bad)
            if not skip_corrupt:
                message = tf.strings.join([shard_tag, problems[0], "; find such records with `detrec inspect "
                                           "--verify` and ", _HINT, path_tail])
                with tf.control_dependencies([tf.debugging.Assert(False, [message], summarize=1)]):
                    return tf.constant(True)
            if counter is not None:
                counter.add(tf.size(problems, out_type=tf.int64), 0)
            tf.print(tf.strings.join(["detrec: skipping ", tf.strings.reduce_join(
                problems, separator="; "), " of shard ", path]), output_stream=sys.stderr)
            return tf.constant(True)

        return tf.cond(tf.reduce_any(bad), report, lambda: tf.constant(True))

    def check_end(n, flagged):
        short = n < expected
        if skip_corrupt:
            def skip():
                if counter is not None:
                    counter.add(expected - n)
                tf.print(tf.strings.join(["detrec: skipping the rest of corrupt shard ", path, ": read ",
                         tf.strings.as_string(n), " of ", tf.strings.as_string(expected), " records"]),
                         output_stream=sys.stderr)
                return tf.constant(True)

            def count_flagged():
                if counter is not None:
                    counter.add(0, tf.cast(flagged > 0, tf.int64))
                return tf.constant(True)

            return tf.cond(short, skip, count_flagged)
        message = tf.strings.join([
            shard_tag, "only ", tf.strings.as_string(n), " of its ", tf.strings.as_string(expected),
            " records are readable (corrupt, truncated or missing); ", _HINT, path_tail])
        with tf.control_dependencies([tf.debugging.Assert(tf.logical_not(short), [message], summarize=1)]):
            return tf.constant(True)

    def check(features, first, is_end, bad, n, flagged):
        done = tf.cond(is_end, lambda: check_end(n, flagged), lambda: check_records(features, first, bad))
        with tf.control_dependencies([done]):
            features = tf.nest.map_structure(tf.identity, features, expand_composites=True)
            return {**features, _KEEP: tf.logical_not(bad)}, is_end

    checked = marked.scan((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), plain(count)).map(plain(check))
    return checked.filter(plain(lambda features, is_end: tf.logical_not(is_end))).map(
        plain(lambda features, is_end: features))


def _parse_spec(with_boxes: bool, with_keys: bool) -> dict:
    """The schema's spec for the keys this line reads; the required scalars get a default
    that no sound record has, so that a record lacking one is named, not its batch lost."""
    full = schema.parse_spec()
    keys = [schema.ENCODED, schema.CLASS_LABEL]
    if with_boxes:
        keys += [schema.YMIN, schema.XMIN, schema.YMAX, schema.XMAX, schema.OBJECT_LABEL]
    if with_keys:
        keys.append(schema.SHA256)
    spec = {k: full[k] for k in keys}
    for key, default in ((schema.ENCODED, _NO_BYTES), (schema.CLASS_LABEL, _NO_LABEL), (schema.SHA256, _NO_BYTES)):
        if key in spec:
            spec[key] = tf.io.FixedLenFeature([], spec[key].dtype, default_value=default)
    return spec


_SEED = "detrec/seed"  # the per-example random seed travelling with the parsed features


def _add_seeds(features: dict, seed: tf.Tensor) -> dict:
    """Gives every example of a parsed batch its own stateless seed, from one random draw."""
    n = tf.shape(features[schema.ENCODED])[0]
    return {**features, _SEED: tf.random.stateless_uniform([n, 2], seed=seed, minval=None, maxval=None,
                                                           dtype=tf.int64)}


def _example_fn(size, training, transform, dtype, with_boxes, with_keys, max_boxes, min_object_covered) -> Callable:
    """Parsed features -> (image, label[, boxes, box_labels][, key]), the image by `transform`."""

    def fn(features):
        encoded = features[schema.ENCODED]
        if with_boxes:
            coords = [tf.sparse.to_dense(features[k]) for k in (schema.YMIN, schema.XMIN, schema.YMAX, schema.XMAX)]
            boxes, box_labels = tf.stack(coords, axis=-1), tf.sparse.to_dense(features[schema.OBJECT_LABEL])
        cover = None
        if training and min_object_covered:
            box, found = augment.largest_box_of(boxes, box_labels, features[schema.CLASS_LABEL])
            # No box of its class: the whole image with no share to keep, the draw of classify.
            cover = (tf.where(found, box, [0.0, 0.0, 1.0, 1.0]), tf.where(found, min_object_covered, 0.0))
        image, window, flip = transform.example(encoded, size, training, features.get(_SEED), dtype, cover)
        out = [tf.ensure_shape(image, [size[0], size[1], 3]), features[schema.CLASS_LABEL]]
        if with_boxes:
            boxes = augment.transform_boxes(boxes, augment.jpeg_shape(encoded), window, flip)
            out += augment.pad_boxes(boxes, box_labels, max_boxes)
        if with_keys:
            out.append(tf.ensure_shape(tf.io.decode_raw(features[schema.SHA256], tf.uint8), [64]))
        return tuple(out)

    return fn


def make_dataset(split: SplitShards, config: InputConfig) -> tf.data.Dataset:
    """The tf.data pipeline of `split` for one worker (the package's `make_dataset` contract)."""
    c = config
    dtype = c.images_dtype()
    transform = registry.transform(c.preprocess)
    shards, by_record = worker_shards(split.shards, c.num_workers, c.worker_index)
    # Training order is free to vary unless a seed asks for reproducibility; evaluation is
    # always in file order. Record-level sharding needs every worker to see the same order.
    deterministic = (not c.training) or c.seed is not None or by_record
    paths = [shard.path for shard in shards]
    limits = _read_limits(shards, c.skip_corrupt)  # before TensorFlow reads a record header
    files = tf.data.Dataset.from_tensor_slices(
        (paths, [glob_escape(p) for p in paths], [str(common.shard_id(p)) for p in paths],
         tf.constant([shard.num_examples for shard in shards], tf.int64), tf.constant(limits, tf.int64)))
    if c.training and not by_record:
        # File order reshuffled every epoch (each pass over `files` draws a new permutation).
        files = files.shuffle(len(paths), seed=c.seed, reshuffle_each_iteration=True)
    spec = _parse_spec(c.with_boxes, c.with_keys)
    ds = files.interleave(
        plain(lambda p, pattern, shard, n, limit: _read_shard(p, pattern, shard, n, limit, split.num_classes,
                                                              c.skip_corrupt, c.counter, spec, c.with_keys)),
        cycle_length=min(len(paths), CYCLE_LENGTH),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    if c.training:
        # Crops and flips are drawn by stateless ops from per-example seeds, themselves drawn
        # from one random number per parsed batch: reproducible for a seed whatever the
        # parallelism, fresh every epoch.
        randoms = tf.data.Dataset.random(seed=c.seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, randoms).map(plain(_add_seeds))
    ds = ds.unbatch()
    if c.skip_corrupt:  # the records `_read_shard` found bad (without skip_corrupt it stopped there)
        ds = ds.filter(plain(lambda features: features[_KEEP]))
    if by_record:
        ds = ds.shard(c.num_workers, c.worker_index)
    if c.training:
        # Parsed records (JPEG bytes, label) are shuffled, not decoded pixels: ~100 KB each.
        ds = ds.shuffle(c.shuffle_buffer, seed=c.seed, reshuffle_each_iteration=True)
    ds = ds.map(plain(_example_fn(c.size, c.training, transform, dtype, c.with_boxes, c.with_keys, c.max_boxes,
                                    c.min_object_covered)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if c.skip_corrupt:
        # A record with sound framing and CRCs whose image does not decode (crafted, or
        # damaged before its CRC was computed) costs that example only. TensorFlow reports
        # no count of what it drops here, so these are not in `counter`.
        ds = ds.ignore_errors()
    ds = ds.batch(c.batch_size, drop_remainder=c.training)
    if transform.batch is not None:  # e.g. inception's normalisation, one vectorised op per batch
        ds = ds.map(plain(lambda images, *rest: (transform.batch(images, dtype), *rest)),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if c.repeat:
        # Last, after batching: an epoch is exactly its own batches (training floor(n / B),
        # each example at most once; evaluation ceil(n / B)), so take_epoch lines up with it,
        # and the unordered parallel maps can never let the next epoch's examples overtake
        # this one's. Each repetition reshuffles the files and the buffer.
        ds = ds.repeat()
    return ds.prefetch(tf.data.AUTOTUNE)
