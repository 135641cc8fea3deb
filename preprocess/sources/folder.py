"""Image folders (Keras image_dataset_from_directory, torchvision ImageFolder):
<split>/<class>/**.<image>. The class folder labels every image in it, no boxes; folders
starting with "." are no classes, and the train split's sorted class folders are the class
list (as Keras and torchvision number them). An image outside a class folder is one line; but a
split of images alone (test/*.jpg, no class folder) beside a split with class folders is
unlabelled: each image a record without a class."""

from __future__ import annotations

import posixpath
from typing import Iterator, Mapping, Sequence

from detrec.core import fs, schema
from detrec.preprocess import annotations, pairing, vocab as vocab_lib, walk
from detrec.preprocess.plan import BOXES_FROM_NONE, Item
from detrec.preprocess.sources.contract import NO_BOXES, Source, SplitSource

TRAIN = "train"


class Folder(Source):
    name = "folder"
    summary = "image folders: SPLIT/CLASS/IMAGE (Keras, torchvision)"

    def missing(self, root: str, split: str) -> str:
        base = fs.join(root, split)
        if not fs.isdir(base):
            return f"{root}: no folder {split}/ (expected {split}/<class>/<image>)"
        if not walk.class_folders(root, split) and not _images_alone(root, split):
            return (f"{base}: no class folders (expected {split}/<class>/<image>): a folder without images is none, "
                    "and images alone (an unlabelled split) need a split with class folders beside them")
        return ""

    def labelled(self, source: SplitSource) -> bool:
        return bool(walk.class_folders(source.root, source.split))

    def check(self, source: SplitSource) -> None:
        """No class folder is named as the background class is (any case): it would be a
        second 'background' beside id 0."""
        name = next((n for n in walk.class_folders(source.root, source.split)
                     if annotations.is_background_name(n)), "")
        if name:
            raise ValueError(f"{fs.join(source.root, source.split, name)}: a class folder named {name!r}, the name "
                             f"of class 0 ({schema.BACKGROUND_TEXT}: no object); rename the folder to make it a class")

    def files(self, source: SplitSource) -> Iterator[walk.FileEntry | walk.Unusable]:
        """Every image under the split's folder, keyed by its path there (with the extension:
        x.jpg beside x.png are two images)."""
        return walk.listed(source.split, "image", fs.join(source.root, source.split), walk.IMAGE_EXTENSIONS,
                           recursive=True, whole_key=True)

    def pairs(self, source: SplitSource) -> Iterator[pairing.Pair | pairing.Rejected]:
        """An image in a class folder, or any image of an unlabelled split, is a Pair."""
        split = source.split
        entries = []
        for entry in self.files(source):
            if isinstance(entry, walk.Unusable):
                yield pairing.Rejected(split, "", entry.path, "list", entry.code, entry.reason)
            else:
                entries.append(entry)
        for entry in sorted(entries, key=lambda e: e.key):  # keys are paths: no two alike
            folder = walk.folder_class(entry.key)
            if folder or not source.labelled:
                yield pairing.Pair(split, entry.key, "", entry.path, entry.key, entry.size, folder)
            else:
                yield pairing.Rejected(split, "", entry.path, "pair", "no_class_folder",
                                       f"{entry.path}: image outside a class folder (expected {split}/<class>/<image>)")

    def annotate(self, pair: pairing.Pair) -> Item:
        return Item(pair, NO_BOXES, BOXES_FROM_NONE)

    def fixes_classes(self, found: Mapping[str, SplitSource]) -> bool:
        return True

    def vocabulary(self, found: Mapping[str, SplitSource], splits: Sequence[str]) -> vocab_lib.Vocabulary:
        """The sorted class folders of `train` when the tree has it (so a val-only run gets the
        same ids), else of the first split that has some (not an unlabelled one)."""
        root = next(iter(found.values())).root
        for split in (TRAIN, *splits):
            classes = walk.class_folders(root, split)
            if classes:
                break
        return vocab_lib.from_synsets(classes, f"class folders of {fs.join(root, split)}")


def _images_alone(root: str, split: str) -> bool:
    """Whether a split without class folders is an unlabelled one: images right in its folder
    (test/*.jpg) and another folder of the tree with class folders (whose class list it has)."""
    listed = walk.list_files(fs.join(root, split), recursive=False)
    if not any(posixpath.splitext(path)[1].lower() in walk.IMAGE_EXTENSIONS for path, _ in listed):
        return False
    others = sorted((n for n in fs.listdir(root) if n != split and not n.startswith(".")), key=lambda n: n != TRAIN)
    return any(walk.class_folders(root, name) for name in others)  # train first: the likeliest


SOURCE = Folder()
