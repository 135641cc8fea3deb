"""The DALI line's exact-resume contract (DALI CPU mode): order, crops and flips are pure
functions of (seed, epoch, position), so a stream started at (epoch e, step s) gives exactly
the batches an uninterrupted stream gives there. The trainer-level test (a crashed and
resumed `--decoder dali` run ends with the uninterrupted run's metrics) is in
tests/test_train_crash.py."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf

from detrec.core import dataset_info
from detrec.train import input as input_lib
from detrec.train.input import common, dali, dali_feed, draws, streams
from detrec.train.transforms import inception
from tests.test_input import records_by_key

BATCH = 8

pytestmark = pytest.mark.dali  # the DALI input line (tests/conftest.py: skipped without its plugin)


def train_split(dataset_dir):
    return input_lib.split_shards(dataset_info.load(dataset_dir), dataset_dir, "train")


def stream(dataset_dir, *, seed=5, epoch=0, workers=1, index=0, **kwargs):
    split = train_split(dataset_dir)
    plan = input_lib.epoch_plan(split, batch_size=BATCH, training=True, decoder="dali", num_workers=workers,
                                worker_index=index)
    config = input_lib.InputConfig(batch_size=BATCH, image_size=24, training=True, decoder="dali", seed=seed,
                                   repeat=True, with_keys=True, num_workers=workers, worker_index=index,
                                   epoch=epoch, **kwargs)
    return streams.local_stream(split, config, plan), plan


def as_numpy(batch) -> list[np.ndarray]:
    return [t.numpy() for t in batch]


# --- the draws, pure numpy ----------------------------------------------------------------
def test_epoch_order_is_a_permutation_new_every_epoch_and_seed():
    n = 1000
    orders = {(seed, epoch): draws.epoch_order(seed, epoch, n) for seed in (0, 1) for epoch in range(3)}
    for order in orders.values():
        assert sorted(order.tolist()) == list(range(n))
    assert len({tuple(o.tolist()) for o in orders.values()}) == 6  # every (seed, epoch) its own order
    np.testing.assert_array_equal(draws.epoch_order(1, 2, n), orders[(1, 2)])  # a pure function


def test_crop_windows_are_inception_crops_of_the_documented_draw():
    rng = np.random.default_rng(0)
    heights = rng.integers(100, 800, 5000)
    hw = np.stack([heights, (heights * rng.uniform(0.6, 1.6, 5000)).astype(int)], axis=1)  # photo shapes
    records = np.arange(5000)
    windows = inception.crop_windows(7, 3, records, hw)
    y, x, h, w = windows.T
    assert (y >= 0).all() and (x >= 0).all() and (y + h <= hw[:, 0]).all() and (x + w <= hw[:, 1]).all()
    area = h * w / (hw[:, 0] * hw[:, 1])
    assert area.min() > 0.07 and area.max() <= 1.0 and np.median(area) > 0.4
    ratio = w / h
    assert ratio.min() >= 0.74 and ratio.max() <= 1.34
    # log-uniform ratio: as many windows wider than tall as taller than wide
    assert abs(np.mean(np.log(ratio[area < 0.5]))) < 0.02
    np.testing.assert_array_equal(inception.crop_windows(7, 3, records, hw), windows)
    assert (inception.crop_windows(7, 4, records, hw) != windows).any()
    # A strip too wide for the ratio range: DALI's fallback, the whole height clamped to 4/3.
    assert inception.crop_windows(1, 0, np.array([0]), np.array([[10, 1000]]))[0, 2:].tolist() == [10, 13]
    flips = inception.flips(7, 3, records)
    assert set(flips.tolist()) == {0, 1} and abs(flips.mean() - 0.5) < 0.03


@pytest.mark.parametrize("options", [dict(progressive=True), dict(progressive=False, restart_marker_blocks=1),
                                     dict(exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00")])
def test_jpeg_size_from_the_header_as_tensorflow_reads_it(options):
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (123, 45), (10, 20, 30)).save(out, "JPEG", **options)
    data = out.getvalue()
    assert dali_feed.jpeg_hw(data) == tuple(tf.image.extract_jpeg_shape(data)[:2].numpy().tolist()) == (45, 123)
    assert dali_feed.jpeg_hw(b"\xff\xd8\xff\xe0\x00\x00" + b"\x00" * 100) == (0, 0)
    assert dali_feed.jpeg_hw(b"not a jpeg") == (0, 0)


# --- the feed: who reads what -------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_every_record_once_per_epoch_across_workers(dataset_dir, workers):
    split = train_split(dataset_dir)
    epochs = []
    for epoch in range(3):
        seen = []
        for index in range(workers):
            config = input_lib.InputConfig(batch_size=BATCH, image_size=24, training=True, seed=5,
                                           num_workers=workers, worker_index=index)
            feed = dali.make_feed(split, config)
            start, end = feed.span
            for step in range(feed.stream_steps):
                _, records = feed.records(epoch * feed.stream_steps + step)
                real = max(0, min(BATCH, end - start - step * BATCH))
                seen += records[:real].tolist()
        assert sorted(seen) == list(range(96))
        epochs.append(seen)
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]


def test_another_seed_gives_another_order(dataset_dir):
    split = train_split(dataset_dir)
    orders = []
    for seed in (5, 6):
        feed = dali.make_feed(split, input_lib.InputConfig(batch_size=BATCH, image_size=24, training=True, seed=seed))
        orders.append(np.concatenate([feed.records(b)[1] for b in range(feed.stream_steps)]).tolist())
    assert orders[0] != orders[1] and sorted(orders[0]) == sorted(orders[1])


def test_a_record_that_is_no_example_names_its_shard_and_offset(dataset_dir, monkeypatch):
    split = train_split(dataset_dir)
    feed = dali.make_feed(split, input_lib.InputConfig(batch_size=BATCH, image_size=24, training=False))
    monkeypatch.setattr(feed.table, "read", lambda record: b"\xff" * 100)
    path, number, offset = feed.table.where(0)
    with pytest.raises(ValueError) as info:
        feed.batch(0)
    error = common.shard_error(str(info.value))  # what shard_errors() raises from it
    assert error.path == path and f"offset {offset}, record {number}: it is not a tf.Example" in error.detail


# --- the DALI stream itself ---------------------------------------------------------------
@pytest.mark.parametrize("workers,index,epoch,step", [(1, 0, 1, 3), (2, 1, 1, 2), (1, 0, 2, 0)])
def test_a_stream_started_at_epoch_and_step_gives_the_uninterrupted_batches(dataset_dir, workers, index, epoch,
                                                                            step):
    """Pixels, labels, boxes and keys, bit for bit, from (epoch, step) to the end of the
    next epoch, on any worker."""
    full, plan = stream(dataset_dir, workers=workers, index=index, with_boxes=True)
    batches = full.batches()
    reference = [as_numpy(next(batches)) for _ in range((epoch + 2) * plan.steps)]
    full.close()
    resumed, _ = stream(dataset_dir, epoch=epoch, workers=workers, index=index, with_boxes=True)
    batches = resumed.batches()
    for _ in range(step):  # what the trainer does: drop the batches already trained
        next(batches)
    got = [as_numpy(next(batches)) for _ in range(2 * plan.steps - step)]
    resumed.close()
    expected = reference[epoch * plan.steps + step:]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        for a, b in zip(g, e):
            np.testing.assert_array_equal(a, b)


def test_epochs_differ_and_cover_the_split(dataset_dir):
    everything = set(records_by_key(dataset_dir, "train"))
    s, plan = stream(dataset_dir)
    batches = s.batches()
    epochs = []
    for _ in range(2):
        keys = [k for _ in range(plan.steps) for k in input_lib.key_strings(next(batches)[2])]
        assert len(keys) == len(set(keys)) == plan.steps * BATCH
        assert set(keys) <= everything
        epochs.append(keys)
    s.close()
    assert epochs[0] != epochs[1]


def test_another_seed_gives_other_batches(dataset_dir):
    first = []
    for seed in (5, 6):
        s, _ = stream(dataset_dir, seed=seed)
        first.append(input_lib.key_strings(next(s.batches())[2]))
        s.close()
    assert first[0] != first[1]


def test_the_feeds_box_mapping_is_the_tf_data_lines():
    """dali_feed.map_boxes is augment.transform_boxes in numpy float32 (the feed runs outside
    TensorFlow): the same boxes for random windows, with and without the flip."""
    from detrec.train import augment
    from detrec.train.input import dali_feed

    rng = np.random.default_rng(0)
    for _ in range(20):
        hw = (int(rng.integers(20, 400)), int(rng.integers(20, 400)))
        y, x = int(rng.integers(0, hw[0] // 2)), int(rng.integers(0, hw[1] // 2))
        window = np.array([y, x, int(rng.integers(1, hw[0] - y + 1)), int(rng.integers(1, hw[1] - x + 1))])
        corners = np.sort(rng.random((5, 2, 2)).astype(np.float32), axis=1)
        boxes = np.concatenate([corners[:, 0], corners[:, 1]], axis=1)  # ymin, xmin, ymax, xmax
        for flip in (0, 1):
            expected = augment.transform_boxes(tf.constant(boxes), tf.constant(hw), tf.constant(window),
                                               bool(flip)).numpy()
            np.testing.assert_allclose(dali_feed.map_boxes(boxes, hw, window, flip), expected, atol=1e-6)
