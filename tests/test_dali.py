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


def test_random_crop_window_is_in_height_width_order(dataset_dir):
    """train/input/dali.py maps boxes with fn.random_crop_generator's window as (y, x) / (h, w)."""
    from nvidia.dali import fn, pipeline_def, types

    from detrec.train.input import dali

    paths = dali.usable_shards(input_lib.split_shards(dataset_info.load(dataset_dir), dataset_dir, "val"))

    @pipeline_def(batch_size=8, num_threads=1, device_id=None, seed=3)
    def pipe():
        record = fn.readers.tfrecord(path=[p for p, _ in paths], index_path=[p + schema.INDEX_SUFFIX for p, _ in paths],
                                     features=dali._features(False, False))
        encoded = record[schema.ENCODED]
        hw = fn.cast(fn.peek_image_shape(encoded)[0:2], dtype=types.INT32)
        start, shape = fn.random_crop_generator(hw, random_aspect_ratio=[0.5, 0.6])  # tall windows
        crop = fn.decoders.image_slice(encoded, start, shape, axes=[0, 1], device="cpu")
        return hw, start, shape, crop.shape()

    p = pipe()
    p.build()
    hw, start, shape, crop = (np.array(t.as_tensor()) for t in p.run())
    assert (crop[:, :2] == shape).all()
    assert (shape[:, 1] < shape[:, 0]).all()  # width/height in 0.5..0.6: (h, w) order
    assert (start + shape <= hw).all() and (start >= 0).all()
