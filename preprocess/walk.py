"""Walking a source tree by real path (local or gs:// alike): what every source lists with.

All file access goes through detrec.core.fs, so the same code lists a laptop folder and a
bucket, and it runs inside the pipeline (on Dataflow: on the workers, never the launcher).
Remote folders are listed with Beam's FileSystems.match (it returns every size with the
names); local ones with os.scandir: Beam's local match stats every file twice, which made
listing a large split several times slower. Which files a layout lists, and what labels each
image, is its source's job (preprocess/sources/).

What a tree may hold is not up to us, so listing judges each file before anything reads it:
only regular files are inputs (a link to one is fine: datasets are often assembled from
links), and a FIFO, device, socket or dangling link with an input's extension becomes an
Unusable (`not_a_regular_file`: reading a FIFO blocks forever, /dev/zero never ends). A path
that is not UTF-8 (os.scandir hands such bytes over as lone surrogates, which no JSON line,
record or labels file can hold), or holds a control character (a tab or newline in a class
name breaks labels.txt), is an Unusable too (`bad_file_name`, shown with \\xNN escapes),
whether the file's own name or a folder above it is the culprit; so is a folder that cannot be
listed (`unreadable_folder`). Each becomes one line of errors-<split>.jsonl.

A split is walked by real path and never left: a link to a folder is never followed (a link
is not a class). One that leaves the split (`link_leaves_split`), leads to a folder above it
(`link_loop`) or to another folder of the split (`duplicate_folder`, whose images are listed
there) is one line. An image file reached twice (a link to a listed image, two links to one
file) is kept once, at its first path in sorted order; each other path is one line
(`duplicate_image`). A hard link is a file of its own (its own real path). Listing is linear
in the split's files whatever its links. Folders holding a dataset_info.json (detrec's own
datasets) are not listed, and a folder without images is no class.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import stat
from typing import Iterator, NamedTuple

from apache_beam.io.filesystems import FileSystems

from detrec.core import fs, schema
from detrec.core.errors import one_line

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ANNOTATION_EXTENSION = ".xml"
NOT_REGULAR, BAD_NAME, UNREADABLE_FOLDER = "not_a_regular_file", "bad_file_name", "unreadable_folder"
LINK_LEAVES, LINK_LOOP, DUPLICATE_FOLDER = "link_leaves_split", "link_loop", "duplicate_folder"
DUPLICATE_IMAGE = "duplicate_image"
_FOLDER_CODES = (UNREADABLE_FOLDER, LINK_LEAVES, LINK_LOOP, DUPLICATE_FOLDER)  # rows of folders, not files
_UNLISTABLE = "cannot list the folder"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0 and C1 control characters
log = logging.getLogger("detrec.preprocess")


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
    """A listed path that is never read: `code` is one of the codes above (NOT_REGULAR,
    BAD_NAME, UNREADABLE_FOLDER, ...), `path` is printable (see shown_path)."""

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
    """The class folder names of a folder-layout split, sorted: its subfolders that hold at
    least one image (at any depth), except hidden ones such as .ipynb_checkpoints (as Keras
    skips them), links (a link is not a class: see the module docstring) and detrec's own
    output folders (see `_is_output`). An object store has no empty folders or links: there,
    the first path parts of its images."""
    base = fs.join(root, split)
    if fs.is_url(base):
        rows = _scan_remote(base, recursive=True)
        names = {rel.split("/", 1)[0] for rel in (_relative(row[0], base) for row in rows)
                 if "/" in rel and posixpath.splitext(rel)[1].lower() in IMAGE_EXTENSIONS}
    else:
        try:
            with os.scandir(base) as entries:
                names = {e.name for e in entries if e.is_dir(follow_symlinks=False)}
        except OSError:
            return []
    # A name that is not UTF-8 text is no class (its images are reported as bad_file_name).
    names = {n for n in names if not n.startswith(".") and is_text(n)}
    return sorted(names if fs.is_url(base) else (n for n in names if _holds_image(os.path.join(base, n))))


def _holds_image(folder: str) -> bool:
    """Whether a folder holds an image listing would keep (a regular file, or a link to one,
    with an image extension and a text name) in it or in a real subfolder, walked as
    `_walk_local` walks (no links to folders, no output folder); stops at the first."""
    folders, visited = [folder], set()
    while folders:
        current = folders.pop()
        if _is_output(current):
            continue
        try:
            with os.scandir(current) as entries:
                for e in entries:
                    if e.is_dir(follow_symlinks=False):
                        try:
                            info = e.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        if (info.st_dev, info.st_ino) not in visited:
                            visited.add((info.st_dev, info.st_ino))
                            folders.append(e.path)
                    elif (posixpath.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and is_text(e.path)
                          and e.is_file()):
                        return True
        except OSError:
            continue
    return False


def _is_output(folder: str) -> bool:
    """Whether a folder is a detrec dataset (it holds dataset_info.json): never a class, never
    listed. (A dataset being written has no dataset_info.json yet, and no image either: a
    folder without images is no class, so it is none of those.)"""
    return os.path.lexists(os.path.join(folder, schema.DATASET_INFO))


def _relative(path: str, base: str) -> str:
    rel = path[len(base):].lstrip("/\\")
    return rel.replace("\\", "/")


def list_files(base: str, recursive: bool) -> list[tuple[str, int]]:
    """(path, size) of every regular file in `base` (and its subfolders when recursive), by
    path, walked as `scan` walks; what is not a regular file is left out (`scan` says why)."""
    return [(row[0], row[1]) for row in scan(base, recursive)[0] if not row[2]]


# A listed row: (path, size, code, reason, link target). code is "" for a regular file (or a
# link to one), else why it is never read (NOT_REGULAR, UNREADABLE_FOLDER or a link's
# code; a folder's problem comes with the folder's path). The link target is the real path of
# the file a link names, "" for a file that is no link. (Plain tuples: a split lists millions.)
Row = tuple[str, int, str, str, str]


def scan(base: str, recursive: bool, skip_hidden: bool = False) -> tuple[list[Row], set[str]]:
    """Every row listed under `base`, by path, and the real paths that links among them name
    (what may be reached twice; see `_walk_local`)."""
    if fs.is_url(base):
        return _scan_remote(base, recursive), set()
    targets: set[str] = set()
    return sorted(_walk_local(base, recursive, targets, skip_hidden)), targets


def _scan_remote(base: str, recursive: bool) -> list[Row]:
    """An object store's files (no links, no empty folders), less those of detrec datasets."""
    pattern = fs.join(base, "**" if recursive else "*")
    rows = sorted((m.path, m.size_in_bytes, "", "", "") for m in FileSystems.match([pattern])[0].metadata_list)
    top = base.rstrip("/")
    own = {posixpath.dirname(r[0]) for r in rows if posixpath.basename(r[0]) == schema.DATASET_INFO} - {top}
    if own:
        rows = [r for r in rows if not any(r[0].startswith(o + "/") for o in own)]
    return rows


