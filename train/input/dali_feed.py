"""What a DALI pipeline of the DALI line is fed: records by offset, in `draws` order, with their draws.

A DALI pipeline here has no reader and no random operator: each batch's records, crop
windows and flips come from `Feed`, a pure function of (seed, epoch, step) computed in
numpy (`draws` says how), so that a stream started at epoch e and read s batches in gives
exactly the batches an uninterrupted stream gives there. `Feed.inputs` turns it into the
tf.data datasets `nvidia.dali.plugin.tf.experimental.DALIDatasetWithInputs` feeds to the
pipeline's `fn.external_source` nodes, one dataset per node (the plugin takes one output
per node): each maps the stream's batch number through `Feed.part`, which builds a batch
once and hands each node its part.

A batch: stream batch b is step b % stream_steps of epoch first_epoch + b // stream_steps;
its row j is position step * batch + j of this worker's span of that epoch's order
(`draws.worker_span`), and positions past the span repeat its last record (DALI's
`pad_last_batch`: every worker's epoch has the same number of batches). Records are read
with one positioned read each (the .idx gives every record's place; the framing was checked
before, `dali._index_problem`) and parsed as tf.train.Example by protobuf without
TensorFlow (`detrec.core.example_proto`). A record that is no tf.Example, lacks its image
or label, or has a label outside the classes stops the stream with an error that names the
shard by its number and the record (`RecordTable.error`), which `common.shard_errors` turns
into one line naming the file. With skip_corrupt it is named on stderr, counted, and its row
takes another record instead (`Feed.batch`): a running DALI pipeline's batches have a fixed
size, so a row cannot just be dropped as tf.data drops it. The stand-in is the batch's first
good row, or the first good record after the batch in this worker's span: a function of the
data, so a resumed stream still equals an uninterrupted one. (Evaluation then counts the
stand-in twice, as DALI's padding already repeats records.)
"""

from __future__ import annotations

import math
import os
import sys
import threading

import numpy as np
import tensorflow as tf

from detrec.core import fs, images, schema, tfrecord
from detrec.train import registry
import detrec.train.input.common as common
import detrec.train.input.draws as draws

_RUNS = 1 << 62  # batches of an endless stream
_KEPT = 16  # built batches held for the inputs that have not taken their part yet


def jpeg_hw(data: bytes) -> tuple[int, int]:
    """(height, width) from a JPEG's start-of-frame header, as decoders read it (EXIF ignored);
    (0, 0) when the header cannot be read (the decoder then rejects the image)."""
    try:
        header = images.jpeg_header(data)
    except images.ImageError:
        return 0, 0
    return header.height, header.width


class RecordTable:
    """Every record of the usable shards, numbered 0..n-1 in dataset_info order.

    Args:
      shards: (path, its .idx spans: an int64 [records, 2] array of (offset, framed size)).
    """

    def __init__(self, shards: list[tuple[str, np.ndarray]]) -> None:
        self.paths = [path for path, _ in shards]
        counts = [len(spans) for _, spans in shards]
        self.shard = np.repeat(np.arange(len(shards), dtype=np.int32), counts)
        self.first = np.cumsum([0, *counts[:-1]]).astype(np.int64)  # each shard's first record
        spans = np.concatenate([np.asarray(spans, np.int64).reshape(-1, 2) for _, spans in shards])
        self.offset = spans[:, 0]
        self.payload = spans[:, 1] - tfrecord.OVERHEAD
        self._files: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.offset)

    def where(self, record: int) -> tuple[str, int, int]:
        """(path, the record's number in its shard, byte offset of its frame)."""
        shard = int(self.shard[record])
        return self.paths[shard], int(record - self.first[shard]), int(self.offset[record])

    def error(self, record: int, problem: str) -> ValueError:
        """What the stream raises for a record no model can train on: its message names the
        shard by its number (`common.tagged`), which `common.shard_errors` turns back into a
        CorruptShardError with the path."""
        path, number, offset = self.where(record)
        return ValueError(common.tagged(common.shard_id(path), f"offset {offset}, record {number}: {problem}; "
                                        "find such records with `detrec inspect --verify` and rebuild the shard "
                                        "with `detrec preprocess` (--skip-corrupt goes on without them)", path))

    def read(self, record: int) -> bytes:
        """The record's payload (a serialized tf.train.Example): one positioned read."""
        shard = int(self.shard[record])
        start, size = int(self.offset[record]) + tfrecord.HEADER.size, int(self.payload[record])
        handle = self._files.get(shard)
        path = self.paths[shard]
        if handle is None:
            handle = self._files[shard] = fs.open(path, "rb") if fs.is_url(path) else os.open(path, os.O_RDONLY)
        if isinstance(handle, int):
            data = os.pread(handle, size, start)
        else:
            handle.seek(start)
            data = handle.read(size)
        if len(data) != size:
            raise OSError(f"{path}: short read at offset {start} (the file changed while training?)")
        return data

    def close(self) -> None:
        for handle in self._files.values():
            os.close(handle) if isinstance(handle, int) else handle.close()
        self._files.clear()

    def __del__(self) -> None:
        self.close()


