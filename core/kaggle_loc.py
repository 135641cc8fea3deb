"""The Kaggle ImageNet Object Localization Challenge's CSVs, read and written.

`ImageId,PredictionString`, the PredictionString being `synset xmin ymin xmax ymax` repeated
(pixels of the image): LOC_<split>_solution.csv holds the ground truth in it, a submission
(LOC_sample_submission.csv is the template) up to five guesses an image.

Read through detrec.core.csv_rows, as every CSV of detrec is: a line that cannot be used is a
BadLine, never fatal: the caller decides. Messages quote no file content but image ids.
"""

from __future__ import annotations

import dataclasses
from typing import IO, Iterable, Iterator, Sequence

from detrec.core import fs
from detrec.core.csv_rows import BadLine, capped_lines, rows as csv_rows
from detrec.core.localization import MAX_GUESSES
from detrec.core.errors import InputError, UserError

HEADER, BOXES_HEADER = "ImageId", "PredictionString"
FIELDS_PER_BOX = 5  # synset xmin ymin xmax ymax

Guess = tuple[str, float, float, float, float]  # synset, xmin, ymin, xmax, ymax


@dataclasses.dataclass(frozen=True)
class Row:
    """One image's row of a solution or submission file, `where` its `file:line`."""

    where: str
    image_id: str
    guesses: tuple[Guess, ...]


# --- PredictionString -------------------------------------------------------------------------
_COORDS = ("xmin", "ymin", "xmax", "ymax")


def parse_prediction(text: str, where: str) -> tuple[Guess, ...]:
    """A PredictionString's boxes, in its order.

    Raises:
      InputError: `bad_csv_row` when the fields do not come in fives or a coordinate is not a
        finite number, `inverted_box` when xmax < xmin or ymax < ymin; the message starts
        with `where`.
    """
    fields = text.split()
    if len(fields) % FIELDS_PER_BOX:
        raise InputError("bad_csv_row", f"{where}: {len(fields)} fields, expected "
                                        f"`synset xmin ymin xmax ymax` repeated")
    out = []
    for i in range(0, len(fields), FIELDS_PER_BOX):
        name, *coords = fields[i:i + FIELDS_PER_BOX]
        at = f"{where}: box {i // FIELDS_PER_BOX}"
        try:  # the common case first: a whole box of numbers (a 50,000-row file parses per image)
            xmin, ymin, xmax, ymax = values = [float(c) for c in coords]
        except ValueError:
            wrong = [tag for tag, c in zip(_COORDS, coords) if _number(c) is None]
            raise InputError("bad_csv_row", f"{at}: {', '.join(wrong)} not a number "
                                            "(the box is not four numbers)") from None
        if not all(map(_finite, values)):
            wrong = [tag for tag, v in zip(_COORDS, values) if not _finite(v)]
            raise InputError("bad_csv_row", f"{at}: {', '.join(wrong)} not finite")
        if xmin > xmax or ymin > ymax:
            raise InputError("inverted_box", f"{at}: inverted box xmin {xmin:g} xmax {xmax:g} "
                                             f"ymin {ymin:g} ymax {ymax:g}")
        out.append((name, xmin, ymin, xmax, ymax))
    return tuple(out)


def format_prediction(guesses: Sequence[Guess]) -> str:
    """The PredictionString of these boxes, which parse_prediction reads back.

    A coordinate is written as an integer when it is one (Kaggle's own files hold integers),
    else rounded to one decimal: 0.05 px moves a box's IoU by far less than any threshold
    matters for, and keeps a 100,000-row submission short.

    Raises:
      ValueError: a synset that is empty or would break the format (space, comma, quote), a
        coordinate that is not a finite number, or an inverted box.
    """
    parts = []
    for synset, *coords in guesses:
        if not synset or any(c in synset for c in ' ,"\t\r\n'):
            raise ValueError(f"synset {synset!r} cannot be written in a PredictionString")
        if len(coords) != 4 or not all(_finite(float(v)) for v in coords):
            raise ValueError(f"{synset}: box {coords!r} is not four finite numbers")
        xmin, ymin, xmax, ymax = (float(v) for v in coords)
        if xmin > xmax or ymin > ymax:
            raise ValueError(f"{synset}: inverted box {coords!r}")
        parts.append(" ".join([synset, *(_coordinate(float(v)) for v in coords)]))
    return " ".join(parts)


