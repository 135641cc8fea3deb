"""ImageNet CLS-LOC, as the Kaggle download ships it: Annotations/CLS-LOC/<split>/**.xml +
Data/CLS-LOC/<split>/**.JPEG, with LOC_<split>_solution.csv and LOC_synset_mapping.txt in ROOT
or its parent. The XML is optional: an image in a class folder (train/<synset>/) takes the
folder's class whatever its boxes say (ImageNet labels train by folder: only 42% of train have
boxes); a flat image (val/) takes its XML, else its solution-CSV row. LOC_synset_mapping.txt,
when there, fixes the class list (1000 synsets, in its order)."""

from __future__ import annotations

import logging
import os
from typing import IO, Iterator, Mapping, Sequence

from detrec.core import fs
from detrec.preprocess import pairing, solutions, vocab as vocab_lib, walk
from detrec.preprocess.sources.contract import SplitSource, XmlTree
from detrec.preprocess.sources.det import listed_files

log = logging.getLogger("detrec.preprocess")
LOC_SYNSET_MAPPING = "LOC_synset_mapping.txt"


class ClsLoc(XmlTree):
    name = "cls-loc"
    summary = "ImageNet CLS-LOC as Kaggle ships it: Data/CLS-LOC/SPLIT, XML optional, LOC_*.csv beside"

    def folders(self, root: str, split: str) -> tuple[str, str]:
        return fs.join(root, "Annotations", "CLS-LOC", split), fs.join(root, "Data", "CLS-LOC", split)

    def missing(self, root: str, split: str) -> str:
        return "" if fs.exists(self.folders(root, split)[1]) else f"{root}: no Data/CLS-LOC/{split}"

    def files(self, source: SplitSource) -> Iterator[walk.FileEntry | walk.Unusable]:
        return listed_files(self, source)

    def pairs(self, source: SplitSource) -> Iterator[pairing.Pair | pairing.Rejected]:
        rows, bad_lines = solution_rows(source)
        return pairing.paired(source.split, self.files(source), rows, bad_lines, by_folder=True)

    def vocabulary(self, found: Mapping[str, SplitSource], splits: Sequence[str]) -> vocab_lib.Vocabulary | None:
        path = walk.find_beside(next(iter(found.values())).root, LOC_SYNSET_MAPPING)
        return vocab_lib.read_synset_map(path) if path else None



# The longest solution-CSV line read (real ones are < 4 KB: a few boxes of 5 fields). A line
# is read at most this far, so a CSV that is a link to /dev/zero or one endless line cannot
# fill the listing worker's memory.
MAX_CSV_LINE = 1 << 16


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
        rows, bad = solutions.read_rows(_capped_lines(raw, path, long_lines), path)
    log.info("read %d rows of %s for split %s", len(rows), path, source.split)
    return rows, sorted(bad + long_lines, key=lambda b: int(b.where.rsplit(":", 1)[1]))


def _capped_lines(raw: IO[bytes], path: str, too_long: list[solutions.BadLine]) -> Iterator[str]:
    """The file's lines as text (bytes that are not UTF-8 replaced), none read past
    MAX_CSV_LINE: a longer line is skipped to its end, yielded as "" (so line numbers stay
    right) and reported in `too_long`."""
    number = 0
    while True:
        line = raw.readline(MAX_CSV_LINE)
        if not line:
            return
        number += 1
        if len(line) == MAX_CSV_LINE and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = raw.readline(MAX_CSV_LINE)
            where = f"{path}:{number}"
            too_long.append(solutions.BadLine(where, "bad_csv_line", f"{where}: line longer than {MAX_CSV_LINE} bytes"))
            yield ""
            continue
        yield line.decode("utf-8", "replace")


SOURCE = ClsLoc()
