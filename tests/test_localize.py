"""The "localize" task: its target, its loss, its metrics (against hand-computed cases and
against detrec.core.localization, the scorer's numpy metric), its crops on both input lines,
its model, and a resume that must equal an uninterrupted run."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from detrec.core import localization
from detrec.core.dataset_info import ClassInfo
from detrec.core.errors import UserError
from detrec.train import augment, models, registry, rundir
from detrec.train.config import TrainConfig, run_config_dict
from detrec.train.data import Data
from detrec.train.input import dali_feed
from detrec.train.tasks import localize
from detrec.train.trainer import Trainer
from detrec.train.transforms import inception

M = 4  # boxes per image in these batches


def padded(boxes: list[tuple], labels: list[int]) -> tuple[tf.Tensor, tf.Tensor]:
    """One image's boxes (ymin, xmin, ymax, xmax) padded to M rows of label 0."""
    rows = list(boxes) + [(0.0, 0.0, 0.0, 0.0)] * (M - len(boxes))
    return tf.constant([rows], tf.float32), tf.constant([list(labels) + [0] * (M - len(labels))], tf.int64)


def outputs_of(box: tuple, ranking: list[int], classes: int = 8) -> dict:
    """Model outputs whose logits rank the classes in `ranking` order and whose box is `box`."""
    logits = np.full((1, classes), -10.0, np.float32)
    for rank, c in enumerate(ranking):
        logits[0, c] = 10.0 - rank
    return {"logits": tf.constant(logits), "box": tf.constant([box], tf.float32)}


@tf.function(reduce_retracing=True)
def _eval_sums(outputs, labels, boxes, box_labels):
    return localize.eval_sums(outputs, labels, (boxes, box_labels))


def sums(outputs: dict, label: int, boxes, labels) -> dict[str, float]:
    values = _eval_sums(outputs, tf.constant([label], tf.int64), boxes, labels)
    return dict(zip(localize.EVAL_SUMS, (float(v) for v in values)))


# --- target -------------------------------------------------------------------------------
def test_the_target_is_the_largest_box_of_the_image_class():
    boxes, labels = padded([(0, 0, 0.5, 0.5), (0, 0, 0.9, 0.9), (0.1, 0.1, 0.4, 0.6)], [2, 3, 2])
    box, found = augment.largest_box_of(boxes, labels, tf.constant([2], tf.int64))
    # class 2 has 0.25 and 0.15 of the image; class 3's larger box is not the image's class
    np.testing.assert_allclose(box.numpy(), [[0, 0, 0.5, 0.5]])
    assert found.numpy().tolist() == [True]
    box, found = augment.largest_box_of(boxes, labels, tf.constant([5], tf.int64))
    assert found.numpy().tolist() == [False] and box.numpy().tolist() == [[0, 0, 0, 0]]


def test_a_box_the_crop_cut_to_nothing_is_no_target_and_an_image_without_boxes_has_none():
    boxes = tf.constant([[0.3, 0.3, 0.3, 0.8]])  # zero height after clipping
    _, found = augment.largest_box_of(boxes, tf.constant([1], tf.int64), tf.constant(1, tf.int64))
    assert not bool(found)
    _, found = augment.largest_box_of(tf.zeros([0, 4]), tf.zeros([0], tf.int64), tf.constant(1, tf.int64))
    assert not bool(found)


# --- loss ---------------------------------------------------------------------------------
def test_images_without_a_box_of_their_class_train_the_class_only():
    boxes, labels = padded([(0.2, 0.2, 0.6, 0.6)], [1])
    label = tf.constant([3], tf.int64)  # no box of class 3: e.g. a folder-labelled image
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(label, outputs_of((0, 0, 1, 1), [3])["logits"])
    for box in [(0, 0, 1, 1), (0.5, 0.5, 0.6, 0.9)]:  # the box does not count at all
        loss = localize.loss(outputs_of(box, [3]), label, (boxes, labels))
        np.testing.assert_allclose(loss.numpy(), ce.numpy(), rtol=1e-6)


def test_the_box_loss_is_l1_plus_giou_with_the_documented_weights():
    boxes, labels = padded([(0.0, 0.0, 0.5, 0.5)], [1])
    label = tf.constant([1], tf.int64)
    out = outputs_of((0.0, 0.0, 0.5, 1.0), [1])
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(label, out["logits"]).numpy()[0]
    # L1: |1.0 - 0.5| on xmax = 0.5; IoU = 0.25 / 0.5 = 0.5, the enclosing box is the
    # prediction itself, so GIoU = IoU = 0.5.
    expected = ce + 5.0 * 0.5 + 2.0 * (1 - 0.5)
    np.testing.assert_allclose(localize.loss(out, label, (boxes, labels)).numpy(), [expected], rtol=1e-6)
    perfect = localize.loss(outputs_of((0.0, 0.0, 0.5, 0.5), [1]), label, (boxes, labels)).numpy()
    np.testing.assert_allclose(perfect, [ce], rtol=1e-6)


