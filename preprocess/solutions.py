"""ImageNet's solution CSVs (`LOC_train_solution.csv`, `LOC_val_solution.csv`): boxes without XML.

The Kaggle download ships CLS-LOC boxes twice: as XML files under Annotations/, and as one CSV
per split beside ILSVRC/, `ImageId,PredictionString` with `synset xmin ymin xmax ymax` repeated
(pixels of the image). The CSV is what labels images that have no XML.

Read in two steps so memory per image stays small and one bad line costs one image only:
`read_rows` runs once per split listing and keeps each row's text by image id (a string, not
parsed boxes: real train is 544,546 rows); `parse_row` runs in the shard's parse step, and
its AnnotationError becomes that image's line in errors-<split>.jsonl. Pure: text in, data out.
Messages quote an image id or a number only when it looks like one (annotations.shown): the
CSV may be a link to any file, and no file's content may reach an error line.
"""

from __future__ import annotations

import dataclasses
import posixpath
from typing import Iterable, Mapping

import re

from detrec.preprocess.annotations import AnnotationError, Annotation, Object, shown

HEADER = "ImageId"
FIELDS_PER_BOX = 5  # synset xmin ymin xmax ymax
_ID_LIKE = re.compile(r"[\w./-]{1,200}")  # what an ImageId looks like (n01440764_10026)


def file_name(split: str) -> str:
    """`LOC_<split>_solution.csv`, the Kaggle name of a split's solution file."""
    return f"LOC_{split}_solution.csv"


@dataclasses.dataclass(frozen=True)
class Row:
    """One image's row: where it is (`file:line`, for messages) and its PredictionString."""

    where: str
    boxes: str


@dataclasses.dataclass(frozen=True)
class BadLine:
    """A line that names no image (or names one twice): reported, never fatal."""

    where: str
    code: str
    reason: str


def read_rows(lines: Iterable[str], path: str) -> tuple[dict[str, Row], list[BadLine]]:
    """Image id -> its row, and the lines that could not be used.

    Args:
      lines: the file's lines (a BOM on the first is fine), header first or not.
      path: the file's path, for `where`.

    Returns:
      The rows by ImageId (the first row wins when an id repeats) and the bad lines: no comma
      (`bad_csv_line`) or an id seen before (`duplicate_csv_row`).
    """
    rows: dict[str, Row] = {}
    bad: list[BadLine] = []
    for number, line in enumerate(lines, start=1):
        text = line.lstrip("\ufeff").strip() if number == 1 else line.strip()
        if not text:
            continue
        image_id, comma, boxes = text.partition(",")
        image_id = image_id.strip().strip('"')
        where = f"{path}:{number}"
        if number == 1 and image_id == HEADER:
            continue
        if not comma or not image_id:
            bad.append(BadLine(where, "bad_csv_line", f"{where}: not `ImageId,PredictionString` (no comma)"))
            continue
        if image_id in rows:
            bad.append(BadLine(where, "duplicate_csv_row",
                               f"{where}: image {_shown_id(image_id)} again (kept the row at {rows[image_id].where})"))
            continue
        rows[image_id] = Row(where, boxes.strip().strip('"'))
    return rows, bad


def row_for(rows: Mapping[str, Row], key: str) -> Row | None:
    """The row of the image with this source key (`n01440764/n01440764_10026`): the CSV names
    images by file stem, so the key is tried whole and then by its last part."""
    return rows.get(key) or rows.get(posixpath.basename(key))


def parse_row(row: Row) -> Annotation:
    """A row's boxes as an Annotation in pixels of the image (no `<size>`: the decoded image's).

    Raises:
      AnnotationError: `bad_csv_row` when the fields do not come in fives or a coordinate is
        not a number, `inverted_box` as for XML.
    """
    fields = row.boxes.split()
    if len(fields) % FIELDS_PER_BOX:
        raise AnnotationError("bad_csv_row", f"{row.where}: {len(fields)} fields, expected "
                                             f"`synset xmin ymin xmax ymax` repeated")
    objects = []
    for i in range(0, len(fields), FIELDS_PER_BOX):
        name, *coords = fields[i:i + FIELDS_PER_BOX]
        try:
            xmin, ymin, xmax, ymax = (float(c) for c in coords)
        except ValueError:
            raise AnnotationError("bad_csv_row", f"{row.where}: box {i // FIELDS_PER_BOX} ({_shown_id(name)}): "
                                                 f"{', '.join(map(shown, coords))} are not four numbers") from None
        if not all(map(_finite, (xmin, ymin, xmax, ymax))):
            raise AnnotationError("bad_csv_row", f"{row.where}: box {i // FIELDS_PER_BOX} ({_shown_id(name)}): "
                                                 f"{', '.join(map(shown, coords))} are not finite")
        if xmin > xmax or ymin > ymax:
            raise AnnotationError("inverted_box", f"{row.where}: box {i // FIELDS_PER_BOX} ({_shown_id(name)}): "
                                                  f"inverted box xmin {xmin:g} xmax {xmax:g} ymin {ymin:g} ymax {ymax:g}")
        objects.append(Object(name, xmin, ymin, xmax, ymax))
    return Annotation(0, 0, tuple(objects))


def _shown_id(text: str) -> str:
    """An image id or synset for a message: quoted when it looks like one, else its length."""
    return repr(text) if _ID_LIKE.fullmatch(text) else f"({len(text)} characters, not shown)"


def _finite(v: float) -> bool:
    return v - v == 0.0  # False for inf and nan
