"""Label, image-size and box statistics of a split, summarised for the report.

`SplitStats` is fed one decoded record at a time while shards are walked, and `to_json` turns
it into the report's per-split `labels`, `objects_per_image`, `width`, `height`, `box_area`,
`converted_counted`, `label_sources_counted` and `without_class` entries. An unlabelled split
(records without a class: CLS-LOC test) has no class histogram: its `labels` is empty.

Memory stays flat however many records are fed (ImageNet has 1.3 million images): counters
keyed by class, box count or origin; running count/min/max/sum for sizes; and box areas in
fixed-size histograms (`AreaStats`), never one list entry per record or per box.
Kept apart from the reading so the summaries can be tested and changed on their own.
"""

from __future__ import annotations

import array
import bisect
import collections
import math
from typing import Any, Mapping

import numpy as np

from detrec.core import schema
from detrec.core.dataset_info import ClassInfo

AREA_BINS = 10  # the reported box-area histogram: equal bins over [0, 1]
QUANTILES = {"min": 0.0, "p10": 0.1, "p50": 0.5, "p90": 0.9, "max": 1.0}

# The quantiles come from a finer, logarithmic histogram that also keeps each bin's smallest and
# largest value: 2**SUB_BITS bins per octave over [2**-OCTAVES, 1), one bin below, one for 1.0.
SUB_BITS = 12
OCTAVES = 40


