"""The DALI input line: the package's contract, with JPEG decode on the GPU (nvJPEG).

`nvidia.dali.plugin.tf.experimental.DALIDatasetWithInputs` runs a DALI pipeline over the
same shards and their `.idx` files, fed by `dali_feed.Feed`: the pipeline has no reader and
no random operator; the feed reads each record where its .idx puts it, in the order and
with the crop windows and flips of `draws` (pure functions of seed, epoch and record), so
a stream started at any epoch and step reproduces an uninterrupted one exactly (DALI's
reader shuffle and random operators keep state no API restores). The JPEG bytes enter the
pipeline on the host, as a reader's would. One pipeline definition serves both devices: decoders get device="mixed"
(host parses, GPU decodes; the A100/H100 hardware JPEG decoder where present) when a GPU is
used and "cpu" otherwise (`device_id=None`, how CI tests this code); every later operator
follows its input's device. Callers use detrec.train.input.make_dataset(decoder="dali"|"auto").

What differs from tf.data, by necessity:
* A DALIDataset is endless and, on a GPU, must be the last dataset (TensorFlow has no GPU
  kernels for map/take/...). Every worker's epoch is therefore padded to the same number of
  batches, ceil(largest worker's share / batch), with repeats of its last example
  (`pad_last_batch`): evaluation cuts the repeats off (`take_epoch`), training reads past
  the partial batch (`EpochPlan.padding_steps`), so one pipeline serves every epoch of a run
  (`streams.EpochStream`: nvJPEG starts once).
* Workers split records, not files: worker i of k reads positions [N*i//k, N*(i+1)//k) of
  each epoch's order of the split's N records (evaluation: dataset_info order; training:
  `draws.epoch_order`, the same on every worker).
* The feed does not check TFRecord CRCs (DALI's reader did not either), so shards are
  checked against dataset_info.json (size) and their .idx (count, extent), and the .idx
  against the file's record headers (each length and its CRC, `common.shard_framing`),
  before the pipeline starts: once per shard and split (`SplitShards.checked`), however
  many replicas, plans and validation passes read it.

Same pixels as tf.data: every decoder is told `adjust_orientation=False` (records are stored
upright, see detrec.core.images; TensorFlow ignores EXIF, and so must DALI or a tagged record
would come out turned) and `jpeg_fancy_upsampling=True` (libjpeg's chroma upsampling, which
TensorFlow uses; nvJPEG's default is plain replication). DALI's CPU decoder is libjpeg-turbo
with the accurate integer IDCT, as `augment.DCT_METHOD` asks of TensorFlow: pixels agree to a
rounding error. nvJPEG's IDCT is not bit-identical: a GPU parity test allows a mean absolute
difference of at most 1.0 grey level per image (DALI's own criterion for its mixed decoder
with fancy upsampling against its CPU decoder) and a 99.9th percentile of 4
(tests/test_gpu_dali.py, pipelines/dali_bench.py --parity). Both check ROI decodes too:
whether nvJPEG keeps fancy upsampling when it decodes only a window (training's
`image_slice`) has not been seen on a GPU yet.

Host threads: each pipeline gets this process's cores divided among its local GPUs (one
pipeline each), at most MAX_THREADS; `DaliTuning` overrides it and sets the hardware
decoder's share and preallocation.
"""

from __future__ import annotations

import math
import os
import re
import sys

import numpy as np
import tensorflow as tf

from detrec.core import fs, schema, tfrecord
from detrec.core.errors import UserError
from detrec.train import registry
import detrec.train.input.common as common
import detrec.train.input.dali_feed as dali_feed
import detrec.train.input.draws as draws
from detrec.train.input.common import CorruptShardError, EpochPlan, Shard, SkipCounter, SplitShards
from detrec.train.input.config import DaliTuning, InputConfig

_DALI_DTYPES = {tf.float32: "FLOAT", tf.float16: "FLOAT16"}
# The GPU parity tolerance (module docstring), in grey levels per image: nvJPEG's IDCT is not
# libjpeg's, bit for bit. tests/test_gpu_dali.py and pipelines/dali_bench.py hold GPUs to it.
GPU_PARITY = {"mean_abs": 1.0, "p999_abs": 4.0}
# Per pipeline: with the hardware decoder doing most JPEGs, more threads only contend.
MAX_THREADS = 8


