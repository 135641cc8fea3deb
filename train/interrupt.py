"""^C during training: finish the step, save a checkpoint, stop; a second ^C aborts at once.

A run stopped this way exits 130 and resumes, with the same command, from the exact step
it saved; killing it instead costs the steps since the last checkpoint. In a multi-worker
run this flag is only this worker's vote: the trainer all-reduces it, so every worker stops
at the same step and they save together (train/distribute.py, `any_worker`).
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
