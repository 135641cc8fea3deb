"""Open Images V7: train/, validation/, test/ flat image folders (<ImageID>.jpg), with
<split>-annotations-bbox.csv (ImageID, Source, LabelName, Confidence, XMin, XMax, YMin, YMax,
IsOccluded, IsTruncated, IsGroupOf, IsDepiction, IsInside) and
oidv7-class-descriptions-boxable.csv (LabelName, DisplayName) in ROOT.

- `validation` is what users call val: --splits val and --splits validation both read it.
- Boxes are normalised already (to the image as stored); IsGroupOf boxes are kept like COCO's
  crowds (`image/object/is_crowd`) and passed over by the largest-box rule.
- Classes are 1..K in the descriptions file's order; labels.txt keeps the MID (/m/...) in its
  synset column and the DisplayName as the name.
- An image without a box row is not background (Open Images boxes only some objects): it is
  one line, `no_boxes`. So is a row naming no file (`missing_image`), a row that is not one,
  and an image with a bad box (outside [0, 1], empty or non-finite: `bad_box`).
- Memory: the CSV (2.2 GB, 14.6M rows for train) is streamed once per split while listing,
  each row packed into ~45 bytes under its image; each shard's plan carries only its own.
"""

from __future__ import annotations

import math
import struct
from typing import Iterator, Mapping, Sequence

from detrec.core import csv_rows, fs
from detrec.preprocess import annotations, pairing, vocab as vocab_lib, walk
from detrec.preprocess.plan import Item
from detrec.preprocess.sources.contract import Source, SplitSource, Unlabelled

BOXES_FROM_CSV = "csv"
CLASSES = "oidv7-class-descriptions-boxable.csv"
HEADER = ("ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax", "IsOccluded",
          "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")
FOLDERS = {"val": "validation"}  # a split's folder and file prefix, where its name differs
_BOX = struct.Struct("<ddddB")  # XMin, XMax, YMin, YMax, IsGroupOf (after the LabelName, length-prefixed)


def _folder(split: str) -> str:
    return FOLDERS.get(split, split)


