"""Per-image ops of the tf.data input: decode, crop, resize, flip, normalise; boxes follow.

Pure TensorFlow on one example, so each op runs eagerly (tests) and inside `Dataset.map`
alike (the big_vision `pp/ops_image` lesson). train/dali.py builds the same geometry from
DALI operators and imports the constants from here, so the two decoders cannot drift apart.

Every transform is "take a window of the source image, bring it to the output size":

* evaluation ("inception"): the whole image, resized (bilinear, no antialias);
* training ("inception"): a random window (random-resized crop: 8-100% of the area, aspect
  3/4..4/3, drawn exactly as DALI's `random_crop_generator` draws it, see `random_window`),
  decoded with `decode_and_crop_jpeg` so the pixels outside the window are never run
  through the IDCT, resized, then a random left-right flip;
* "seed" (the original article): a centred window of exactly the output size, padded with
  zeros where the image is smaller (`resize_with_crop_or_pad`, no resampling), then
  `per_image_standardization` of the float16 image.

Boxes are mapped through the same window (and flip), so they stay on their objects.
"""

from __future__ import annotations

import math

import tensorflow as tf

# "inception" normalisation: x / 127.5 - 1 maps [0, 255] to [-1, 1], the convention of the
# keras.applications Inception/MobileNet/EfficientNetV2 backbones the trainer can use.
INCEPTION_SCALE = 127.5
# Inception random-resized crop (Szegedy et al. 2015; the torchvision/TF-slim defaults).
AREA_RANGE = (0.08, 1.0)
ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
MAX_ATTEMPTS = 10
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


def random_window(hw: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """A random-resized-crop window (y, x, h, w) inside an image of size `hw`, int32.

    The algorithm of DALI's `random_crop_generator` (dali/util/random_crop_generator.cc, the
    torchvision one), so that both decoders train on the same distribution of windows: up to
    MAX_ATTEMPTS draws of an area uniform in AREA_RANGE and an aspect ratio (w/h) uniform in
    log space over ASPECT_RATIO_RANGE, the first that fits (and keeps its ratio after
    rounding) wins; else the whole image, clamped to the ratio range (and to the largest
    area); an image too wide or too tall for any draw goes straight to that clamp. The
    offset is uniform over the positions that fit. (TensorFlow's sample_distorted_bounding_box,
    used before, draws the ratio uniformly and the height rather than the area, and falls
    back to the whole image unclamped.) Stateless: a seeded pipeline draws the same windows
    whatever the parallelism.
    """
    (ratio_lo, ratio_hi), (area_lo, area_hi) = ASPECT_RATIO_RANGE, AREA_RANGE
    height, width = hw[0], hw[1]
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = h_f * w_f
    max_w = tf.maximum(1, tf.cast(h_f * ratio_hi, tf.int32))  # the widest window of full height
    max_h = tf.maximum(1, tf.cast(w_f * (1.0 / ratio_lo), tf.int32))  # the tallest of full width

    draws = tf.random.stateless_uniform([MAX_ATTEMPTS, 2], seed=seed)
    target = (area_lo + (area_hi - area_lo) * draws[:, 0]) * area
    ratio = tf.exp(math.log(ratio_lo) + (math.log(ratio_hi) - math.log(ratio_lo)) * draws[:, 1])
    w = tf.maximum(1, tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32))
    h = tf.maximum(1, tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32))
    kept = tf.cast(w, tf.float32) / tf.cast(h, tf.float32)
    fits = (w <= width) & (h <= height) & (kept >= ratio_lo) & (kept <= ratio_hi)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)  # the first that fits

    # The whole image clamped to the ratio range, then to the largest area.
    image_ratio = w_f / h_f
    clamp_h = tf.where(image_ratio < ratio_lo, max_h, height)
    clamp_w = tf.where(image_ratio > ratio_hi, max_w, width)
    shrink = tf.sqrt(tf.minimum(1.0, area_hi * area / tf.cast(clamp_h * clamp_w, tf.float32)))
    fallback_h = tf.maximum(1, tf.cast(tf.cast(clamp_h, tf.float32) * shrink, tf.int32))
    fallback_w = tf.maximum(1, tf.cast(tf.cast(clamp_w, tf.float32) * shrink, tf.int32))

    min_area = area * area_lo
    too_wide = tf.cast(height * max_w, tf.float32) < min_area
    too_tall = tf.logical_and(tf.logical_not(too_wide), tf.cast(width * max_h, tf.float32) < min_area)
    found = tf.reduce_any(fits) & ~too_wide & ~too_tall
    crop_h = tf.where(too_wide, height, tf.where(too_tall, max_h, tf.where(found, h[first], fallback_h)))
    crop_w = tf.where(too_wide, max_w, tf.where(too_tall, width, tf.where(found, w[first], fallback_w)))

    # Integer offsets uniform over [0, H - h] and [0, W - w], as std::uniform_int_distribution.
    where = tf.random.stateless_uniform([2], seed=seed + [0, 2])
    room = tf.stack([height - crop_h, width - crop_w])
    offset = tf.minimum(tf.cast(where * tf.cast(room + 1, tf.float32), tf.int32), room)
    return tf.stack([offset[0], offset[1], crop_h, crop_w])


