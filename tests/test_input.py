"""detrec.train.input (the tf.data line) and train/augment.py against the real preprocess output.

Expected values never come from the code under test: labels come from the records read
through detrec.core.schema.decode (and, once, from the synth tree's XML), pixels of the seed
transform are computed by hand in numpy, box mappings by hand. Each image op is checked
both eagerly and inside tf.data. test_dali.py holds DALI to the same contract.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from lxml import etree

from detrec.pipelines import cli
from detrec.core import dataset_info, schema
from detrec.core.errors import UserError
from detrec.train import augment
from detrec.train import input as input_lib
from detrec.train.transforms import inception
from detrec.train.transforms import seed as article  # "seed" is also a pipeline argument here

SIZE = (40, 56)  # (height, width): not square, to catch swapped axes


# --- helpers (test_dali.py uses them too) -------------------------------------------------
def records_by_key(data_dir: str, split: str) -> dict[str, schema.Record]:
    """Every record of a split, keyed by its sha256, read through schema.decode only."""
    files = dataset_info.shard_files(dataset_info.load(data_dir), data_dir, split)
    out = {}
    for record in tf.data.TFRecordDataset(files):
        rec = schema.decode(record.numpy())
        out[rec.sha256] = rec
    return out


def split_size(data_dir: str, split: str) -> int:
    """Examples in a split, from dataset_info.json."""
    return dataset_info.load(data_dir).split(split, data_dir).num_examples


def epoch(data_dir: str, split: str, *, batch_size: int = 8, decoder: str = "cpu", training: bool = False,
          num_workers: int = 1, worker_index: int = 0, **kwargs) -> list[tuple[np.ndarray, ...]]:
    """One epoch as numpy rows (image, label, [boxes, box_labels,] key), via take_epoch."""
    kwargs.setdefault("with_keys", True)
    ds = input_lib.make_dataset(data_dir, split, batch_size=batch_size, image_size=SIZE, training=training,
                                decoder=decoder, repeat=True, num_workers=num_workers,
                                worker_index=worker_index, **kwargs)
    plan = input_lib.epoch_plan(data_dir, split, batch_size=batch_size, training=training, decoder=decoder,
                                num_workers=num_workers, worker_index=worker_index,
                                skip_corrupt=kwargs.get("skip_corrupt", False))
    return rows(input_lib.take_epoch(iter(ds), plan))


def rows(batches) -> list[tuple[np.ndarray, ...]]:
    out = []
    for batch in batches:
        arrays = [t.numpy() for t in batch]
        for i in range(len(arrays[0])):
            row = [a[i] for a in arrays]
            row[-1] = bytes(row[-1]).decode("ascii")  # the key
            out.append(tuple(row))
    return out


def keys_of(epoch_rows) -> list[str]:
    return [row[-1] for row in epoch_rows]


def decode(encoded) -> np.ndarray:
    """The source pixels: libjpeg's accurate integer IDCT, the setting of both decoders."""
    return tf.io.decode_jpeg(encoded, channels=3, dct_method=augment.DCT_METHOD).numpy()


