"""ImageNet's solution CSVs (`LOC_train_solution.csv`, `LOC_val_solution.csv`): boxes without XML.

The Kaggle download ships CLS-LOC boxes twice: as XML files under Annotations/, and as one CSV
per split beside ILSVRC/, `ImageId,PredictionString` with `synset xmin ymin xmax ymax` repeated
(pixels of the image). The CSV is what labels images that have no XML.

Read in two steps so memory per image stays small and one bad line costs one image only:
`read_rows` runs once per split listing and keeps each row's text by image id (a string, not
parsed boxes: real train is 544,546 rows); `parse_row` runs in the shard's parse step, and
its AnnotationError becomes that image's line in errors-<split>.jsonl. Pure: text in, data out.
A bad row's message quotes no more than its image id, and that only when it looks like one
(annotations.shown_id): the CSV may be a link to any file, and no file's content may reach
an error line.
"""

from __future__ import annotations

import dataclasses
import posixpath
from typing import Iterable, Mapping

from detrec.core import csv_rows, kaggle_loc
from detrec.core.csv_rows import BadLine
from detrec.core.errors import InputError
from detrec.core.kaggle_loc import BOXES_HEADER, HEADER
from detrec.preprocess.annotations import AnnotationError, Annotation, Object, shown_id


def file_name(split: str) -> str:
    """`LOC_<split>_solution.csv`, the Kaggle name of a split's solution file."""
    return f"LOC_{split}_solution.csv"


@dataclasses.dataclass(frozen=True)
class Row:
    """One image's row: where it is (`file:line`, for messages) and its PredictionString."""

    where: str
    boxes: str


def read_rows(lines: Iterable[str], path: str) -> tuple[dict[str, Row], list[BadLine]]:
    """Image id -> its row, and the lines that could not be used.

    Read with the csv module: quoted fields (a quoted PredictionString may hold commas and
    newlines), a BOM, CRLF and extra columns are fine; a header row names the ImageId and
    PredictionString columns (without one they are the first two).

    Args:
      lines: the file's lines, header first or not.
      path: the file's path, for `where`.

    Returns:
      The rows by ImageId (the first row wins when an id repeats) and the bad lines: not a CSV
      row or no PredictionString (`bad_csv_line`), or an id seen before (`duplicate_csv_row`).
      A message quotes no more than the row's image id (and that only when it looks like one).
    """
    rows: dict[str, Row] = {}
    bad: list[BadLine] = []
    id_col, boxes_col = 0, 1
    first = True
    for row in csv_rows.rows(lines, path):
        if isinstance(row, BadLine):
            bad.append(row)
            continue
        where, fields = row
        if first:
            first = False
            if HEADER in fields:
                id_col = fields.index(HEADER)
                boxes_col = fields.index(BOXES_HEADER) if BOXES_HEADER in fields else (1 if id_col == 0 else 0)
                continue
        image_id = fields[id_col] if id_col < len(fields) else ""
        if not image_id or len(fields) <= boxes_col:
            bad.append(BadLine(where, "bad_csv_line", f"{where}: not `{HEADER},{BOXES_HEADER}` "
                                                      f"({len(fields)} field{'s' if len(fields) != 1 else ''})"))
            continue
        if image_id in rows:
            bad.append(BadLine(where, "duplicate_csv_row",
                               f"{where}: image {shown_id(image_id)} again (kept the row at {rows[image_id].where})"))
            continue
        rows[image_id] = Row(where, fields[boxes_col])
    return rows, bad


def row_for(rows: Mapping[str, Row], key: str) -> Row | None:
    """The row of the image with this source key (`n01440764/n01440764_10026`): the CSV names
    images by file stem, so the key is tried whole and then by its last part."""
    return rows.get(key) or rows.get(posixpath.basename(key))


def parse_row(row: Row) -> Annotation:
    """A row's boxes as an Annotation in pixels of the image (no `<size>`: the decoded image's).

    Raises:
      AnnotationError: `bad_csv_row` when the fields do not come in fives or a coordinate is
        not a number, `inverted_box` as for XML (kaggle_loc.parse_prediction's codes).
    """
    try:
        boxes = kaggle_loc.parse_prediction(row.boxes, row.where)
    except InputError as exc:
        raise AnnotationError(exc.code, str(exc)) from None
    return Annotation(0, 0, tuple(Object(*box) for box in boxes))