def _parse(data: bytes, with_boxes: bool, with_keys: bool) -> dict:
    """The features the pipeline needs from a serialized tf.train.Example; ValueError naming
    what is wrong when it is none, or lacks a key."""
    from detrec.core.example_proto import Example

    try:
        fmap = Example.FromString(data).features.feature
    except Exception:  # protobuf's DecodeError, or what its runtime raises on other bad bytes
        raise ValueError("it is not a tf.Example") from None

    def first(key: str, kind: str):
        values = getattr(fmap[key], kind).value if key in fmap else ()
        if not values:
            raise ValueError(f"it has no `{key}`")
        return values[0]

    out = {"encoded": first(schema.ENCODED, "bytes_list"), "label": first(schema.CLASS_LABEL, "int64_list")}
    if with_boxes:
        columns = [fmap[k].float_list.value if k in fmap else ()
                   for k in (schema.YMIN, schema.XMIN, schema.YMAX, schema.XMAX)]
        labels = fmap[schema.OBJECT_LABEL].int64_list.value if schema.OBJECT_LABEL in fmap else ()
        out["boxes"] = np.array(columns, np.float32).reshape(4, -1).T
        out["box_labels"] = np.array(labels, np.int64)
    if with_keys:
        key = first(schema.SHA256, "bytes_list")
        if len(key) != 64:
            raise ValueError(f"its `{schema.SHA256}` is not 64 hex digits")
        out["key"] = key
    return out


def largest_box_of(boxes: np.ndarray, box_labels: np.ndarray, label: int) -> np.ndarray:
    """`augment.largest_box_of` of one record in numpy: its largest box of positive area labelled
    `label` (normalised ymin, xmin, ymax, xmax), NaNs when it has none."""
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    mine = (box_labels == label) & (area > 0)
    if not mine.any():
        return np.full(4, np.nan, np.float32)
    return boxes[np.argmax(np.where(mine, area, -1.0))]


def map_boxes(boxes: np.ndarray, hw: tuple[int, int], window: np.ndarray, flip: int) -> np.ndarray:
    """`augment.transform_boxes` in numpy float32: boxes through the window, then the flip."""
    h, w = np.float32(hw[0]), np.float32(hw[1])
    scale = np.array([h, w, h, w], np.float32)
    start = np.array([window[0], window[1]] * 2, np.float32)
    extent = np.array([window[2], window[3]] * 2, np.float32)
    out = np.clip((boxes * scale - start) / extent, np.float32(0), np.float32(1))
    if flip:
        out = np.stack([out[:, 0], 1 - out[:, 3], out[:, 2], 1 - out[:, 1]], axis=1)
    return out.astype(np.float32)


