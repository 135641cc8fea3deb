"""The contact sheet of `detrec inspect --contact-sheet`: sampled records on a grid, every
box drawn where the record says it is, the largest one with the image's class name (none for a
record without a class, an unlabelled split's). A record
whose image does not decode gets a marked, labelled cell and a Problem naming it, never a
silently dark cell."""

from __future__ import annotations

import dataclasses
import io
from typing import Any, Sequence

from detrec.core import fs, schema
from detrec.core.errors import one_line
from detrec.inspector.problem import Problem

CELL = 256  # contact-sheet cell, pixels (square)
LARGEST_BOX_COLOR = (255, 255, 0)  # the box that gives the image its class, with its name
OTHER_BOX_COLOR = (0, 255, 255)
UNDECODABLE_COLOR = (160, 0, 0)  # the cell of a record whose image does not decode
BOX_LINE = 2


@dataclasses.dataclass(frozen=True)
class Sample:
    """A record picked for the contact sheet, and where it came from (offset: its byte offset)."""

    shard: str
    index: int
    record: schema.Record
    offset: int | None = None


def class_names(report: dict[str, Any]) -> dict[int, str]:
    return {c["id"]: c["name"] for c in report.get("classes", [])}


def contact_sheet(samples: Sequence[Sample], cols: int, rows: int, names: dict[int, str],
                  cell: int = CELL, problems: list[Problem] | None = None):
    """Draws samples on a cols x rows grid: every box, and the largest box's class name.

    Each image is scaled to fit a `cell` x `cell` square (aspect kept) and centred in it. A
    sample whose image does not decode fills its cell with UNDECODABLE_COLOR and a label, and
    is appended to `problems` (shard, offset, record, why).
    Returns (PIL image of cols*cell x rows*cell pixels, placements of the images drawn).
    """
    from PIL import Image, ImageDraw, ImageFont

    sheet = Image.new("RGB", (cols * cell, rows * cell), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    try:
        font = ImageFont.load_default(size=max(10, cell // 18))
    except TypeError:  # Pillow built without FreeType
        font = ImageFont.load_default()
    placed = []
    for k, sample in enumerate(samples[: cols * rows]):
        record = sample.record
        try:
            # The stored pixels, EXIF orientation ignored (Pillow applies it only when asked):
            # the frame both training decoders see and the boxes are in (detrec.core.images).
            image = Image.open(io.BytesIO(record.encoded)).convert("RGB")
        except Exception as exc:  # noqa: BLE001 - Pillow alone runs here, on the record's bytes
            _mark(draw, font, k, cols, cell, sample)
            if problems is not None:
                problems.append(Problem(sample.shard, f"contact sheet: the image of {record.filename!r} does not "
                                                      f"decode ({one_line(exc)}); its cell is marked",
                                        sample.offset, sample.index))
            continue
        scale = min(cell / image.width, cell / image.height)
        w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
        x0 = (k % cols) * cell + (cell - w) // 2
        y0 = (k // cols) * cell + (cell - h) // 2
        sheet.paste(image.resize((w, h), Image.BILINEAR), (x0, y0))
        placed.append({"shard": sample.shard, "record": sample.index, "filename": record.filename,
                       "x": x0, "y": y0, "scale": round(w / image.width, 6)})
        rects = [(x0 + b.xmin * w, y0 + b.ymin * h, x0 + b.xmax * w, y0 + b.ymax * h) for b in record.objects]
        largest = schema.largest_box([b.area for b in record.objects])
        for i, rect in enumerate(rects):
            if i != largest:
                _outline(draw, _pixels(rect), OTHER_BOX_COLOR)
        anchor = (x0 + 2, y0 + 2)
        if largest is not None:
            r = _pixels(rects[largest])
            _outline(draw, r, LARGEST_BOX_COLOR)
            anchor = (r[0] + BOX_LINE, r[1] + BOX_LINE)
        if record.class_label is None:  # an unlabelled split's record: nothing to name
            continue
        caption = names.get(record.class_label, record.class_text)  # a folder's class may be no box's
        left, top, right, bottom = draw.textbbox(anchor, caption, font=font)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=(0, 0, 0))
        draw.text(anchor, caption, fill=LARGEST_BOX_COLOR, font=font)
    return sheet, placed


def _mark(draw, font, k: int, cols: int, cell: int, sample: Sample) -> None:
    """Fills cell k with UNDECODABLE_COLOR and says which record could not be drawn."""
    x0, y0 = (k % cols) * cell, (k // cols) * cell
    draw.rectangle((x0 + 1, y0 + 1, x0 + cell - 2, y0 + cell - 2), fill=UNDECODABLE_COLOR)
    text = f"does not decode\n{fs.basename(sample.shard)}\nrecord {sample.index}"
    draw.multiline_text((x0 + 4, y0 + 4), text, fill=(255, 255, 255), font=font)


def _outline(draw, rect: tuple[int, int, int, int], color: tuple[int, int, int]) -> None:
    """A BOX_LINE-wide box inside `rect` with a 1-pixel dark rim outside, visible on any picture."""
    x0, y0, x1, y1 = rect
    draw.rectangle((x0 - 1, y0 - 1, x1 + 1, y1 + 1), outline=(0, 0, 0), width=1)
    draw.rectangle(rect, outline=color, width=BOX_LINE)


def _pixels(rect: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """Box corners as the sheet pixels its outline covers (xmax/ymax are exclusive edges)."""
    x0, y0, x1, y1 = rect
    return round(x0), round(y0), max(round(x0), round(x1) - 1), max(round(y0), round(y1) - 1)


def parse_grid(text: str) -> tuple[int, int]:
    """'4x4' -> (cols, rows)."""
    try:
        cols, rows = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--grid wants COLSxROWS such as 4x4, got {text!r}") from None
    if not (1 <= cols <= 64 and 1 <= rows <= 64):
        raise ValueError(f"--grid {text}: columns and rows must be 1..64")
    return cols, rows
