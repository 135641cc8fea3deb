"""The class vocabulary: synset <-> id (1..K), names; 0 is background.

Built, first that applies:
  1. from `--synset-map` (the devkit's `map_det.txt`: `synset id name`, or
     `LOC_synset_mapping.txt`: `synset name...`; VOC class-name lists work too);
  2. from the tree itself, as its source says (sources/*.vocabulary): an image-folder tree's
     sorted train class folders (Keras and torchvision number them so), a CLS-LOC tree's
     LOC_synset_mapping.txt in ROOT or its parent (the Kaggle download: 1000 synsets, in the
     file's order);
  3. from the sorted set of synsets seen in the train split (box names and class folders).
Each way gives ids that are stable across runs; `origin` says which one was taken.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable

from detrec.core import fs, schema
from detrec.core.dataset_info import ClassInfo
from detrec.preprocess import annotations

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
    """Sorted distinct names, each its own display name (class folders, box names). A name of
    the background class (id 0) is no class: the images naming it are errors
    (`reserved_class_name`, annotations.normalise and labels.label_image)."""
    synsets = [s for s in synsets if not annotations.is_background_name(s)]
    ordered = tuple(sorted(set(synsets)))
    return Vocabulary(ordered, ordered, origin)


# Control characters but tab, LF and CR (whitespace between fields), and lone surrogates.
_NOT_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
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
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise VocabError(f"{path}: not UTF-8 text (save it as UTF-8)") from None
    return parse_synset_map(text, path)


def parse_synset_map(text: str, where: str = "synset map") -> Vocabulary:
    """Reads `synset [id] name` lines; with ids the order follows them, else file order.

    A BOM, CRLF, blank lines and `#` comments are fine. In linear time (a map may have a
    million lines). VocabError names the line (both lines for a repeat): a synset or id listed
    twice, ids that are not 1..K (they would be renumbered), lines with ids beside lines without,
    a synset or name that is the background class's (id 0), or is not printable text.
    """
    text = text.removeprefix("\ufeff")
    bad = _NOT_TEXT.search(text)  # one pass in C, not one check per line
    if bad:
        raise VocabError(f"{where}:{text.count(chr(10), 0, bad.start()) + 1}: holds a control character or bytes "
                         "that are not text")
    synsets: list[str] = []
    names: list[str] = []
    ids: list[int] = []
    line_of_synset: dict[str, int] = {}
    line_of_id: dict[int, int] = {}
    numbered = unnumbered = 0  # the first line with an id, and without one
    # split("\n"), not splitlines(): that also breaks at \x1c-\x1e, \x85 and U+2028, which a name may hold.
    for n, line in enumerate(text.split("\n"), start=1):
        parts = line.split()  # a tab or CR in a name would break labels.txt: whitespace runs become one space
        if not parts or parts[0].startswith("#"):
            continue
        synset = parts[0]
        if len(parts) > 1 and parts[1].isascii() and parts[1].isdigit():
            numbered = numbered or n
            if len(parts[1]) > 9:  # (int() refuses over 4300 digits; no map has a billion classes)
                raise VocabError(f"{where}:{n}: id of {len(parts[1])} digits; ids run 1..K")
            class_id = int(parts[1])
            name = " ".join(parts[2:]) or synset
            if class_id == schema.BACKGROUND_ID:
                raise VocabError(f"{where}:{n}: id 0 is reserved for the background class; ids run 1..K")
            if class_id in line_of_id:
                raise VocabError(f"{where}:{n}: id {class_id} listed twice (first at line {line_of_id[class_id]})")
            line_of_id[class_id] = n
            ids.append(class_id)
        else:
            unnumbered = unnumbered or n
            name = " ".join(parts[1:]) or synset
        if numbered and unnumbered:
            raise VocabError(f"{where}: line {numbered} gives an id and line {unnumbered} does not; "
                             "give every line an id (`synset id name`) or none")
        for value in (synset, name):
            if annotations.is_background_name(value):
                raise VocabError(f"{where}:{n}: {value!r} is reserved for the background class (id 0); "
                                 "rename that class")
        if synset in line_of_synset:
            raise VocabError(f"{where}:{n}: synset {annotations.shown_id(synset)} listed twice "
                             f"(first at line {line_of_synset[synset]})")
        line_of_synset[synset] = n
        synsets.append(synset)
        names.append(name)
    if not synsets:
        raise VocabError(f"{where}: no classes found")
    if ids:
        if max(ids) != len(ids):  # distinct ids >= 1: 1..K exactly when the largest is K
            missing = next(i for i in range(1, len(ids) + 1) if i not in line_of_id)
            raise VocabError(f"{where}:{line_of_id[max(ids)]}: id {max(ids)} with {len(ids)} classes (no id "
                             f"{missing}); ids run 1..K, else they would be renumbered")
        at = [0] * len(ids)
        for i, class_id in enumerate(ids):
            at[class_id - 1] = i
        synsets, names = [synsets[i] for i in at], [names[i] for i in at]
    return Vocabulary(tuple(synsets), tuple(names), where)
