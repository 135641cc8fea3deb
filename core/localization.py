"""The ImageNet Object Localization Challenge's metric (Kaggle; ILSVRC's CLS-LOC task), in numpy.

The competition's image error is e = 1/n * sum_k min_j min_m max(d(l_j, g_k), f(b_j, B_km)):
for each of the image's n ground-truth classes g_k, 0 when one of the first five guesses
(l_j, b_j) names g_k and overlaps one of its boxes B_km by IoU >= IOU_THRESHOLD, else 1. The
score is the mean over the solution's images. Boxes are continuous pixel coordinates
(xmin, ymin, xmax, ymax), with no +1 pixel convention. The trainer's TensorFlow twin follows the
same definitions; keep the two in step.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np

IOU_THRESHOLD = 0.5  # ILSVRC: a box is right when it overlaps a true box by at least 50% (IoU)
MAX_GUESSES = 5  # the competition scores (and allows) five guesses an image

Box = Sequence[float]  # xmin, ymin, xmax, ymax
Labelled = tuple[str, Box]  # (synset, box): a guess or a ground-truth box


def iou(a: np.ndarray | Sequence[float], b: np.ndarray | Sequence[float]) -> np.ndarray:
    """Intersection over union of boxes [..., 4] (numpy broadcasting); 0 where the union is
    empty. An inverted box has area 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lo, hi = np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:])
    inter = _area(lo, hi)
    union = _area(a[..., :2], a[..., 2:]) + _area(b[..., :2], b[..., 2:]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _area(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    side = np.maximum(0.0, hi - lo)
    return side[..., 0] * side[..., 1]


def image_error(guesses: Sequence[Labelled], truths: Sequence[Labelled]) -> float:
    """The fraction of the image's ground-truth classes that no guess localises: a guess
    localises class g when it names g and its box has IoU >= IOU_THRESHOLD with any box of g.

    Raises:
      ValueError: more than MAX_GUESSES guesses (never cut silently: the competition refuses
        such a row), or no ground-truth box (the error would be 0/0).
    """
    classes = _classes(guesses, truths)
    # Only a guess and a box of the same class can match: one IoU call over those pairs.
    pairs = [(synset, guess, box) for synset, box in truths for label, guess in guesses if label == synset]
    if not pairs:
        return 1.0
    hits = iou([g for _, g, _ in pairs], [b for _, _, b in pairs]) >= IOU_THRESHOLD
    found = {synset for (synset, _, _), hit in zip(pairs, hits) if hit}
    return (len(classes) - len(found)) / len(classes)


def classification_error(guesses: Sequence[Labelled], truths: Sequence[Labelled]) -> float:
    """image_error with the boxes left out: the fraction of ground-truth classes that no guess
    names (the challenge's top-5 classification error)."""
    classes = _classes(guesses, truths)
    return len(classes - {g for g, _ in guesses}) / len(classes)


def _classes(guesses: Sequence[Labelled], truths: Sequence[Labelled]) -> set[str]:
    if len(guesses) > MAX_GUESSES:
        raise ValueError(f"{len(guesses)} guesses; the competition allows at most {MAX_GUESSES}")
    classes = {t for t, _ in truths}
    if not classes:
        raise ValueError("no ground-truth box: the image cannot be scored")
    return classes


@dataclasses.dataclass(frozen=True)
class Score:
    """Means over the scored images: `localization` is the competition's score."""

    localization: float
    classification: float
    images: int


def score(images: Iterable[tuple[Sequence[Labelled], Sequence[Labelled]]]) -> Score:
    """The mean errors over (guesses, truths) of every image, streamed (memory flat).

    Raises:
      ValueError: as image_error; or no image at all (no mean).
    """
    loc = cls = 0.0
    n = 0
    for guesses, truths in images:
        loc += image_error(guesses, truths)
        cls += classification_error(guesses, truths)
        n += 1
    if not n:
        raise ValueError("no image to score")
    return Score(loc / n, cls / n, n)
