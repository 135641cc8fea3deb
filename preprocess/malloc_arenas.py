"""glibc malloc in a local preprocess run: at most two arenas per process, a fixed mmap
threshold, and freed memory handed back after the listing.

glibc gives threads that allocate concurrently arenas of their own (up to 8 per core) and
hands little of what they free back to the system. Beam's local runner and gRPC keep many
threads busy moving elements, logs and metrics, so the launcher's resident memory grew with
the run's length, not with anything it holds: +39 MB from 20,000 to 100,000 images with
glibc's default, +19 MB with two arenas (measured on the bench trees of `detrec bench
preprocess --scale 5`).
glibc also raises its mmap threshold (up to 32 MB) each time a block it had mmapped is freed;
after that, the multi-megabyte buffers of Beam's data channel (the stage outputs the launcher
relays) come from the heap and leave it fragmented. With the threshold fixed at 256 KB they
are mmapped and unmapped when freed: the job's summed peak at 100,000 images fell from 684-705
to 655 MB (20,000: 594 -> 580 MB); image reads (~100 KB) stay in the heap.
Where they apply (`limit`: mallopt for this process, and the environment for the processes it
starts, which glibc reads when they start; nothing changes without glibc, or where a user set
either variable):
- the launcher, and the DirectRunner's worker processes it starts (preprocess_cmd);
- any runner's worker, when it sets up a detrec DoFn (dofns._DetrecDoFn.setup; arenas made
  before that keep their size);
- `detrec beam-service worker-pool`'s SDK workers, from their start;
- the worker image, docker/beam.Dockerfile (ENV), for every process of the container.

The worker that lists a split frees ~1 KB per image when its plans are out, but glibc keeps
what a non-main thread freed in that thread's arena: the worker stayed ~100 MB larger for the
rest of a 100,000-image run (measured in a Beam worker; malloc_trim(0) gave it back: 308 ->
190 MB). `release` hands it back.
"""

from __future__ import annotations

import ctypes
import os

ARENAS = 2
MMAP_THRESHOLD = 256 * 1024
# (environment variable, glibc's mallopt parameter number from malloc.h, value)
SETTINGS = (("MALLOC_ARENA_MAX", -8, ARENAS), ("MALLOC_MMAP_THRESHOLD_", -3, MMAP_THRESHOLD))


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
    """At most ARENAS arenas and a fixed MMAP_THRESHOLD, for this process and the processes it
    starts (module docstring)."""
    mallopt = getattr(_libc(), "mallopt", None)  # None without glibc (musl, macOS): nothing to set
    for variable, parameter, value in SETTINGS:
        if variable in os.environ:
            continue
        os.environ[variable] = str(value)
        if mallopt is not None:
            mallopt(parameter, value)
