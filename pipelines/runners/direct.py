"""Beam's local runner: detrec runs its FnApiRunner itself (preprocess/beam_compat.local_runner),
in worker processes this launcher starts and ends, so they see its files and its environment."""

from detrec.pipelines.runners.runner import Runner
from detrec.preprocess import beam_compat

RUNNER = Runner(beam_compat.LOCAL_RUNNERS[0], aliases=beam_compat.LOCAL_RUNNERS[1:])