def test_giou_of_disjoint_boxes_by_hand():
    a, b = tf.constant([0.0, 0.0, 0.2, 0.2]), tf.constant([0.0, 0.6, 0.2, 0.8])
    iou, giou = localize.iou_and_giou(a, b)
    # union 0.08, enclosing 0.2 x 0.8 = 0.16: GIoU = 0 - (0.16 - 0.08) / 0.16
    assert float(iou) == 0.0
    np.testing.assert_allclose(float(giou), -0.5, rtol=1e-6)


# --- metrics ------------------------------------------------------------------------------
def test_a_wrong_class_with_a_perfect_box_is_not_localised():
    boxes, labels = padded([(0.1, 0.1, 0.5, 0.5)], [1])
    got = sums(outputs_of((0.1, 0.1, 0.5, 0.5), [2, 3, 4, 5, 6]), 1, boxes, labels)
    assert got == {"boxed": 1, "loc_top1": 0, "iou": pytest.approx(1.0), "gt_images": 1, "top5_loc_error": 1}


def test_the_right_class_needs_iou_of_one_half():
    # truth 0..1 x 0..1 (normalised); a prediction 0..1 x 0..0.49 has IoU 0.49, 0..0.5 has 0.5
    boxes, labels = padded([(0.0, 0.0, 1.0, 1.0)], [1])
    low = sums(outputs_of((0.0, 0.0, 1.0, 0.49), [1]), 1, boxes, labels)
    assert (low["loc_top1"], low["top5_loc_error"]) == (0, 1)
    assert low["iou"] == pytest.approx(0.49)
    half = sums(outputs_of((0.0, 0.0, 1.0, 0.5), [1]), 1, boxes, labels)
    assert (half["loc_top1"], half["top5_loc_error"]) == (1, 0)


def test_top5_counts_any_guess_and_averages_over_the_image_classes():
    boxes, labels = padded([(0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0), (0.0, 0.0, 0.5, 0.5)], [1, 2, 1])
    # class 1 fifth guess, box on its boxes; class 2 guessed, but the box misses its box
    got = sums(outputs_of((0.0, 0.0, 0.5, 0.5), [7, 6, 5, 2, 1]), 1, boxes, labels)
    assert got["top5_loc_error"] == pytest.approx(0.5)  # two classes, one found
    assert got["loc_top1"] == 0  # the top-1 class is 7
    sixth = sums(outputs_of((0.0, 0.0, 0.5, 0.5), [7, 6, 5, 4, 3, 1]), 1, boxes, labels)
    assert sixth["top5_loc_error"] == 1.0


def test_an_image_without_boxes_counts_in_no_localisation_figure():
    boxes, labels = padded([], [])
    got = sums(outputs_of((0, 0, 1, 1), [0]), 0, boxes, labels)
    assert got == {"boxed": 0, "loc_top1": 0, "iou": 0, "gt_images": 0, "top5_loc_error": 0}
    record = localize.eval_record({"boxed": 4, "loc_top1": 3, "iou": 2.4, "gt_images": 5, "top5_loc_error": 1.5})
    assert record == {"loc_accuracy": 0.75, "mean_iou": pytest.approx(0.6), "top5_loc_error": 0.3}


def test_the_trainer_metric_is_the_scorer_metric():
    """Random images through the TF twin and detrec.core.localization (pixel boxes): the same
    per-image top-5 localisation error."""
    rng = np.random.default_rng(0)
    classes, n = 6, 200
    errors_tf, errors_np = [], []
    for _ in range(n):
        count = int(rng.integers(1, M + 1))
        corners = np.sort(rng.uniform(0, 1, (count, 2, 2)), axis=1)  # [box, (min, max), (y, x)]
        truth = [(float(c[0, 0]), float(c[0, 1]), float(c[1, 0]), float(c[1, 1])) for c in corners]
        truth_labels = [int(v) for v in rng.integers(1, 4, count)]
        pick = truth[int(rng.integers(count))]
        box = tuple(np.clip(np.array(pick) + rng.normal(0, 0.08, 4), 0, 1))
        ranking = [int(c) for c in rng.permutation(classes)]
        boxes, labels = padded(truth, truth_labels)
        errors_tf.append(sums(outputs_of(box, ranking, classes), truth_labels[0], boxes, labels)["top5_loc_error"])
        h, w = 375.0, 500.0  # pixel boxes (xmin, ymin, xmax, ymax), as the scorer reads them
        pixels = lambda b: (b[1] * w, b[0] * h, b[3] * w, b[2] * h)  # noqa: E731
        guesses = [(str(c), pixels(box)) for c in ranking if c != 0][:5]  # background is no guess
        errors_np.append(localization.image_error(guesses, [(str(t), pixels(b)) for t, b in zip(truth_labels, truth)]))
    np.testing.assert_allclose(errors_tf, errors_np, atol=1e-6)
    assert 0 < np.mean(errors_np) < 1  # both outcomes occur


