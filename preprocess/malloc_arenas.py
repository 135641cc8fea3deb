"""At most two glibc malloc arenas per process of a local preprocess run.

glibc gives threads that allocate concurrently arenas of their own (up to 8 per core) and
hands little of what they free back to the system. Beam's local runner and gRPC keep many
threads busy moving elements, logs and metrics, so the launcher's resident memory grew with
the run's length, not with anything it holds: +39 MB from 20,000 to 100,000 images with
glibc's default, +19 MB with two arenas (measured, `detrec bench preprocess --scale 5`).
Set for this process with mallopt, and through the environment for the worker processes
started after it (Beam's multi-processing workers read MALLOC_ARENA_MAX when they start).
Elsewhere (not glibc, or a user's own MALLOC_ARENA_MAX) nothing changes.
"""

from __future__ import annotations

import ctypes
import os

ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def limit() -> None:
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    os.environ["MALLOC_ARENA_MAX"] = str(ARENAS)
    try:
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, ARENAS)
    except (OSError, AttributeError):  # no glibc (musl, macOS): nothing to limit
        pass
