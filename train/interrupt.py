"""^C during training: finish the step, save a checkpoint, stop; a second ^C aborts at once.

A run stopped this way exits 130 and resumes, with the same command, from the exact step
it saved; killing it instead costs the steps since the last checkpoint. Single-process runs
only: the workers of a multi-worker run would each stop at a different step, and saving is
collective (train/distribute.py).
"""

from __future__ import annotations

import signal
import sys


class StopRequested:
    """SIGINT sets a flag; the loop finishes its step, saves and stops. A second ^C kills."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "StopRequested":
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\ninterrupt: saving a checkpoint, then stopping (^C again to abort)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
