"""The DALI line's randomness as pure functions of (seed, epoch, record): order, crop, flip.

DALI's own shuffle (`readers.tfrecord(random_shuffle=...)`) and random operators keep
generator state that no API can set, so a stream could never be restarted at epoch e, step
s. Here every random number the DALI line uses is instead a hash of where it is used:

    u(seed, epoch, purpose, record, k) = splitmix64 chain over those words, top 53 bits / 2^53

(`hash64`: each word is added to the state, which is then mixed by splitmix64's finaliser;
pure uint64 arithmetic, so the same on every machine and numpy version). From it:

* order: epoch e's order of the split's N records (dataset_info order, 0..N-1) is the
  stable argsort of hash64(seed, e, ORDER, r): a uniform random permutation, the same on
  every worker; worker i of k reads positions [N*i//k, N*(i+1)//k) of it (`worker_span`),
  so each record is read exactly once per epoch by exactly one worker. Evaluation reads
  the records in dataset order, split the same way.
* crop window: DALI's `random_crop_generator` algorithm, drawn from u(..., AREA/RATIO, r, a)
  for attempts a < MAX_ATTEMPTS and u(..., ANCHOR_X/Y, r): area uniform in AREA_RANGE,
  aspect ratio log-uniform in ASPECT_RATIO_RANGE, the first attempt that fits; else the
  whole image clamped to the ratio range (and to the largest area); anchor uniform.
* flip: u(..., FLIP, r) < 0.5.

Keyed by record, not position, a record's crop and flip in an epoch do not depend on the
number of workers or the batch size. Nothing here reads files or runs a TensorFlow op.
"""

from __future__ import annotations

import numpy as np

from detrec.train import augment

# Purposes: one hash stream each, so that no two draws share their random numbers.
ORDER, AREA, RATIO, ANCHOR_X, ANCHOR_Y, FLIP = range(1, 7)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_MASK = (1 << 64) - 1


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (a bijection of uint64 with full avalanche)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def hash64(*words) -> np.ndarray:
    """uint64 hash of a sequence of integer words (scalars or arrays, broadcast)."""
    with np.errstate(over="ignore"):
        state = np.uint64(0)
        for word in words:
            word = np.asarray(word)
            word = (word.astype(np.uint64) if word.dtype.kind in "iu" and word.dtype != object
                    else np.uint64(int(word) & _MASK))
            state = _mix(state + word + _GOLDEN)
        return np.asarray(state, np.uint64)


def uniform(*words) -> np.ndarray:
    """Uniform float64 in [0, 1) from `hash64(*words)`."""
    return (hash64(*words) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The split's records (0..n-1) in epoch `epoch`'s training order (int64)."""
    return np.argsort(hash64(seed, epoch, ORDER, np.arange(n, dtype=np.int64)), kind="stable")


def worker_span(n: int, num_workers: int, worker_index: int) -> tuple[int, int]:
    """[start, end) of a worker's positions in an epoch's order: DALI's own sharding rule."""
    return n * worker_index // num_workers, n * (worker_index + 1) // num_workers


def flips(seed: int, epoch: int, records: np.ndarray) -> np.ndarray:
    """Whether each record is mirrored left-right in `epoch` (int32 0/1)."""
    return (uniform(seed, epoch, FLIP, records) < 0.5).astype(np.int32)


def crop_windows(seed: int, epoch: int, records: np.ndarray, hw: np.ndarray) -> np.ndarray:
    """Random-resized-crop windows [y, x, h, w] (int32, [n, 4]) of records whose images are
    `hw` ([n, 2] height, width): DALI's random_crop_generator algorithm (module docstring).

    Arithmetic in float32, as DALI's; a degenerate size (<= 0, a header we could not read)
    gets a 1x1 window, which the decoder then judges.
    """
    records = np.asarray(records, np.int64)
    h_img = np.maximum(np.asarray(hw, np.int64)[:, 0], 1)
    w_img = np.maximum(np.asarray(hw, np.int64)[:, 1], 1)
    n = len(records)
    min_ratio, max_ratio = (np.float32(r) for r in augment.ASPECT_RATIO_RANGE)
    area_lo, area_hi = (np.float32(a) for a in augment.AREA_RANGE)
    attempts = np.arange(augment.MAX_ATTEMPTS, dtype=np.int64)[None, :]
    scale = area_lo + (area_hi - area_lo) * uniform(seed, epoch, AREA, records[:, None], attempts).astype(np.float32)
    log_lo, log_hi = np.log(min_ratio), np.log(max_ratio)
    ratio = np.exp(log_lo + (log_hi - log_lo) * uniform(seed, epoch, RATIO, records[:, None], attempts)
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

    y = np.floor(uniform(seed, epoch, ANCHOR_Y, records) * (h_img - crop_h + 1)).astype(np.int64)
    x = np.floor(uniform(seed, epoch, ANCHOR_X, records) * (w_img - crop_w + 1)).astype(np.int64)
    windows = np.stack([y, x, crop_h, crop_w], axis=1)
    bad = (np.asarray(hw)[:, 0] <= 0) | (np.asarray(hw)[:, 1] <= 0)
    windows[bad] = (0, 0, 1, 1)
    return windows.astype(np.int32)


def centred_windows(hw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`augment.centred_window` for [n, 2] sizes: [y, x, h, w] int32, may overhang."""
    hw = np.asarray(hw, np.int64)
    target = np.asarray(size, np.int64)[None, :]
    start = np.maximum((hw - target) // 2, 0) - np.maximum((target - hw) // 2, 0)
    return np.concatenate([start, np.broadcast_to(target, hw.shape)], axis=1).astype(np.int32)
