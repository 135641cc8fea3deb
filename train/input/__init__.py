"""Streaming input: detrec shards -> batches of (images, labels), tf.data on CPU or DALI on GPU.

The contract (the same for both decoders; the trainer, benchmarks and tests rely on it)::

    make_dataset(data_dir, split, *, batch_size, image_size, training,
                 decoder="auto", preprocess="inception", seed=None,
                 num_workers=1, worker_index=0, repeat=False,
                 skip_corrupt=False, counter=None,
                 with_boxes=False, with_keys=False, max_boxes=MAX_BOXES, dtype=None,
                 shuffle_buffer=SHUFFLE_BUFFER, device_id=None, dali=DaliTuning(), epoch=0)
        -> tf.data.Dataset of (images, labels[, boxes, box_labels][, keys])

    epoch_plan(...) / take_epoch(iterator, plan)   one worker's epoch, for both decoders
    dataset_fn(...) / input_options(decoder)      tf.distribute.distribute_datasets_from_function
    streams.replica_stream(...) / EpochStream     DALI under any strategy, built once per run
    check_framing / shard_errors() / CorruptShardError / SkipCounter   corruption, see below

* images: [B, H, W, 3] of `output_dtype(preprocess, dtype)`; `image_size` is an int or (H, W),
  each side in 1..MAX_IMAGE_SIZE.
  - preprocess="inception": pixels scaled to [-1, 1] (x / 127.5 - 1). Training takes a
    random-resized crop (decoding only the crop window) and a random flip; evaluation
    decodes the whole image and resizes it to (H, W). Default dtype float32, or float16 when
    the Keras policy is mixed_float16. Both decoders draw the crop window from the same
    ranges (area 8-100%, aspect ratio 3/4..4/3, 10 attempts) but not the same way: the DALI
    line uses DALI's `random_crop_generator` algorithm (ratio log-uniform, fallback: the
    whole image clamped to the ratio range), computed in numpy (`draws.crop_windows`);
    tf.data (`augment.random_window`, TensorFlow's fused op) draws it uniformly and falls
    back to the whole image. Kept so on purpose (see there).
  - preprocess="seed": the original article's transform, identical in training and
    evaluation: resize_with_crop_or_pad to (H, W), cast float16, per_image_standardization
    (zero mean, unit variance per image). Default dtype float16, as the article's net saw it.
  - pixels are the JPEG's stored pixels: EXIF orientation is ignored by both decoders, as
    records are stored upright (detrec.core.images). A GPU decodes within a grey level of
    the CPU (train/input/dali.py states the tolerance).
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
  (training reshuffles the records every epoch), so `take_epoch` can be called again
  on the same iterator and each call sees every example of the epoch once.
  False stops after one epoch; this only applies to tf.data - a DALIDataset is always
  endless, so trainers should pass repeat=True and count steps with `epoch_plan`.
* Order and resume: `seed` fixes the order and the augmentation (None: fresh randomness).
  tf.data reads one epoch per pipeline and the caller seeds each (the trainer:
  `epoch_seed(seed, e)`). A DALI stream is endless and its epoch e (from `epoch` on) is a
  pure function of (seed, e, position): the order is a permutation of the records drawn
  from (seed, e), the crop and flip of each record from (seed, e, record)
  (train/input/draws.py, fed to DALI by train/input/dali_feed.py), so a stream built at
  epoch e and read s batches in gives exactly the batches of any stream of the same seed
  at that point, on every worker: resume is exact on both lines.
* Workers: `num_workers`/`worker_index` give disjoint parts that together cover the split.
  tf.data splits shard *files* (every k-th file; when there are fewer files than workers, every
  worker reads all files and keeps every k-th record); DALI splits records: worker i of k
  reads positions [N*i//k, N*(i+1)//k) of each epoch's order of the N records.
  `dataset_fn` + `input_options` plug this into `strategy.distribute_datasets_from_function`
  (tf.data under any strategy; DALI on GPUs only under MirroredStrategy, the only one that
  implements per-replica input). `streams.replica_stream` runs DALI under every strategy,
  MultiWorkerMirroredStrategy included: one pipeline per local replica, read epoch after
  epoch; the trainer uses it.
* Corruption: before either line reads a record, every shard's record headers are walked
  (`common.shard_framing`, cached per file version): a length that runs past the end of the
  file (a crafted 2^40 with a valid CRC used to segfault TensorFlow's reader), a bad length
  CRC, a truncated file, a missing or non-regular file raises `CorruptShardError` naming the
  file and the offset of the bad record, while the pipeline is built. Every shard's readable
  record count is then checked against dataset_info.json while reading. A corrupt or
  truncated shard stops iteration with a TF error whose message names the file; inside
  `with shard_errors():` it is raised as `CorruptShardError` (a UserError: one line from the
  CLI), as are a record that is no tf.Example and an image that does not decode (both lines).
  Every record's label is checked against the split's classes (0..K where dataset_info.json
  lists K+1), and its image and label keys must be there: a bad one stops either line with
  one line naming the shard and the record's number in it (`detrec inspect --verify` finds
  them too). Inside a pipeline these errors name their shard by a number, never by its path
  (`common.tagged`: a path may hold any character), and shard_errors() puts the path back.
  skip_corrupt=True goes on instead, prints a line naming the shard and adds to `counter` (a
  SkipCounter: records and shards skipped): tf.data reads the sound records before a bad
  header or CRC and drops the rest of that shard, a record that is no tf.Example costs its
  parse batch (up to 64 records), a record with a bad label or without its label or image
  costs that record (named and counted), an image that does not decode costs its example
  (not counted: TensorFlow gives no count there). DALI reads without CRCs, so it also checks every
  shard's size and .idx against dataset_info.json and the .idx against the record headers
  before it starts (reading each .idx once per loaded split, `SplitShards.checked`), and
  leaves a bad shard out whole; flipped bits inside a record are only caught by the tf.data
  path (or `detrec inspect --verify`). DALI's feed skips a record with a bad label or
  without its label or image by giving its row another good record (batches have a fixed
  size; `dali_feed`), named and counted; an image that does not decode stops DALI (one line,
  exit 2).

The shard list always comes from dataset_info.json (never a glob), and records are parsed
only by the schema's keys: tf.data with `detrec.core.schema.parse_spec()`, DALI's feed with
protobuf's own parser (`detrec.core.example_proto`).

Layout: `common` (shard list, worker shares, decoder choice, errors; what both lines use),
`config` (`InputConfig` - the keyword arguments above as one validated value - and
`DaliTuning`), `tfdata` (the tf.data line) and `dali` (the DALI line, fed by `dali_feed`
with the draws of `draws`), which import `common` and never each other; this module
chooses between them; `streams` keeps DALI pipelines for a whole run and feeds them to any
strategy. The calls above take a folder and read its dataset_info.json; code that builds
many pipelines from one dataset (the trainer) loads it once, takes `split_shards(info,
data_dir, split)` and calls `build_dataset`, `build_dataset_fn`, `plan_epoch` or
`streams.replica_stream` with that and an `InputConfig`.
"""

