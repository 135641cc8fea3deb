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

What a tree may hold is not up to us, so listing judges each file before anything reads it:
only regular files are inputs (a link to one is fine: datasets are often assembled from
links), and a FIFO, device, socket or dangling link with an input's extension becomes an
Unusable (`not_a_regular_file`: reading a FIFO blocks forever, /dev/zero never ends). A path
that is not UTF-8 (os.scandir hands such bytes over as lone surrogates, which no JSON line,
record or labels file can hold), or holds a control character (a tab or newline in a class
name breaks labels.txt), is an Unusable too (`bad_file_name`, shown with \\xNN escapes),
whether the file's own name or a folder above it is the culprit; so is a folder that cannot be
listed (`unreadable_folder`). Each becomes one line of errors-<split>.jsonl.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
import stat
from typing import Iterator, NamedTuple

from apache_beam.io.filesystems import FileSystems

from detrec.core import fs

DET, CLS_LOC, VOC, FOLDER = "det", "cls-loc", "voc", "folder"
LAYOUTS = ("auto", DET, CLS_LOC, VOC, FOLDER)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ANNOTATION_EXTENSION = ".xml"
KAGGLE_ROOT = "ILSVRC"  # what the Kaggle download unpacks beside its LOC_*.csv files
NOT_REGULAR, BAD_NAME, UNREADABLE_FOLDER = "not_a_regular_file", "bad_file_name", "unreadable_folder"
MAX_SPLIT_LIST_BYTES = 64 << 20  # ImageSets/Main/<split>.txt: VOC's are < 1 MB
_UNLISTABLE = "cannot list the folder"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0 and C1 control characters


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


class Unusable(NamedTuple):
    """A listed path that is never read: `code` is NOT_REGULAR, BAD_NAME or UNREADABLE_FOLDER,
    `path` is printable (see shown_path)."""

    split: str
    kind: str  # "annotation" | "image": which folder it was listed in
    path: str
    code: str
    reason: str
    key: str = ""  # the key a FileEntry at this path would have had ("" for a folder)


def is_text(path: str) -> bool:
    """Whether a path is valid Unicode text (not bytes os.scandir had to smuggle in) without
    control characters (a tab or newline in a class folder's name would break labels.txt)."""
    if path.isascii():
        return path.isprintable()
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not _CONTROL.search(path)


def shown_path(path: str) -> str:
    """A path any writer takes: bytes that are not UTF-8, and control characters, shown as
    \\xNN escapes."""
    if is_text(path):
        return path
    try:
        text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        text = path.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


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
        if not fs.is_url(split_list) and not os.path.isfile(split_list):
            return f"{split_list}: not a regular file"
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
    # A name that is not UTF-8 text is no class (its images are reported as bad_file_name).
    return sorted(n for n in names if not n.startswith(".") and is_text(n))


def _relative(path: str, base: str) -> str:
    rel = path[len(base):].lstrip("/\\")
    return rel.replace("\\", "/")


def list_files(base: str, recursive: bool, follow_links: bool = False) -> list[tuple[str, int]]:
    """(path, size) of every regular file in `base` (and its subfolders when recursive), by path.

    `follow_links` also walks symlinked local folders (not into a loop), as torchvision's
    ImageFolder does: a class folder linked in from elsewhere is how image-folder subsets are
    often made. Object stores have no links. What is not a regular file is left out (see
    `scan`, which says why).
    """
    return [(path, size) for path, size, problem in scan(base, recursive, follow_links) if not problem]


def scan(base: str, recursive: bool, follow_links: bool = False) -> list[tuple[str, int, str]]:
    """(path, size, problem) of everything listed under `base`, by path: problem is "" for a
    regular file, else what keeps it from being read (a folder's problem comes with the
    folder's path)."""
    if fs.is_url(base):
        pattern = fs.join(base, "**" if recursive else "*")
        return sorted((m.path, m.size_in_bytes, "") for m in FileSystems.match([pattern])[0].metadata_list)
    return sorted(_scan_local(base, recursive, follow_links))


