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
* a transform's draws (its `dali_draws`, detrec.train.transforms): "inception"'s crop window
  is DALI's `random_crop_generator` algorithm from u(..., AREA/RATIO, r, a) and
  u(..., ANCHOR_X/Y, r), its flip u(..., FLIP, r) < 0.5. The purposes are all listed here, so
  that no two draws share their random numbers.

Keyed by record, not position, a record's crop and flip in an epoch do not depend on the
number of workers or the batch size. Nothing here reads files or runs a TensorFlow op.
"""

from __future__ import annotations

import numpy as np

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