# --- this line's entry in detrec.train.registry.INPUT_LINES (`InputLine`) -----------------
PORTABLE = False  # a DALI pipeline runs in this process, on its GPU: it cannot be serialised or re-split
PER_REPLICA = True  # endless, one per replica on its GPU, kept for the run (train/input/streams.py)
# What DALI says when its decoder (or the shape peek before it) rejects a record's image.
_DECODE_RE = re.compile(r"operator `nvidia\.dali\.fn\.(?:peek_image_shape|decoders\.image(?:_slice)?)`")


def unavailable() -> str | None:
    if common.dali_available():
        return None
    return "decoder 'dali' needs nvidia-dali and its TF plugin (see the Makefile)"


def auto_picks() -> bool:
    return common.gpu_visible() and common.dali_available()


def plan_epoch(split: SplitShards, *, batch_size: int, training: bool, num_workers: int = 1,
               worker_index: int = 0, skip_corrupt: bool = False) -> EpochPlan:
    """Every worker is padded to the batches of the largest worker (`pad_last_batch`):
    evaluation walks them all, training's batches after the full ones are the plan's
    `padding_steps`. With skip_corrupt the plan leaves out the shards this line will skip."""
    sizes = worker_sizes(split, num_workers, skip_corrupt)
    n = sizes[worker_index]
    stream_steps = math.ceil(max(sizes) / batch_size)
    steps = n // batch_size if training else stream_steps
    return EpochPlan(batch_size, n, steps, padding_steps=stream_steps - steps)


def input_options(strategy: tf.distribute.Strategy | None = None) -> tf.distribute.InputOptions:
    """On GPUs one pipeline per replica, on that replica's device, never copied again.

    Raises:
      ValueError: under MultiWorkerMirroredStrategy, which implements no per-replica input
        (TensorFlow 2.21 would raise NotImplementedError at the first epoch): use
        `streams.replica_stream` there.
    """
    if not common.gpu_visible():
        return tf.distribute.InputOptions()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        raise ValueError("MultiWorkerMirroredStrategy has no per-replica input for GPU-placed DALI "
                         "datasets; use detrec.train.input.streams.replica_stream")
    return tf.distribute.InputOptions(
        experimental_place_dataset_on_device=True,
        experimental_fetch_to_device=False,
        experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA,
    )


def pipeline_device(device_id: int | None, pipeline_id: int) -> int | None:
    """The GPU of its replica (round robin over the local GPUs) unless one is asked for."""
    if device_id is None and common.gpu_visible():
        return pipeline_id % common.local_gpu_count()
    return device_id


def image_error(exc: Exception) -> UserError | None:
    if not _DECODE_RE.search(getattr(exc, "message", "") or ""):
        return None
    return UserError("DALI could not decode the image of a record, which `detrec preprocess` never "
                     f"writes; {common.BAD_RECORD_HINT} (--decoder cpu --skip-corrupt drops such records)")


