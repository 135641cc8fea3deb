"""Reading a CSV as every source should: streamed, with the csv module (quoted fields, CRLF),
a BOM passed over, no line read past MAX_CSV_LINE, bytes that are not UTF-8 replaced, each row
named `file:line`, a row that cannot be read a BadLine, never fatal. Used by the solution CSVs
(solutions.py) and Open Images. The code lives in core/kaggle_loc.py, beside the Kaggle CSVs
that `detrec score` reads and predict writes (core may import nothing outside core)."""

from __future__ import annotations

from detrec.core.kaggle_loc import MAX_CSV_LINE, BadLine, capped_lines, csv_rows as rows

__all__ = ["MAX_CSV_LINE", "BadLine", "capped_lines", "rows"]
