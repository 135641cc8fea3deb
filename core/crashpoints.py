"""Test-only crash hooks: die at a named point, so crash-safety tests choose their moment.

`DETREC_CRASH_AT=NAME` (or `NAME:N`, the N-th time the point is reached, counted per
process; default 1) makes the process that reaches `crashpoint(NAME)` end at once with
`os._exit(CRASH_EXIT)`: no cleanup, no flush, no exception handler, as a SIGKILL or a power
cut would leave things. Unset (always, outside tests) a crashpoint costs one dict lookup.
The names are listed in POINTS so a test cannot ask for a point that does not exist.
"""

from __future__ import annotations

import os
import threading

ENV = "DETREC_CRASH_AT"
CRASH_EXIT = 86
POINTS = {
    "listed": "preprocess: a split is listed and planned, nothing written yet",
    "shard-written": "preprocess: a shard's temporary file is complete, before its rename",
    "finalize": "preprocess: labels and error reports written, dataset_info.json not yet",
    "checkpoint-write": "train: a checkpoint's files are being written, its index not yet updated",
    "step": "train: right after a training step (N = the global step, counted from 1 per process)",
}
_counts: dict[str, int] = {}
_lock = threading.Lock()


def _wanted() -> tuple[str, int] | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    name, _, nth = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"{ENV}={spec!r}: unknown crash point; known: {', '.join(POINTS)}")
    return name, int(nth or 1)


def crashpoint(name: str) -> None:
    """Ends the process here when DETREC_CRASH_AT names this point (and this occurrence)."""
    wanted = _wanted()
    if wanted is None or wanted[0] != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        if _counts[name] == wanted[1]:
            os._exit(CRASH_EXIT)