# --- the pipeline -------------------------------------------------------------------------
def host_cores() -> int:
    """Cores this process may run on (its affinity mask: a container's limit, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def pipeline_threads(requested: int | None, pipelines: int, cores: int | None = None) -> int:
    """Threads for one of `pipelines` DALI pipelines sharing this process's cores.

    `requested` wins when given; otherwise the cores are divided evenly, at least 1 and at
    most MAX_THREADS each (an 8-GPU host with 64 cores: 8 per pipeline, not 8 x 8 on top of
    nvJPEG's own host work).
    """
    if requested is not None:
        return requested
    cores = host_cores() if cores is None else cores
    return max(1, min(MAX_THREADS, cores // max(1, pipelines)))


def decoder_args(gpu: bool, tuning: DaliTuning = DaliTuning()) -> dict:
    """Keyword arguments of every DALI image decoder here (see the module docstring)."""
    import nvidia.dali.types as types

    args = dict(output_type=types.RGB, adjust_orientation=False, jpeg_fancy_upsampling=True)
    if gpu:
        width, height = tuning.preallocate
        args.update(hw_decoder_load=tuning.hw_decoder_load, preallocate_width_hint=width,
                    preallocate_height_hint=height)
    return args


def _index_problem(path: str, expected: int, num_bytes: int) -> tuple[str | None, np.ndarray]:
    """(why DALI cannot read `path` as dataset_info.json describes it, or None; its .idx spans
    as an int64 [records, 2] array of (offset, framed size)).

    The feed reads each record where the .idx puts it, without CRCs, so the index must agree
    with the file's real headers (`common.shard_framing` walks them): a shard damaged while
    its .idx stayed intact is caught here too.
    """
    none = np.zeros((0, 2), np.int64)
    if not fs.exists(path):
        return "the file is missing", none
    size = fs.size(path)
    if size != num_bytes:
        return f"it is {size} bytes, dataset_info.json says {num_bytes} (truncated or replaced)", none
    index = path + schema.INDEX_SUFFIX
    if not fs.exists(index):
        return f"{index} is missing (DALI needs it; `detrec preprocess` writes it)", none
    try:
        spans = tfrecord.parse_index(fs.read_bytes(index).decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return f"{index} is not a DALI index (lines of 'offset size')", none
    if len(spans) != expected:
        return f"{index} lists {len(spans)} records, dataset_info.json says {expected}", none
    end = 0
    for offset, span in spans:
        if offset != end:
            return f"{index} has a gap or overlap at offset {offset}", none
        end = offset + span
    if end != size:
        return f"{index} covers {end} of its {size} bytes", none
    framing = common.shard_framing(path)
    if framing.problem:
        return framing.problem, none
    if framing.records != len(spans) or framing.spans_digest != common.spans_digest(spans):
        return f"{index} does not match the record headers in the file (rebuilt or edited apart)", none
    return None, np.array(spans, np.int64).reshape(-1, 2)


def _checked(split: SplitShards, shard: Shard) -> tuple[str | None, np.ndarray]:
    """`_index_problem` of a shard of `split`, worked out once per split: every plan, replica
    and validation pass of a run reads each .idx once (1024 shards on 8 GPUs read them
    10,000 times at start-up, each a request to gs://, before they were kept)."""
    result = split.checked.get(shard.path)
    if result is None:
        result = split.checked[shard.path] = _index_problem(shard.path, shard.num_examples, shard.num_bytes)
    return result


def usable_shards(split: SplitShards, skip_corrupt: bool = False, counter: SkipCounter | None = None,
                  quiet: bool = False) -> list[tuple[Shard, np.ndarray]]:
    """(shard, its .idx spans: [(offset, framed size)] of its records) for each shard of the
    split that DALI can read.

    A bad shard raises CorruptShardError, or with skip_corrupt is left out (named on stderr
    and counted in `counter` unless `quiet`).
    """
    usable = []
    for shard in split.shards:
        problem, spans = _checked(split, shard)
        if problem is None:
            usable.append((shard, spans))
        elif not skip_corrupt:
            raise common.corrupt_shard(shard, problem)
        elif not quiet:
            print(f"detrec: skipping corrupt shard {shard.path}: {problem}", file=sys.stderr, flush=True)
            if counter is not None:
                counter.add(shard.num_examples)
    if not usable:
        raise CorruptShardError(split.data_dir, f"no readable shard left in split {split.name!r}")
    return usable


def worker_sizes(split: SplitShards, num_workers: int, skip_corrupt: bool = False) -> list[int]:
    """Records each DALI reader shard holds: DALI's split [N*i//k, N*(i+1)//k)."""
    total = sum(len(spans) for _, spans in usable_shards(split, skip_corrupt, quiet=True))
    return [total * (i + 1) // num_workers - total * i // num_workers for i in range(num_workers)]


def _graph(*, size, training, preprocess, dtype, with_boxes, with_keys, gpu, tuning):
    """The pipeline body (called inside a DALI Pipeline); returns the output DataNodes.

    Every input is an `fn.external_source` that `dali_feed.Feed.inputs` feeds by name: the
    JPEG bytes one sample each, the rest as batches (labels, and as the transform needs: its
    window [y, x, h, w] and flip, the mapped boxes, the keys). No operator draws a random
    number: the feed's draws are the pipeline's only randomness. The transform's own
    operators come from its `dali_graph`.
    """
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    def feed(name, dtype_, ndim, batch=True):
        return fn.external_source(name=name, dtype=dtype_, ndim=ndim, batch=batch, device="cpu")

    decode_device = "mixed" if gpu else "cpu"
    decode_args = decoder_args(gpu, tuning)

    def decode(encoded, window=None):
        if window is None:
            return fn.decoders.image(encoded, device=decode_device, **decode_args)
        return fn.decoders.image_slice(encoded, window[0:2], window[2:4], axes=[0, 1], device=decode_device,
                                       **decode_args)

    encoded = feed("encoded", types.UINT8, 1, batch=False)
    images = registry.transform(preprocess).dali_graph(encoded, feed=feed, decode=decode, size=size,
                                                       training=training,
                                                       out_type=getattr(types, _DALI_DTYPES[dtype]))
    outputs = [images, feed("label", types.INT64, 0)]
    if with_boxes:
        outputs += [feed("boxes", types.FLOAT, 2), feed("box_labels", types.INT64, 1)]
    if with_keys:
        outputs.append(feed("keys", types.UINT8, 1))
    if gpu:
        outputs = [o if o is images else o.gpu() for o in outputs]
    return tuple(outputs)


def make_feed(split: SplitShards, config: InputConfig) -> dali_feed.Feed:
    """The feed of one worker's pipeline (`dali_feed.Feed`): what it reads, in which order,
    with which draws, from `config.seed` (drawn now when None) and `config.epoch` on."""
    c = config
    table = dali_feed.RecordTable([(shard.path, spans) for shard, spans in
                                   usable_shards(split, c.skip_corrupt, c.counter)])
    n = len(table)
    sizes = [end - start for start, end in (draws.worker_span(n, c.num_workers, i) for i in range(c.num_workers))]
    seed = c.seed if c.seed is not None else int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 1)
    span = draws.worker_span(n, c.num_workers, c.worker_index)
    return dali_feed.Feed(table, seed=seed, first_epoch=c.epoch, training=c.training, preprocess=c.preprocess,
                          size=c.size, batch_size=c.batch_size, span=span,
                          stream_steps=dali_feed.stream_steps(sizes, c.batch_size), with_boxes=c.with_boxes,
                          max_boxes=c.max_boxes, with_keys=c.with_keys, num_classes=split.num_classes,
                          skip_corrupt=c.skip_corrupt, counter=c.counter,
                          min_object_covered=c.min_object_covered)


def make_dataset(split: SplitShards, config: InputConfig) -> tf.data.Dataset:
    """A DALIDataset of `split` for one worker, with the package's `make_dataset` contract."""
    from nvidia.dali import pipeline_def
    from nvidia.dali.plugin.tf.experimental import DALIDatasetWithInputs

    c = config
    dtype = c.images_dtype()
    if dtype not in _DALI_DTYPES:
        raise ValueError(f"DALI cannot produce {dtype.name} images; use float32 or float16")
    gpus = common.local_gpu_count()
    device_id = c.device_id
    if device_id is None and gpus:
        device_id = 0
    if device_id is not None and not gpus:
        raise ValueError(f"device_id={device_id} but TensorFlow sees no GPU")
    feed = make_feed(split, c)
    threads = pipeline_threads(c.dali.threads, pipelines=max(1, gpus))
    size, batch_size = c.size, c.batch_size
    pipe = pipeline_def(_graph, batch_size=batch_size, num_threads=threads, device_id=device_id, seed=0)(
        size=size, training=c.training, preprocess=c.preprocess, dtype=dtype, with_boxes=c.with_boxes,
        with_keys=c.with_keys, gpu=device_id is not None, tuning=c.dali)
    shapes = [(batch_size, size[0], size[1], 3), (batch_size,)]
    dtypes = [dtype, tf.int64]
    if c.with_boxes:
        shapes += [(batch_size, c.max_boxes, 4), (batch_size, c.max_boxes)]
        dtypes += [tf.float32, tf.int64]
    if c.with_keys:
        shapes.append((batch_size, 64))
        dtypes.append(tf.uint8)
    device = "/cpu:0" if device_id is None else f"/gpu:{device_id}"
    inputs = feed.inputs(None if device_id is None else device)
    with tf.device(device):
        return DALIDatasetWithInputs(pipeline=pipe, input_datasets=inputs, batch_size=batch_size,
                                     num_threads=threads, device_id=device_id, output_shapes=tuple(shapes),
                                     output_dtypes=tuple(dtypes))
