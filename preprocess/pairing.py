"""What labels each listed image: its XML, its row in a solution CSV, or its class folder.

Pure but for reading the solution CSV, and run once per split while listing (the listing
DoFn is thin over `pair_split`). Every image ends as exactly one Pair or one PairProblem, so
nothing is lost without a line in errors-<split>.jsonl. The rule, per layout:

  det, voc  an image needs its XML (the largest box names the class)
  cls-loc   XML first, else its row in LOC_<split>_solution.csv (ROOT or its parent); an image
            in a class folder (train/<synset>/) takes the folder's class whatever its boxes
            say, and needs neither (ImageNet labels a train image by its folder: only 42% of
            train have boxes); a flat image (val/) needs one of them
  folder    the class folder, always; no boxes
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import posixpath
from typing import IO, Iterable, Iterator, Mapping

from detrec.core import fs
from detrec.preprocess import solutions
from detrec.preprocess.sources import CLS_LOC, FOLDER, FileEntry, SplitSource, find_beside, folder_class

log = logging.getLogger("detrec.preprocess")


@dataclasses.dataclass(frozen=True, slots=True)
class Pair:
    """An image with what labels it; `source_id` is unique within a split.

    (Slots: a split lists up to millions, all in memory while they are ranked; ~130 bytes
    each instead of ~400 with a __dict__.)

    Attributes:
      annotation: its XML file, "" when it has none.
      folder_class: the class folder that labels it, "" when its largest box does.
      csv_where: `file:line` of its solution-CSV row (used only without XML), "" when none.
      csv_boxes: that row's PredictionString, parsed with the shard (solutions.parse_row).
    """

    split: str
    source_id: str
    annotation: str
    image: str
    image_rel: str
    image_size: int
    folder_class: str = ""
    csv_where: str = ""
    csv_boxes: str = ""

    @property
    def label_file(self) -> str:
        """The file (or CSV line) its boxes come from, "" for none: what error lines name."""
        return self.annotation or self.csv_where


@dataclasses.dataclass(frozen=True)
class PairProblem:
    """A file that cannot be paired: reported, never fatal."""

    split: str
    annotation: str
    image: str
    code: str
    reason: str
    key: str = ""  # the source id, for missing_annotation / missing_image


def pair(split: str, key: str, entries: Iterable[FileEntry], folder: str = "",
         row: solutions.Row | None = None) -> Iterator[Pair | PairProblem]:
    """Pairs the files sharing one key: one image, and its XML, CSV row or class folder.

    Extra files with the same key (x.JPEG beside x.png, x.xml beside x.XML) are duplicate
    source ids: the first by path is kept, the others are reported.

    Args:
      split: the split.
      key: the files' common key.
      entries: the files listed with that key.
      folder: the class folder that labels the image ("" = none does).
      row: the image's solution-CSV row, if any (used when there is no XML).
    """
    entries = sorted(entries, key=lambda e: e.path)
    anns = [e for e in entries if e.kind == "annotation"]
    imgs = [e for e in entries if e.kind == "image"]
    for extra in anns[1:] + imgs[1:]:
        kept = (anns if extra.kind == "annotation" else imgs)[0].path
        yield PairProblem(split, extra.path if extra.kind == "annotation" else "",
                          extra.path if extra.kind == "image" else "", "duplicate_source_id",
                          f"duplicate source id {key!r}: {extra.path} (kept {kept})")
    if imgs:
        img = imgs[0]
        image_rel = key + posixpath.splitext(img.path)[1]
        if anns:
            yield Pair(split, key, anns[0].path, img.path, image_rel, img.size, folder)
        elif row is not None:
            yield Pair(split, key, "", img.path, image_rel, img.size, folder, row.where, row.boxes)
        elif folder:
            yield Pair(split, key, "", img.path, image_rel, img.size, folder)
        else:
            yield PairProblem(split, "", img.path, "missing_annotation", f"image without annotation (source id {key!r})",
                              key)
    elif anns:
        yield PairProblem(split, anns[0].path, "", "missing_image", f"annotation without image (source id {key!r})",
                          key)


def pair_split(source: SplitSource, entries: Iterable[FileEntry],
               rows: Mapping[str, solutions.Row] | None = None) -> Iterator[Pair | PairProblem]:
    """Every Pair and PairProblem of a split, by key.

    Args:
      source: the split and its layout (which decides the rule, see the module docstring).
      entries: the split's listed files; a list is emptied once they are grouped, and each
        key's files are let go as soon as they are paired, so a split's files and its pairs
        are never all in memory at once (~25% less at the listing's peak, measured).
      rows: its solution-CSV rows by image id (cls-loc only; see `solution_rows`).
    """
    split = source.split
    if source.layout == FOLDER:
        for entry in sorted(entries, key=lambda e: e.key):  # keys are paths: no two alike
            folder = folder_class(entry.key)
            if folder:
                yield Pair(split, entry.key, "", entry.path, entry.key, entry.size, folder)
            else:
                yield PairProblem(split, "", entry.path, "no_class_folder",
                                  f"{entry.path}: image outside a class folder (expected {split}/<class>/<image>)")
        return
    by_key: dict[str, list[FileEntry]] = collections.defaultdict(list)
    for entry in entries:
        by_key[entry.key].append(entry)
    if isinstance(entries, list):
        entries.clear()
    by_folder = source.layout == CLS_LOC
    for key in sorted(by_key):
        row = solutions.row_for(rows, key) if rows else None
        yield from pair(split, key, by_key.pop(key), folder_class(key) if by_folder else "", row)


# The longest solution-CSV line read (real ones are < 4 KB: a few boxes of 5 fields). A line
# is read at most this far, so a CSV that is a link to /dev/zero or one endless line cannot
# fill the listing worker's memory.
MAX_CSV_LINE = 1 << 16


def solution_rows(source: SplitSource) -> tuple[dict[str, solutions.Row], list[solutions.BadLine]]:
    """The split's LOC_<split>_solution.csv rows (cls-loc only; ROOT or its parent), read once
    per split as a stream; ({}, []) when there is none. A CSV that is no regular file is one
    bad line (`not_a_regular_file`) and is not read."""
    if source.layout != CLS_LOC:
        return {}, []
    path = find_beside(source.root, solutions.file_name(source.split))
    if not path:
        return {}, []
    if not fs.is_url(path) and not os.path.isfile(path):
        return {}, [solutions.BadLine(path, "not_a_regular_file", f"{path}: not a regular file, not read")]
    long_lines: list[solutions.BadLine] = []
    with fs.open(path, "rb") as raw:
        rows, bad = solutions.read_rows(_capped_lines(raw, path, long_lines), path)
    log.info("read %d rows of %s for split %s", len(rows), path, source.split)
    return rows, sorted(bad + long_lines, key=lambda b: int(b.where.rsplit(":", 1)[1]))


def _capped_lines(raw: IO[bytes], path: str, too_long: list[solutions.BadLine]) -> Iterator[str]:
    """The file's lines as text (bytes that are not UTF-8 replaced), none read past
    MAX_CSV_LINE: a longer line is skipped to its end, yielded as "" (so line numbers stay
    right) and reported in `too_long`."""
    number = 0
    while True:
        line = raw.readline(MAX_CSV_LINE)
        if not line:
            return
        number += 1
        if len(line) == MAX_CSV_LINE and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = raw.readline(MAX_CSV_LINE)
            where = f"{path}:{number}"
            too_long.append(solutions.BadLine(where, "bad_csv_line", f"{where}: line longer than {MAX_CSV_LINE} bytes"))
            yield ""
            continue
        yield line.decode("utf-8", "replace")
