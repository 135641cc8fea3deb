"""Walking a source tree: which layout it has, and every file of a split (local or gs:// alike).

All file access goes through detrec.core.fs, so the same code lists a laptop folder and a
bucket, and it runs inside the pipeline (on Dataflow: on the workers, never the launcher).
Remote folders are listed with Beam's FileSystems.match (it returns every size with the
names); local ones with os.scandir: Beam's local match stats every file twice, which made
listing a large split several times slower. What labels each listed image is pairing.py's job.

Layouts (ROOT is the folder holding Annotations/ and Data/, JPEGImages/ or the split folders):
  det      Annotations/DET/<split>/**.xml     + Data/DET/<split>/**.JPEG
  cls-loc  Annotations/CLS-LOC/<split>/**.xml + Data/CLS-LOC/<split>/**.JPEG; the XML is
           optional (train: the synset folder labels an image; val: LOC_val_solution.csv)
  voc      Annotations/*.xml + JPEGImages/*.jpg, split ids from ImageSets/Main/<split>.txt
  folder   <split>/<class>/**.<image> (Keras image_dataset_from_directory, torchvision
           ImageFolder): the class folder is the label; folders starting with "." are not classes
`auto` tries them in that order. ROOT may also be the folder holding ILSVRC/ (the Kaggle
download), or the tree's Data/CLS-LOC or Data/DET (see tree_root).
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
from typing import Iterator, NamedTuple

from apache_beam.io.filesystems import FileSystems

from detrec.core import fs

DET, CLS_LOC, VOC, FOLDER = "det", "cls-loc", "voc", "folder"
LAYOUTS = ("auto", DET, CLS_LOC, VOC, FOLDER)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ANNOTATION_EXTENSION = ".xml"
KAGGLE_ROOT = "ILSVRC"  # what the Kaggle download unpacks beside its LOC_*.csv files


@dataclasses.dataclass(frozen=True)
class SplitSource:
    """Where one split's files live."""

    root: str
    split: str
    layout: str  # resolved: det | cls-loc | voc | folder


class FileEntry(NamedTuple):
    """A listed file: `key` is its path relative to the split root, without extension (folder
    layout: with it, as nothing pairs there and x.jpg beside x.png are two images).
    (A tuple: a split lists hundreds of thousands, ~5x cheaper to make than a dataclass.)"""

    split: str
    kind: str  # "annotation" | "image"
    key: str
    path: str
    size: int


def _dirs(root: str, split: str, layout: str) -> tuple[str, str]:
    """(annotation folder, image folder) of a split; the folder layout has no annotation folder."""
    if layout == DET:
        return fs.join(root, "Annotations", "DET", split), fs.join(root, "Data", "DET", split)
    if layout == CLS_LOC:
        return fs.join(root, "Annotations", "CLS-LOC", split), fs.join(root, "Data", "CLS-LOC", split)
    if layout == FOLDER:
        return "", fs.join(root, split)
    return fs.join(root, "Annotations"), fs.join(root, "JPEGImages")


def tree_root(root: str, layout: str = "auto") -> str:
    """The folder holding Annotations/ and Data/: ROOT itself; ROOT/ILSVRC when ROOT is the
    Kaggle download's folder (ILSVRC/ beside the LOC_* files); or, unless the layout is
    `folder`, the tree above when ROOT is its Data/CLS-LOC or Data/DET (so the XML is found)."""
    if layout != FOLDER and fs.basename(root) in ("CLS-LOC", "DET") and fs.basename(fs.dirname(root)) == "Data":
        return fs.dirname(fs.dirname(root))
    inner = fs.join(root, KAGGLE_ROOT)
    if any(fs.exists(fs.join(root, d)) for d in ("Data", "Annotations", "JPEGImages")):
        return root
    return inner if fs.exists(fs.join(inner, "Data")) else root


def _missing(root: str, split: str, layout: str) -> str:
    """What a tree lacks to be `layout` for `split` ("" when nothing)."""
    ann_dir, img_dir = _dirs(root, split, layout)
    if layout == DET and not (fs.exists(ann_dir) and fs.exists(img_dir)):
        return f"{root}: no Annotations/DET/{split} and Data/DET/{split}"
    if layout == CLS_LOC and not fs.exists(img_dir):
        return f"{root}: no Data/CLS-LOC/{split}"
    if layout == VOC:
        split_list = fs.join(root, "ImageSets", "Main", f"{split}.txt")
        if not (fs.exists(ann_dir) and fs.exists(img_dir) and fs.exists(split_list)):
            return f"{root}: no Annotations/, JPEGImages/ and ImageSets/Main/{split}.txt"
    if layout == FOLDER:
        if not fs.isdir(img_dir):
            return f"{root}: no folder {split}/ (expected {split}/<class>/<image>)"
        if not class_folders(root, split):
            return f"{img_dir}: no class folders (expected {split}/<class>/<image>)"
    return ""


