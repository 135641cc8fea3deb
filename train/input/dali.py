"""The DALI input line: the package's contract, with JPEG decode on the GPU (nvJPEG).

`nvidia.dali.plugin.tf.DALIDataset` runs a DALI pipeline over the same shards and their
`.idx` files. One pipeline definition serves both devices: decoders get device="mixed"
(host parses, GPU decodes; the A100/H100 hardware JPEG decoder where present) when a GPU is
used and "cpu" otherwise (`device_id=None`, how CI tests this code); every later operator
follows its input's device. Callers use detrec.train.input.make_dataset(decoder="dali"|"auto").

What differs from tf.data, by necessity:
* A DALIDataset is endless and, on a GPU, must be the last dataset (TensorFlow has no GPU
  kernels for map/take/...). Every worker's epoch is therefore padded to the same number of
  batches, ceil(largest worker's share / batch), with repeats of its last example
  (`pad_last_batch`): evaluation cuts the repeats off (`take_epoch`), training reads past
  the partial batch (`EpochPlan.padding_steps`), so one pipeline serves every epoch of a run
  (`streams.EpochStream`: nvJPEG starts once, the shuffle buffer fills once).
* Workers split records, not files (`shard_id`/`num_shards`): worker i of k reads records
  [N*i//k, N*(i+1)//k) of the split in dataset_info order (training: of that epoch's shard
  order, the same on every worker).
* DALI does not check TFRecord CRCs, so shards are checked against dataset_info.json (size)
  and their .idx (count, extent), and the .idx against the file's record headers (each
  length and its CRC, `common.shard_framing`), before the pipeline starts.

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

import os
import sys

import numpy as np
import tensorflow as tf

from detrec.core import schema, tfrecord
from detrec.train import augment
import detrec.train.input.common as common
from detrec.train.input.common import CorruptShardError, SkipCounter, SplitShards
from detrec.train.input.config import DaliTuning, InputConfig

_DALI_DTYPES = {tf.float32: "FLOAT", tf.float16: "FLOAT16"}
# The GPU parity tolerance (module docstring), in grey levels per image: nvJPEG's IDCT is not
# libjpeg's, bit for bit. tests/test_gpu_dali.py and pipelines/dali_bench.py hold GPUs to it.
GPU_PARITY = {"mean_abs": 1.0, "p999_abs": 4.0}
# Per pipeline: with the hardware decoder doing most JPEGs, more threads only contend.
MAX_THREADS = 8


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


def _index_problem(path: str, expected: int, num_bytes: int) -> str | None:
    """Why DALI cannot read `path` as dataset_info.json describes it, or None.

    DALI's reader takes each record's place from the .idx and then trusts the record's own
    length field, so the index must agree with the file's real headers (`common.shard_framing`
    walks them): a shard damaged while its .idx stayed intact is caught here too.
    """
    gfile = tf.io.gfile
    if not gfile.exists(path):
        return "the file is missing"
    size = gfile.stat(path).length
    if size != num_bytes:
        return f"it is {size} bytes, dataset_info.json says {num_bytes} (truncated or replaced)"
    index = path + schema.INDEX_SUFFIX
    if not gfile.exists(index):
        return f"{index} is missing (DALI needs it; `detrec preprocess` writes it)"
    with gfile.GFile(index, "r") as f:
        text = f.read()
    try:
        spans = tfrecord.parse_index(text)
    except ValueError:
        return f"{index} is not a DALI index (lines of 'offset size')"
    if len(spans) != expected:
        return f"{index} lists {len(spans)} records, dataset_info.json says {expected}"
    end = 0
    for offset, span in spans:
        if offset != end:
            return f"{index} has a gap or overlap at offset {offset}"
        end = offset + span
    if end != size:
        return f"{index} covers {end} of its {size} bytes"
    framing = common.shard_framing(path)
    if framing.problem:
        return framing.problem
    if framing.records != len(spans) or framing.spans_digest != common.spans_digest(spans):
        return f"{index} does not match the record headers in the file (rebuilt or edited apart)"
    return None


def usable_shards(split: SplitShards, skip_corrupt: bool = False, counter: SkipCounter | None = None,
                  quiet: bool = False) -> list[tuple[str, int]]:
    """(path, num_examples) of the split's shards that DALI can read.

    A bad shard raises CorruptShardError, or with skip_corrupt is left out (named on stderr
    and counted in `counter` unless `quiet`).
    """
    usable = []
    for shard in split.shards:
        problem = _index_problem(shard.path, shard.num_examples, shard.num_bytes)
        if problem is None:
            usable.append((shard.path, shard.num_examples))
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
    total = sum(n for _, n in usable_shards(split, skip_corrupt, quiet=True))
    return [total * (i + 1) // num_workers - total * i // num_workers for i in range(num_workers)]


def _features(with_boxes: bool, with_keys: bool) -> dict:
    import nvidia.dali.tfrecord as tfrec

    features = {
        schema.ENCODED: tfrec.FixedLenFeature((), tfrec.string, ""),
        schema.CLASS_LABEL: tfrec.FixedLenFeature([1], tfrec.int64, -1),
    }
    if with_boxes:
        for key in (schema.YMIN, schema.XMIN, schema.YMAX, schema.XMAX):
            features[key] = tfrec.VarLenFeature(tfrec.float32, 0.0)
        features[schema.OBJECT_LABEL] = tfrec.VarLenFeature(tfrec.int64, 0)
    if with_keys:
        features[schema.SHA256] = tfrec.FixedLenFeature((), tfrec.string, "")
    return features


def _graph(paths, *, size, training, preprocess, dtype, with_boxes, with_keys, max_boxes, shard_id,
           num_shards, order_seed, initial_fill, gpu, tuning):
    """The pipeline body (called inside a DALI Pipeline); returns the output DataNodes."""
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types

    decode_device = "mixed" if gpu else "cpu"
    decode = decoder_args(gpu, tuning)
    height, width = size
    out_type = getattr(types, _DALI_DTYPES[dtype])
    shuffle = dict(random_shuffle=True, initial_fill=initial_fill, shuffle_after_epoch=True)
    if order_seed is not None:
        shuffle["shuffle_after_epoch_seed"] = order_seed  # the same on every worker: one global order
    record = fn.readers.tfrecord(
        path=[p for p, _ in paths],
        index_path=[p + schema.INDEX_SUFFIX for p, _ in paths],
        features=_features(with_boxes, with_keys),
        shard_id=shard_id,
        num_shards=num_shards,
        # Every worker's epoch ends on the same batch boundary (padding with repeats of its
        # last record), so epochs line up in an endless stream; evaluation keeps each
        # worker's records, training draws a new shard order every epoch.
        pad_last_batch=True,
        **(shuffle if training else dict(stick_to_shard=True)),
        name="reader",
    )
    encoded = record[schema.ENCODED]
    hw = fn.cast(fn.peek_image_shape(encoded, adjust_orientation=False)[0:2], dtype=types.INT32)
    flip = None
    if preprocess == "seed":
        images = fn.decoders.image(encoded, device=decode_device, **decode)
        # resize_with_crop_or_pad's window: crop offset floor((h-th)/2), pad floor((th-h)/2).
        target = types.Constant(np.array([height, width], np.int32))
        start = dmath.max((hw - target) // 2, 0) - dmath.max((target - hw) // 2, 0)
        window_hw = hw * 0 + target  # the constant as a per-sample node (boxes use it)
        images = fn.slice(images, start, window_hw, axes=[0, 1], out_of_bounds_policy="pad",
                          fill_values=0)
        pixels = fn.cast(images, dtype=types.FLOAT)
        mean = fn.reductions.mean(pixels)
        stddev = dmath.max(fn.reductions.std_dev(pixels, mean), float(1.0 / np.sqrt(height * width * 3)))
        images = fn.cast((pixels - mean) / stddev, dtype=out_type)
    else:
        if training:
            start, window_hw = fn.random_crop_generator(
                hw, random_area=list(augment.AREA_RANGE), random_aspect_ratio=list(augment.ASPECT_RATIO_RANGE),
                num_attempts=augment.MAX_ATTEMPTS)
            # Decode only the window (nvJPEG ROI decode on a GPU), as tf.data does.
            images = fn.decoders.image_slice(encoded, start, window_hw, axes=[0, 1], device=decode_device,
                                             **decode)
            flip = fn.random.coin_flip(probability=0.5)
        else:
            images = fn.decoders.image(encoded, device=decode_device, **decode)
            start, window_hw = hw * 0, hw
        images = fn.resize(images, resize_x=width, resize_y=height, interp_type=types.INTERP_LINEAR,
                           antialias=False, dtype=types.FLOAT)
        images = fn.crop_mirror_normalize(
            images, mirror=flip if flip is not None else 0, dtype=out_type, output_layout="HWC",
            mean=[augment.INCEPTION_SCALE] * 3, std=[augment.INCEPTION_SCALE] * 3)
    outputs = [images, fn.reshape(record[schema.CLASS_LABEL], shape=[])]
    if with_boxes:
        outputs += _boxes(record, hw, start, window_hw, flip, max_boxes)
    if with_keys:
        outputs.append(record[schema.SHA256])
    if gpu:
        outputs = [o if o is images else o.gpu() for o in outputs]
    return tuple(outputs)


def _boxes(record, hw, start, window_hw, flip, max_boxes):
    """augment.transform_boxes + pad_boxes in DALI arithmetic (per-sample scalars broadcast)."""
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types

    hw_f = fn.cast(hw, dtype=types.FLOAT)
    start_f = fn.cast(start, dtype=types.FLOAT)
    win_f = fn.cast(window_hw, dtype=types.FLOAT)

    def place(key, axis):
        value = (record[key] * hw_f[axis] - start_f[axis]) / win_f[axis]
        return dmath.clamp(value, 0.0, 1.0)

    ymin, xmin = place(schema.YMIN, 0), place(schema.XMIN, 1)
    ymax, xmax = place(schema.YMAX, 0), place(schema.XMAX, 1)
    if flip is not None:
        f = fn.cast(flip, dtype=types.FLOAT)
        xmin, xmax = f * (1.0 - xmax) + (1.0 - f) * xmin, f * (1.0 - xmin) + (1.0 - f) * xmax
    boxes = fn.stack(ymin, xmin, ymax, xmax, axis=1)[0:max_boxes]
    labels = record[schema.OBJECT_LABEL][0:max_boxes]
    boxes = fn.pad(boxes, axes=[0], shape=[max_boxes], fill_value=0.0)
    labels = fn.pad(labels, axes=[0], shape=[max_boxes], fill_value=0)
    return [boxes, labels]


def make_dataset(split: SplitShards, config: InputConfig) -> tf.data.Dataset:
    """A DALIDataset of `split` for one worker, with the package's `make_dataset` contract."""
    from nvidia.dali import pipeline_def
    from nvidia.dali.plugin.tf import DALIDataset

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
    paths = usable_shards(split, c.skip_corrupt, c.counter)
    threads = pipeline_threads(c.dali.threads, pipelines=max(1, gpus))
    pipe_seed = None if c.seed is None else c.seed * 1009 + c.worker_index  # augmentation differs per worker
    size, batch_size = c.size, c.batch_size
    pipe = pipeline_def(_graph, batch_size=batch_size, num_threads=threads, device_id=device_id,
                        seed=pipe_seed)(
        paths, size=size, training=c.training, preprocess=c.preprocess, dtype=dtype, with_boxes=c.with_boxes,
        with_keys=c.with_keys, max_boxes=c.max_boxes, shard_id=c.worker_index, num_shards=c.num_workers,
        order_seed=c.seed, initial_fill=c.shuffle_buffer, gpu=device_id is not None, tuning=c.dali)
    shapes = [(batch_size, size[0], size[1], 3), (batch_size,)]
    dtypes = [dtype, tf.int64]
    if c.with_boxes:
        shapes += [(batch_size, c.max_boxes, 4), (batch_size, c.max_boxes)]
        dtypes += [tf.float32, tf.int64]
    if c.with_keys:
        shapes.append((batch_size, 64))
        dtypes.append(tf.uint8)
    device = "/cpu:0" if device_id is None else f"/gpu:{device_id}"
    with tf.device(device):
        return DALIDataset(pipeline=pipe, batch_size=batch_size, num_threads=threads, device_id=device_id,
                           output_shapes=tuple(shapes), output_dtypes=tuple(dtypes))