def _coordinate(value: float) -> str:
    text = f"{value:.1f}".removesuffix(".0")
    return "0" if text == "-0" else text


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _finite(v: float) -> bool:
    return v - v == 0.0  # False for inf and nan


# --- files ------------------------------------------------------------------------------------
def read_rows(raw: IO[bytes], path: str, max_guesses: int | None = None) -> Iterator[Row | BadLine]:
    """Each row of a solution or submission file, streamed in file order, or a BadLine saying
    `file:line: why` (not two fields, no ImageId, a bad PredictionString, more than
    `max_guesses` boxes). The header `ImageId,PredictionString` is optional; blank lines are
    skipped; an empty PredictionString is a row with no boxes."""
    too_long: list[BadLine] = []
    first = True
    for item in csv_rows(capped_lines(raw, path, too_long), path):
        yield from too_long
        too_long.clear()
        if isinstance(item, BadLine):
            yield item
            continue
        where, fields = item
        if first and fields[:1] == [HEADER]:
            first = False
            if fields != [HEADER, BOXES_HEADER]:
                yield BadLine(where, "bad_csv_line", f"{where}: header of {len(fields)} fields, "
                                                     f"expected `{HEADER},{BOXES_HEADER}`")
            continue
        first = False
        yield _row(where, fields, max_guesses)
    yield from too_long


def _row(where: str, fields: list[str], max_guesses: int | None) -> Row | BadLine:
    if len(fields) != 2 or not fields[0]:
        count = f"{len(fields)} field{'s' if len(fields) != 1 else ''}"
        return BadLine(where, "bad_csv_line", f"{where}: not `{HEADER},{BOXES_HEADER}` "
                                              f"({count}{', no ImageId' if len(fields) == 2 else ''})")
    try:
        guesses = parse_prediction(fields[1], where)
    except InputError as exc:
        return BadLine(where, exc.code, str(exc))
    if max_guesses is not None and len(guesses) > max_guesses:
        return BadLine(where, "too_many_guesses", f"{where}: {len(guesses)} guesses for {fields[0][:64]!r}, "
                                                  f"at most {max_guesses} allowed")
    return Row(where, fields[0], guesses)


def write_submission(stream_or_path: IO | str, rows: Iterable[tuple[str, Sequence[Guess]]]) -> int:
    """Writes a submission: the header, then one row per (image id, guesses) in the order
    given, streamed. A path is written whole or not at all (temp file, then rename) and never
    over an existing file; a stream may be text or binary. Returns the number of rows.

    Raises:
      UserError: the path exists.
      ValueError: an image id that is empty or would break the CSV, more than MAX_GUESSES
        guesses for an image, or a guess format_prediction refuses.
    """
    if isinstance(stream_or_path, str):
        if fs.exists(stream_or_path):
            raise UserError(f"{stream_or_path} already exists; choose a new name or remove it")
        with fs.atomic_writer(stream_or_path) as f:
            return write_submission(f, rows)
    stream = stream_or_path
    text = hasattr(stream, "encoding")  # text streams have one, binary ones (BytesIO, files "wb") none
    n = 0
    for line in _lines(rows):
        stream.write(line if text else line.encode("utf-8"))
        n += 1
    return n - 1


def _lines(rows: Iterable[tuple[str, Sequence[Guess]]]) -> Iterator[str]:
    yield f"{HEADER},{BOXES_HEADER}\n"
    for image_id, guesses in rows:
        if not image_id or image_id != image_id.strip() or any(c in image_id for c in ',"\r\n'):
            raise ValueError(f"image id {image_id!r} cannot be written as a CSV field as it is")
        if len(guesses) > MAX_GUESSES:
            raise ValueError(f"{image_id}: {len(guesses)} guesses, the competition allows {MAX_GUESSES}")
        yield f"{image_id},{format_prediction(guesses)}\n"