def resolve(root: str, split: str, layout: str) -> SplitSource:
    """Where a split is and in which layout (`auto`: the first that fits, in LAYOUTS order).

    Raises:
      ValueError: the tree does not have the split in that layout (or in any, for `auto`);
        the message says what was looked for.
    """
    root = tree_root(root, layout)
    if layout != "auto":
        problem = _missing(root, split, layout)
        if problem:
            raise ValueError(f"--layout {layout}: {problem}")
        return SplitSource(root, split, layout)
    for candidate in (DET, CLS_LOC, VOC, FOLDER):
        if not _missing(root, split, candidate):
            return SplitSource(root, split, candidate)
    try:
        held = [n for n in fs.listdir(root) if not n.startswith(".")][:8]
    except Exception:
        held = []
    raise ValueError(
        f"{root}: split {split!r} not found: no Annotations/DET/{split}, Data/CLS-LOC/{split}, Annotations + "
        f"JPEGImages or {split}/<class>/<image> folders" + (f" (it holds: {', '.join(held)})" if held else "")
        + "; pass the folder that holds Annotations/ and Data/ (or the split folders), and --splits naming its splits"
    )


def find_beside(root: str, name: str) -> str:
    """The file `name` in ROOT or else in its parent (where the Kaggle download keeps its
    LOC_* files, beside ILSVRC/); "" when neither has it."""
    folders = [root]
    parent = fs.dirname(root)
    if parent and parent != root and not parent.endswith(":"):  # "gs:" is no folder
        folders.append(parent)
    for folder in folders:
        path = fs.join(folder, name)
        try:
            if fs.exists(path) and not fs.isdir(path):
                return path
        except Exception:  # an unreadable parent is as good as absent
            continue
    return ""


def class_folders(root: str, split: str) -> list[str]:
    """The class folder names of a folder-layout split, sorted: its subfolders (symlinked ones
    too), except hidden ones such as .ipynb_checkpoints (as Keras skips them). An object store
    has no empty folders: there, the first path parts of its files."""
    base = fs.join(root, split)
    if fs.is_url(base):
        names = {_relative(path, base).split("/", 1)[0] for path, _ in list_files(base, recursive=True)
                 if "/" in _relative(path, base)}
    else:
        try:
            with os.scandir(base) as entries:
                names = {e.name for e in entries if e.is_dir()}
        except OSError:
            return []
    return sorted(n for n in names if not n.startswith("."))


def _relative(path: str, base: str) -> str:
    rel = path[len(base):].lstrip("/\\")
    return rel.replace("\\", "/")


def list_files(base: str, recursive: bool, follow_links: bool = False) -> list[tuple[str, int]]:
    """(path, size) of every file in `base` (and its subfolders when recursive), by path.

    `follow_links` also walks symlinked local folders (not into a loop), as torchvision's
    ImageFolder does: a class folder linked in from elsewhere is how image-folder subsets are
    often made. Object stores have no links.
    """
    if fs.is_url(base):
        pattern = fs.join(base, "**" if recursive else "*")
        return sorted((m.path, m.size_in_bytes) for m in FileSystems.match([pattern])[0].metadata_list)
    return sorted(_scan_local(base, recursive, follow_links))


def _scan_local(base: str, recursive: bool, follow_links: bool = False) -> Iterator[tuple[str, int]]:
    """What Beam's local match lists (os.walk: symlinked folders not followed, a file that
    vanishes or a dangling link skipped), with one stat per file instead of two. With
    `follow_links`, a linked folder is walked unless it is one of its own ancestors."""
    folders: list[tuple[str, frozenset]] = [(base, frozenset([os.path.realpath(base)]) if follow_links else frozenset())]
    while folders:
        folder, ancestors = folders.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir():
                    if not recursive:
                        continue
                    if not follow_links:
                        if not entry.is_symlink():
                            folders.append((entry.path, ancestors))
                        continue
                    real = os.path.realpath(entry.path)
                    if real not in ancestors:
                        folders.append((entry.path, ancestors | {real}))
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
    if source.layout == FOLDER:
        yield from _list_folder_split(source.split, img_dir)
        return
    wanted = _voc_ids(source.root, source.split) if source.layout == VOC else None
    for base, kind, extensions in (
        (ann_dir, "annotation", (ANNOTATION_EXTENSION,)),
        (img_dir, "image", IMAGE_EXTENSIONS),
    ):
        if not fs.exists(base):
            continue
        for path, size in list_files(base, recursive=source.layout != VOC):
            stem, ext = posixpath.splitext(_relative(path, base))
            if ext.lower() not in extensions or (wanted is not None and stem not in wanted):
                continue
            yield FileEntry(source.split, kind, stem, path, size)


def _list_folder_split(split: str, base: str) -> Iterator[FileEntry]:
    """The images of a folder-layout split, keyed by their path under it, extension kept;
    those under a hidden first folder (not a class: see class_folders) are left out."""
    for path, size in list_files(base, recursive=True, follow_links=True):
        rel = _relative(path, base)
        if posixpath.splitext(rel)[1].lower() in IMAGE_EXTENSIONS and not ("/" in rel and rel.startswith(".")):
            yield FileEntry(split, "image", rel, path, size)


def folder_class(key: str) -> str:
    """The class folder of an image's key (its first part), "" for an image outside any."""
    return key.split("/", 1)[0] if "/" in key else ""
