"""The "localize" task: the class of the image's labelled object and its box.

The article's goal ("detect one object, the one with the largest bounding box") as the
ILSVRC localisation task scores it.

* Target: the largest box of the image's class as the augmented image shows it. Boxes come
  through the crop, the flip and clipping (detrec.train.input's contract), so the largest
  of them whose label is the image's label is the object in view. Images without one
  (background images; folder-labelled CLS-LOC images, 58% of ImageNet train) train the class
  only: their box loss is masked, they are not dropped.
* Crops: training windows keep at least MIN_OBJECT_COVERED of that object
  (Inception's `sample_distorted_bounding_box(min_object_covered=...)`, on both input lines).
* Head: class logits and one box from the same pooled features. The box is a centre and a
  size through a sigmoid (never inverted), given out as corners (ymin, xmin, ymax, xmax)
  normalised to the model's input image; it may overhang the image by up to half its side
  (not clipped in the model, so that every coordinate keeps a gradient); predict clips it.
* Loss: cross-entropy + L1_WEIGHT * L1 + GIOU_WEIGHT * (1 - GIoU), the box terms on images
  with a target only. DETR's weights (Carion et al. 2020): they balance the two box terms at
  their usual scales (L1 summed over four normalised coordinates, GIoU in [-1, 1]).
* Metrics (`eval_sums`, over the val split each epoch): localisation accuracy (top-1 class
  right and IoU >= 0.5 with a box of that class), the mean IoU of the box with the best box of
  the image's class, both over images that have one; and the ILSVRC top-5 localisation error,
  the competition's per-image error averaged over images with any ground-truth box: for each
  ground-truth class of the image, 1 unless one of the five best object classes (background is
  no guess) is that class with IoU >= 0.5 to one of its boxes, averaged over the image's classes (detrec.core.localization is the
  same metric on pixel boxes, which `detrec score` uses; the one box goes with each guess).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers

from detrec.core.localization import IOU_THRESHOLD, MAX_GUESSES
from detrec.train import augment

WITH_BOXES = True
MIN_OBJECT_COVERED = 0.7
L1_WEIGHT = 5.0
GIOU_WEIGHT = 2.0
EVAL_SUMS = ("boxed", "loc_top1", "iou", "gt_images", "top5_loc_error")


@keras.saving.register_keras_serializable(package="detrec")
class CentreSizeToCorners(layers.Layer):
    """[..., 4] (cy, cx, h, w) -> (ymin, xmin, ymax, xmax)."""

    def call(self, inputs):
        cy, cx, h, w = keras.ops.unstack(inputs, 4, axis=-1)
        return keras.ops.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def head(features, num_classes: int):
    logits = layers.Dense(num_classes, dtype="float32", name="logits")(features)
    centre_size = layers.Dense(4, activation="sigmoid", dtype="float32", name="box_centre_size")(features)
    return {"logits": logits, "box": CentreSizeToCorners(dtype="float32", name="box")(centre_size)}


def logits(outputs) -> tf.Tensor:
    return tf.cast(outputs["logits"], tf.float32)


def iou_and_giou(a: tf.Tensor, b: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """IoU and generalised IoU (Rezatofighi et al. 2019) of [..., 4] corner boxes, broadcast."""
    a, b = tf.cast(a, tf.float32), tf.cast(b, tf.float32)
    area_a = tf.nn.relu(a[..., 2] - a[..., 0]) * tf.nn.relu(a[..., 3] - a[..., 1])
    area_b = tf.nn.relu(b[..., 2] - b[..., 0]) * tf.nn.relu(b[..., 3] - b[..., 1])
    inter = (tf.nn.relu(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]))
             * tf.nn.relu(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1])))
    union = area_a + area_b - inter
    iou = tf.math.divide_no_nan(inter, union)
    enclosing = ((tf.maximum(a[..., 2], b[..., 2]) - tf.minimum(a[..., 0], b[..., 0]))
                 * (tf.maximum(a[..., 3], b[..., 3]) - tf.minimum(a[..., 1], b[..., 1])))
    return iou, iou - tf.math.divide_no_nan(enclosing - union, enclosing)


def loss(outputs, labels: tf.Tensor, extras: tuple) -> tf.Tensor:
    boxes, box_labels = extras
    target, has = augment.largest_box_of(boxes, box_labels, labels)
    predicted = tf.cast(outputs["box"], tf.float32)
    _, giou = iou_and_giou(predicted, target)
    box_loss = L1_WEIGHT * tf.reduce_sum(tf.abs(predicted - target), axis=-1) + GIOU_WEIGHT * (1.0 - giou)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits(outputs))
    return ce + tf.where(has, box_loss, 0.0)


def eval_sums(outputs, labels: tf.Tensor, extras: tuple) -> list[tf.Tensor]:
    boxes, box_labels = extras
    predicted = tf.cast(outputs["box"], tf.float32)
    scores = logits(outputs)
    # The competition's five guesses are object classes: background is never one (a submission
    # names none, `detrec predict --submission`), so it is left out of the ranking here too.
    guesses = tf.math.top_k(scores[:, 1:], k=tf.minimum(MAX_GUESSES, tf.shape(scores)[-1] - 1)).indices + 1  # [B, k]
    real = box_labels > 0  # padding rows have label 0 (background)
    iou, _ = iou_and_giou(predicted[:, None, :], boxes)  # [B, M]
    of_class = real & tf.equal(box_labels, labels[:, None])
    boxed = tf.reduce_any(of_class, axis=1)
    best_iou = tf.reduce_max(tf.where(of_class, iou, 0.0), axis=1)
    top1 = tf.equal(tf.argmax(scores, axis=-1), labels)
    loc_top1 = top1 & boxed & (best_iou >= IOU_THRESHOLD)
    # The competition's error: per ground-truth class of the image, whether a guess of that
    # class (one of the top k, each with the one box) has IoU >= 0.5 with one of its boxes.
    guessed = tf.reduce_any(tf.equal(box_labels[:, :, None], tf.cast(guesses[:, None, :], box_labels.dtype)), axis=-1)
    found = real & guessed & (iou >= IOU_THRESHOLD)  # [B, M]
    same = real[:, :, None] & real[:, None, :] & tf.equal(box_labels[:, :, None], box_labels[:, None, :])
    class_found = tf.reduce_any(same & found[:, None, :], axis=2)
    m = tf.shape(box_labels)[1]
    earlier = tf.range(m)[None, :] < tf.range(m)[:, None]  # [m, n]: n comes before m
    first_of_class = real & ~tf.reduce_any(same & earlier[None], axis=2)
    classes = tf.reduce_sum(tf.cast(first_of_class, tf.float64), axis=1)
    missed = tf.reduce_sum(tf.cast(first_of_class & ~class_found, tf.float64), axis=1)
    has_gt = classes > 0
    error = tf.where(has_gt, missed / tf.maximum(classes, 1.0), 0.0)
    as_sum = lambda t: tf.reduce_sum(tf.cast(t, tf.float64))  # noqa: E731
    return [as_sum(boxed), as_sum(loc_top1), as_sum(tf.where(boxed, best_iou, 0.0)), as_sum(has_gt),
            tf.reduce_sum(error)]


def eval_record(sums: dict[str, float]) -> dict[str, float]:
    boxed, images = sums["boxed"], sums["gt_images"]
    nan = float("nan")  # a val split without boxes has no localisation figure
    return {"loc_accuracy": sums["loc_top1"] / boxed if boxed else nan,
            "mean_iou": sums["iou"] / boxed if boxed else nan,
            "top5_loc_error": sums["top5_loc_error"] / images if images else nan}
