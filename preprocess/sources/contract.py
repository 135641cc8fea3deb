"""The Source contract: what `detrec preprocess` asks of one tree layout (det, cls-loc, voc,
folder...), each in a module of its own under preprocess/sources/.

    source.missing(root, split)      "" when the tree holds the split in this layout, else what it lacks
    source.pairs(split_source)       every image of the split as a Pair, and a Rejected for each input
                                     that cannot be one (listing and pairing, once per split)
    source.annotate(pair)            the pair's boxes as an Item (in the shard's parse step), or
                                     Unlabelled saying why not
    source.vocabulary(found, splits) the class list the tree fixes itself, None when it fixes none
    source.fixes_classes(found)      whether it does, without reading it (each worker asks)
    source.check(split_source)       what the launcher checks before the job (a ValueError)
    source.labelled(split_source)    False when the split's tree gives no labels at all (CLS-LOC
                                     test): its images are records without a class. Asked once
                                     per split (sources.resolve), kept in SplitSource.labelled

What every source shares is written once, elsewhere: walking by real path and capped reads
(walk.py), pairing files by name (pairing.py), BOM-tolerant csv-module CSVs (solutions.py),
the largest-box rule (labels.py, core/schema.py) and the vocabulary (vocab.py).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping, Sequence

from detrec.preprocess import annotations, pairing, solutions, walk
from detrec.preprocess.pairing import Pair, Rejected
from detrec.preprocess.plan import BOXES_FROM_NONE, Item
from detrec.preprocess.vocab import Vocabulary

# Where a pair's boxes came from (dataset_info's box_sources; a box-labelled record's label source).
BOXES_FROM_XML, BOXES_FROM_CSV = "xml", "csv"
NO_BOXES = annotations.Annotation(0, 0, ())


@dataclasses.dataclass(frozen=True)
class SplitSource:
    """Where one split's files live, in which layout (a Source's name), and whether its tree
    labels its images (Source.labelled, as sources.resolve found it)."""

    root: str
    split: str
    layout: str
    labelled: bool = True


class Unlabelled(Exception):
    """A pair whose boxes cannot be read: its line in errors-<split>.jsonl (stage, code, why)."""

    def __init__(self, stage: str, code: str, reason: str):
        super().__init__(reason)
        self.stage, self.code = stage, code


class Source:
    """One tree layout; a module subclasses it and registers one instance (sources/__init__.py)."""

    name = ""
    summary = ""  # one line for --help and the docs

    def missing(self, root: str, split: str) -> str:
        raise NotImplementedError

    def pairs(self, source: SplitSource) -> Iterator[Pair | Rejected]:
        raise NotImplementedError

    def annotate(self, pair: Pair) -> Item:
        raise NotImplementedError

    def vocabulary(self, found: Mapping[str, SplitSource], splits: Sequence[str]) -> Vocabulary | None:
        return None

    def fixes_classes(self, found: Mapping[str, SplitSource]) -> bool:
        return False

    def check(self, source: SplitSource) -> None:
        return None

    def labelled(self, source: SplitSource) -> bool:
        """Whether the split's tree labels its images; False: no label file, folder or row
        of any kind for the split, so `pairs` gives every image without one and `annotate`
        no boxes (what preprocess writes as records without a class)."""
        return True


class XmlTree(Source):
    """A tree of images and XML files paired by name (det, cls-loc, voc): `folders` says where
    they are; an image's boxes are its XML's, or (cls-loc) its solution-CSV row's, or none."""

    def folders(self, root: str, split: str) -> tuple[str, str]:
        """(annotation folder, image folder) of a split."""
        raise NotImplementedError

    def files(self, source: SplitSource) -> Iterator[walk.FileEntry | walk.Unusable]:
        """The split's listed files, what `pairs` pairs (walk.listed)."""
        raise NotImplementedError

    def pairs(self, source: SplitSource) -> Iterator[Pair | Rejected]:
        return pairing.paired(source.split, self.files(source))

    def annotate(self, pair: Pair) -> Item:
        if pair.annotation:
            try:
                data = walk.read_capped(pair.annotation, "annotation", annotations.MAX_XML_BYTES, "xml_too_large")
            except walk.ReadError as exc:
                raise Unlabelled("read", exc.code, str(exc)) from None
            try:
                return Item(pair, annotations.parse(data, pair.annotation), BOXES_FROM_XML)
            except annotations.AnnotationError as exc:
                raise Unlabelled("xml", exc.code, str(exc)) from None
        if pair.label_where:
            try:
                return Item(pair, solutions.parse_row(solutions.Row(pair.label_where, pair.label_data)), BOXES_FROM_CSV)
            except annotations.AnnotationError as exc:
                raise Unlabelled("csv", exc.code, str(exc)) from None
        return Item(pair, NO_BOXES, BOXES_FROM_NONE)