def seed_reference(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The article's transform by hand: centred crop/pad, float16, standardise, float16."""
    h, w, _ = pixels.shape
    th, tw = size
    out = np.zeros((th, tw, 3), np.float32)
    # Crop offset floor((h - th) / 2) where the image is bigger, pad offset floor((th - h) / 2)
    # where it is smaller - resize_with_crop_or_pad's documented arithmetic.
    cy, py = max((h - th) // 2, 0), max((th - h) // 2, 0)
    cx, px = max((w - tw) // 2, 0), max((tw - w) // 2, 0)
    ch, cw = min(h, th), min(w, tw)
    out[py:py + ch, px:px + cw] = pixels[cy:cy + ch, cx:cx + cw]
    out = out.astype(np.float16).astype(np.float32)
    std = max(out.std(), 1.0 / np.sqrt(out.size))
    return ((out - out.mean()) / std).astype(np.float16)


def corrupt_copy(dataset_dir: str, tmp_path, name: str = "ds") -> str:
    dst = str(tmp_path / name)
    shutil.copytree(dataset_dir, dst)
    return dst


def record_offsets(path: str) -> list[int]:
    return [int(line.split()[0]) for line in open(path + schema.INDEX_SUFFIX)]


# --- contract: shapes, dtypes, ranges, labels ---------------------------------------------
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("preprocess", ["inception", "seed"])
def test_shapes_dtypes_and_value_ranges(dataset_dir, training, preprocess):
    ds = input_lib.make_dataset(dataset_dir, "train", batch_size=8, image_size=SIZE, training=training,
                                decoder="cpu", preprocess=preprocess)
    dtype = tf.float16 if preprocess == "seed" else tf.float32
    images_spec, labels_spec = ds.element_spec
    assert images_spec.dtype == dtype and labels_spec.dtype == tf.int64
    assert images_spec.shape.as_list() == [8 if training else None, SIZE[0], SIZE[1], 3]
    assert labels_spec.shape.as_list() == [8 if training else None]
    batches = list(ds)
    total = sum(len(labels) for _, labels in batches)
    assert total == (96 // 8 * 8 if training else 96)
    images = np.concatenate([i.numpy().astype(np.float32) for i, _ in batches])
    labels = np.concatenate([lab.numpy() for _, lab in batches])
    assert images.shape[1:] == (SIZE[0], SIZE[1], 3)
    assert set(labels) <= set(range(6)) and 0 < len(set(labels))
    if preprocess == "inception":
        assert images.min() >= -1.0 and images.max() <= 1.0
        assert images.min() < -0.5 and images.max() > 0.5  # really spread over [-1, 1]
    else:
        means = images.mean(axis=(1, 2, 3))
        stds = images.std(axis=(1, 2, 3))
        np.testing.assert_allclose(means, 0.0, atol=2e-3)
        np.testing.assert_allclose(stds, 1.0, atol=2e-3)


@pytest.mark.parametrize("training", [False, True])
def test_labels_match_the_records_one_by_one(dataset_dir, training):
    expected = records_by_key(dataset_dir, "val")
    got = epoch(dataset_dir, "val", batch_size=1, training=training)
    assert len(got) == len(expected) == 32
    assert {key: int(label) for _, label, key in got} == {k: r.class_label for k, r in expected.items()}


def test_labels_agree_with_the_synth_xml(dataset_dir, synth_tree):
    """End to end: the label of each image is the synset of its largest box in the XML."""
    info = dataset_info.load(dataset_dir)
    ids = {c.synset: c.id for c in info.classes}
    expected = records_by_key(dataset_dir, "val")
    by_filename = {}
    for xml in glob.glob(os.path.join(synth_tree, "Annotations", "DET", "val", "**", "*.xml"), recursive=True):
        root = etree.parse(xml).getroot()
        objects = root.findall("object")
        if not objects:
            label = schema.BACKGROUND_ID
        else:
            area = lambda o: ((float(o.findtext("bndbox/xmax")) - float(o.findtext("bndbox/xmin")))  # noqa: E731
                              * (float(o.findtext("bndbox/ymax")) - float(o.findtext("bndbox/ymin"))))
            label = ids[max(objects, key=area).findtext("name")]
        by_filename[os.path.basename(xml)[:-4]] = label
    got = epoch(dataset_dir, "val")
    for _, label, key in got:
        assert int(label) == by_filename[os.path.splitext(expected[key].filename)[0]]


def test_eval_epoch_sees_every_example_once_and_epochs_align(dataset_dir):
    ds = input_lib.make_dataset(dataset_dir, "train", batch_size=10, image_size=SIZE, training=False,
                                decoder="cpu", repeat=True, with_keys=True)
    plan = input_lib.epoch_plan(dataset_dir, "train", batch_size=10, training=False, decoder="cpu")
    assert (plan.num_examples, plan.steps, plan.rows(9)) == (96, 10, 6)
    it = iter(ds)
    first, second = keys_of(rows(input_lib.take_epoch(it, plan))), keys_of(rows(input_lib.take_epoch(it, plan)))
    assert sorted(first) == sorted(records_by_key(dataset_dir, "train")) and len(set(first)) == 96
    assert first == second  # evaluation order is deterministic and the next epoch starts clean


def test_finite_dataset_is_exactly_one_epoch(dataset_dir):
    ds = input_lib.make_dataset(dataset_dir, "val", batch_size=5, image_size=SIZE, training=False,
                                decoder="cpu", with_keys=True)
    sizes = [len(labels) for _, labels, _ in ds]
    assert sizes == [5] * 6 + [2]
    keys = keys_of(rows(ds))
    assert sorted(keys) == sorted(records_by_key(dataset_dir, "val"))


# --- workers ------------------------------------------------------------------------------
@pytest.mark.parametrize("split,workers", [("train", 2), ("val", 2), ("val", 3)])
def test_workers_are_disjoint_and_complete(dataset_dir, split, workers):
    """train has 4 shards (file-level split), val 2 (3 workers: record-level fallback)."""
    parts = [keys_of(epoch(dataset_dir, split, num_workers=workers, worker_index=i)) for i in range(workers)]
    every = [k for part in parts for k in part]
    assert len(every) == len(set(every))  # disjoint, and nobody sees an example twice
    assert sorted(every) == sorted(records_by_key(dataset_dir, split))  # complete
    for i, part in enumerate(parts):
        plan = input_lib.epoch_plan(dataset_dir, split, batch_size=8, training=False, decoder="cpu",
                                    num_workers=workers, worker_index=i)
        assert len(part) == plan.num_examples


def test_training_workers_are_disjoint(dataset_dir):
    parts = [set(keys_of(epoch(dataset_dir, "train", batch_size=1, training=True, num_workers=2, worker_index=i)))
             for i in range(2)]
    assert not parts[0] & parts[1]
    assert parts[0] | parts[1] == set(records_by_key(dataset_dir, "train"))


def test_training_epochs_do_not_bleed_into_each_other(dataset_dir):
    """Consecutive epochs of one endless training stream: each holds every example once,
    whatever order the parallel decode finishes in (its maps are unordered in training)."""
    ds = input_lib.make_dataset(dataset_dir, "train", batch_size=1, image_size=SIZE, training=True,
                                decoder="cpu", repeat=True, with_keys=True)
    plan = input_lib.epoch_plan(dataset_dir, "train", batch_size=1, training=True, decoder="cpu")
    iterator = iter(ds)
    everything = sorted(records_by_key(dataset_dir, "train"))
    orders = []
    for _ in range(3):
        keys = keys_of(rows(input_lib.take_epoch(iterator, plan)))
        assert sorted(keys) == everything
        orders.append(keys)
    # Reshuffled every epoch: every pair differs (a chained != never compares 0 with 2).
    assert len({tuple(order) for order in orders}) == 3


def test_dataset_fn_gives_each_input_pipeline_its_part(dataset_dir):
    fn = input_lib.dataset_fn(dataset_dir, "val", batch_size=8, decoder="cpu", image_size=SIZE,
                              training=False, with_keys=True)
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2)
    ds = fn(context)
    assert ds.element_spec[0].shape.as_list() == [None, SIZE[0], SIZE[1], 3]
    got = keys_of(rows(ds))
    assert got == keys_of(epoch(dataset_dir, "val", batch_size=4, num_workers=2, worker_index=1))
    assert all(len(labels) <= 4 for _, labels, _ in ds)  # per-replica batch


def test_distribute_datasets_from_function(dataset_dir):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    fn = input_lib.dataset_fn(dataset_dir, "train", batch_size=16, decoder="cpu", image_size=SIZE,
                              training=True)
    dist = strategy.distribute_datasets_from_function(fn, input_lib.input_options("cpu"))
    images, labels = next(iter(dist))
    assert images.shape == (16, SIZE[0], SIZE[1], 3) and labels.dtype == tf.int64


# --- the transforms: eagerly and inside tf.data -------------------------------------------
def _one_jpeg(dataset_dir: str) -> tf.Tensor:
    record = next(iter(records_by_key(dataset_dir, "val").values()))
    return tf.constant(record.encoded)


@pytest.mark.parametrize("size", [(101, 170), (64, 64), (200, 90)])
def test_seed_transform_matches_hand_computation(dataset_dir, size):
    """Crop in one axis and pad in the other, odd differences included (image ~150x110)."""
    encoded = _one_jpeg(dataset_dir)
    pixels = decode(encoded)
    expected = seed_reference(pixels, size)
    eager, _ = article.seed_transform(encoded, size)
    graph = next(iter(tf.data.Dataset.from_tensors(encoded).map(lambda e: article.seed_transform(e, size)[0])))
    for got in (eager, graph):
        assert got.dtype == tf.float16 and got.shape == (size[0], size[1], 3)
        np.testing.assert_allclose(got.numpy().astype(np.float32), expected.astype(np.float32), atol=4e-3, rtol=2e-3)


def test_seed_transform_of_a_constant_image_is_zero():
    """A flat image has stddev 0: per_image_standardization divides by 1/sqrt(N) instead."""
    flat = tf.io.encode_jpeg(tf.fill([20, 30, 3], tf.constant(77, tf.uint8)), quality=100)
    image, window = article.seed_transform(flat, (20, 30))
    assert window.numpy().tolist() == [0, 0, 20, 30]
    np.testing.assert_array_equal(image.numpy(), np.zeros((20, 30, 3), np.float16))


def test_seed_pipeline_equals_hand_computation(dataset_dir):
    expected = {k: seed_reference(decode(r.encoded), SIZE)
                for k, r in records_by_key(dataset_dir, "val").items()}
    for image, _, key in epoch(dataset_dir, "val", preprocess="seed"):
        np.testing.assert_allclose(image.astype(np.float32), expected[key].astype(np.float32), atol=4e-3, rtol=2e-3)


def test_centred_window_follows_resize_with_crop_or_pad():
    cases = {((120, 160), (101, 170)): [9, -5, 101, 170], ((7, 8), (4, 11)): [1, -1, 4, 11],
             ((10, 10), (10, 10)): [0, 0, 10, 10]}
    for (hw, size), window in cases.items():
        assert article.centred_window(tf.constant(hw), size).numpy().tolist() == window


def test_random_window_is_an_inception_crop_and_reproducible():
    hw = tf.constant([375, 500])
    windows = [inception.random_window(hw, tf.constant([s, 0], tf.int64)).numpy() for s in range(200)]
    for y, x, h, w in windows:
        assert 0 <= y and 0 <= x and y + h <= 375 and x + w <= 500
        whole = (h, w) == (375, 500)  # the fallback after MAX_ATTEMPTS
        assert whole or 0.08 * 0.95 <= h * w / (375 * 500) <= 1.0
        assert whole or 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05
    assert len({tuple(w) for w in windows}) > 150  # really random
    again = inception.random_window(hw, tf.constant([7, 0], tf.int64)).numpy()
    np.testing.assert_array_equal(again, windows[7])  # stateless: same seed, same window


def test_decode_train_crops_the_window_then_flips(dataset_dir):
    encoded = _one_jpeg(dataset_dir)
    full = decode(encoded)
    for s in range(6):
        seed = tf.constant([s, 3], tf.int64)
        image, window, flip = inception.decode_train(encoded, SIZE, seed)
        y, x, h, w = window.numpy()
        expected = tf.image.resize(full[y:y + h, x:x + w], SIZE)
        if flip:
            expected = tf.image.flip_left_right(expected)
        # decode_and_crop_jpeg may differ from decode-then-crop by a grey level at the edges
        assert np.abs(image.numpy() - expected.numpy()).mean() < 1.0
        in_graph = next(iter(tf.data.Dataset.from_tensors((encoded, seed)).map(
            lambda e, sd: inception.decode_train(e, SIZE, sd)[0])))
        np.testing.assert_array_equal(in_graph.numpy(), image.numpy())


def test_transform_boxes_by_hand():
    boxes = tf.constant([[0.5, 0.25, 1.0, 0.75], [0.0, 0.0, 0.1, 0.1]])
    hw = tf.constant([100, 200])
    window = tf.constant([40, 50, 50, 100])  # y, x, h, w
    # box 0 in pixels: y 50..100, x 50..150 -> window-relative (10..60)/50, (0..100)/100
    expected = [[0.2, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    np.testing.assert_allclose(augment.transform_boxes(boxes, hw, window).numpy(), expected, atol=1e-6)
    flipped = [[0.2, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0]]
    np.testing.assert_allclose(augment.transform_boxes(boxes, hw, window, True).numpy(), flipped, atol=1e-6)
    ds = tf.data.Dataset.from_tensors(boxes).map(lambda b: augment.transform_boxes(b, hw, window, True))
    np.testing.assert_allclose(next(iter(ds)).numpy(), flipped, atol=1e-6)
    padded, labels = augment.pad_boxes(boxes, tf.constant([3, 4], tf.int64), 3)
    assert padded.shape == (3, 4) and labels.numpy().tolist() == [3, 4, 0]


def test_boxes_in_evaluation_are_the_records_boxes(dataset_dir):
    expected = records_by_key(dataset_dir, "val")
    for _, label, boxes, box_labels, key in epoch(dataset_dir, "val", with_boxes=True, max_boxes=4):
        objects = expected[key].objects[:4]
        want = np.zeros((4, 4), np.float32)
        for i, o in enumerate(objects):
            want[i] = [o.ymin, o.xmin, o.ymax, o.xmax]
        np.testing.assert_allclose(boxes, np.clip(want, 0, 1), atol=1e-5)
        assert box_labels.tolist() == [o.label for o in objects] + [0] * (4 - len(objects))


def test_training_boxes_stay_in_the_unit_square(dataset_dir):
    got = epoch(dataset_dir, "val", training=True, with_boxes=True, batch_size=1)
    for _, _, boxes, box_labels, _ in got:
        assert boxes.min() >= 0.0 and boxes.max() <= 1.0
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()


@pytest.mark.parametrize("decoder", ["cpu", "dali"])
def test_seeded_training_is_reproducible(dataset_dir, decoder):
    def first_batch(seed):
        ds = input_lib.make_dataset(dataset_dir, "train", batch_size=8, image_size=SIZE, training=True,
                                    decoder=decoder, seed=seed, with_keys=True)
        return [t.numpy() for t in next(iter(ds))]

    a, b = first_batch(5), first_batch(5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # ...and the seed is what decides: another one gives another batch, other examples in it
    # (96 in the split: the same 8 in the same order by chance is out of the question) and
    # other pixels.
    other = first_batch(6)
    assert not np.array_equal(other[2], a[2])
    assert not np.array_equal(other[0], a[0])


# --- dtypes and arguments -----------------------------------------------------------------
def test_output_dtype_rules():
    assert input_lib.output_dtype("inception") == tf.float32
    assert input_lib.output_dtype("seed") == tf.float16
    assert input_lib.output_dtype("seed", "float32") == tf.float32
    assert input_lib.output_dtype("inception", tf.bfloat16) == tf.bfloat16
    with pytest.raises(ValueError, match="int32"):
        input_lib.output_dtype("inception", tf.int32)
    with pytest.raises(ValueError, match="preprocess"):
        input_lib.output_dtype("vgg")


def test_mixed_float16_policy_gives_float16_images(dataset_dir):
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        assert input_lib.output_dtype("inception") == tf.float16
        ds = input_lib.make_dataset(dataset_dir, "val", batch_size=4, image_size=SIZE, training=False,
                                    decoder="cpu")
        assert ds.element_spec[0].dtype == tf.float16
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_bfloat16_on_request(dataset_dir):
    ds = input_lib.make_dataset(dataset_dir, "val", batch_size=4, image_size=32, training=False,
                                decoder="cpu", dtype="bfloat16")
    images, _ = next(iter(ds))
    assert images.dtype == tf.bfloat16 and images.shape == (4, 32, 32, 3)


def test_argument_errors(dataset_dir, tmp_path):
    with pytest.raises(UserError, match="no split 'test'"):
        input_lib.make_dataset(dataset_dir, "test", batch_size=4, image_size=32, training=False, decoder="cpu")
    with pytest.raises(UserError, match="dataset_info.json not found"):
        input_lib.make_dataset(str(tmp_path), "val", batch_size=4, image_size=32, training=False, decoder="cpu")
    with pytest.raises(ValueError, match="image_size"):
        input_lib.make_dataset(dataset_dir, "val", batch_size=4, image_size=(0, 3), training=False, decoder="cpu")
    with pytest.raises(ValueError, match="worker_index"):
        input_lib.make_dataset(dataset_dir, "val", batch_size=4, image_size=32, training=False, decoder="cpu",
                               num_workers=2, worker_index=2)
    with pytest.raises(ValueError, match="decoder"):
        input_lib.resolve_decoder("gpu")


def test_auto_decoder_is_tfdata_without_a_gpu():
    """auto is DALI only where TensorFlow sees a GPU and DALI's plugin loads (asked here of
    TensorFlow and of the import itself, not of detrec's own helpers)."""
    try:
        import nvidia.dali.plugin.tf  # noqa: F401
        dali = True
    except Exception:  # ImportError, or a plugin built against another TensorFlow
        dali = False
    expected = "dali" if tf.config.list_physical_devices("GPU") and dali else "cpu"
    assert input_lib.resolve_decoder("auto") == expected


def test_split_size_and_plans(dataset_dir):
    assert split_size(dataset_dir, "train") == 96
    plan = input_lib.epoch_plan(dataset_dir, "train", batch_size=10, training=True, decoder="cpu")
    assert (plan.num_examples, plan.steps) == (96, 9)


# --- corruption ---------------------------------------------------------------------------
def _flip_bytes_in_record(path: str, index: int) -> None:
    offset = record_offsets(path)[index]
    data = bytearray(open(path, "rb").read())
    for i in range(offset + 1000, offset + 1040):  # inside the JPEG payload: the CRC catches it
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _iterate(data_dir: str, **kwargs) -> int:
    ds = input_lib.make_dataset(data_dir, "val", batch_size=4, image_size=16, training=False, decoder="cpu",
                                **kwargs)
    return sum(len(labels) for _, labels in ds)


def test_corrupt_shard_error_names_the_file(dataset_dir, tmp_path):
    data = corrupt_copy(dataset_dir, tmp_path)
    shard = os.path.join(data, "val-00001-of-00002.tfrecord")
    _flip_bytes_in_record(shard, 3)
    # Without the wrapper: a TF error, but its message names the file (not a bare DataLossError).
    with pytest.raises(tf.errors.InvalidArgumentError, match="val-00001-of-00002.tfrecord"):
        _iterate(data)
    with pytest.raises(input_lib.CorruptShardError) as info:
        with input_lib.shard_errors():
            _iterate(data)
    assert info.value.path == shard
    assert "only 3 of its 16 records" in str(info.value)
    assert isinstance(info.value, UserError)  # the CLI prints it as one line


def test_shard_cut_at_a_record_boundary_is_caught(dataset_dir, tmp_path):
    """TFRecordDataset sees nothing wrong here; the dataset_info count does."""
    data = corrupt_copy(dataset_dir, tmp_path)
    shard = os.path.join(data, "val-00000-of-00002.tfrecord")
    cut = record_offsets(shard)[10]
    with open(shard, "r+b") as f:
        f.truncate(cut)
    with pytest.raises(input_lib.CorruptShardError, match="val-00000-of-00002.tfrecord: only 10 of its 16"):
        with input_lib.shard_errors():
            _iterate(data)


def test_missing_shard_is_named(dataset_dir, tmp_path):
    data = corrupt_copy(dataset_dir, tmp_path)
    os.remove(os.path.join(data, "val-00001-of-00002.tfrecord"))
    with pytest.raises(input_lib.CorruptShardError, match="val-00001-of-00002.tfrecord: the file is missing"):
        _iterate(data)  # found when the pipeline is built, before anything is read


def test_skip_corrupt_skips_and_counts(dataset_dir, tmp_path):
    data = corrupt_copy(dataset_dir, tmp_path)
    _flip_bytes_in_record(os.path.join(data, "val-00001-of-00002.tfrecord"), 3)
    counter = input_lib.SkipCounter()
    assert _iterate(data, skip_corrupt=True, counter=counter) == 32 - 13
    assert counter.result() == {"records": 13, "shards": 1}
    clean = input_lib.SkipCounter()
    assert _iterate(dataset_dir, skip_corrupt=True, counter=clean) == 32
    assert clean.result() == {"records": 0, "shards": 0}


def test_skip_corrupt_names_the_shard_on_stderr(dataset_dir, tmp_path, capfd):
    data = corrupt_copy(dataset_dir, tmp_path)
    _flip_bytes_in_record(os.path.join(data, "val-00000-of-00002.tfrecord"), 0)
    _iterate(data, skip_corrupt=True)
    err = capfd.readouterr().err
    assert "skipping the rest of corrupt shard" in err and "val-00000-of-00002.tfrecord: read 0 of 16" in err


# --- the benchmark command (a smoke run; figures come from `detrec bench input`) ----------
@pytest.mark.slow  # a benchmark run (~5 s)
def test_bench_input_runs_every_row(dataset_dir, synth_tree, capsys, monkeypatch):
    from detrec.pipelines import bench_input

    drops = []  # the real drop empties the whole machine's page cache: recorded here instead
    monkeypatch.setattr(bench_input, "drop_page_cache", lambda: drops.append(1))
    rc = cli.main(["bench", "input", "--data", dataset_dir, "--source", synth_tree, "--image-size", "36",
                   "--batch-size", "8", "--seconds", "0.4", "--warmup", "0.1", "--rounds", "2", "--decoder", "cpu",
                   "--peers", "--cold", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    # --cold: whole epochs of each of detrec's lines and each peer, the cache dropped before each.
    cold = report["cold"]
    assert [row["key"] for row in cold["rows"]] == ["tfdata", "tfdata_eval", "keras", "list_files"]
    assert len(drops) == 4 * 2 and cold["note"] is None  # four pipelines, --rounds 2
    assert all(len(row["runs"]) == 2 and row["seconds"] == pytest.approx(min(row["runs"]), abs=0.01)
               for row in cold["rows"]), cold["rows"]
    train_images = sum(s.num_examples for s in dataset_info.load(dataset_dir).splits["train"].shards)
    assert [row["images"] for row in cold["rows"]] == [train_images // 8 * 8, train_images, train_images,
                                                        train_images // 8 * 8]
    best_cold = max(row["img_per_s"] for row in cold["rows"] if row["key"] in ("keras", "list_files"))
    assert report["ratios"]["train_vs_best_peer_cold"] == pytest.approx(cold["rows"][0]["img_per_s"] / best_cold)
    assert [row["key"] for row in report["rows"]] == ["tfdata", "tfdata_eval", "ceiling", "raw", "article", "keras",
                                                      "list_files"]
    assert all(row["rate"] > 0 and len(row["rates"]) == 2 and row["first_batch_s"] > 0 for row in report["rows"])
    # Images are counted per batch row (the article batches 16): an image side of 36 would show.
    assert all(row["items"] % 8 == 0 for row in report["rows"] if row["unit"] == "img/s" and row["key"] != "keras")
    assert set(report["ratios"]) == {"ours_vs_ceiling", "ours_vs_article", "train_vs_best_peer", "eval_vs_best_peer",
                                     "train_vs_best_peer_cold"}
    rates = {row["key"]: row["rate"] for row in report["rows"]}
    assert report["ratios"]["ours_vs_article"] == pytest.approx(rates["tfdata"] / rates["article"])
    best = max(rates["keras"], rates["list_files"])
    assert report["ratios"]["train_vs_best_peer"] == pytest.approx(rates["tfdata"] / best)
    assert report["ratios"]["eval_vs_best_peer"] == pytest.approx(rates["tfdata_eval"] / best)


def test_bench_input_peers_read_class_folders_by_the_largest_box(synth_tree, tmp_path):
    """The peers' tree: every annotated image once, hard-linked under its largest box's synset."""
    from detrec.pipelines import bench_input
    from detrec.preprocess import annotations

    pairs = bench_input.article_pairs(synth_tree, "train")
    folder = bench_input.class_folders(pairs, str(tmp_path / "folders"))
    found = {os.path.join(d, n) for d, _, names in os.walk(folder) for n in names}
    assert len(found) == len(pairs)
    for i, (xml, jpeg) in enumerate(pairs):
        with open(xml, "rb") as f:
            ann = annotations.parse(f.read(), xml)
        (linked,) = [path for path in found if path.endswith(f"{i:08d}.jpg")]
        assert os.path.samefile(linked, jpeg)
        areas = [(o.xmax - o.xmin) * (o.ymax - o.ymin) for o in ann.objects]  # synth boxes lie inside the image
        expected = ann.objects[areas.index(max(areas))].name if areas else "background"
        assert os.path.basename(os.path.dirname(linked)) == expected


def test_bench_input_peers_need_the_source(dataset_dir, capsys):
    assert cli.main(["bench", "input", "--data", dataset_dir, "--peers", "--decoder", "cpu"]) == 2
    assert "--peers reads the JPEG files themselves: give --source" in capsys.readouterr().err
    assert cli.main(["bench", "input", "--data", dataset_dir, "--cold", "--decoder", "cpu"]) == 2
    assert "--cold compares detrec with its peers: give --peers" in capsys.readouterr().err


def test_a_page_cache_that_cannot_be_dropped_is_said(monkeypatch):
    import builtins

    from detrec.pipelines import bench_input

    real_open = builtins.open

    def forbidden(path, *args, **kwargs):
        if path == "/proc/sys/vm/drop_caches":
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", forbidden)
    assert "could not be dropped (Permission denied; it needs root" in bench_input.drop_page_cache()


def test_bench_input_bad_data_is_one_line(tmp_path, capsys):
    assert cli.main(["bench", "input", "--data", str(tmp_path)]) == 2
    assert "dataset_info.json not found" in capsys.readouterr().err
