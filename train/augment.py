"""Per-image ops every transform's tf.data side shares: decode settings, resize, boxes.

Pure TensorFlow on one example, so each op runs eagerly (tests) and inside `Dataset.map`
alike (the big_vision `pp/ops_image` lesson). The transforms themselves (detrec.train.
transforms: "inception", "seed") are "take a window of the source image, bring it to the
output size"; boxes are mapped through the same window (and flip), so they stay on their
objects. The DALI line maps them in numpy the same way (`dali_feed.map_boxes`).
"""

from __future__ import annotations

import tensorflow as tf

# libjpeg's accurate integer IDCT, what DALI's decoder uses (TF's default is the less accurate
# IFAST, no faster on these images); the decode ceiling in `detrec bench input` uses it too.
DCT_METHOD = "INTEGER_ACCURATE"


def jpeg_shape(encoded: tf.Tensor) -> tf.Tensor:
    """(height, width) of a JPEG from its header alone, int32."""
    return tf.image.extract_jpeg_shape(encoded)[:2]


def resize(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Bilinear resize (half-pixel centres, no antialias) of uint8 pixels to float32 0..255.

    Cast first: TF's bilinear kernel runs ~20% faster on float32 input than on uint8, and
    the result is the same (the uint8 kernel interpolates in float too).
    """
    return tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=False)


def transform_boxes(boxes: tf.Tensor, hw: tf.Tensor, window: tf.Tensor, flip: tf.Tensor | bool = False) -> tf.Tensor:
    """Maps [N, 4] (ymin, xmin, ymax, xmax) boxes, normalised to the source image, into the
    output image of `window` (y, x, h, w in source pixels): same normalisation, clipped to
    [0, 1], mirrored when `flip`. A box the window cuts off entirely collapses to zero area.
    """
    hw = tf.cast(hw, tf.float32)
    window = tf.cast(window, tf.float32)
    scale = tf.concat([hw, hw], axis=0)
    start = tf.concat([window[:2], window[:2]], axis=0)
    extent = tf.concat([window[2:], window[2:]], axis=0)
    out = tf.clip_by_value((boxes * scale - start) / extent, 0.0, 1.0)
    ymin, xmin, ymax, xmax = tf.unstack(out, num=4, axis=-1)
    mirrored = tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1)
    return tf.where(tf.cast(flip, tf.bool), mirrored, out)


def pad_boxes(boxes: tf.Tensor, labels: tf.Tensor, max_boxes: int) -> tuple[tf.Tensor, tf.Tensor]:
    """First `max_boxes` boxes (document order), zero-padded; padding has label 0 (background)."""
    boxes, labels = boxes[:max_boxes], labels[:max_boxes]
    missing = max_boxes - tf.shape(boxes)[0]
    boxes = tf.pad(boxes, [[0, missing], [0, 0]])
    labels = tf.pad(labels, [[0, missing]])
    return tf.ensure_shape(boxes, [max_boxes, 4]), tf.ensure_shape(labels, [max_boxes])


def largest_box_of(boxes: tf.Tensor, box_labels: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The largest box whose label is the image's: ([..., M, 4], [..., M], [...]) -> (box [..., 4],
    found [...]); found is False (and the box zeros) where no box of positive area has that label."""
    # One extra row that matches nothing, so that an image without boxes has a row to pick.
    pad = [[0, 0]] * (len(labels.shape)) + [[0, 1]]
    boxes = tf.pad(boxes, pad + [[0, 0]])
    box_labels = tf.pad(box_labels, pad, constant_values=-1)
    area = tf.nn.relu(boxes[..., 2] - boxes[..., 0]) * tf.nn.relu(boxes[..., 3] - boxes[..., 1])
    mine = tf.equal(box_labels, tf.cast(labels, box_labels.dtype)[..., None]) & (area > 0)
    best = tf.argmax(tf.where(mine, area, -1.0), axis=-1)
    box = tf.gather(boxes, best, batch_dims=len(labels.shape))
    found = tf.reduce_any(mine, axis=-1)
    return tf.where(found[..., None], box, 0.0), found
