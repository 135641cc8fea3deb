"""`Problem`: one defect found in the data, as the report and the CLI's stderr show it.

Bad input is data for the inspector, not an exception: each module that finds a defect
(resolve, check, walk) appends a `Problem` and goes on. It lives in a module of its own, below
all of them, so that they can share it without importing the report that collects them.
(What counts as "cannot be reached", and so a Problem rather than a bug: `core.fs.access_errors`.)
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Problem:
    """One defect: the file, the byte offset of the record at fault, its 0-based index in the file.

    Attributes:
      file: the path (or glob pattern) at fault, as given or as found.
      reason: one line saying what is wrong.
      offset: byte offset of the record at fault; None when not about one record.
      record: 0-based index of that record in the file; None when not known.
    """

    file: str
    reason: str
    offset: int | None = None
    record: int | None = None

    def line(self) -> str:
        """`file: offset O, record R: reason`, the parts that are not known left out."""
        where = []
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        if self.record is not None:
            where.append(f"record {self.record}")
        return f"{self.file}: {', '.join(where) + ': ' if where else ''}{self.reason}"
