"""What labels each listed image in trees that pair files by name (det, cls-loc, voc).

Pure but for reading the files a source names, and run once per split while listing. Every
image ends as exactly one Pair or one Rejected, so nothing is lost without a line in
errors-<split>.jsonl. Each source says which rule it takes (preprocess/sources/):

  det, voc  an image needs its XML (the largest box names the class)
  cls-loc   XML first, else its row in LOC_<split>_solution.csv (ROOT or its parent); an image
            in a class folder (train/<synset>/) takes the folder's class whatever its boxes
            say, and needs neither (ImageNet labels a train image by its folder: only 42% of
            train have boxes); a flat image (val/) needs one of them
  unlabelled  a split its source finds without labels of any kind (CLS-LOC test): every image
            is a Pair with nothing that labels it
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import posixpath
from typing import Iterable, Iterator, Mapping

from detrec.preprocess import solutions
from detrec.preprocess.walk import FileEntry, Unusable, folder_class

log = logging.getLogger("detrec.preprocess")


@dataclasses.dataclass(frozen=True, slots=True)
class Pair:
    """An image with what labels it; `source_id` is unique within a split.

    (Slots: a split lists up to millions, all in memory while they are ranked; ~130 bytes
    each instead of ~400 with a __dict__.)

    Attributes:
      annotation: its annotation file (XML), "" when it has none.
      folder_class: the class folder that labels it, "" when its largest box does.
      label_where: where its boxes are when no file of its own holds them (`file:line` of a
        CSV row, a JSON file and image id), "" when none.
      label_data: those boxes as the listing found them (a CSV row's text, a source's packed
        annotations), turned into an Annotation with the shard by the pair's source.
    """

    split: str
    source_id: str
    annotation: str
    image: str
    image_rel: str
    image_size: int
    folder_class: str = ""
    label_where: str = ""
    label_data: str | bytes = ""

    @property
    def label_file(self) -> str:
        """The file (or CSV line) its boxes come from, "" for none: what error lines name."""
        return self.annotation or self.label_where


@dataclasses.dataclass(frozen=True)
class Rejected:
    """One input that did not become a record (a line of errors-<split>.jsonl)."""

    split: str
    annotation: str
    image: str
    stage: str
    code: str
    reason: str

    @classmethod
    def of(cls, pair: Pair, stage: str, code: str, reason: str) -> "Rejected":
        return cls(pair.split, pair.label_file, pair.image, stage, code, reason)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, sort_keys=True)


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
         row: solutions.Row | None = None, unlabelled: bool = False) -> Iterator[Pair | PairProblem]:
    """Pairs the files sharing one key: one image, and its XML, CSV row or class folder.

    Extra files with the same key (x.JPEG beside x.png, x.xml beside x.XML) are duplicate
    source ids: the first by path is kept, the others are reported.

    Args:
      split: the split.
      key: the files' common key.
      entries: the files listed with that key.
      folder: the class folder that labels the image ("" = none does).
      row: the image's solution-CSV row, if any (used when there is no XML).
      unlabelled: the split has no labels: an image needs none.
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
        elif folder or unlabelled:
            yield Pair(split, key, "", img.path, image_rel, img.size, folder)
        else:
            yield PairProblem(split, "", img.path, "missing_annotation", f"image without annotation (source id {key!r})",
                              key)
    elif anns:
        yield PairProblem(split, anns[0].path, "", "missing_image", f"annotation without image (source id {key!r})",
                          key)


def pair_split(split: str, entries: Iterable[FileEntry], rows: Mapping[str, solutions.Row] | None = None,
               by_folder: bool = False, unlabelled: bool = False) -> Iterator[Pair | PairProblem]:
    """Every Pair and PairProblem of a split, by key.

    Args:
      split: the split.
      entries: the split's listed files; a list is emptied once they are grouped, and each
        key's files are let go as soon as they are paired, so a split's files and its pairs
        are never all in memory at once (~25% less at the listing's peak, measured).
      rows: its solution-CSV rows by image id (see cls_loc.solution_rows).
      by_folder: a class folder (the key's first part) labels an image (CLS-LOC train).
      unlabelled: the split has no labels (see `pair`).
    """
    by_key: dict[str, list[FileEntry]] = collections.defaultdict(list)
    for entry in entries:
        by_key[entry.key].append(entry)
    if isinstance(entries, list):
        entries.clear()
    for key in sorted(by_key):
        row = solutions.row_for(rows, key) if rows else None
        yield from pair(split, key, by_key.pop(key), folder_class(key) if by_folder else "", row, unlabelled)


def paired(split: str, listed: Iterable[FileEntry | Unusable], rows: Mapping[str, solutions.Row] | None = None,
           bad_lines: Iterable[solutions.BadLine] = (), by_folder: bool = False,
           unlabelled: bool = False) -> Iterator[Pair | Rejected]:
    """A split's listing made into Pairs and Rejected lines: what a file-pairing source lists.

    An unusable file (never read: a FIFO, a device, a name that is not UTF-8) is one line, and
    its partner (the XML of an unusable image, the image of an unusable XML) is not reported
    again: one input, one line."""
    entries, unusable = [], set()
    for entry in listed:
        if isinstance(entry, Unusable):
            unusable.add(entry.key)
            yield Rejected(split, entry.path if entry.kind == "annotation" else "",
                           entry.path if entry.kind == "image" else "", "list", entry.code, entry.reason)
        else:
            entries.append(entry)
    log.info("listed %d files for split %s", len(entries), split)
    for bad in bad_lines:
        yield Rejected(split, bad.where, "", "csv", bad.code, bad.reason)
    for out in pair_split(split, entries, rows, by_folder, unlabelled):
        if isinstance(out, Pair):
            yield out
        elif not (out.key in unusable and out.code in ("missing_annotation", "missing_image")):
            yield Rejected(out.split, out.annotation, out.image, "pair", out.code, out.reason)


def joined(split: str, listed: Iterable[FileEntry | Unusable], table: dict, code: str,
           why: str) -> Iterator[tuple[FileEntry, object] | Rejected]:
    """Listed images joined by key with what an annotation file says of them (`table`, key ->
    anything; each key found is taken out of it, so what is left names no file): (entry,
    value), or a Rejected for an unusable file (its entry dropped too: one input, one line)
    and for a file the table lacks (`code`, the reason `why` after its path)."""
    for entry in listed:
        if isinstance(entry, Unusable):
            table.pop(entry.key, None)
            yield Rejected(split, "", entry.path, "list", entry.code, entry.reason)
            continue
        value = table.pop(entry.key, None)
        if value is None:
            yield Rejected(split, "", entry.path, "pair", code, f"{entry.path}: {why}")
        else:
            yield entry, value
