"""train/input/dali.py in DALI's CPU mode (device_id=None): the same contract as the tf.data path.

The GPU mode is the same pipeline with device="mixed" for the decoders; it needs a GPU to
run, so here the CPU mode is held to the tf.data decoder's outputs example by example:
shapes, dtypes, normalisation, labels, boxes, and pixel values within a rounding error.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from detrec.core import dataset_info, schema
from tests.test_input import SIZE, corrupt_copy, decode, epoch, keys_of, record_offsets, records_by_key, seed_reference
from detrec.train import input as input_lib

def by_key(epoch_rows) -> dict[str, tuple]:
    return {row[-1]: row for row in epoch_rows}

pytestmark = pytest.mark.dali  # the DALI input line (tests/conftest.py: skipped without its plugin)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("preprocess", ["inception", "seed"])
def test_same_element_spec_as_tfdata(dataset_dir, training, preprocess):
    kwargs = dict(batch_size=8, image_size=SIZE, training=training, preprocess=preprocess, with_boxes=True,
                  with_keys=True)
    dali = input_lib.make_dataset(dataset_dir, "train", decoder="dali", **kwargs).element_spec
    cpu = input_lib.make_dataset(dataset_dir, "train", decoder="cpu", **kwargs).element_spec
    assert [s.dtype for s in dali] == [s.dtype for s in cpu]
    assert dali[0].dtype == (tf.float16 if preprocess == "seed" else tf.float32)
    # Same shapes; DALI's batch dimension is always static (its last evaluation batch is padded).
    assert [s.shape.as_list()[1:] for s in dali] == [s.shape.as_list()[1:] for s in cpu]
    assert [s.shape.as_list()[0] for s in dali] == [8] * 5


@pytest.mark.parametrize("preprocess", ["inception", "seed"])
def test_evaluation_equals_tfdata_example_by_example(dataset_dir, preprocess):
    dali = by_key(epoch(dataset_dir, "val", decoder="dali", preprocess=preprocess, with_boxes=True))
    cpu = by_key(epoch(dataset_dir, "val", decoder="cpu", preprocess=preprocess, with_boxes=True))
    assert sorted(dali) == sorted(cpu) == sorted(records_by_key(dataset_dir, "val"))
    for key, (image, label, boxes, box_labels, _) in dali.items():
        c_image, c_label, c_boxes, c_box_labels, _ = cpu[key]
        assert image.dtype == c_image.dtype
        assert label == c_label
        np.testing.assert_array_equal(box_labels, c_box_labels)
        np.testing.assert_allclose(boxes, c_boxes, atol=1e-5)
        # Same libjpeg IDCT; resize and float16 rounding differ in the last bits only.
        diff = np.abs(image.astype(np.float32) - c_image.astype(np.float32))
        assert diff.max() < (4e-3 if preprocess == "seed" else 1e-3)


def test_value_ranges(dataset_dir):
    for training in (False, True):
        rows = epoch(dataset_dir, "val", decoder="dali", training=training)
        images = np.stack([r[0] for r in rows])
        assert images.min() >= -1.0 and images.max() <= 1.0 and images.min() < -0.5 and images.max() > 0.5
    seed = np.stack([r[0] for r in epoch(dataset_dir, "val", decoder="dali", preprocess="seed")]).astype(np.float32)
    np.testing.assert_allclose(seed.mean(axis=(1, 2, 3)), 0.0, atol=2e-3)
    np.testing.assert_allclose(seed.std(axis=(1, 2, 3)), 1.0, atol=2e-3)


@pytest.mark.parametrize("training", [False, True])
def test_labels_match_the_records_one_by_one(dataset_dir, training):
    expected = records_by_key(dataset_dir, "train")
    got = epoch(dataset_dir, "train", decoder="dali", training=training, batch_size=8)
    assert len(got) == 96
    if not training:
        assert sorted(keys_of(got)) == sorted(expected)
    for _, label, key in got:
        assert int(label) == expected[key].class_label


def test_training_boxes_follow_crop_and_flip_into_the_unit_square(dataset_dir):
    for _, _, boxes, box_labels, _ in epoch(dataset_dir, "val", decoder="dali", training=True, with_boxes=True):
        assert boxes.min() >= 0.0 and boxes.max() <= 1.0
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert (box_labels >= 0).all()


def test_seed_transform_matches_hand_computation(dataset_dir):
    records = records_by_key(dataset_dir, "val")
    for image, _, key in epoch(dataset_dir, "val", decoder="dali", preprocess="seed"):
        expected = seed_reference(decode(records[key].encoded), SIZE)
        np.testing.assert_allclose(image.astype(np.float32), expected.astype(np.float32), atol=4e-3, rtol=2e-3)


@pytest.mark.parametrize("split,workers", [("val", 2), ("val", 3), ("train", 2)])
def test_workers_are_disjoint_complete_and_epochs_align(dataset_dir, split, workers):
    """val with 3 workers splits 32 as 10/11/11: DALI pads the short worker's epoch."""
    batch = 5
    parts = []
    for i in range(workers):
        ds = input_lib.make_dataset(dataset_dir, split, batch_size=batch, image_size=16, training=False,
                                    decoder="dali", num_workers=workers, worker_index=i, with_keys=True)
        plan = input_lib.epoch_plan(dataset_dir, split, batch_size=batch, training=False, decoder="dali",
                                    num_workers=workers, worker_index=i)
        it = iter(ds)
        first = [input_lib.key_strings(b[2]) for b in input_lib.take_epoch(it, plan)]
        second = [input_lib.key_strings(b[2]) for b in input_lib.take_epoch(it, plan)]
        assert first == second  # the next epoch starts on a fresh batch
        part = [k for keys in first for k in keys]
        assert len(part) == len(set(part)) == plan.num_examples
        parts.append(part)
    every = [k for p in parts for k in p]
    assert len(every) == len(set(every))
    assert sorted(every) == sorted(records_by_key(dataset_dir, split))
    sizes = [len(p) for p in parts]
    total = len(every)
    assert sizes == [total * (i + 1) // workers - total * i // workers for i in range(workers)]


def test_bfloat16_is_refused(dataset_dir):
    with pytest.raises(ValueError, match="bfloat16"):
        input_lib.make_dataset(dataset_dir, "val", batch_size=4, image_size=16, training=False, decoder="dali",
                               dtype="bfloat16")


# --- corruption: DALI reads without CRCs, so shards are checked before it starts ----------
def test_truncated_shard_is_named_before_reading(dataset_dir, tmp_path):
    data = corrupt_copy(dataset_dir, tmp_path)
    shard = os.path.join(data, "val-00000-of-00002.tfrecord")
    with open(shard, "r+b") as f:
        f.truncate(record_offsets(shard)[10] + 100)
    with pytest.raises(input_lib.CorruptShardError, match="val-00000-of-00002.tfrecord: it is .* bytes") as info:
        input_lib.make_dataset(data, "val", batch_size=4, image_size=16, training=False, decoder="dali")
    assert info.value.path == shard


def test_bad_index_is_named(dataset_dir, tmp_path):
    data = corrupt_copy(dataset_dir, tmp_path)
    index = os.path.join(data, "val-00001-of-00002.tfrecord" + schema.INDEX_SUFFIX)
    lines = open(index).read().splitlines()
    open(index, "w").write("\n".join(lines[:-1]) + "\n")
    with pytest.raises(input_lib.CorruptShardError, match="idx lists 15 records, dataset_info.json says 16"):
        input_lib.make_dataset(data, "val", batch_size=4, image_size=16, training=False, decoder="dali")
    os.remove(index)
    with pytest.raises(input_lib.CorruptShardError, match=r"val-00001-of-00002.tfrecord.idx is missing"):
        input_lib.make_dataset(data, "val", batch_size=4, image_size=16, training=False, decoder="dali")


def test_skip_corrupt_drops_the_shard_and_counts(dataset_dir, tmp_path, capsys):
    data = corrupt_copy(dataset_dir, tmp_path)
    os.remove(os.path.join(data, "val-00001-of-00002.tfrecord"))
    counter = input_lib.SkipCounter()
    got = epoch(data, "val", decoder="dali", skip_corrupt=True, counter=counter)
    assert counter.result() == {"records": 16, "shards": 1}
    assert "skipping corrupt shard" in capsys.readouterr().err
    first_shard = {schema.decode(r.numpy()).sha256
                   for r in tf.data.TFRecordDataset(os.path.join(data, "val-00000-of-00002.tfrecord"))}
    assert sorted(keys_of(got)) == sorted(first_shard)


def test_fed_crop_window_is_in_height_width_order(dataset_dir):
    """The feed's windows are [y, x, h, w] and image_slice reads them that way: the decoded
    crop has exactly the window's (h, w), inside the image."""
    from nvidia.dali import fn, pipeline_def, types

    from detrec.train.input import dali, dali_feed

    split = input_lib.split_shards(dataset_info.load(dataset_dir), dataset_dir, "val")
    feed = dali.make_feed(split, input_lib.InputConfig(batch_size=8, image_size=16, training=True, seed=3))
    parts = feed.batch(0)
    flat, lengths = parts["encoded"]
    encoded = np.split(flat, np.cumsum(lengths)[:-1])

    @pipeline_def(batch_size=8, num_threads=1, device_id=None)
    def pipe():
        data = fn.external_source(source=lambda: encoded, batch=True, dtype=types.UINT8)
        window = fn.external_source(source=lambda: parts["window"], batch=True, dtype=types.INT32)
        crop = fn.decoders.image_slice(data, window[0:2], window[2:4], axes=[0, 1], device="cpu")
        return fn.peek_image_shape(data), crop.shape()

    p = pipe()
    p.build()
    hw, crop = (np.array(t.as_tensor()) for t in p.run())
    window = parts["window"]
    assert (crop[:, :2] == window[:, 2:]).all()
    assert (window[:, :2] + window[:, 2:] <= hw[:, :2]).all() and (window >= 0).all()
    assert [dali_feed.jpeg_hw(bytes(e)) for e in encoded] == [tuple(v) for v in hw[:, :2].tolist()]


# --- the GPU graph, built (not run) on this CPU machine -----------------------------------
def _gpu_graph_ops(dataset_dir, training: bool, preprocess: str = "inception"):
    """The pipeline train/input/dali.py builds for device 0, defined but never run here.

    Reads DALI's op instances (`Pipeline._ops`, `_init_args`): private, so a DALI upgrade
    that moves them fails this test loudly rather than letting the GPU graph drift unseen.
    """
    from nvidia.dali import pipeline_def

    from detrec.train.input import dali

    pipe = pipeline_def(dali._graph, batch_size=4, num_threads=1, device_id=0, seed=1)(
        size=(32, 32), training=training, preprocess=preprocess, dtype=tf.float32, with_boxes=True,
        with_keys=True, gpu=True, tuning=input_lib.DaliTuning(hw_decoder_load=0.8, preallocate=(640, 480)))
    pipe._build_graph()
    ops = {}
    for op in pipe._ops:
        ops.setdefault(type(op._op).__name__, []).append((op._op._device, op._op._init_args))
    return ops, [node.device for node in pipe._graph_outputs]


@pytest.mark.parametrize("training,preprocess,decoder", [(True, "inception", "ImageSlice"),
                                                         (False, "inception", "Image"), (False, "seed", "Image")])
def test_gpu_graph_decodes_on_the_gpu_like_libjpeg_and_ignores_exif(dataset_dir, training, preprocess, decoder):
    ops, devices = _gpu_graph_ops(dataset_dir, training, preprocess)
    ((device, args),) = ops[decoder]
    assert device == "mixed"
    assert args["adjust_orientation"] is False and args["jpeg_fancy_upsampling"] is True
    assert (args["hw_decoder_load"], args["preallocate_width_hint"], args["preallocate_height_hint"]) == (0.8, 640, 480)
    # No reader, no random operator: the feed (CPU data) holds every draw, so resume is exact.
    assert not {"TFRecordReader", "TFRecord", "RandomCropGenerator", "CoinFlip", "PeekImageShape"} & set(ops)
    assert {device for device, _ in ops["ExternalSource"]} == {"cpu"}
    assert devices == ["gpu"] * 5  # images, labels, boxes, box labels, keys: all on the GPU


def test_cpu_mode_decoders_get_no_gpu_settings():
    from detrec.train.input import dali

    args = dali.decoder_args(gpu=False, tuning=input_lib.DaliTuning(hw_decoder_load=0.1))
    assert args["adjust_orientation"] is False and args["jpeg_fancy_upsampling"] is True
    assert "hw_decoder_load" not in args and "preallocate_width_hint" not in args


# --- host threads and tuning --------------------------------------------------------------
@pytest.mark.parametrize("cores,pipelines,threads", [(64, 8, 8), (16, 8, 2), (4, 8, 1), (128, 8, 8), (2, 1, 2),
                                                     (64, 1, 8), (12, 4, 3)])
def test_threads_divide_the_cores_among_the_gpus(cores, pipelines, threads):
    from detrec.train.input import dali

    assert dali.pipeline_threads(None, pipelines, cores=cores) == threads
    assert dali.pipeline_threads(5, pipelines, cores=cores) == 5  # asked for: taken as is


def test_a_pipeline_is_built_with_its_share_of_the_threads(dataset_dir, monkeypatch):
    from detrec.train.input import dali

    asked = []
    real = dali.pipeline_threads
    monkeypatch.setattr(dali, "pipeline_threads", lambda requested, pipelines: asked.append((requested, pipelines))
                        or real(requested, pipelines))
    input_lib.make_dataset(dataset_dir, "val", batch_size=4, image_size=16, training=False, decoder="dali")
    input_lib.make_dataset(dataset_dir, "val", batch_size=4, image_size=16, training=False, decoder="dali",
                           dali=input_lib.DaliTuning(threads=3))
    assert asked == [(None, 1), (3, 1)]  # no GPU here: one pipeline per process


def test_tuning_is_checked():
    with pytest.raises(ValueError, match="hw_decoder_load"):
        input_lib.DaliTuning(hw_decoder_load=1.5)
    with pytest.raises(ValueError, match="threads"):
        input_lib.DaliTuning(threads=0)
    with pytest.raises(ValueError, match="preallocate"):
        input_lib.DaliTuning(preallocate=(-1, 3))


def test_cli_defaults_are_the_library_defaults():
    from detrec.pipelines import train_cmd
    from detrec.train.input import config

    assert (train_cmd.HW_DECODER_LOAD, train_cmd.PREALLOCATE) == (config.HW_DECODER_LOAD, config.PREALLOCATE)


# --- one pipeline for the whole run -------------------------------------------------------
@pytest.mark.parametrize("workers,batch", [(1, 10), (2, 7), (5, 4)])
def test_one_training_pipeline_serves_every_epoch(dataset_dir, workers, batch):
    """Built once, read epoch after epoch: each epoch every worker hands out `steps` full
    batches of its own examples, none twice, in a new order; the partial batch and DALI's
    padding are read past, so the next epoch starts clean on every worker at once."""
    from detrec.train.input import streams

    split = input_lib.split_shards(dataset_info.load(dataset_dir), dataset_dir, "train")
    plans = [input_lib.epoch_plan(split, batch_size=batch, training=True, decoder="dali", num_workers=workers,
                                  worker_index=i) for i in range(workers)]
    assert len({p.stream_steps for p in plans}) == 1  # DALI pads every worker to the same epoch
    steps = min(p.steps for p in plans)
    epochs = [[] for _ in range(3)]
    for i, plan in enumerate(plans):
        config = input_lib.InputConfig(batch_size=batch, image_size=16, training=True, decoder="dali", seed=3,
                                       repeat=True, with_keys=True, num_workers=workers, worker_index=i)
        stream = streams.local_stream(split, config, plans[0])
        stream.steps = steps  # the trainer's steps: the smallest share's
        batches = stream.batches()
        for e in range(3):
            keys = [k for _ in range(steps) for k in input_lib.key_strings(next(batches)[2])]
            assert len(keys) == len(set(keys)) == steps * batch
            epochs[e].append(keys)
        stream.close()
    everything = set(records_by_key(dataset_dir, "train"))
    for e in range(3):
        seen = [k for keys in epochs[e] for k in keys]
        assert len(seen) == len(set(seen)) and set(seen) <= everything  # disjoint workers
    # A new order every epoch: every pair differs (a chained != never compares 0 with 2).
    assert len({tuple(tuple(keys) for keys in epoch_keys) for epoch_keys in epochs}) == 3


def test_epoch_stream_reads_past_a_partly_read_epoch():
    from detrec.train.input import streams

    counter = iter(range(1000))
    stream = streams.EpochStream(lambda: (next(counter),), steps=3, stream_steps=5)
    assert [b[0] for b in stream.epoch()] == [0, 1, 2]
    gen = stream.batches()
    assert [next(gen)[0] for _ in range(4)] == [5, 6, 7, 10]  # 3, 4 and 8, 9 are padding
    assert stream.realign() == 4  # 11-14: the rest of the epoch 10 began
    assert [b[0] for b in stream.epoch()] == [15, 16, 17]
    with pytest.raises(ValueError):
        streams.EpochStream(lambda: (0,), steps=4, stream_steps=3)


# --- the random crop: one distribution for both decoders ----------------------------------
