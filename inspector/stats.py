"""Label, image-size and box statistics of a split, summarised for the report.

`SplitStats` is fed one decoded record at a time while shards are walked (nothing but
numbers is kept, never image bytes), and `to_json` turns it into the report's per-split
`labels`, `objects_per_image`, `width`, `height`, `box_area`, `converted_counted` and
`label_sources_counted` entries.
Kept apart from the reading so the summaries can be tested and changed on their own.
"""

from __future__ import annotations

import collections
from typing import Any, Mapping, Sequence

import numpy as np

from detrec.core import schema
from detrec.core.dataset_info import ClassInfo

AREA_BINS = 10  # box-area histogram: equal bins over [0, 1]


class SplitStats:
    """Running label/size/box statistics of one split, fed one decoded record at a time."""

    def __init__(self) -> None:
        self.records = 0
        self.images_by_label: collections.Counter[int] = collections.Counter()
        self.objects_by_label: collections.Counter[int] = collections.Counter()
        self.texts: dict[int, str] = {}
        self.objects_per_image: collections.Counter[int] = collections.Counter()
        self.widths: list[int] = []
        self.heights: list[int] = []
        self.areas: list[float] = []
        self.converted: collections.Counter[str] = collections.Counter()
        self.label_sources: collections.Counter[str] = collections.Counter()

    def add(self, record: schema.Record) -> None:
        """Counts one record: its image class and where it came from, its boxes, its size, its conversion."""
        self.records += 1
        self.label_sources[record.label_source] += 1
        self.images_by_label[record.class_label] += 1
        self.texts.setdefault(record.class_label, record.class_text)
        self.objects_per_image[len(record.objects)] += 1
        self.widths.append(record.width)
        self.heights.append(record.height)
        for box in record.objects:
            self.objects_by_label[box.label] += 1
            self.texts.setdefault(box.label, box.text)
            self.areas.append(box.area)
        if record.converted_from:
            self.converted[record.converted_from] += 1

    def to_json(self, classes: Mapping[int, ClassInfo]) -> dict[str, Any]:
        """The split's statistics as report keys.

        Args:
          classes: the known vocabulary; every known class gets a `labels` row (zero counts
            included), and a label the records use but the vocabulary lacks is named by the
            records' own text.
        """
        ids = sorted(set(classes) | set(self.images_by_label) | set(self.objects_by_label))
        labels = []
        for i in ids:
            known = classes.get(i)
            synset = known.synset if known else self.texts.get(i, "?")
            labels.append({"id": i, "synset": synset, "name": known.name if known else synset,
                           "images": self.images_by_label.get(i, 0), "objects": self.objects_by_label.get(i, 0)})
        return {
            "records_read": self.records,
            "converted_counted": dict(sorted(self.converted.items())),
            "label_sources_counted": dict(sorted(self.label_sources.items())),
            "labels": labels,
            "objects_per_image": {**value_range(list(self.objects_per_image.elements())),
                                  "histogram": {str(k): v for k, v in sorted(self.objects_per_image.items())}},
            "width": value_range(self.widths),
            "height": value_range(self.heights),
            "box_area": area_distribution(self.areas),
        }


def value_range(values: Sequence[float]) -> dict[str, Any]:
    """{min, max, mean} of the values (mean to 4 places); all None when there are none."""
    if not len(values):
        return {"min": None, "max": None, "mean": None}
    return {"min": min(values), "max": max(values), "mean": round(float(np.mean(values)), 4)}


def area_distribution(areas: Sequence[float]) -> dict[str, Any]:
    """Count, quantiles and an AREA_BINS-bin histogram of box areas (fractions of the image).

    The histogram is always there (all zero without boxes) so that splits line up.
    """
    counts, edges = np.histogram(areas, bins=AREA_BINS, range=(0.0, 1.0))
    histogram = [{"lo": round(float(lo), 4), "hi": round(float(hi), 4), "count": int(n)}
                 for lo, hi, n in zip(edges[:-1], edges[1:], counts)]
    if not len(areas):
        return {"count": 0, "min": None, "p10": None, "p50": None, "p90": None, "max": None, "histogram": histogram}
    q = np.quantile(areas, [0.0, 0.1, 0.5, 0.9, 1.0])
    return {"count": len(areas), **{k: round(float(v), 6) for k, v in zip(("min", "p10", "p50", "p90", "max"), q)},
            "histogram": histogram}
