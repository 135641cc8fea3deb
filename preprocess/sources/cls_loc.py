"""ImageNet CLS-LOC, as the Kaggle download ships it: Annotations/CLS-LOC/<split>/**.xml +
Data/CLS-LOC/<split>/**.JPEG, with LOC_<split>_solution.csv and LOC_synset_mapping.txt in ROOT
or its parent. The XML is optional: an image in a class folder (train/<synset>/) takes the
folder's class whatever its boxes say (ImageNet labels train by folder: only 42% of train have
boxes); a flat image (val/) takes its XML, else its solution-CSV row. LOC_synset_mapping.txt,
when there, fixes the class list (1000 synsets, in its order). A split with none of these (no
Annotations/CLS-LOC/<split>, no LOC_<split>_solution.csv, no class folders: test/, whose
LOC_sample_submission.csv only lists ImageIds) is unlabelled: each image a record without a class."""

from __future__ import annotations

import logging
import os
from typing import Iterator, Mapping, Sequence

from detrec.core import csv_rows, fs
from detrec.preprocess import pairing, solutions, vocab as vocab_lib, walk
from detrec.preprocess.sources.contract import SplitSource
from detrec.preprocess.sources.det import Det

log = logging.getLogger("detrec.preprocess")
LOC_SYNSET_MAPPING = "LOC_synset_mapping.txt"


class ClsLoc(Det):
    """DET's folders under CLS-LOC/; only the images' folder is required."""

    name = "cls-loc"
    summary = "ImageNet CLS-LOC as Kaggle ships it: Data/CLS-LOC/SPLIT, XML optional, LOC_*.csv beside"
    part = "CLS-LOC"

    def missing(self, root: str, split: str) -> str:
        return "" if fs.exists(self.folders(root, split)[1]) else f"{root}: no Data/CLS-LOC/{split}"

    def pairs(self, source: SplitSource) -> Iterator[pairing.Pair | pairing.Rejected]:
        rows, bad_lines = solution_rows(source)
        return pairing.paired(source.split, self.files(source), rows, bad_lines, by_folder=True,
                              unlabelled=not source.labelled)

    def labelled(self, source: SplitSource) -> bool:
        ann_dir, img_dir = self.folders(source.root, source.split)
        # Cheapest first: only a split without XML and CSV (test) has its folder listed for classes.
        return bool(fs.exists(ann_dir) or walk.find_beside(source.root, solutions.file_name(source.split))
                    or walk.class_folders(fs.dirname(img_dir), source.split))

    def fixes_classes(self, found: Mapping[str, SplitSource]) -> bool:
        return bool(walk.find_beside(next(iter(found.values())).root, LOC_SYNSET_MAPPING))

    def vocabulary(self, found: Mapping[str, SplitSource], splits: Sequence[str]) -> vocab_lib.Vocabulary | None:
        path = walk.find_beside(next(iter(found.values())).root, LOC_SYNSET_MAPPING)
        return vocab_lib.read_synset_map(path) if path else None



def solution_rows(source: SplitSource) -> tuple[dict[str, solutions.Row], list[solutions.BadLine]]:
    """The split's LOC_<split>_solution.csv rows (ROOT or its parent), read once per split as a
    stream; ({}, []) when there is none. A CSV that is no regular file is one bad line
    (`not_a_regular_file`) and is not read."""
    path = walk.find_beside(source.root, solutions.file_name(source.split))
    if not path:
        return {}, []
    if not fs.is_url(path) and not os.path.isfile(path):
        return {}, [solutions.BadLine(path, "not_a_regular_file", f"{path}: not a regular file, not read")]
    long_lines: list[solutions.BadLine] = []
    with fs.open(path, "rb") as raw:
        rows, bad = solutions.read_rows(csv_rows.capped_lines(raw, path, long_lines), path)
    log.info("read %d rows of %s for split %s", len(rows), path, source.split)
    return rows, sorted(bad + long_lines, key=lambda b: int(b.where.rsplit(":", 1)[1]))


SOURCE = ClsLoc()
