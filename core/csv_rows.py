"""Reading a CSV as every CSV of detrec is read: streamed, with the csv module (quoted fields,
CRLF), a BOM passed over, no line read past MAX_CSV_LINE (a CSV that is a link to /dev/zero, or
one endless line, cannot fill memory), bytes that are not UTF-8 replaced, each row named
`file:line` by its first line (a quoted field may span lines). A row that cannot be read is a
BadLine, never fatal: the caller decides. Used by the solution CSVs and Open Images
(preprocess) and by the Kaggle CSVs `detrec score` reads (core/kaggle_loc.py)."""

from __future__ import annotations

import csv
import dataclasses
from typing import IO, Iterable, Iterator

MAX_CSV_LINE = 1 << 16  # real rows are < 4 KB


@dataclasses.dataclass(frozen=True)
class BadLine:
    """A line that cannot be used (not a row, or one naming its image twice): reported, never fatal."""

    where: str
    code: str
    reason: str


def capped_lines(raw: IO[bytes], path: str, too_long: list[BadLine]) -> Iterator[str]:
    """The file's lines as text, none read past MAX_CSV_LINE: a longer line is skipped to its
    end, yielded as "" (so line numbers stay right) and reported in `too_long`."""
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
            too_long.append(BadLine(where, "bad_csv_line", f"{where}: line longer than {MAX_CSV_LINE} bytes"))
            yield ""
            continue
        yield line.decode("utf-8", "replace")


def rows(lines: Iterable[str], path: str) -> Iterator[tuple[str, list[str]] | BadLine]:
    """(`file:line`, stripped fields) of every row that is not blank, or a BadLine for one the
    csv module cannot read (an unclosed quote, a field over its limit)."""
    reader = csv.reader(_without_bom(lines))
    end = 0
    while True:
        start = end + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            end = reader.line_num
            yield BadLine(f"{path}:{start}", "bad_csv_line", f"{path}:{start}: not a CSV row ({exc})")
            continue
        end = reader.line_num
        fields = [f.strip() for f in fields]
        if any(fields):
            yield f"{path}:{start}", fields


def _without_bom(lines: Iterable[str]) -> Iterator[str]:
    it = iter(lines)
    for line in it:
        yield line.removeprefix("\ufeff")
        break
    yield from it
