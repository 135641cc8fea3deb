"""Keeping Python's cyclic GC off the objects that live as long as the process.

Importing Beam (~0.5 s) or TensorFlow (~2 s) creates 10^5 to 10^6 module-level objects that
are never garbage, yet every full collection walks them, and so does the one at interpreter
exit: ~0.25 s per process for Beam alone, ~1 s with TensorFlow. Beam's local runner stops its
worker processes one after the other, so each job paid that once per worker, on top of its
own. Frozen objects are skipped by the GC; whatever is created later is collected as usual.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from typing import Iterator

_import_lock = threading.Lock()
_freeze_lock = threading.Lock()  # its own: a DoFn's setup must not wait out TensorFlow's import
_frozen = False


@contextlib.contextmanager
def importing() -> Iterator[None]:
    """The imports in the block run with the GC paused (a quarter of their time is
    collections that find nothing), and everything alive afterwards is frozen."""
    with _import_lock:
        enabled = gc.isenabled()
        gc.disable()
        try:
            yield
        finally:
            gc.freeze()
            if enabled:
                gc.enable()


def freeze_once() -> None:
    """Freezes what this process has loaded so far, the first time it is called (a Beam
    worker calls it when it sets up a detrec DoFn: by then Beam and detrec are imported)."""
    global _frozen
    with _freeze_lock:
        if not _frozen:
            _frozen = True
            gc.freeze()