# --- crops that keep the object, on both lines ---------------------------------------------
def covered_share(window, box, hw) -> float:
    y, x, h, w = (float(v) for v in window)
    y0, x0, y1, x1 = box[0] * hw[0], box[1] * hw[1], box[2] * hw[0], box[3] * hw[1]
    inter = max(0.0, min(y + h, y1) - max(y, y0)) * max(0.0, min(x + w, x1) - max(x, x0))
    return inter / ((y1 - y0) * (x1 - x0))


def test_tf_data_crops_keep_the_share_of_the_object():
    hw, box = tf.constant([300, 400]), tf.constant([0.1, 0.6, 0.3, 0.95])
    shares = [covered_share(inception.random_window(hw, tf.constant([s, 7]), (box, 0.7)).numpy(),
                            box.numpy(), (300, 400)) for s in range(40)]
    assert min(shares) >= 0.7 - 1e-6
    plain = [covered_share(inception.random_window(hw, tf.constant([s, 7])).numpy(), box.numpy(), (300, 400))
             for s in range(40)]
    assert min(plain) < 0.7  # without the box, crops often lose the object


def test_dali_crops_keep_the_share_and_records_without_a_box_draw_as_classify():
    records = np.arange(200)
    hw = np.tile([[300, 400]], (200, 1))
    boxes = np.tile(np.array([[0.1, 0.6, 0.3, 0.95]], np.float32), (200, 1))
    boxes[::2] = np.nan  # every other record has no box of its class
    windows = inception.crop_windows(3, 1, records, hw, (boxes, 0.7))
    for window, box in zip(windows[1::2], boxes[1::2]):
        assert covered_share(window, box, (300, 400)) >= 0.7 - 1e-6
    np.testing.assert_array_equal(windows[::2], inception.crop_windows(3, 1, records, hw)[::2])
    # a pure function of (seed, epoch, record): resume draws the same windows
    np.testing.assert_array_equal(windows, inception.crop_windows(3, 1, records, hw, (boxes, 0.7)))


def test_both_lines_pick_the_same_object_to_keep():
    boxes = np.array([[0, 0, 0.5, 0.5], [0, 0, 0.9, 0.9], [0.1, 0.1, 0.4, 0.6]], np.float32)
    labels = np.array([2, 3, 2])
    np.testing.assert_array_equal(dali_feed.largest_box_of(boxes, labels, 2), [0, 0, 0.5, 0.5])
    assert np.isnan(dali_feed.largest_box_of(boxes, labels, 7)).all()
    box, _ = augment.largest_box_of(tf.constant(boxes), tf.constant(labels, tf.int64), tf.constant(2, tf.int64))
    np.testing.assert_array_equal(box.numpy(), [0, 0, 0.5, 0.5])


# --- the model and the run ------------------------------------------------------------------
@pytest.mark.parametrize("name", models.MODELS)
def test_every_model_gives_logits_and_a_box(name):
    model = models.build(models.ModelConfig(name, 5, 64, task="localize"))
    out = model(tf.zeros([2, 64, 64, 3]), training=False)
    assert out["logits"].shape == (2, 5) and out["box"].shape == (2, 4)
    box = out["box"].numpy()
    assert (box[:, 2] >= box[:, 0]).all() and (box[:, 3] >= box[:, 1]).all()


STEPS, BATCH, SIZE = 4, 4, 64
CLASSES = [ClassInfo(0, "background", "background"), ClassInfo(1, "n01", "one"), ClassInfo(2, "n02", "two")]