def _inside(path: str, folder: str) -> bool:
    """Whether a real path is `folder` or below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _walk_local(base: str, recursive: bool, targets: set[str], skip_hidden: bool = False) -> Iterator[Row]:
    """The files under `base` by real path (see the module docstring), one stat per file, and
    a row with a code for what is no regular file: a FIFO, device or socket, a dangling link (or
    a vanished file), a folder that cannot be listed, a link to a folder (never followed: each
    real folder of the split is reached by its real path anyway). A folder is walked once (bind
    mounts); a detrec dataset (`_is_output`) not at all, nor with `skip_hidden` the hidden
    folders right under `base` (the folder layout's non-classes). The real path a file link
    names goes into `targets` (`listed` keeps an image reached twice once).
    """
    root_real = os.path.realpath(base)
    try:
        info = os.stat(base)
    except OSError as exc:
        yield base, 0, UNREADABLE_FOLDER, f"{_UNLISTABLE} ({exc.strerror or type(exc).__name__})", ""
        return
    visited = {(info.st_dev, info.st_ino)}
    folders = [(base, root_real)]
    while folders:
        folder, real = folders.pop()
        if folder != base and _is_output(folder):
            log.info("%s: a detrec dataset, not listed", shown_path(folder))
            continue
        try:
            entries = os.scandir(folder)
        except OSError as exc:
            yield folder, 0, UNREADABLE_FOLDER, f"{_UNLISTABLE} ({exc.strerror or type(exc).__name__})", ""
            continue
        with entries:
            for entry in entries:
                if entry.is_dir():  # follows a link
                    if not recursive or (skip_hidden and folder == base and entry.name.startswith(".")):
                        continue
                    if entry.is_symlink():
                        yield _folder_link(entry.path, real, root_real)
                        continue
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue  # vanished while listed
                    if (info.st_dev, info.st_ino) not in visited:
                        visited.add((info.st_dev, info.st_ino))
                        folders.append((entry.path, os.path.join(real, entry.name)))
                    continue
                try:
                    info = entry.stat()  # follows a link: a link to a regular file is that file
                except OSError:
                    why = "a dangling link" if entry.is_symlink() else "vanished while listed"
                    yield entry.path, 0, NOT_REGULAR, why, ""
                    continue
                if not stat.S_ISREG(info.st_mode):
                    yield entry.path, 0, NOT_REGULAR, "not a regular file (a FIFO, device or socket)", ""
                elif entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    targets.add(target)
                    yield entry.path, info.st_size, "", "", target
                else:
                    yield entry.path, info.st_size, "", "", ""


def _folder_link(path: str, folder_real: str, root_real: str) -> Row:
    """The row of a link to a folder (never followed), saying where it leads."""
    target = os.path.realpath(path)
    shown = shown_path(target)
    if not _inside(target, root_real):
        return path, 0, LINK_LEAVES, (f"a link to a folder outside the split ({shown}): not followed (detrec never "
                                      "leaves a split; copy the folder in, or link its files)"), ""
    if _inside(folder_real, target):
        return path, 0, LINK_LOOP, f"a link to {shown}, a folder above it: not followed (it would loop)", ""
    return path, 0, DUPLICATE_FOLDER, (f"a link to {shown}, a folder of this split: not followed (its images are "
                                       "listed there, once)"), ""


def _judged(split: str, kind: str, row: Row, key: str) -> FileEntry | Unusable:
    """A listed row as a FileEntry, or the Unusable saying why it is never read."""
    path, size, code, reason, _ = row
    if code:
        return Unusable(split, kind, shown_path(path), code, f"{shown_path(path)}: {reason}", key)
    if not is_text(path):
        return Unusable(split, kind, shown_path(path), BAD_NAME,
                        f"{shown_path(path)}: the file or a folder above it has a name that is not UTF-8 text "
                        "or holds a control character (rename it to use it)", key)
    return FileEntry(split, kind, key, path, size)


def listed(split: str, kind: str, base: str, extensions: tuple[str, ...], recursive: bool, whole_key: bool,
            wanted: dict[str, int] | None = None, unseen: dict[str, int] | None = None
            ) -> Iterator[FileEntry | Unusable]:
    """The inputs of one folder (`kind` files with these extensions), by path, keyed by their
    path under `base` (without the extension unless `whole_key`), and a row for each folder
    that is not listed. An image reached twice (through a link) is kept once, at its first
    path in sorted order; the others are DUPLICATE_IMAGE. With `wanted` (VOC: the ids its
    split list names), only those are inputs, and each one found is taken out of `unseen`."""
    rows, targets = scan(base, recursive, skip_hidden=whole_key)
    root_real = os.path.realpath(base) if targets else ""
    kept: dict[str, str] = {}
    for row in rows:
        if row[2] in _FOLDER_CODES:
            yield _judged(split, kind, row, "")
            continue
        rel = _relative(row[0], base)
        stem, ext = posixpath.splitext(rel)
        if ext.lower() not in extensions or (whole_key and "/" in rel and rel.startswith(".")):
            continue  # (an object store's hidden first folder: no class, as locally)
        if wanted is not None:
            if stem not in wanted:
                continue
            unseen.pop(stem, None)
        entry = _judged(split, kind, row, rel if whole_key else stem)
        if targets and kind == "image" and isinstance(entry, FileEntry):
            real = row[4] or os.path.join(root_real, rel)  # a file that is no link is at its real path
            if real in targets:
                first = kept.setdefault(real, row[0])
                if first != row[0]:
                    entry = Unusable(split, kind, shown_path(row[0]), DUPLICATE_IMAGE,
                                     f"{shown_path(row[0])}: the same file as {shown_path(first)} (a link to it, or "
                                     "both link to one file): kept once, there", entry.key)
        yield entry


def folder_class(key: str) -> str:
    """The class folder of an image's key (its first part), "" for an image outside any."""
    return key.split("/", 1)[0] if "/" in key else ""


class ReadError(Exception):
    """A source file that cannot be read: `code` for errors-<split>.jsonl, the message says why."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code


def read_capped(path: str, what: str, limit: int, too_large: str = "file_too_large") -> bytes:
    """A source file's bytes, never more than `limit` + 1 read, and only from a regular file
    (fs.read_capped): the listing saw each file's size, but a file can grow, or be swapped for
    a FIFO, after it. ReadError says why not (`not_a_regular_file`, `unreadable_file`, `too_large`)."""
    try:
        data = fs.read_capped(path, limit)
    except fs.NotARegularFile:
        raise ReadError("not_a_regular_file", f"cannot read {what}: not a regular file") from None
    except Exception as exc:  # permissions, vanished files, GCS errors: report, go on
        raise ReadError("unreadable_file", f"cannot read {what}: {one_line(exc)}") from None
    if len(data) > limit:
        raise ReadError(too_large, f"{what} larger than {limit:,} bytes (the limit"
                        + (", --max-image-mb)" if what == "image" else ")"))
    return data
