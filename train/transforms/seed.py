"""The "seed" transform: the original article's, identical in training and evaluation.

decode -> a centred window of exactly the output size, padded with zeros where the image is
smaller (`resize_with_crop_or_pad`, no resampling) -> cast float16 ->
`per_image_standardization` (zero mean, unit variance per image). Default dtype float16, as
the article's network saw it. DALI computes the same window in numpy (`centred_windows`,
fed with the JPEG) and the same standardisation with its reductions.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from detrec.train import augment

DTYPE = "float16"  # the article's


# --- tf.data ------------------------------------------------------------------------------
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
    image = tf.io.decode_jpeg(encoded, channels=3, dct_method=augment.DCT_METHOD)
    window = centred_window(tf.shape(image)[:2], size)
    image = tf.image.resize_with_crop_or_pad(image, size[0], size[1])
    image = tf.cast(image, tf.float16)
    image = tf.image.per_image_standardization(image)
    return tf.cast(image, dtype), window


def example(encoded: tf.Tensor, size: tuple[int, int], training: bool, seed: tf.Tensor | None,
            dtype: tf.DType, cover=None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    # `cover` is ignored: the window is the centred one whatever the objects.
    image, window = seed_transform(encoded, size, dtype)
    return image, window, tf.constant(False)


batch = None  # each image is finished by `example`


# --- DALI ---------------------------------------------------------------------------------
def dali_inputs(training: bool) -> tuple[str, ...]:
    return ("window",)


def centred_windows(hw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`centred_window` for [n, 2] sizes: [y, x, h, w] int32, may overhang."""
    hw = np.asarray(hw, np.int64)
    target = np.asarray(size, np.int64)[None, :]
    start = np.maximum((hw - target) // 2, 0) - np.maximum((target - hw) // 2, 0)
    return np.concatenate([start, np.broadcast_to(target, hw.shape)], axis=1).astype(np.int32)


def dali_draws(seed: int, epoch: int, records: np.ndarray, hw: np.ndarray, size: tuple[int, int],
               training: bool, cover=None) -> tuple[np.ndarray, np.ndarray]:
    return centred_windows(hw, size), np.zeros(len(records), np.int32)


def dali_graph(encoded, *, feed, decode, size, training, out_type):
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types

    height, width = size
    window = feed("window", types.INT32, 1)
    images = decode(encoded)
    # resize_with_crop_or_pad's window, computed by the feed (`centred_windows`).
    images = fn.slice(images, window[0:2], window[2:4], axes=[0, 1], out_of_bounds_policy="pad", fill_values=0)
    pixels = fn.cast(images, dtype=types.FLOAT)
    mean = fn.reductions.mean(pixels)
    stddev = dmath.max(fn.reductions.std_dev(pixels, mean), float(1.0 / np.sqrt(height * width * 3)))
    return fn.cast((pixels - mean) / stddev, dtype=out_type)


# --- predict ------------------------------------------------------------------------------
def predict(encoded: tf.Tensor, size: tuple[int, int], dtype: tf.DType) -> tf.Tensor:
    """The evaluation transform of one image (the same as training's)."""
    return seed_transform(encoded, size, dtype)[0]
