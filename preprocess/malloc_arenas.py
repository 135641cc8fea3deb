"""glibc malloc in a local preprocess run: at most two arenas per process, and freed memory
handed back after the listing.

glibc gives threads that allocate concurrently arenas of their own (up to 8 per core) and
hands little of what they free back to the system. Beam's local runner and gRPC keep many
threads busy moving elements, logs and metrics, so the launcher's resident memory grew with
the run's length, not with anything it holds: +39 MB from 20,000 to 100,000 images with
glibc's default, +19 MB with two arenas (measured on the bench trees of `detrec bench
preprocess --scale 5`).
Set for this process with mallopt, and through the environment for the worker processes
started after it (Beam's multi-processing workers read MALLOC_ARENA_MAX when they start).
Elsewhere (not glibc, or a user's own MALLOC_ARENA_MAX) nothing changes.

The worker that lists a split frees ~1 KB per image when its plans are out, but glibc keeps
what a non-main thread freed in that thread's arena: the worker stayed ~100 MB larger for the
rest of a 100,000-image run (measured in a Beam worker; malloc_trim(0) gave it back: 308 ->
190 MB). `release` hands it back.
"""

from __future__ import annotations

import ctypes
import os

ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def _libc():
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def release() -> None:
    """Returns the free memory of every arena to the system (glibc's malloc_trim(0))."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def limit() -> None:
    """At most ARENAS arenas for this process and the processes it starts (module docstring)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    os.environ["MALLOC_ARENA_MAX"] = str(ARENAS)
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is not None:  # else no glibc (musl, macOS): nothing to limit
        mallopt(_M_ARENA_MAX, ARENAS)
