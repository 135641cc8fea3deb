"""The "inception" transform: random-resized crop and flip in training, [-1, 1] pixels.

* evaluation: the whole image, resized (bilinear, no antialias);
* training: a random window (Inception-style random-resized crop: 8-100% of the area,
  aspect 3/4..4/3), decoded alone (tf.data `decode_and_crop_jpeg`, DALI `image_slice`: the
  pixels outside the window never reach the IDCT), resized, then a random left-right flip;
* both: x / 127.5 - 1, a batch at a time on tf.data (one vectorised op over the batch costs a
  third less than one per image), inside `crop_mirror_normalize` on DALI.

The two lines draw the window from the same ranges but not the same way: tf.data keeps
TensorFlow's fused sampler (`random_window`), DALI's feed computes DALI's own
`random_crop_generator` algorithm in numpy (`crop_windows`), so that its draws are pure
functions of (seed, epoch, record) and resume is exact. Kept so on purpose (see
`random_window`). The default dtype follows the Keras policy (float16 under
mixed_float16, else float32).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from detrec.train import augment
import detrec.train.input.draws as draws

DTYPE = None  # the Keras policy's

# x / 127.5 - 1 maps [0, 255] to [-1, 1]. Every model the trainer builds (train/models.py:
# semi_alexnet, resnet50, mobilenet_v3_small, efficientnet_b0) takes this range; a backbone
# with pretrained weights maps it to what those weights expect.
INCEPTION_SCALE = 127.5
# Inception random-resized crop (Szegedy et al. 2015; the torchvision/TF-slim defaults).
AREA_RANGE = (0.08, 1.0)
ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
MAX_ATTEMPTS = 10
_WHOLE_IMAGE = [[[0.0, 0.0, 1.0, 1.0]]]  # a plain list: importing this module runs no TF op


# --- tf.data ------------------------------------------------------------------------------
def random_window(hw: tf.Tensor, seed: tf.Tensor, cover: tuple[tf.Tensor, tf.Tensor] | None = None) -> tf.Tensor:
    """A random-resized-crop window (y, x, h, w) inside an image of size `hw`, int32.

    `cover` (box, share): the window keeps at least `share` of `box` ((ymin, xmin, ymax, xmax)
    normalised; Inception's min_object_covered); None, or a share of 0 with the whole image
    as the box, draws as without it.

    Stateless (seeded per example by the caller), so a seeded pipeline draws the same
    windows whatever the parallelism; falls back to the whole image after MAX_ATTEMPTS.

    The DALI line (DALI's `random_crop_generator` algorithm, `crop_windows` below, computed
    in numpy so that resume is exact) draws the same ranges differently: the area uniform
    and the aspect ratio log-uniform (here: TensorFlow's fused op, ratio uniform), and its
    fallback is the whole image clamped to the ratio range (here: the whole image).
    Re-implementing DALI's draw here in TF ops was measured: 11% fewer img/s on the CPU line
    (1261 vs 1418 img/s, `detrec bench input`, 20k images, 224 px), for a difference in the
    distribution of windows that no accuracy measurement has shown to matter; so the fused
    op stays and the difference is part of the input contract.
    """
    box, share = (_WHOLE_IMAGE, 0.0) if cover is None else (tf.reshape(cover[0], [1, 1, 4]), cover[1])
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.concat([hw, [3]], axis=0),
        bounding_boxes=box,
        seed=seed,
        min_object_covered=share,
        aspect_ratio_range=ASPECT_RATIO_RANGE,
        area_range=AREA_RANGE,
        max_attempts=MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def decode_train(encoded: tf.Tensor, size: tuple[int, int], seed: tf.Tensor,
                 cover: tuple[tf.Tensor, tf.Tensor] | None = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Random-resized crop + random flip; returns (float32 [h, w, 3] in 0..255, window, flipped)."""
    window = random_window(augment.jpeg_shape(encoded), seed, cover)
    # Decode only the window: rows below it are never entropy-decoded and columns outside it
    # never reach the IDCT. This is how training outruns a full decode of every image.
    image = tf.io.decode_and_crop_jpeg(encoded, window, channels=3, dct_method=augment.DCT_METHOD)
    flip = tf.random.stateless_uniform([], seed=seed + [0, 1]) < 0.5
    # Flipping the uint8 crop moves a quarter of the bytes of the float32 output; bilinear
    # resizing with half-pixel centres is mirror-symmetric, so the result is the same.
    image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    return augment.resize(image, size), window, flip


def decode_eval(encoded: tf.Tensor, size: tuple[int, int]) -> tuple[tf.Tensor, tf.Tensor]:
    """Full decode, resized to `size` (aspect not kept); returns (float32 0..255, window)."""
    image = tf.io.decode_jpeg(encoded, channels=3, dct_method=augment.DCT_METHOD)
    hw = tf.shape(image)[:2]
    return augment.resize(image, size), tf.concat([[0, 0], hw], axis=0)


def normalize_inception(image: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """0..255 -> [-1, 1], in `dtype` (computed in float32 so float16 rounds only once)."""
    return tf.cast(tf.cast(image, tf.float32) / INCEPTION_SCALE - 1.0, dtype)


def example(encoded: tf.Tensor, size: tuple[int, int], training: bool, seed: tf.Tensor | None,
            dtype: tf.DType, cover: tuple[tf.Tensor, tf.Tensor] | None = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Float32 0..255 pixels: `batch` normalises them a batch at a time."""
    if training:
        return decode_train(encoded, size, seed, cover)
    image, window = decode_eval(encoded, size)
    return image, window, tf.constant(False)


batch = normalize_inception


# --- DALI ---------------------------------------------------------------------------------
def dali_inputs(training: bool) -> tuple[str, ...]:
    return ("window", "flip") if training else ()


def flips(seed: int, epoch: int, records: np.ndarray) -> np.ndarray:
    """Whether each record is mirrored left-right in `epoch` (int32 0/1)."""
    return (draws.uniform(seed, epoch, draws.FLIP, records) < 0.5).astype(np.int32)


def crop_windows(seed: int, epoch: int, records: np.ndarray, hw: np.ndarray,
                 cover: tuple[np.ndarray, float] | None = None) -> np.ndarray:
    """Random-resized-crop windows [y, x, h, w] (int32, [n, 4]) of records whose images are
    `hw` ([n, 2] height, width): DALI's random_crop_generator algorithm, drawn from
    u(..., AREA/RATIO, r, a) for attempts a < MAX_ATTEMPTS and u(..., ANCHOR_X/Y, r)
    (`draws.uniform`): area uniform in AREA_RANGE, aspect ratio log-uniform in
    ASPECT_RATIO_RANGE, the first attempt that fits; else the whole image clamped to the
    ratio range (and to the largest area); anchor uniform.

    Arithmetic in float32, as DALI's; a degenerate size (<= 0, a header we could not read)
    gets a 1x1 window, which the decoder then judges.

    `cover` (boxes [n, 4] normalised (ymin, xmin, ymax, xmax), NaN rows for none; share): a
    record with a box takes the first attempt that fits and keeps `share` of its box, with
    its own anchor per attempt (u(..., ANCHOR_Y/X, r, a)); else the whole image, as
    TensorFlow's sampler falls back. Records without one draw as above.
    """
    records = np.asarray(records, np.int64)
    h_img = np.maximum(np.asarray(hw, np.int64)[:, 0], 1)
    w_img = np.maximum(np.asarray(hw, np.int64)[:, 1], 1)
    n = len(records)
    min_ratio, max_ratio = (np.float32(r) for r in ASPECT_RATIO_RANGE)
    area_lo, area_hi = (np.float32(a) for a in AREA_RANGE)
    attempts = np.arange(MAX_ATTEMPTS, dtype=np.int64)[None, :]
    uniform = draws.uniform
    scale = area_lo + (area_hi - area_lo) * uniform(seed, epoch, draws.AREA, records[:, None], attempts).astype(
        np.float32)
    log_lo, log_hi = np.log(min_ratio), np.log(max_ratio)
    ratio = np.exp(log_lo + (log_hi - log_lo) * uniform(seed, epoch, draws.RATIO, records[:, None], attempts)
                   .astype(np.float32))
    area = (h_img * w_img).astype(np.float32)[:, None]
    target = scale * area
    # roundf: half away from zero; the values are positive.
    w = np.maximum(np.floor(np.sqrt(target * ratio) + np.float32(0.5)), 1).astype(np.int64)
    h = np.maximum(np.floor(np.sqrt(target / ratio) + np.float32(0.5)), 1).astype(np.int64)
    fit_ratio = w.astype(np.float32) / h.astype(np.float32)
    fits = (w <= w_img[:, None]) & (h <= h_img[:, None]) & (fit_ratio >= min_ratio) & (fit_ratio <= max_ratio)
    first = np.argmax(fits, axis=1)
    found = fits[np.arange(n), first]
    crop_h, crop_w = h[np.arange(n), first], w[np.arange(n), first]

    # Too wide or too tall for any window of the ratio range and the smallest area, or no
    # attempt fitted: the whole image, clamped to the ratio range, scaled to the largest area.
    max_w = np.maximum(1, (h_img * max_ratio).astype(np.int64))
    max_h = np.maximum(1, (w_img * (np.float32(1) / min_ratio)).astype(np.int64))
    min_area = (w_img * h_img).astype(np.float32) * area_lo
    too_wide = (h_img * max_w).astype(np.float32) < min_area
    too_tall = ~too_wide & ((w_img * max_h).astype(np.float32) < min_area)
    image_ratio = w_img.astype(np.float32) / h_img.astype(np.float32)
    fb_h = np.where(image_ratio > max_ratio, h_img, np.where(image_ratio < min_ratio, max_h, h_img))
    fb_w = np.where(image_ratio > max_ratio, max_w, np.where(image_ratio < min_ratio, w_img, w_img))
    shrink = np.sqrt(np.minimum(np.float32(1), area_hi * (w_img * h_img).astype(np.float32)
                                / (fb_w * fb_h).astype(np.float32)))
    fb_w = np.maximum(1, (fb_w * shrink).astype(np.int64))
    fb_h = np.maximum(1, (fb_h * shrink).astype(np.int64))
    crop_h = np.where(too_wide, h_img, np.where(too_tall, max_h, np.where(found, crop_h, fb_h)))
    crop_w = np.where(too_wide, max_w, np.where(too_tall, w_img, np.where(found, crop_w, fb_w)))
    crop_h, crop_w = np.minimum(crop_h, h_img), np.minimum(crop_w, w_img)

    y = np.floor(uniform(seed, epoch, draws.ANCHOR_Y, records) * (h_img - crop_h + 1)).astype(np.int64)
    x = np.floor(uniform(seed, epoch, draws.ANCHOR_X, records) * (w_img - crop_w + 1)).astype(np.int64)
    windows = np.stack([y, x, crop_h, crop_w], axis=1)
    if cover is not None:
        boxes, share = np.asarray(cover[0], np.float32), np.float32(cover[1])
        boxed = np.isfinite(boxes).all(axis=1)
        if boxed.any():
            windows[boxed] = _covering_windows(seed, epoch, records[boxed], h_img[boxed], w_img[boxed], h[boxed],
                                               w[boxed], fits[boxed], boxes[boxed], share)
    bad = (np.asarray(hw)[:, 0] <= 0) | (np.asarray(hw)[:, 1] <= 0)
    windows[bad] = (0, 0, 1, 1)
    return windows.astype(np.int32)


def _covering_windows(seed, epoch, records, h_img, w_img, h, w, fits, boxes, share) -> np.ndarray:
    """`crop_windows` for records with a box to keep: [n, 4] int64 windows."""
    attempts = np.arange(MAX_ATTEMPTS, dtype=np.int64)[None, :]
    y = np.floor(draws.uniform(seed, epoch, draws.ANCHOR_Y, records[:, None], attempts)
                 * np.maximum(h_img[:, None] - h + 1, 1)).astype(np.int64)
    x = np.floor(draws.uniform(seed, epoch, draws.ANCHOR_X, records[:, None], attempts)
                 * np.maximum(w_img[:, None] - w + 1, 1)).astype(np.int64)
    scale = np.stack([h_img, w_img, h_img, w_img], axis=1).astype(np.float32)
    y0, x0, y1, x1 = (c[:, None] for c in (boxes * scale).T)
    inter = (np.clip(np.minimum(y + h, y1) - np.maximum(y, y0), 0, None)
             * np.clip(np.minimum(x + w, x1) - np.maximum(x, x0), 0, None))
    area = (y1 - y0) * (x1 - x0)
    keeps = fits & (inter >= share * area)
    first = np.argmax(keeps, axis=1)
    rows = np.arange(len(records))
    found = keeps[rows, first]
    whole = np.stack([np.zeros_like(h_img), np.zeros_like(w_img), h_img, w_img], axis=1)
    chosen = np.stack([y[rows, first], x[rows, first], h[rows, first], w[rows, first]], axis=1)
    return np.where(found[:, None], chosen, whole)


def dali_draws(seed: int, epoch: int, records: np.ndarray, hw: np.ndarray, size: tuple[int, int],
               training: bool, cover: tuple[np.ndarray, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    if training:
        return crop_windows(seed, epoch, records, hw, cover), flips(seed, epoch, records)
    return np.concatenate([np.zeros_like(hw), hw], axis=1), np.zeros(len(records), np.int32)


def dali_graph(encoded, *, feed, decode, size, training, out_type):
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types

    height, width = size
    flip = 0
    if training:
        window = feed("window", types.INT32, 1)
        images = decode(encoded, window)  # only the window (nvJPEG ROI decode on a GPU), as tf.data
        flip = feed("flip", types.INT32, 0)
    else:
        images = decode(encoded)
    images = fn.resize(images, resize_x=width, resize_y=height, interp_type=types.INTERP_LINEAR,
                       antialias=False, dtype=types.FLOAT)
    return fn.crop_mirror_normalize(images, mirror=flip, dtype=out_type, output_layout="HWC",
                                    mean=[INCEPTION_SCALE] * 3, std=[INCEPTION_SCALE] * 3)


# --- predict ------------------------------------------------------------------------------
def predict(encoded: tf.Tensor, size: tuple[int, int], dtype: tf.DType) -> tf.Tensor:
    """The evaluation transform of one image: `example` then `batch`, as validation saw it."""
    image, _, _ = example(encoded, size, False, None, dtype)
    return batch(image, dtype)