class Feed:
    """One worker's endless stream of batches as numpy parts (see the module docstring).

    Args:
      table: the split's records.
      seed: the run's seed; first_epoch: the epoch stream batch 0 belongs to.
      training: draws order, crops and flips; else dataset order, whole images.
      preprocess, size: the transform (detrec.train.registry) whose draws and inputs the
        pipeline needs, and the output size.
      batch_size, span: rows per batch; this worker's [start, end) of each epoch's order.
      stream_steps: batches per epoch of the stream (the largest worker's, padded).
      num_classes: labels must be in 0..num_classes-1 (else the stream stops, naming the record).
      skip_corrupt, counter: name, count (in a `common.SkipCounter`) and stand in for a bad
        record instead of stopping.
    """

    def __init__(self, table: RecordTable, *, seed: int, first_epoch: int, training: bool, preprocess: str,
                 size: tuple[int, int], batch_size: int, span: tuple[int, int], stream_steps: int,
                 with_boxes: bool, max_boxes: int, with_keys: bool, num_classes: int, skip_corrupt: bool = False,
                 counter: common.SkipCounter | None = None, min_object_covered: float = 0.0) -> None:
        if span[1] <= span[0]:
            raise ValueError(f"a worker with no records (positions {span[0]}..{span[1]})")
        self.table, self.seed, self.first_epoch = table, seed, first_epoch
        self.training, self.preprocess, self.size = training, preprocess, size
        self.batch_size, self.span, self.stream_steps = batch_size, span, stream_steps
        self.with_boxes, self.max_boxes, self.with_keys = with_boxes, max_boxes, with_keys
        self.num_classes, self.skip_corrupt, self.counter = num_classes, skip_corrupt, counter
        self.min_object_covered = min_object_covered
        self._skipped_in: set[tuple[int, int]] = set()  # (epoch, shard) already counted as a shard
        self.transform = registry.transform(preprocess)
        self.names = ["encoded", "label", *self.transform.dali_inputs(training)]
        if with_boxes:
            self.names += ["boxes", "box_labels"]
        if with_keys:
            self.names.append("keys")
        self._orders: dict[int, np.ndarray] = {}
        self._pending: dict[int, tuple[dict, set]] = {}
        self._lock = threading.Lock()

    def epoch_step(self, batch: int) -> tuple[int, int]:
        """(epoch, step) of the stream's batch number `batch`."""
        return self.first_epoch + batch // self.stream_steps, batch % self.stream_steps

    def records(self, batch: int) -> tuple[int, np.ndarray]:
        """(epoch, record numbers of the batch's rows)."""
        epoch, step = self.epoch_step(batch)
        start, end = self.span
        positions = np.minimum(start + step * self.batch_size + np.arange(self.batch_size), end - 1)
        if not self.training:
            return epoch, positions
        order = self._orders.get(epoch)
        if order is None:
            order = draws.epoch_order(self.seed, epoch, len(self.table))
            self._orders = {e: o for e, o in self._orders.items() if e == epoch - 1}  # the one in flight
            self._orders[epoch] = order
        return epoch, order[positions]

    def _row(self, record: int) -> tuple[dict | None, str]:
        """(the record's features, "") or (None, why no model can train on it)."""
        try:
            row = _parse(self.table.read(record), self.with_boxes, self.with_keys)
        except ValueError as exc:
            return None, str(exc)
        if not 0 <= row["label"] < self.num_classes:
            return None, (f"label {row['label']} is outside 0..{self.num_classes - 1} "
                          f"(dataset_info.json lists {self.num_classes} classes)")
        return row, ""

    def _skip(self, epoch: int, record: int, why: str) -> None:
        """Name and count a bad record under skip_corrupt, as tf.data does (each pass over it)."""
        path, number, offset = self.table.where(record)
        print(f"detrec: skipping offset {offset}, record {number}: {why} of shard {path}", file=sys.stderr,
              flush=True)
        if self.counter is not None:
            key = (epoch, int(self.table.shard[record]))
            new_shard = key not in self._skipped_in
            self._skipped_in.add(key)
            self.counter.add_host(1, int(new_shard))

    def _stand_in(self, epoch: int, records: np.ndarray, after: int) -> tuple[int, dict]:
        """The first good record of this worker's span after stream position `after` (wrapping):
        what a batch whose rows are all bad holds instead."""
        start, end = self.span
        order = self._orders.get(epoch) if self.training else None
        for i in range(end - start):
            position = start + (after + 1 - start + i) % (end - start)
            record = int(order[position]) if order is not None else position
            if record in records:
                continue  # already found bad in this batch
            row, why = self._row(record)
            if row is not None:
                return record, row
            self._skip(epoch, record, why)
        raise common.CorruptShardError(os.path.dirname(self.table.paths[0]),
                                      "no readable record left in this worker's part of the split")

    def batch(self, batch: int) -> dict[str, np.ndarray]:
        """Every part of stream batch `batch` (a pure function of the arguments and `batch`)."""
        epoch, records = self.records(batch)
        rows: list[dict | None] = []
        for record in records:
            row, why = self._row(int(record))
            if row is None:
                if not self.skip_corrupt:
                    raise self.table.error(int(record), why)
                self._skip(epoch, int(record), why)
            rows.append(row)
        if any(row is None for row in rows):  # only under skip_corrupt
            good = [(record, row) for record, row in zip(records, rows) if row is not None]
            if not good:
                _, step = self.epoch_step(batch)
                last = min(self.span[0] + (step + 1) * self.batch_size, self.span[1]) - 1
                good = [self._stand_in(epoch, records, last)]
            records = np.array([record if row is not None else good[0][0] for record, row in zip(records, rows)])
            rows = [row if row is not None else good[0][1] for row in rows]
        encoded = [row["encoded"] for row in rows]
        parts = {"encoded": (np.frombuffer(b"".join(encoded), np.uint8), np.array([len(e) for e in encoded])),
                 "label": np.array([row["label"] for row in rows], np.int64)}
        if "window" in self.names or self.with_boxes:
            hw = np.array([jpeg_hw(e) for e in encoded], np.int64).reshape(-1, 2)
            cover = None
            if self.training and self.min_object_covered:
                cover = (np.array([largest_box_of(row["boxes"], row["box_labels"], row["label"]) for row in rows],
                                  np.float32).reshape(-1, 4), self.min_object_covered)
            window, flip = self.transform.dali_draws(self.seed, epoch, records, hw, self.size, self.training, cover)
        if "window" in self.names:
            parts["window"] = window
        if "flip" in self.names:
            parts["flip"] = flip
        if self.with_boxes:
            boxes = np.zeros((len(rows), self.max_boxes, 4), np.float32)
            labels = np.zeros((len(rows), self.max_boxes), np.int64)
            for i, row in enumerate(rows):
                kept = row["boxes"][:self.max_boxes]
                boxes[i, :len(kept)] = map_boxes(kept, hw[i], window[i], flip[i])
                labels[i, :len(kept)] = row["box_labels"][:self.max_boxes]
            parts["boxes"], parts["box_labels"] = boxes, labels
        if self.with_keys:
            parts["keys"] = np.frombuffer(b"".join(row["key"] for row in rows), np.uint8).reshape(-1, 64)
        return parts

    def part(self, batch: int, name: str):
        """`name`'s part of stream batch `batch`, built once for all the pipeline's inputs.

        Kept until every input took its part, or until _KEPT newer batches were built (an
        iterator dropped half-way leaves parts nobody takes; a batch built again is the same).
        """
        with self._lock:
            entry = self._pending.get(batch)
            if entry is None or name not in entry[1]:
                entry = self._pending[batch] = (self.batch(batch), set(self.names))
                while len(self._pending) > _KEPT:
                    del self._pending[next(iter(self._pending))]
            parts, waiting = entry
            waiting.discard(name)
            if not waiting:
                del self._pending[batch]
        return parts[name]

    def inputs(self, device: str | None) -> dict:
        """{external_source name: Input} for DALIDatasetWithInputs, placed on `device` (a GPU)."""
        from nvidia.dali.plugin.tf import experimental

        specs = {"label": (tf.int64, [self.batch_size]), "window": (tf.int32, [self.batch_size, 4]),
                 "flip": (tf.int32, [self.batch_size]), "keys": (tf.uint8, [self.batch_size, 64]),
                 "boxes": (tf.float32, [self.batch_size, self.max_boxes, 4]),
                 "box_labels": (tf.int64, [self.batch_size, self.max_boxes])}
        out = {}
        with tf.device("/cpu:0"):  # Python feeds run on the host; copied below for a GPU pipeline
            for name in self.names:
                batches = tf.data.Dataset.range(_RUNS)
                if name == "encoded":
                    ds = batches.map(common.plain(lambda b: tf.numpy_function(
                        lambda i: self.part(int(i), "encoded"), [b], (tf.uint8, tf.int64)))).prefetch(1)
                    # One batch's JPEGs as rows, then one sample each: per-sample mode.
                    ds = ds.map(common.plain(lambda flat, lengths: tf.RaggedTensor.from_row_lengths(
                        tf.ensure_shape(flat, [None]), tf.ensure_shape(lengths, [self.batch_size])))).unbatch()
                    ds = ds.map(common.plain(lambda row: tf.ensure_shape(tf.convert_to_tensor(row), [None])))
                else:
                    dtype, shape = specs[name]
                    ds = batches.map(common.plain(lambda b, name=name, dtype=dtype, shape=shape: tf.ensure_shape(
                        tf.numpy_function(lambda i: self.part(int(i), name), [b], dtype), shape))).prefetch(1)
                if device is not None:
                    ds = ds.apply(tf.data.experimental.copy_to_device(device))
                out[name] = experimental.Input(ds, batch=name != "encoded")
        return out


def stream_steps(sizes: list[int], batch_size: int) -> int:
    """Batches per epoch of every worker's stream: the largest worker's, rounded up."""
    return math.ceil(max(sizes) / batch_size)
