"""Walking a source tree and pairing annotations with images (local paths or gs:// alike).

All file access goes through detrec.core.fs, so the same code lists a laptop folder and a
bucket, and it runs inside the pipeline (on Dataflow: on the workers, never the launcher).
Remote folders are listed with Beam's FileSystems.match (it returns every size with the
names); local ones with os.scandir: Beam's local match stats every file twice, which made
listing a large split several times slower.

Layouts (ROOT is the folder holding Annotations/ and Data/ or JPEGImages/):
  det      Annotations/DET/<split>/**.xml     + Data/DET/<split>/**.JPEG
  cls-loc  Annotations/CLS-LOC/<split>/**.xml + Data/CLS-LOC/<split>/**.JPEG
  voc      Annotations/*.xml + JPEGImages/*.jpg, split ids from ImageSets/Main/<split>.txt
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
from typing import Iterable, Iterator, NamedTuple

from apache_beam.io.filesystems import FileSystems

from detrec.core import fs

LAYOUTS = ("auto", "det", "cls-loc", "voc")
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ANNOTATION_EXTENSION = ".xml"


@dataclasses.dataclass(frozen=True)
class SplitSource:
    """Where one split's files live."""

    root: str
    split: str
    layout: str  # resolved: det | cls-loc | voc


class FileEntry(NamedTuple):
    """A listed file: `key` is its path relative to the split root, without extension.
    (A tuple: a split lists hundreds of thousands, ~5x cheaper to make than a dataclass.)"""

    split: str
    kind: str  # "annotation" | "image"
    key: str
    path: str
    size: int


@dataclasses.dataclass(frozen=True)
class Pair:
    """An annotation with its image; `source_id` is unique within a split."""

    split: str
    source_id: str
    annotation: str
    image: str
    image_rel: str
    image_size: int


def _dirs(root: str, split: str, layout: str) -> tuple[str, str]:
    if layout == "det":
        return fs.join(root, "Annotations", "DET", split), fs.join(root, "Data", "DET", split)
    if layout == "cls-loc":
        return fs.join(root, "Annotations", "CLS-LOC", split), fs.join(root, "Data", "CLS-LOC", split)
    return fs.join(root, "Annotations"), fs.join(root, "JPEGImages")


def resolve_layout(root: str, split: str, layout: str) -> str:
    """Picks det / cls-loc / voc for `auto` by which folders exist (ValueError if none)."""
    if layout != "auto":
        return layout
    for candidate in ("det", "cls-loc", "voc"):
        ann_dir, img_dir = _dirs(root, split, candidate)
        if fs.exists(ann_dir) and fs.exists(img_dir):
            return candidate
    raise ValueError(
        f"{root}: no Annotations/DET/{split}, Annotations/CLS-LOC/{split} or Annotations + JPEGImages "
        "found; pass the folder that holds Annotations/ and Data/"
    )


def _relative(path: str, base: str) -> str:
    rel = path[len(base):].lstrip("/\\")
    return rel.replace("\\", "/")


def list_files(base: str, recursive: bool) -> list[tuple[str, int]]:
    """(path, size) of every file in `base` (and its subfolders when recursive), by path."""
    if fs.is_url(base):
        pattern = fs.join(base, "**" if recursive else "*")
        return sorted((m.path, m.size_in_bytes) for m in FileSystems.match([pattern])[0].metadata_list)
    return sorted(_scan_local(base, recursive))


def _scan_local(base: str, recursive: bool) -> Iterator[tuple[str, int]]:
    """What Beam's local match lists (os.walk: symlinked folders not followed, a file that
    vanishes or a dangling link skipped), with one stat per file instead of two."""
    folders = [base]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_dir():
                    if recursive and not entry.is_symlink():
                        folders.append(entry.path)
                    continue
                try:
                    yield entry.path, entry.stat().st_size
                except OSError:
                    continue


def _voc_ids(root: str, split: str) -> set[str]:
    path = fs.join(root, "ImageSets", "Main", f"{split}.txt")
    return {line.split()[0] for line in fs.read_text(path).splitlines() if line.strip()}


def list_split(source: SplitSource) -> Iterator[FileEntry]:
    """Every annotation and image file of a split (sorted, so output order is stable)."""
    ann_dir, img_dir = _dirs(source.root, source.split, source.layout)
    wanted = _voc_ids(source.root, source.split) if source.layout == "voc" else None
    for base, kind, extensions in (
        (ann_dir, "annotation", (ANNOTATION_EXTENSION,)),
        (img_dir, "image", IMAGE_EXTENSIONS),
    ):
        if not fs.exists(base):
            continue
        for path, size in list_files(base, recursive=source.layout != "voc"):
            stem, ext = posixpath.splitext(_relative(path, base))
            if ext.lower() not in extensions or (wanted is not None and stem not in wanted):
                continue
            yield FileEntry(source.split, kind, stem, path, size)


@dataclasses.dataclass(frozen=True)
class PairProblem:
    """A file that cannot be paired: reported, never fatal."""

    split: str
    annotation: str
    image: str
    code: str
    reason: str


def pair(split: str, key: str, entries: Iterable[FileEntry]) -> Iterator[Pair | PairProblem]:
    """Pairs the files sharing one key: exactly one annotation and one image make a Pair.

    Extra files with the same key (x.JPEG beside x.png, x.xml beside x.XML) are duplicate
    source ids: the first by path is kept, the others are reported.
    """
    entries = sorted(entries, key=lambda e: e.path)
    anns = [e for e in entries if e.kind == "annotation"]
    imgs = [e for e in entries if e.kind == "image"]
    for extra in anns[1:] + imgs[1:]:
        kept = (anns if extra.kind == "annotation" else imgs)[0].path
        yield PairProblem(split, extra.path if extra.kind == "annotation" else "",
                          extra.path if extra.kind == "image" else "", "duplicate_source_id",
                          f"duplicate source id {key!r}: {extra.path} (kept {kept})")
    if anns and imgs:
        img = imgs[0]
        image_rel = key + posixpath.splitext(img.path)[1]
        yield Pair(split, key, anns[0].path, img.path, image_rel, img.size)
    elif anns:
        yield PairProblem(split, anns[0].path, "", "missing_image", f"annotation without image (source id {key!r})")
    elif imgs:
        yield PairProblem(split, "", imgs[0].path, "missing_annotation", f"image without annotation (source id {key!r})")