class Range:
    """Running count, min, max and sum of integers (image sizes): {min, max, mean} in O(1)."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0
        self.min: int | None = None
        self.max: int | None = None

    def add(self, value: int, times: int = 1) -> None:
        self.count += times
        self.total += value * times  # Python ints: exact whatever the count
        self.min = value if self.min is None else min(self.min, value)
        self.max = value if self.max is None else max(self.max, value)

    def to_json(self) -> dict[str, Any]:
        """{min, max, mean} (mean to 4 places); all None when nothing was added."""
        if not self.count:
            return {"min": None, "max": None, "mean": None}
        return {"min": self.min, "max": self.max, "mean": round(self.total / self.count, 4)}


class AreaStats:
    """Box areas (fractions of the image) in fixed-size histograms.

    The report's AREA_BINS-bin histogram is counted directly (same edges and rule as
    numpy.histogram). Quantiles (numpy's default, linear interpolation between order
    statistics) come from a logarithmic histogram of 2**SUB_BITS bins per octave that keeps each
    bin's count, smallest and largest value: an order statistic is exact when it is its bin's
    smallest or largest value (always so for min and max, and for any bin holding one or two
    values), else interpolated inside its bin, i.e. within a relative 2**-SUB_BITS of the truth.
    An area outside [0, 1] (only a record that fails --verify has one) is counted in `outside`,
    not in the histograms.
    """

    _FINE = 2 + OCTAVES * (1 << SUB_BITS)
    _EDGES = [float(e) for e in np.linspace(0.0, 1.0, AREA_BINS + 1)]  # numpy.histogram's edges

    def __init__(self) -> None:
        self.count = 0
        self.outside = 0
        self.bins = [0] * AREA_BINS
        # Allocated with the first box: a fixed 4 MB (array.array: fast to update one by one).
        self._counts = self._mins = self._maxs = array.array("d")

    def add(self, area: float) -> None:
        self.count += 1
        if not 0.0 <= area <= 1.0:  # NaN too
            self.outside += 1
            return
        self.bins[min(bisect.bisect_right(self._EDGES, area) - 1, AREA_BINS - 1)] += 1
        if not self._counts:
            self._counts = array.array("q", bytes(8 * self._FINE))
            self._mins = array.array("d", [math.inf]) * self._FINE
            self._maxs = array.array("d", [-math.inf]) * self._FINE
        i = _fine_bin(area)
        self._counts[i] += 1
        if area < self._mins[i]:
            self._mins[i] = area
        if area > self._maxs[i]:
            self._maxs[i] = area

    def quantiles(self) -> dict[str, float] | None:
        """QUANTILES of the areas in [0, 1], as numpy.quantile computes them; None without any."""
        n = self.count - self.outside
        if not n:
            return None
        cumulative = np.cumsum(np.frombuffer(self._counts, np.int64))

        def order_statistic(k: int) -> float:
            b = int(np.searchsorted(cumulative, k, side="right"))
            c = self._counts[b]
            rank = k - (int(cumulative[b]) - c)
            lo, hi = self._mins[b], self._maxs[b]
            if rank == 0 or lo == hi:
                return lo
            return hi if rank == c - 1 else lo + (hi - lo) * rank / (c - 1)

        out = {}
        for name, q in QUANTILES.items():
            position = (n - 1) * q
            below = math.floor(position)
            a, b = order_statistic(below), order_statistic(min(below + 1, n - 1))
            t = position - below
            out[name] = a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t)  # numpy's _lerp
        return out

    def to_json(self) -> dict[str, Any]:
        """Count, quantiles and the AREA_BINS-bin histogram; the histogram is always there (all
        zero without boxes) so that splits line up."""
        e = self._EDGES
        histogram = [{"lo": round(e[i], 4), "hi": round(e[i + 1], 4), "count": n} for i, n in enumerate(self.bins)]
        q = self.quantiles()
        figures = {k: round(q[k], 6) if q else None for k in QUANTILES}
        return {"count": self.count, **figures, "histogram": histogram, "outside": self.outside}


def _fine_bin(area: float) -> int:
    """The logarithmic bin of an area in [0, 1]; bins grow with the area."""
    if area >= 1.0:
        return AreaStats._FINE - 1
    if area < 2.0 ** -OCTAVES:  # zero included
        return 0
    mantissa, exponent = math.frexp(area)  # area = mantissa * 2**exponent, 0.5 <= mantissa < 1
    return 1 + (exponent + OCTAVES - 1) * (1 << SUB_BITS) + int((mantissa - 0.5) * (2 << SUB_BITS))


class SplitStats:
    """Running label/size/box statistics of one split, fed one decoded record at a time."""

    def __init__(self) -> None:
        self.records = 0
        self.images_by_label: collections.Counter[int] = collections.Counter()
        self.objects_by_label: collections.Counter[int] = collections.Counter()
        self.texts: dict[int, str] = {}
        self.objects_per_image: collections.Counter[int] = collections.Counter()
        self.width = Range()
        self.height = Range()
        self.areas = AreaStats()
        self.converted: collections.Counter[str] = collections.Counter()
        self.label_sources: collections.Counter[str] = collections.Counter()
        self.without_class = 0

    def add(self, record: schema.Record) -> None:
        """Counts one record: its image class and where it came from, its boxes, its size, its conversion."""
        self.records += 1
        self.label_sources[record.label_source] += 1
        if record.class_label is None:
            self.without_class += 1
        else:
            self.images_by_label[record.class_label] += 1
            self.texts.setdefault(record.class_label, record.class_text)
        self.objects_per_image[len(record.objects)] += 1
        self.width.add(record.width)
        self.height.add(record.height)
        for box in record.objects:
            self.objects_by_label[box.label] += 1
            self.texts.setdefault(box.label, box.text)
            self.areas.add(box.area)
        if record.converted_from:
            self.converted[record.converted_from] += 1

    def to_json(self, classes: Mapping[int, ClassInfo], labelled: bool | None = None) -> dict[str, Any]:
        """The split's statistics as report keys.

        Args:
          classes: the known vocabulary; every known class gets a `labels` row (zero counts
            included), and a label the records use but the vocabulary lacks is named by the
            records' own text.
          labelled: whether the split is labelled (None: not known). An unlabelled split, or
            one whose records all lack a class, gets no `labels` rows.
        """
        unlabelled = labelled is False or (self.records and self.without_class == self.records)
        ids = [] if unlabelled else sorted(set(classes) | set(self.images_by_label) | set(self.objects_by_label))
        labels = []
        for i in ids:
            known = classes.get(i)
            synset = known.synset if known else self.texts.get(i, "?")
            labels.append({"id": i, "synset": synset, "name": known.name if known else synset,
                           "images": self.images_by_label.get(i, 0), "objects": self.objects_by_label.get(i, 0)})
        per_image = Range()
        for boxes, images in sorted(self.objects_per_image.items()):
            per_image.add(boxes, images)
        return {
            "records_read": self.records,
            "converted_counted": dict(sorted(self.converted.items())),
            "label_sources_counted": dict(sorted(self.label_sources.items())),
            "without_class": self.without_class,
            "labels": labels,
            "objects_per_image": {**per_image.to_json(),
                                  "histogram": {str(k): v for k, v in sorted(self.objects_per_image.items())}},
            "width": self.width.to_json(),
            "height": self.height.to_json(),
            "box_area": self.areas.to_json(),
        }
