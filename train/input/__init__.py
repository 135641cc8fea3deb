"""Streaming input: detrec shards -> batches of (images, labels), tf.data on CPU or DALI on GPU.

The contract (the same for both decoders; the trainer, benchmarks and tests rely on it)::

    make_dataset(data_dir, split, *, batch_size, image_size, training,
                 decoder="auto", preprocess="inception", seed=None,
                 num_workers=1, worker_index=0, repeat=False,
                 skip_corrupt=False, counter=None,
                 with_boxes=False, with_keys=False, max_boxes=MAX_BOXES, dtype=None,
                 shuffle_buffer=SHUFFLE_BUFFER, device_id=None, dali=DaliTuning(), epoch=0)
    make_dataset(split_shards(info, data_dir, split), config=InputConfig(...))
        -> tf.data.Dataset of (images, labels[, boxes, box_labels][, keys])

    epoch_plan(...) / take_epoch(iterator, plan)   one worker's epoch, for both decoders
    dataset_fn(...) / input_options(decoder)      tf.distribute.distribute_datasets_from_function
    streams.replica_stream(...) / EpochStream     DALI under any strategy, built once per run
    check_framing / shard_errors() / CorruptShardError / SkipCounter   corruption, see below

Each call takes either a data folder and a split name (it reads the folder's
dataset_info.json) or a split loaded once with `split_shards` (the trainer builds many
pipelines of one dataset), and its settings either as keyword arguments or as one
`InputConfig` (`config=`; keyword arguments given too replace its fields). One function
per job with two ways in, rather than a folder-taking and a split-taking twin of each
(`build_dataset`, `plan_epoch`, `build_dataset_fn` were): a twin differed from its sibling
only by the line that loads the split, so each function takes that line in and callers
keep one name per job.

* images: [B, H, W, 3] of `output_dtype(preprocess, dtype)`; `image_size` is an int or (H, W),
  each side in 1..MAX_IMAGE_SIZE. `preprocess` names a transform of
  detrec.train.registry.TRANSFORMS (one module of detrec.train.transforms holds each):
  - preprocess="inception": pixels scaled to [-1, 1] (x / 127.5 - 1). Training takes a
    random-resized crop (decoding only the crop window) and a random flip; evaluation
    decodes the whole image and resizes it to (H, W). Default dtype float32, or float16 when
    the Keras policy is mixed_float16. Both decoders draw the crop window from the same
    ranges (area 8-100%, aspect ratio 3/4..4/3, 10 attempts) but not the same way: the DALI
    line uses DALI's `random_crop_generator` algorithm (ratio log-uniform, fallback: the
    whole image clamped to the ratio range), computed in numpy (`inception.crop_windows`);
    tf.data (`inception.random_window`, TensorFlow's fused op) draws it uniformly and falls
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
  (train/input/draws.py and the transform's `dali_draws`, fed to DALI by
  train/input/dali_feed.py), so a stream built at
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

Layout: `common` (shard list, worker shares, the GPU probe, errors; what both lines use),
`config` (`InputConfig` - the keyword arguments above as one validated value - and
`DaliTuning`), `tfdata` (the tf.data line) and `dali` (the DALI line, fed by `dali_feed`
with the draws of `draws`), which import `common` and never each other; each line is one
entry of detrec.train.registry.INPUT_LINES (`decoder=`), and this module reaches them only
through it (`resolve_decoder`: "auto" takes the first line that wants this machine);
`streams` keeps DALI pipelines for a whole run and feeds them to any strategy.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from detrec.core import dataset_info
from detrec.train import registry
from detrec.train.input.common import (MAX_IMAGE_SIZE, CorruptShardError, EpochPlan, SkipCounter, SplitShards,
                                       as_size, check_framing, check_workers, dali_available, gpu_visible,
                                       key_strings, output_dtype, shard_errors, split_shards, take_epoch)
from detrec.train.input.config import DaliTuning, InputConfig
from detrec.train.registry import resolve_decoder

__all__ = [
    "MAX_IMAGE_SIZE", "CorruptShardError", "DaliTuning", "InputConfig", "SkipCounter", "SplitShards", "as_size",
    "check_framing", "dali_available", "dataset_fn", "epoch_plan", "gpu_visible", "input_options", "key_strings",
    "make_dataset", "output_dtype", "resolve_decoder", "shard_errors", "split_shards", "take_epoch",
]


def _split(data: str | SplitShards, split: str | None) -> SplitShards:
    """A loaded split as it is, or `split` of the data folder `data` (its dataset_info.json).

    Raises:
      UserError: not a finished dataset, or no such split.
    """
    if isinstance(data, SplitShards):
        if split not in (None, data.name):
            raise ValueError(f"split {split!r} given with a loaded split {data.name!r}")
        return data
    if split is None:
        raise ValueError("a data folder needs the name of a split")
    return split_shards(dataset_info.load(data), data, split)


def _config(config: InputConfig | None, settings: dict) -> InputConfig:
    return InputConfig(**settings) if config is None else config.replace(**settings)


def make_dataset(data: str | SplitShards, split: str | None = None, *, config: InputConfig | None = None,
                 **settings) -> tf.data.Dataset:
    """The input pipeline of a split; see the module docstring for the full contract.

    Args:
      data: the OUT folder of `detrec preprocess` (local or gs://), or a loaded split.
      split: with a folder, a split of its dataset_info.json ("train", "val").
      config: the settings as one `InputConfig`.
      **settings: `InputConfig`'s fields (make_dataset's keyword arguments of old):
        batch_size (for this worker: per replica under tf.distribute), image_size (int or
        (height, width)), training (random crops/flips and shuffling, full batches only),
        decoder ("auto" or a line of the registry: "cpu" tf.data, "dali"), preprocess (a
        transform of the registry: "inception" [-1, 1], "seed" the article's), seed (order and
        augmentation; None: fresh randomness), num_workers and worker_index (this worker's
        disjoint part), repeat (endless; DALI always is), skip_corrupt and counter (drop and
        count unreadable records), with_boxes, with_keys, max_boxes, dtype (None: by
        `output_dtype`), shuffle_buffer (tf.data's records held for shuffling), device_id
        (DALI's GPU; None: the first visible one, CPU-only DALI without), dali
        (`DaliTuning`), epoch (the epoch a DALI stream starts at; tf.data ignores it).

    Raises:
      ValueError: a bad argument.
      UserError: not a finished dataset, no such split, or (DALI) a shard that fails its
        checks (`CorruptShardError`).
    """
    config = _config(config, settings)
    line = registry.input_line(resolve_decoder(config.decoder))  # a bad decoder before a bad folder
    return line.make_dataset(_split(data, split), config)


def epoch_plan(data: str | SplitShards, split: str | None = None, *, batch_size: int, training: bool,
               decoder: str = registry.AUTO, num_workers: int = 1, worker_index: int = 0,
               skip_corrupt: bool = False) -> EpochPlan:
    """Steps per epoch and real rows per batch for one worker, as make_dataset will deliver.

    Training: floor(n / batch) full batches. Evaluation: ceil(n / batch) batches for tf.data;
    DALI pads every worker to the batches of the largest worker (its `pad_last_batch`), and
    in training the batches after the full ones are the plan's `padding_steps`.
    With skip_corrupt, DALI's plan leaves out the shards it will skip, but tf.data only learns
    what is unreadable while reading: evaluate with repeat=False there, so that take_epoch
    stops at the end of the (shorter) epoch instead of running into the next one.
    """
    check_workers(num_workers, worker_index)
    line = registry.input_line(resolve_decoder(decoder))
    return line.plan_epoch(_split(data, split), batch_size=batch_size, training=training, num_workers=num_workers,
                           worker_index=worker_index, skip_corrupt=skip_corrupt)


def dataset_fn(data: str | SplitShards, split: str | None = None, *, config: InputConfig | None = None,
               **settings) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """A function for `strategy.distribute_datasets_from_function(fn, input_options(decoder))`.

    Takes what `make_dataset` takes, with `batch_size` the *global* batch: each input
    pipeline gets `global batch / replicas` per batch and its own disjoint part
    (worker_index = input_pipeline_id). With DALI on GPUs the pipelines are per replica and
    each runs on the GPU of its replica (unless `device_id` names one).
    """
    config = _config(config, settings)
    decoder = resolve_decoder(config.decoder)
    line = registry.input_line(decoder)
    split = _split(data, split)

    def fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return line.make_dataset(split, config.replace(
            batch_size=context.get_per_replica_batch_size(config.batch_size), decoder=decoder,
            num_workers=context.num_input_pipelines, worker_index=context.input_pipeline_id,
            device_id=line.pipeline_device(config.device_id, context.input_pipeline_id)))

    return fn


def input_options(decoder: str = registry.AUTO,
                  strategy: tf.distribute.Strategy | None = None) -> tf.distribute.InputOptions:
    """InputOptions matching `dataset_fn`: DALI on GPU builds one pipeline per replica, on
    that replica's device, and must not be copied again; tf.data uses the defaults.

    Raises:
      ValueError: DALI on GPUs under MultiWorkerMirroredStrategy, which implements no
        per-replica input (TensorFlow 2.21 would raise NotImplementedError at the first
        epoch): use `streams.replica_stream` there.
    """
    return registry.input_line(resolve_decoder(decoder)).input_options(strategy)