class BoxStream:
    """The same batches (images, labels, boxes, box_labels) for an epoch whenever rebuilt; asks
    the trainer to stop once `stop_after` (epoch, batch) was drawn."""

    def __init__(self, stop_after=None) -> None:
        self.stop_after, self.trainer = stop_after, None

    def batch(self, seed):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, len(CLASSES), BATCH)
        boxes = np.zeros((BATCH, M, 4), np.float32)
        box_labels = np.zeros((BATCH, M), np.int64)
        for i, label in enumerate(labels):
            if label and rng.random() < 0.7:  # some labelled images have no box
                corners = np.sort(rng.uniform(0, 1, (2, 2)), axis=0)
                boxes[i, 0], box_labels[i, 0] = corners.reshape(-1), label
        images = rng.uniform(-1, 1, (BATCH, SIZE, SIZE, 3)).astype(np.float32)
        return tuple(tf.constant(v) for v in (images, labels, boxes, box_labels))

    def train(self, epoch):
        for b in range(STEPS):
            if (epoch, b) == self.stop_after:
                self.trainer._stop.requested = True
            yield self.batch([epoch, b])

    def val(self):
        yield self.batch(99)


def run(model_dir, stream, task="localize", epochs=1):
    cfg = TrainConfig(model_dir=model_dir, model=models.ModelConfig("semi_alexnet", len(CLASSES), SIZE, task=task),
                      epochs=epochs, batch_size=BATCH, steps_per_epoch=STEPS, seed=1)
    stream.trainer = Trainer(cfg, Data(train=stream.train, val=stream.val, classes=CLASSES), out=io.StringIO())
    return stream.trainer.run(), stream.trainer


def test_a_resumed_localize_run_equals_an_uninterrupted_one(tmp_path):
    code, whole = run(str(tmp_path / "whole"), BoxStream())
    assert code == 0
    assert run(str(tmp_path / "cut"), BoxStream(stop_after=(0, 1)))[0] == 130
    code, resumed = run(str(tmp_path / "cut"), BoxStream())
    assert code == 0
    for a, b in zip(whole.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with open(os.path.join(tmp_path / "whole", rundir.METRICS)) as f:
        metrics = json.load(f)["epochs"]
    for key in ("val_loc_accuracy", "val_mean_iou", "val_top5_loc_error"):
        assert key in metrics[-1]  # each epoch's figures, in metrics.json
    with open(os.path.join(tmp_path / "whole", "export", "labels.json")) as f:
        assert json.load(f)["task"] == "localize"


def test_a_resume_with_another_task_is_refused(tmp_path):
    cfg = TrainConfig(model_dir=str(tmp_path), model=models.ModelConfig("semi_alexnet", 3, SIZE, task="localize"),
                      epochs=1, batch_size=BATCH, steps_per_epoch=STEPS)
    stored = run_config_dict(cfg, CLASSES)
    (tmp_path / rundir.RUN_CONFIG).write_text(json.dumps(stored))
    other = run_config_dict(TrainConfig(**{**cfg.__dict__, "model": models.ModelConfig("semi_alexnet", 3, SIZE)}),
                            CLASSES)
    with pytest.raises(UserError, match="task: 'localize' there, 'classify' now"):
        rundir.check_resumable(str(tmp_path), other)
    # a run_config.json from before tasks existed was a classify run
    del stored["task"]
    (tmp_path / rundir.RUN_CONFIG).write_text(json.dumps(stored))
    rundir.check_resumable(str(tmp_path), other)


def test_the_task_table_lists_both_and_classify_is_the_default():
    assert registry.DEFAULT_TASK == "classify"
    assert set(registry.TASKS) == {"classify", "localize"}
    assert registry.task("localize").WITH_BOXES and not registry.task("classify").WITH_BOXES


@pytest.mark.parametrize("decoder", ["cpu", pytest.param("dali", marks=pytest.mark.dali)])
def test_both_lines_deliver_the_object_of_every_boxed_record_inside_the_crop(dataset_dir, decoder):
    """On the real input lines: with the task's crops, every training example whose record has a
    box of its class still shows that object (a target of positive area, in the unit square)."""
    from tests.test_input import epoch, records_by_key

    records = records_by_key(dataset_dir, "train")
    rows = epoch(dataset_dir, "train", decoder=decoder, training=True, with_boxes=True, seed=5,
                 min_object_covered=localize.MIN_OBJECT_COVERED)
    boxed = 0
    for _, label, boxes, box_labels, key in rows:
        target, found = augment.largest_box_of(tf.constant(boxes), tf.constant(box_labels), tf.constant(label))
        has_box = any(o.label == label for o in records[key].objects)
        assert bool(found) == has_box, key
        boxed += has_box
        assert (boxes >= 0).all() and (boxes <= 1).all()
    assert boxed > len(rows) // 2


def test_background_is_never_one_of_the_five_guesses():
    # the object's class ranks 6th overall but 5th among object classes, as a submission lists them
    boxes, labels = padded([(0.0, 0.0, 0.5, 0.5)], [1])
    got = sums(outputs_of((0.0, 0.0, 0.5, 0.5), [0, 7, 6, 5, 2, 1]), 1, boxes, labels)
    assert got["top5_loc_error"] == 0