class OpenImages(Source):
    name = "open-images"
    summary = "Open Images V7: SPLIT/<ImageID>.jpg + SPLIT-annotations-bbox.csv + oidv7-class-descriptions-boxable.csv"

    def missing(self, root: str, split: str) -> str:
        folder = _folder(split)
        if not (fs.isdir(fs.join(root, folder)) and fs.exists(fs.join(root, f"{folder}-annotations-bbox.csv"))
                and fs.exists(fs.join(root, CLASSES))):
            return f"{root}: no {folder}/ with {folder}-annotations-bbox.csv and {CLASSES}"
        return ""

    def pairs(self, source: SplitSource) -> Iterator[pairing.Pair | pairing.Rejected]:
        split, folder = source.split, _folder(source.split)
        csv_path = fs.join(source.root, f"{folder}-annotations-bbox.csv")
        boxes: dict[str, bytearray] = {}
        yield from _read(csv_path, split, boxes)
        listed = walk.listed(split, "image", fs.join(source.root, folder), walk.IMAGE_EXTENSIONS, recursive=False,
                             whole_key=False)
        for out in pairing.joined(split, listed, boxes, "no_boxes", f"no row in {fs.basename(csv_path)} (Open "
                                  "Images boxes only some objects: an image without boxes is not background)"):
            if isinstance(out, pairing.Rejected):
                yield out
                continue
            entry, packed = out
            yield pairing.Pair(split, entry.key, "", entry.path, fs.basename(entry.path), entry.size, "",
                               f"{csv_path}:{entry.key}", bytes(packed))
        for image_id in sorted(boxes):
            yield pairing.Rejected(split, f"{csv_path}:{image_id}", "", "pair", "missing_image",
                                   f"{csv_path}: rows of image {annotations.shown_id(image_id)}, which "
                                   f"{folder}/ does not hold")

    def annotate(self, pair: pairing.Pair) -> Item:
        objects = []
        for label, (x0, x1, y0, y1, group) in _unpacked(pair.label_data):
            if not (all(map(math.isfinite, (x0, x1, y0, y1))) and 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise Unlabelled("box", "bad_box", f"{pair.label_where}: box XMin {x0:g} XMax {x1:g} YMin {y0:g} "
                                                   f"YMax {y1:g} is not inside [0, 1] with min < max")
            objects.append(annotations.Object(label, x0, y0, x1, y1, crowd=bool(group)))
        # Normalised boxes: a 1x1 frame (annotations.normalise divides by the frame).
        return Item(pair, annotations.Annotation(1, 1, tuple(objects)), BOXES_FROM_CSV)

    def fixes_classes(self, found: Mapping[str, SplitSource]) -> bool:
        return True

    def vocabulary(self, found: Mapping[str, SplitSource], splits: Sequence[str]) -> vocab_lib.Vocabulary:
        """The descriptions file's classes, in its order: MID, DisplayName."""
        path = fs.join(next(iter(found.values())).root, CLASSES)
        lines: list[csv_rows.BadLine] = []
        text = []
        with fs.open(path, "rb") as raw:
            for row in csv_rows.rows(csv_rows.capped_lines(raw, path, lines), path):
                if isinstance(row, csv_rows.BadLine):
                    raise vocab_lib.VocabError(row.reason)
                where, fields = row
                if fields[:2] == ["LabelName", "DisplayName"]:
                    continue
                if len(fields) < 2 or not fields[0] or any(c.isspace() for c in fields[0]):
                    raise vocab_lib.VocabError(f"{where}: not `LabelName,DisplayName`")
                text.append(f"{fields[0]} {' '.join(fields[1].split()) or fields[0]}\n")
        if lines:
            raise vocab_lib.VocabError(lines[0].reason)
        vocab = vocab_lib.parse_synset_map("".join(text), path)  # the map rules: no repeats, no background
        return vocab_lib.Vocabulary(vocab.synsets, vocab.names, path)


def _packed(label: str, coords: list[float], group: bool) -> bytes:
    name = label.encode("utf-8")[:255]
    return bytes((len(name),)) + name + _BOX.pack(*coords, group)


def _unpacked(data: bytes) -> Iterator[tuple[str, tuple]]:
    at = 0
    while at < len(data):
        size = data[at]
        label = data[at + 1:at + 1 + size].decode("utf-8", "replace")
        at += 1 + size
        yield label, _BOX.unpack_from(data, at)
        at += _BOX.size


def _read(csv_path: str, split: str, boxes: dict) -> Iterator[pairing.Rejected]:
    """Streams the box CSV into `boxes` (ImageID -> its rows, packed); a Rejected for each line
    that is not a row."""
    too_long: list[csv_rows.BadLine] = []
    columns = None
    with fs.open(csv_path, "rb") as raw:
        for row in csv_rows.rows(csv_rows.capped_lines(raw, csv_path, too_long), csv_path):
            if isinstance(row, csv_rows.BadLine):
                yield pairing.Rejected(split, row.where, "", "csv", row.code, row.reason)
                continue
            where, fields = row
            if columns is None:
                columns = {name: fields.index(name) for name in HEADER if name in fields}
                if len(columns) == len(HEADER):
                    continue
                columns = {name: i for i, name in enumerate(HEADER)}  # no header: the documented order
            try:
                image_id, label = fields[columns["ImageID"]], fields[columns["LabelName"]]
                coords = [float(fields[columns[c]]) for c in ("XMin", "XMax", "YMin", "YMax")]
                group = int(fields[columns["IsGroupOf"]] or 0) == 1
            except (IndexError, ValueError):
                image_id = ""
            if not image_id or not label:
                yield pairing.Rejected(split, where, "", "csv", "bad_csv_line",
                                       f"{where}: not an `{','.join(HEADER)}` row")
                continue
            boxes.setdefault(image_id, bytearray()).extend(_packed(label, coords, group))
    for bad in too_long:
        yield pairing.Rejected(split, bad.where, "", "csv", bad.code, bad.reason)


SOURCE = OpenImages()