def _scan_local(base: str, recursive: bool, follow_links: bool = False) -> Iterator[tuple[str, int, str]]:
    """What Beam's local match lists (os.walk: symlinked folders not followed), with one stat
    per file instead of two, and a problem for what is no regular file: a FIFO, device or
    socket, a dangling link (or a file that vanished), a folder that cannot be listed. With
    `follow_links`, a linked folder is walked unless it is one of its own ancestors."""
    folders: list[tuple[str, frozenset]] = [(base, frozenset([os.path.realpath(base)]) if follow_links else frozenset())]
    while folders:
        folder, ancestors = folders.pop()
        try:
            entries = os.scandir(folder)
        except OSError as exc:
            yield folder, 0, f"{_UNLISTABLE} ({exc.strerror or type(exc).__name__})"
            continue
        with entries:
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
                    info = entry.stat()  # follows a link: a link to a regular file is that file
                except OSError:
                    yield entry.path, 0, "a dangling link" if entry.is_symlink() else "vanished while listed"
                    continue
                if stat.S_ISREG(info.st_mode):
                    yield entry.path, info.st_size, ""
                else:
                    yield entry.path, 0, "not a regular file (a FIFO, device or socket)"


def _voc_ids(root: str, split: str) -> set[str]:
    """The ids ImageSets/Main/<split>.txt lists; bytes that are not UTF-8 are kept as os.scandir
    keeps them in names (lone surrogates), so such an image is found and reported, not missed."""
    path = fs.join(root, "ImageSets", "Main", f"{split}.txt")
    data = fs.read_capped(path, MAX_SPLIT_LIST_BYTES)
    if len(data) > MAX_SPLIT_LIST_BYTES:
        raise ValueError(f"{path}: over {MAX_SPLIT_LIST_BYTES >> 20} MB, not a VOC split list")
    text = data.decode("utf-8", "surrogateescape")
    return {line.split()[0] for line in text.splitlines() if line.strip()}


def _judged(split: str, kind: str, path: str, size: int, problem: str, key: str) -> FileEntry | Unusable:
    """A listed input as a FileEntry, or the Unusable saying why it is never read."""
    if problem:
        return Unusable(split, kind, shown_path(path), NOT_REGULAR, f"{shown_path(path)}: {problem}", key)
    if not is_text(path):
        return Unusable(split, kind, shown_path(path), BAD_NAME,
                        f"{shown_path(path)}: the file or a folder above it has a name that is not UTF-8 text "
                        "or holds a control character (rename it to use it)", key)
    return FileEntry(split, kind, key, path, size)


def list_split(source: SplitSource) -> Iterator[FileEntry | Unusable]:
    """Every annotation and image file of a split (sorted, so output order is stable), and an
    Unusable for each such path that is never read (see the module docstring)."""
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
        for path, size, problem in scan(base, recursive=source.layout != VOC):
            if problem.startswith(_UNLISTABLE):
                yield Unusable(source.split, kind, shown_path(path), UNREADABLE_FOLDER, f"{shown_path(path)}: {problem}")
                continue
            stem, ext = posixpath.splitext(_relative(path, base))
            if ext.lower() not in extensions or (wanted is not None and stem not in wanted):
                continue
            yield _judged(source.split, kind, path, size, problem, stem)


def _list_folder_split(split: str, base: str) -> Iterator[FileEntry | Unusable]:
    """The images of a folder-layout split, keyed by their path under it, extension kept;
    those under a hidden first folder (not a class: see class_folders) are left out."""
    for path, size, problem in scan(base, recursive=True, follow_links=True):
        rel = _relative(path, base)
        if problem.startswith(_UNLISTABLE):
            yield Unusable(split, "image", shown_path(path), UNREADABLE_FOLDER, f"{shown_path(path)}: {problem}")
        elif posixpath.splitext(rel)[1].lower() in IMAGE_EXTENSIONS and not ("/" in rel and rel.startswith(".")):
            yield _judged(split, "image", path, size, problem, rel)


def folder_class(key: str) -> str:
    """The class folder of an image's key (its first part), "" for an image outside any."""
    return key.split("/", 1)[0] if "/" in key else ""