from __future__ import annotations

import math
from typing import Callable

import tensorflow as tf

from detrec.core import dataset_info
import detrec.train.input.dali as dali
import detrec.train.input.tfdata as tfdata
from detrec.train.input.common import (DECODERS, MAX_BOXES, MAX_IMAGE_SIZE, PREPROCESS, SHUFFLE_BUFFER,
                                       CorruptShardError, EpochPlan, Shard, SkipCounter, SplitShards, as_size,
                                       check_framing, check_workers, dali_available, gpu_visible, key_strings, output_dtype,
                                       resolve_decoder, split_shards, take_epoch)
from detrec.train.input.config import DaliTuning, InputConfig
from detrec.train.input.streams import EpochStream
from detrec.train.input.tfdata import shard_errors

__all__ = [
    "DECODERS", "MAX_BOXES", "MAX_IMAGE_SIZE", "PREPROCESS", "SHUFFLE_BUFFER", "CorruptShardError", "DaliTuning",
    "EpochPlan", "EpochStream", "InputConfig",
    "Shard", "SkipCounter", "SplitShards", "as_size", "build_dataset", "build_dataset_fn", "check_framing",
    "dali_available",
    "dataset_fn", "epoch_plan", "gpu_visible", "input_options", "key_strings", "make_dataset", "output_dtype",
    "plan_epoch", "resolve_decoder", "shard_errors", "split_shards", "take_epoch",
]


