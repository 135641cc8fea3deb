"""The class vocabulary: synset <-> id (1..K), names; 0 is background.

Built from a synset-map file (the devkit's `map_det.txt`: `synset id name`, or
`LOC_synset_mapping.txt`: `synset name...`; VOC class-name lists work too) or, without one,
from the sorted set of synsets seen in the train split, so ids are stable across runs.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from detrec.core import schema
from detrec.core.dataset_info import ClassInfo


class VocabError(ValueError):
    """A synset map that cannot be read (names the line)."""


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    synsets: tuple[str, ...]  # synsets[i] has id i + 1
    names: tuple[str, ...]

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


def from_synsets(synsets: Iterable[str]) -> Vocabulary:
    ordered = tuple(sorted(set(synsets)))
    return Vocabulary(ordered, ordered)


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
    return Vocabulary(tuple(synsets), tuple(r[3] for r in rows))
