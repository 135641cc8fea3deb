"""ImageNet DET: Annotations/DET/<split>/**.xml + Data/DET/<split>/**.JPEG, paired by path; an
image needs its XML, whose largest box names its class (none: background, a DET negative)."""

from __future__ import annotations

from typing import Iterator

from detrec.core import fs
from detrec.preprocess import walk
from detrec.preprocess.sources.contract import SplitSource, XmlTree


class Det(XmlTree):
    name = "det"
    summary = "ImageNet DET: Annotations/DET/SPLIT + Data/DET/SPLIT"
    part = "DET"  # the folder under Annotations/ and Data/ (cls_loc.py: CLS-LOC)

    def folders(self, root: str, split: str) -> tuple[str, str]:
        return fs.join(root, "Annotations", self.part, split), fs.join(root, "Data", self.part, split)

    def missing(self, root: str, split: str) -> str:
        ann_dir, img_dir = self.folders(root, split)
        if not (fs.exists(ann_dir) and fs.exists(img_dir)):
            return f"{root}: no Annotations/{self.part}/{split} and Data/{self.part}/{split}"
        return ""

    def files(self, source: SplitSource) -> Iterator[walk.FileEntry | walk.Unusable]:
        return listed_files(self, source)


def listed_files(tree: XmlTree, source: SplitSource, wanted: dict[str, int] | None = None,
                 unseen: dict[str, int] | None = None) -> Iterator[walk.FileEntry | walk.Unusable]:
    """Every annotation and image file of an XML tree's split, by path (walk.listed), keyed by
    their path without extension; with `wanted` (VOC), only those keys, as walk.listed says."""
    ann_dir, img_dir = tree.folders(source.root, source.split)
    for base, kind, extensions in ((ann_dir, "annotation", (walk.ANNOTATION_EXTENSION,)),
                                   (img_dir, "image", walk.IMAGE_EXTENSIONS)):
        if fs.exists(base):
            yield from walk.listed(source.split, kind, base, extensions, wanted is None, False, wanted, unseen)


SOURCE = Det()