# --- from a data folder -------------------------------------------------------------------
def make_dataset(data_dir: str, split: str, *, batch_size: int, image_size: int | tuple[int, int],
                 training: bool, decoder: str = "auto", preprocess: str = "inception",
                 seed: int | None = None, num_workers: int = 1, worker_index: int = 0,
                 repeat: bool = False, skip_corrupt: bool = False, counter: SkipCounter | None = None,
                 with_boxes: bool = False, with_keys: bool = False, max_boxes: int = MAX_BOXES,
                 dtype: tf.DType | str | None = None, shuffle_buffer: int = SHUFFLE_BUFFER,
                 device_id: int | None = None, dali: DaliTuning = DaliTuning(), epoch: int = 0) -> tf.data.Dataset:
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
      shuffle_buffer: records in the training shuffle buffer (tf.data; DALI draws a whole
        permutation of the split every epoch and ignores it).
      device_id: DALI's GPU (None: the first visible GPU, CPU-only DALI when there is none).
      dali: DALI's threads and hardware-decoder settings (`DaliTuning`).
      epoch: the epoch a DALI stream starts at (its epochs' draws depend on seed and epoch
        only); tf.data ignores it.

    Raises:
      ValueError: a bad argument.
      UserError: not a finished dataset, no such split, or (DALI) a shard that fails its
        checks (`CorruptShardError`).
    """
    config = InputConfig(batch_size=batch_size, image_size=image_size, training=training, decoder=decoder,
                         preprocess=preprocess, seed=seed, num_workers=num_workers, worker_index=worker_index,
                         repeat=repeat, skip_corrupt=skip_corrupt, counter=counter, with_boxes=with_boxes,
                         with_keys=with_keys, max_boxes=max_boxes, dtype=dtype, shuffle_buffer=shuffle_buffer,
                         device_id=device_id, dali=dali, epoch=epoch)
    resolve_decoder(decoder)  # a bad decoder before a bad folder, as always
    return build_dataset(split_shards(dataset_info.load(data_dir), data_dir, split), config)


def epoch_plan(data_dir: str, split: str, *, batch_size: int, training: bool, decoder: str = "auto",
               num_workers: int = 1, worker_index: int = 0, skip_corrupt: bool = False) -> EpochPlan:
    """Steps per epoch and real rows per batch for one worker, as make_dataset will deliver.

    See `plan_epoch`, which this calls with `data_dir`'s dataset_info.
    """
    check_workers(num_workers, worker_index)
    decoder = resolve_decoder(decoder)
    return plan_epoch(split_shards(dataset_info.load(data_dir), data_dir, split), batch_size=batch_size,
                      training=training, decoder=decoder, num_workers=num_workers, worker_index=worker_index,
                      skip_corrupt=skip_corrupt)


def dataset_fn(data_dir: str, split: str, *, global_batch_size: int, decoder: str = "auto",
               **kwargs) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """A function for `strategy.distribute_datasets_from_function(fn, input_options(decoder))`.

    `kwargs` are make_dataset's other keyword arguments; see `build_dataset_fn`.
    """
    config = InputConfig(batch_size=global_batch_size, decoder=resolve_decoder(decoder), **kwargs)
    return build_dataset_fn(split_shards(dataset_info.load(data_dir), data_dir, split), config)


# --- from a loaded split ------------------------------------------------------------------
def build_dataset(split: SplitShards, config: InputConfig) -> tf.data.Dataset:
    """`make_dataset` of an already loaded split: the line `config.decoder` resolves to."""
    if resolve_decoder(config.decoder) == "dali":
        return dali.make_dataset(split, config)
    return tfdata.make_dataset(split, config)


def plan_epoch(split: SplitShards, *, batch_size: int, training: bool, decoder: str = "auto",
               num_workers: int = 1, worker_index: int = 0, skip_corrupt: bool = False) -> EpochPlan:
    """Steps per epoch and real rows per batch for one worker of `split`.

    Training: floor(n / batch) full batches. Evaluation: ceil(n / batch) batches for tf.data;
    DALI pads every worker to the batches of the largest worker (its `pad_last_batch`), and
    in training the batches after the full ones are the plan's `padding_steps`.
    With skip_corrupt, DALI's plan leaves out the shards it will skip, but tf.data only learns
    what is unreadable while reading: evaluate with repeat=False there, so that take_epoch
    stops at the end of the (shorter) epoch instead of running into the next one.
    """
    check_workers(num_workers, worker_index)
    if resolve_decoder(decoder) == "dali":
        sizes = dali.worker_sizes(split, num_workers, skip_corrupt)
        n = sizes[worker_index]
        stream_steps = math.ceil(max(sizes) / batch_size)
        steps = n // batch_size if training else stream_steps
        return EpochPlan(batch_size, n, steps, padding_steps=stream_steps - steps)
    n = tfdata.worker_examples(split, num_workers, worker_index)
    steps = n // batch_size if training else math.ceil(n / batch_size)
    return EpochPlan(batch_size, n, steps)


def build_dataset_fn(split: SplitShards,
                     config: InputConfig) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """`dataset_fn` of an already loaded split; `config.batch_size` is the global batch.

    Each input pipeline gets `global batch / replicas` per batch and its own disjoint part
    (worker_index = input_pipeline_id). With DALI on GPUs the pipelines are per replica and
    each runs on the GPU of its replica (unless `config.device_id` names one).
    """
    decoder = resolve_decoder(config.decoder)

    def fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        device_id = config.device_id
        if decoder == "dali" and device_id is None and gpu_visible():
            device_id = context.input_pipeline_id % len(tf.config.list_physical_devices("GPU"))
        return build_dataset(split, config.replace(
            batch_size=context.get_per_replica_batch_size(config.batch_size), decoder=decoder,
            num_workers=context.num_input_pipelines, worker_index=context.input_pipeline_id,
            device_id=device_id))

    return fn


def input_options(decoder: str = "auto",
                  strategy: tf.distribute.Strategy | None = None) -> tf.distribute.InputOptions:
    """InputOptions matching `dataset_fn`: DALI on GPU builds one pipeline per replica, on
    that replica's device, and must not be copied again; tf.data uses the defaults.

    Raises:
      ValueError: DALI on GPUs under MultiWorkerMirroredStrategy, which implements no
        per-replica input (TensorFlow 2.21 would raise NotImplementedError at the first
        epoch): use `streams.replica_stream` there.
    """
    if resolve_decoder(decoder) == "dali" and gpu_visible():
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise ValueError("MultiWorkerMirroredStrategy has no per-replica input for GPU-placed DALI "
                             "datasets; use detrec.train.input.streams.replica_stream")
        return tf.distribute.InputOptions(
            experimental_place_dataset_on_device=True,
            experimental_fetch_to_device=False,
            experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA,
        )
    return tf.distribute.InputOptions()
