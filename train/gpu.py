"""GPU set-up every TensorFlow entry point runs first: memory growth.

TensorFlow maps nearly all of a GPU's memory the first time it touches the device. DALI
allocates its own (nvJPEG buffers, the hardware decoder's preallocation, its output queue)
when its pipeline is built, which is after the strategy and the model exist - too late, it
would fail or thrash ("TensorFlow allocates almost all available device memory by default",
DALI's TF plugin docs). Memory growth makes TensorFlow take memory as it needs it, so both
fit. It must be set before the runtime initialises a GPU, so `detrec train`, `detrec predict`
and `detrec bench input` call `enable_memory_growth()` before any other TensorFlow work, and
the trainer image sets TF_FORCE_GPU_ALLOW_GROWTH=true for anything else run in it.
"""

from __future__ import annotations

import sys

import tensorflow as tf


def enable_memory_growth() -> list[str]:
    """Turns on memory growth for every visible GPU; returns their names.

    A GPU the runtime has already initialised keeps its setting (TensorFlow refuses the
    change): that is reported on stderr, not raised, since training can still run.
    """
    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as exc:  # "Physical devices cannot be modified after being initialized"
            print(f"detrec: warning: memory growth not set on {gpu.name}: {exc}", file=sys.stderr)
            continue
        names.append(gpu.name)
    return names
