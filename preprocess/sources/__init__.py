"""The tree layouts `detrec preprocess` reads: one module each, implementing the Source contract
(contract.py), and one registry, SOURCES, that `--layout`, its --help, auto-detection and the
docs read. Nothing outside these modules compares layout names.

Adding a source: a module here with a Source subclass and `SOURCE = ...`, one line in SOURCES,
and its tests (README, "Adding a source").

ROOT (--input) is the folder holding the layout's folders; it may also be the folder holding
ILSVRC/ (the Kaggle download), or an ImageNet tree's Data/CLS-LOC or Data/DET (see tree_root).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from detrec.core import fs
from detrec.preprocess.sources import cls_loc, coco, det, folder, open_images, voc
from detrec.preprocess.sources.contract import Source, SplitSource, Unlabelled
from detrec.preprocess.vocab import Vocabulary

# --layout name -> source, in the order `auto` tries them.
SOURCES: dict[str, Source] = {s.name: s for s in (det.SOURCE, cls_loc.SOURCE, voc.SOURCE, coco.SOURCE,
                                                   open_images.SOURCE, folder.SOURCE)}
AUTO = "auto"
LAYOUTS = (AUTO, *SOURCES)
KAGGLE_ROOT = "ILSVRC"  # what the Kaggle download unpacks beside its LOC_*.csv files

__all__ = ["AUTO", "LAYOUTS", "SOURCES", "Source", "SplitSource", "Unlabelled", "fixed_vocabulary", "fixes_classes",
           "get", "resolve", "tree_root", "vocabulary"]


def get(layout: str) -> Source:
    """The source of a resolved layout (a SplitSource's)."""
    return SOURCES[layout]


def tree_root(root: str, layout: str = AUTO) -> str:
    """The folder holding Annotations/ and Data/: ROOT itself; ROOT/ILSVRC when ROOT is the
    Kaggle download's folder (ILSVRC/ beside the LOC_* files); or, unless the layout is
    `folder`, the tree above when ROOT is its Data/CLS-LOC or Data/DET (so the XML is found)."""
    if (layout != folder.SOURCE.name and fs.basename(root) in ("CLS-LOC", "DET")
            and fs.basename(fs.dirname(root)) == "Data"):
        return fs.dirname(fs.dirname(root))
    inner = fs.join(root, KAGGLE_ROOT)
    if any(fs.exists(fs.join(root, d)) for d in ("Data", "Annotations", "JPEGImages")):
        return root
    return inner if fs.exists(fs.join(inner, "Data")) else root


def resolve(root: str, split: str, layout: str) -> SplitSource:
    """Where a split is, in which layout (`auto`: the first source that finds it, in SOURCES
    order) and whether its tree labels it (Source.labelled).

    Raises:
      ValueError: the tree does not have the split in that layout (or in any, for `auto`);
        the message says what was looked for. Or what the source's own check refuses (a class
        folder named as the background class is, a LOC_synset_mapping.txt that does not parse).
    """
    root = tree_root(root, layout)
    if layout != AUTO:
        problem = SOURCES[layout].missing(root, split)
        if problem:
            raise ValueError(f"--layout {layout}: {problem}")
        return _checked(SplitSource(root, split, layout))
    for name, source in SOURCES.items():
        if not source.missing(root, split):
            return _checked(SplitSource(root, split, name))
    try:
        held = [n for n in fs.listdir(root) if not n.startswith(".")][:8]
    except Exception:
        held = []
    raise ValueError(
        f"{root}: split {split!r} not found: no Annotations/DET/{split}, Data/CLS-LOC/{split}, Annotations + "
        f"JPEGImages, annotations/instances_{split}YEAR.json, {split}-annotations-bbox.csv or "
        f"{split}/<class>/<image> folders" + (f" (it holds: {', '.join(held)})" if held else "")
        + "; pass the folder that holds Annotations/ and Data/ (or the split folders), and --splits naming its splits"
    )


def _checked(found: SplitSource) -> SplitSource:
    """The split checked by its source, and with whether its tree labels it."""
    source = SOURCES[found.layout]
    source.check(found)
    return dataclasses.replace(found, labelled=source.labelled(found))


def vocabulary(collected: Vocabulary, found: Mapping[str, SplitSource], splits: Sequence[str]) -> Vocabulary:
    """The class list the tree fixes itself (its sources', the last in SOURCES order first: a
    folder tree's class folders before a CLS-LOC mapping), else `collected` (the synsets seen
    in the train split)."""
    return fixed_vocabulary(found, splits) or collected


def fixes_classes(found: Mapping[str, SplitSource]) -> bool:
    """Whether the tree fixes its class list (see `vocabulary`), without reading it."""
    return any(SOURCES[layout].fixes_classes(found) for layout in {s.layout for s in found.values()})


def fixed_vocabulary(found: Mapping[str, SplitSource], splits: Sequence[str]) -> Vocabulary | None:
    """The class list the tree fixes itself, None when it fixes none (see `vocabulary`)."""
    layouts = {s.layout for s in found.values()}
    for name in reversed(SOURCES):
        if name in layouts:
            fixed = SOURCES[name].vocabulary(found, splits)
            if fixed is not None:
                return fixed
    return None
