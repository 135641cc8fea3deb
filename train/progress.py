"""Progress of the training loop: tqdm bars on a terminal, periodic whole lines anywhere else.

A tqdm bar redraws itself with carriage returns many times a second. On a terminal that is
one line that moves; written to a file (CI logs, `nohup`, a scheduler's log collector) it is
thousands of fragments glued into one enormous "line". So where the stream is not a
terminal, `bar` returns a `LineProgress` instead: the same calls (`update`, `set_postfix`,
`close`, a context manager), printing one whole line every `LINE_EVERY` seconds, and one when
it closes if it moved since its last line: every epoch (and validation pass) leaves at least
its final count, loss and rate in the log, however short it was.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

LINE_EVERY = 30.0  # seconds between two progress lines where the output is not a terminal


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LineProgress:
    """tqdm's interface, printing `desc: n/total unit, rate, elapsed, postfix` at most every
    `every` s, and at `close` (see the module docstring)."""

    def __init__(self, total: int | None, initial: int, desc: str, unit: str, file, every: float) -> None:
        self.total, self.n, self.desc, self.unit, self.file = total, initial, desc, unit, file
        self.every = every
        self.postfix = ""
        self._start = self._last = time.monotonic()
        self._initial = self._shown = initial
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._print(now)

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def _print(self, now: float) -> None:
        done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        rate = (self.n - self._initial) / max(now - self._start, 1e-9)
        parts = [f"{self.desc.strip()}: {done} {self.unit}", f"{rate:.2f} {self.unit}/s",
                 f"{now - self._start:.0f}s"]
        if self.postfix:
            parts.append(self.postfix)
        print(", ".join(parts), file=self.file, flush=True)
        self._shown = self.n

    def close(self) -> None:
        """Prints the final line, unless the last line already showed this count."""
        if not self._closed and self.n != self._shown:
            self._print(time.monotonic())
        self._closed = True

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(*, desc: str, unit: str, enabled: bool = True, total: int | None = None, initial: int = 0,
        file=None, every: float | None = None):
    """A progress bar on `file` (stderr by default): tqdm on a terminal, else whole lines."""
    file = sys.stderr if file is None else file
    if enabled and not is_terminal(file):
        return LineProgress(total, initial, desc, unit, file, LINE_EVERY if every is None else every)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=file, disable=not enabled,
                dynamic_ncols=True, leave=False)
