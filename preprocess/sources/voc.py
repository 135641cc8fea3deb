"""Pascal VOC: Annotations/*.xml + JPEGImages/*.jpg, the split's ids listed in
ImageSets/Main/<split>.txt; an image needs its XML. An id the list names with no file at all
is one line (`missing_files`)."""

from __future__ import annotations

import os
from typing import Iterator

from detrec.core import fs
from detrec.preprocess import annotations, walk
from detrec.preprocess.sources.contract import SplitSource, XmlTree
from detrec.preprocess.sources.det import listed_files

MAX_SPLIT_LIST_BYTES = 64 << 20  # ImageSets/Main/<split>.txt: VOC's are < 1 MB
MISSING_FILES = "missing_files"


class Voc(XmlTree):
    name = "voc"
    summary = "Pascal VOC: Annotations/ + JPEGImages/, split ids in ImageSets/Main/SPLIT.txt"

    def folders(self, root: str, split: str) -> tuple[str, str]:
        return fs.join(root, "Annotations"), fs.join(root, "JPEGImages")

    def missing(self, root: str, split: str) -> str:
        ann_dir, img_dir = self.folders(root, split)
        split_list = _split_list(root, split)
        if not (fs.exists(ann_dir) and fs.exists(img_dir) and fs.exists(split_list)):
            return f"{root}: no Annotations/, JPEGImages/ and ImageSets/Main/{split}.txt"
        if not fs.is_url(split_list) and not os.path.isfile(split_list):
            return f"{split_list}: not a regular file"
        return ""

    def files(self, source: SplitSource) -> Iterator[walk.FileEntry | walk.Unusable]:
        """The files its split list names, and a MISSING_FILES line for each id without any."""
        wanted = _ids(source.root, source.split)
        unseen = dict(wanted)
        yield from listed_files(self, source, wanted, unseen)
        where = walk.shown_path(_split_list(source.root, source.split))
        for voc_id, line in unseen.items():
            yield walk.Unusable(source.split, "annotation", f"{where}:{line}", MISSING_FILES,
                                f"{where}:{line}: lists image {annotations.shown_id(voc_id)}, but neither "
                                "Annotations/ nor JPEGImages/ has a file of that name", voc_id)


def _split_list(root: str, split: str) -> str:
    return fs.join(root, "ImageSets", "Main", f"{split}.txt")


def _ids(root: str, split: str) -> dict[str, int]:
    """The ids ImageSets/Main/<split>.txt lists, each with the line first listing it (a BOM,
    CRLF and blank lines are fine); bytes that are not UTF-8 are kept as os.scandir keeps them
    in names (lone surrogates), so such an image is found and reported, not missed."""
    path = _split_list(root, split)
    data = fs.read_capped(path, MAX_SPLIT_LIST_BYTES)
    if len(data) > MAX_SPLIT_LIST_BYTES:
        raise ValueError(f"{path}: over {MAX_SPLIT_LIST_BYTES >> 20} MB, not a VOC split list")
    ids: dict[str, int] = {}
    # split("\n"), not splitlines(): that also breaks at \x1c-\x1e, \x85 and U+2028, which a name may hold.
    for number, line in enumerate(data.decode("utf-8", "surrogateescape").removeprefix("\ufeff").split("\n"), 1):
        fields = line.split()
        if fields:
            ids.setdefault(fields[0], number)
    return ids


SOURCE = Voc()