def centred_window(hw: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """The window `tf.image.resize_with_crop_or_pad` takes: `size`, centred, may overhang.

    Offsets follow TF's arithmetic exactly: crop offset floor((h - th) / 2) when the image
    is larger, pad offset floor((th - h) / 2) when smaller (a negative window start).
    """
    target = tf.constant(size, tf.int32)
    crop = tf.maximum((hw - target) // 2, 0)
    pad = tf.maximum((target - hw) // 2, 0)
    start = crop - pad
    return tf.concat([start, target], axis=0)


def decode_train(encoded: tf.Tensor, size: tuple[int, int], seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Random-resized crop + random flip; returns (float32 [h, w, 3] in 0..255, window, flipped)."""
    window = random_window(jpeg_shape(encoded), seed)
    # Decode only the window: rows below it are never entropy-decoded and columns outside it
    # never reach the IDCT. This is how training outruns a full decode of every image.
    image = tf.io.decode_and_crop_jpeg(encoded, window, channels=3, dct_method=DCT_METHOD)
    flip = tf.random.stateless_uniform([], seed=seed + [0, 1]) < 0.5
    # Flipping the uint8 crop moves a quarter of the bytes of the float32 output; bilinear
    # resizing with half-pixel centres is mirror-symmetric, so the result is the same.
    image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    return resize(image, size), window, flip


def decode_eval(encoded: tf.Tensor, size: tuple[int, int]) -> tuple[tf.Tensor, tf.Tensor]:
    """Full decode, resized to `size` (aspect not kept); returns (float32 0..255, window)."""
    image = tf.io.decode_jpeg(encoded, channels=3, dct_method=DCT_METHOD)
    hw = tf.shape(image)[:2]
    return resize(image, size), tf.concat([[0, 0], hw], axis=0)


def normalize_inception(image: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """0..255 -> [-1, 1], in `dtype` (computed in float32 so float16 rounds only once)."""
    return tf.cast(tf.cast(image, tf.float32) / INCEPTION_SCALE - 1.0, dtype)


def seed_transform(encoded: tf.Tensor, size: tuple[int, int],
                   dtype: tf.DType = tf.float16) -> tuple[tf.Tensor, tf.Tensor]:
    """The original article's transform, step for step; returns (image, window).

    decode_jpeg -> resize_with_crop_or_pad -> cast float16 -> per_image_standardization.
    One deliberate difference: the article's decode_jpeg used TF's default IDCT (IFAST);
    here, as everywhere in detrec, the accurate one, which DALI's decoder also uses, so both
    decoders give the same pixels (the IFAST ones differ by a grey level or two).
    TF 2.21's per_image_standardization always answers float32 (it computes in float32);
    the article's TF returned the input's float16, so the result is cast to `dtype`
    (float16 by default, as the article's network saw it).
    """
    image = tf.io.decode_jpeg(encoded, channels=3, dct_method=DCT_METHOD)
    window = centred_window(tf.shape(image)[:2], size)
    image = tf.image.resize_with_crop_or_pad(image, size[0], size[1])
    image = tf.cast(image, tf.float16)
    image = tf.image.per_image_standardization(image)
    return tf.cast(image, dtype), window


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
