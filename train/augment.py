"""Per-image ops of the tf.data input: decode, crop, resize, flip, normalise; boxes follow.

Pure TensorFlow on one example, so each op runs eagerly (tests) and inside `Dataset.map`
alike (the big_vision `pp/ops_image` lesson). The DALI line (train/input/dali.py, its crop
windows drawn by train/input/draws.py) builds the same geometry from DALI operators and
imports the constants from here, so the two decoders cannot drift apart.

Every transform is "take a window of the source image, bring it to the output size":

* evaluation ("inception"): the whole image, resized (bilinear, no antialias);
* training ("inception"): a random window (Inception-style random-resized crop: 8-100% of
  the area, aspect 3/4..4/3, see `random_window` for how it differs from DALI's draw),
  decoded with `decode_and_crop_jpeg` so the pixels outside the window are never run
  through the IDCT, resized, then a random left-right flip;
* "seed" (the original article): a centred window of exactly the output size, padded with
  zeros where the image is smaller (`resize_with_crop_or_pad`, no resampling), then
  `per_image_standardization` of the float16 image.

Boxes are mapped through the same window (and flip), so they stay on their objects.
"""

from __future__ import annotations

import tensorflow as tf

# "inception" normalisation: x / 127.5 - 1 maps [0, 255] to [-1, 1]. Every model the trainer
# builds (train/models.py: semi_alexnet, resnet50, mobilenet_v3_small, efficientnet_b0) takes
# this range; a backbone with pretrained weights maps it to what those weights expect.
INCEPTION_SCALE = 127.5
# Inception random-resized crop (Szegedy et al. 2015; the torchvision/TF-slim defaults).
AREA_RANGE = (0.08, 1.0)
ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
MAX_ATTEMPTS = 10
# libjpeg's accurate integer IDCT, what DALI's decoder uses (TF's default is the less accurate
# IFAST, no faster on these images); the decode ceiling in `detrec bench input` uses it too.
DCT_METHOD = "INTEGER_ACCURATE"
_WHOLE_IMAGE = [[[0.0, 0.0, 1.0, 1.0]]]  # a plain list: importing this module runs no TF op



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

    Stateless (seeded per example by the caller), so a seeded pipeline draws the same
    windows whatever the parallelism; falls back to the whole image after MAX_ATTEMPTS.

    The DALI line (DALI's `random_crop_generator` algorithm, computed in numpy by
    train/input/draws.py so that resume is exact) draws the same ranges differently: the
    area uniform and the aspect ratio log-uniform (here: TensorFlow's fused op, ratio uniform),
    and its fallback is the whole image clamped to the ratio range (here: the whole image).
    Re-implementing DALI's draw here in TF ops was measured: 11% fewer img/s on the CPU line
    (1261 vs 1418 img/s, `detrec bench input`, 20k images, 224 px), for a difference in the
    distribution of windows that no accuracy measurement has shown to matter; so the fused
    op stays and the difference is part of the input contract.
    """
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([hw, [3]], axis=0),
        bounding_boxes=_WHOLE_IMAGE,
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=ASPECT_RATIO_RANGE,
        area_range=AREA_RANGE,
        max_attempts=MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]])


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
