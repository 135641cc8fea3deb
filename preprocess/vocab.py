"""The class vocabulary: synset <-> id (1..K), names; 0 is background.

Built, first that applies:
  1. from `--synset-map` (the devkit's `map_det.txt`: `synset id name`, or
     `LOC_synset_mapping.txt`: `synset name...`; VOC class-name lists work too);
  2. from the tree itself: an image-folder tree's sorted train class folders (Keras and
     torchvision number them so), a CLS-LOC tree's LOC_synset_mapping.txt in ROOT or its
     parent (the Kaggle download: 1000 synsets, in the file's order);
  3. from the sorted set of synsets seen in the train split (box names and class folders).
Each way gives ids that are stable across runs; `origin` says which one was taken.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Sequence

from detrec.core import fs, schema
from detrec.core.dataset_info import ClassInfo
from detrec.preprocess import sources

LOC_SYNSET_MAPPING = "LOC_synset_mapping.txt"
TRAIN = "train"


class VocabError(ValueError):
    """A synset map that cannot be read (names the line)."""


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    synsets: tuple[str, ...]  # synsets[i] has id i + 1
    names: tuple[str, ...]
    origin: str = ""  # where the list came from, for dataset_info.json and the summary

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ids", {s: i + 1 for i, s in enumerate(self.synsets)})

    @property
    def num_classes(self) -> int:
        """Classes including background."""
        return len(self.synsets) + 1

    def id_of(self, synset: str) -> int | None:
        return self._ids.get(synset)  # type: ignore[attr-defined]

    def classes(self) -> tuple[ClassInfo, ...]:
        """Every class by id, background first, as in dataset_info.json."""
        background = ClassInfo(schema.BACKGROUND_ID, schema.BACKGROUND_TEXT, schema.BACKGROUND_TEXT)
        return (background, *(ClassInfo(i + 1, s, n) for i, (s, n) in enumerate(zip(self.synsets, self.names))))

    def labels_txt(self) -> str:
        """`id<TAB>synset<TAB>name` per line, background first."""
        return "".join(f"{c.id}\t{c.synset}\t{c.name}\n" for c in self.classes())


def from_synsets(synsets: Iterable[str], origin: str = "synsets seen in the train split") -> Vocabulary:
    """Sorted distinct names, each its own display name (class folders, box names)."""
    ordered = tuple(sorted(set(synsets)))
    return Vocabulary(ordered, ordered, origin)


def of_tree(collected: Vocabulary, found: Mapping[str, sources.SplitSource], splits: Sequence[str]) -> Vocabulary:
    """The vocabulary the tree fixes itself (rule 2 of the module docstring), else `collected`
    (the synsets seen in the train split, rule 3)."""
    return tree_vocabulary(found, splits) or collected


def tree_vocabulary(found: Mapping[str, sources.SplitSource], splits: Sequence[str]) -> Vocabulary | None:
    """The vocabulary the tree fixes itself (rule 2), None when it fixes none.

    Args:
      found: each split's resolved source (root and layout).
      splits: the splits of this run; the folder layout numbers the class folders of `train`
        when the tree has it (so a val-only run gets the same ids), else of the first split.
    """
    if not found:
        return None
    root = next(iter(found.values())).root
    layouts = {s.layout for s in found.values()}
    if sources.FOLDER in layouts:
        split = TRAIN if TRAIN in found or fs.isdir(fs.join(root, TRAIN)) else splits[0]
        return from_synsets(sources.class_folders(root, split), f"class folders of {fs.join(root, split)}")
    if sources.CLS_LOC in layouts:
        path = sources.find_beside(root, LOC_SYNSET_MAPPING)
        if path:
            return read_synset_map(path)
    return None


MAX_SYNSET_MAP_BYTES = 16 << 20  # ImageNet's 1000-class map is 31 KB; 21k classes ~1 MB


def read_synset_map(path: str) -> Vocabulary:
    """A synset map file (--synset-map, LOC_synset_mapping.txt), read capped: only a regular
    file is read, and at most 16 MiB of it, so a FIFO or a link to /dev/zero cannot hang or
    fill the reader. VocabError says what is wrong."""
    try:
        data = fs.read_capped(path, MAX_SYNSET_MAP_BYTES)
    except fs.NotARegularFile:
        raise VocabError(f"{path}: not a regular file") from None
    if len(data) > MAX_SYNSET_MAP_BYTES:
        raise VocabError(f"{path}: over {MAX_SYNSET_MAP_BYTES >> 20} MiB, not a synset map")
    try:
        return parse_synset_map(data.decode("utf-8"), path)
    except UnicodeDecodeError:
        raise VocabError(f"{path}: not UTF-8 text") from None


def parse_synset_map(text: str, where: str = "synset map") -> Vocabulary:
    """Reads `synset [id] name` lines; with ids the order follows them, else file order."""
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.strip().split(None, 2)
        if not parts or parts[0].startswith("#"):
            continue
        synset, rest = parts[0], parts[1:]
        order = None
        if rest and rest[0].isdigit():
            order = int(rest[0])
            rest = rest[1:]
        name = " ".join(rest).strip() or synset
        if synset == schema.BACKGROUND_TEXT:
            raise VocabError(f"{where}:{n}: 'background' is reserved for id 0")
        rows.append((order if order is not None else n, n, synset, name))
    if not rows:
        raise VocabError(f"{where}: no classes found")
    rows.sort()
    synsets = [r[2] for r in rows]
    dupes = sorted({s for s in synsets if synsets.count(s) > 1})
    if dupes:
        raise VocabError(f"{where}: synsets listed twice: {', '.join(dupes[:5])}")
    return Vocabulary(tuple(synsets), tuple(r[3] for r in rows), where)
