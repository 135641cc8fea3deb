"""Long-lived DALI input for a training run: build once per replica, read one epoch at a time.

Why not `strategy.distribute_datasets_from_function`: a GPU-placed DALIDataset must be built
on its replica's GPU and may not be copied again, which takes
`InputReplicationMode.PER_REPLICA` - and TensorFlow 2.21 implements that for
MirroredStrategy only (MultiWorkerMirroredStrategy raises NotImplementedError, so every
`--worker-hosts` run with DALI died at its first epoch). Here each *local* replica gets its
own DALI pipeline on its own device (shard = its global replica id, batch = the global batch
over all replicas), and every step's batches are joined with
`strategy.experimental_distribute_values_from_function`, which every strategy implements.
The batches never leave their GPU; the step function sees the same PerReplica values a
distributed iterator would give it.

Why one pipeline for the whole run: a DALI pipeline costs nvJPEG's start-up and its GPU
buffers (held until the garbage collector finds the old one); built per epoch and per
validation, that was paid 2x every epoch. `EpochStream` reads a pipeline's endless stream
one epoch at a time instead: every epoch of a DALI stream has the same number of batches on
every replica (`EpochPlan.stream_steps`), so reading the rest of a partly read epoch
(`realign`) puts every replica on the next epoch's first batch.

Resume is exact all the same: a stream built at epoch e (`InputConfig.epoch`) reads in
epoch e, and every epoch after it, the records, crops and flips that train/input/draws.py
computes from the run's seed and that epoch alone (train/input/dali_feed.py feeds them to
DALI, whose own reader shuffle and random operators are not used), so it gives the batches
a stream built at any earlier epoch gives when it gets there. A run resumed at epoch e,
step s builds its stream at e and drops s batches (train/data.py, train/trainer.py).
"""

from __future__ import annotations

import contextlib
import gc
from typing import Callable, Iterator

import tensorflow as tf

import detrec.train.input.dali as dali
from detrec.train.input.common import EpochPlan, SplitShards
from detrec.train.input.config import InputConfig


class EpochStream:
    """An endless stream of batches read one epoch at a time.

    Args:
      next_batch: returns the stream's next batch (a tuple, or distributed values).
      steps: batches of each epoch handed out (full batches).
      stream_steps: batches each epoch of the stream holds (>= steps; the rest is padding).
    """

    def __init__(self, next_batch: Callable[[], tuple], steps: int, stream_steps: int,
                 close: Callable[[], None] | None = None) -> None:
        if not 1 <= steps <= stream_steps:
            raise ValueError(f"need 1 <= steps <= stream_steps, got {steps} and {stream_steps}")
        self._next_batch = next_batch
        self.steps, self.stream_steps = steps, stream_steps
        self.position = 0  # batches read of the current stream epoch
        self._close = close

    def _next(self):
        batch = self._next_batch()
        self.position = (self.position + 1) % self.stream_steps
        return batch

    def realign(self) -> int:
        """Reads to the end of a partly read epoch; returns how many batches it dropped."""
        dropped = 0
        while self.position:
            self._next()
            dropped += 1
        return dropped

    def epoch(self, rows: Callable[[int], int] | None = None) -> Iterator[tuple]:
        """The next whole epoch: `steps` batches, the first `rows(step)` rows of each kept."""
        self.realign()
        for step in range(self.steps):
            batch = self._next()
            if rows is not None and rows(step) < len(batch[0]):
                batch = tuple(t[:rows(step)] for t in batch)
            yield batch

    def batches(self) -> Iterator[tuple]:
        """Endless: each stream epoch's `steps` batches, its padding batches skipped."""
        while True:
            if self.position >= self.steps:
                self.realign()
            yield self._next()

    def close(self) -> None:
        """Releases the pipelines now, not when the garbage collector finds them."""
        if self._close is not None:
            self._close()
            self._close = None


def _local_replicas(strategy: tf.distribute.Strategy) -> tuple[list[str | None], list[int]]:
    """(device of each local replica, its global replica id); ([None], [0]) for no strategy."""
    try:
        devices = list(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy: one replica wherever TensorFlow places it
        return [None], [0]
    ids = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(context.replica_id_in_sync_group))
    return devices, [int(v) for v in strategy.experimental_local_results(ids)]


def _device_id(device: str | None) -> int | None:
    """The GPU index of a replica device, None for a CPU (or unknown) one."""
    if device is None:
        return None
    spec = tf.DeviceSpec.from_string(device)
    return spec.device_index if spec.device_type == "GPU" else None


def replica_stream(split: SplitShards, config: InputConfig, strategy: tf.distribute.Strategy,
                   plan: EpochPlan, steps: int) -> EpochStream:
    """One DALI pipeline per local replica of `strategy`, read as one EpochStream of
    distributed batches.

    Args:
      split, config: what to read; `config.batch_size` is the global batch.
      plan: any replica's plan (`epoch_plan` with the per-replica batch): its stream_steps.
      steps: batches per epoch to hand out (the trainer's steps, <= every replica's plan).
    """
    devices, replica_ids = _local_replicas(strategy)
    replicas = strategy.num_replicas_in_sync
    per_replica = config.batch_size // replicas
    iterators = []
    for i, (device, replica) in enumerate(zip(devices, replica_ids)):
        replica_config = config.replace(
            batch_size=per_replica, decoder="dali", num_workers=replicas, worker_index=replica,
            device_id=_device_id(device) if config.device_id is None else config.device_id,
            counter=config.counter if i == 0 else None)  # a skipped shard counts once per process
        with tf.device(device) if device else contextlib.nullcontext():
            iterators.append(iter(dali.make_dataset(split, replica_config)))
    local_index = {replica: i for i, replica in enumerate(replica_ids)}

    def next_batch():
        batches = [next(it) for it in iterators]
        if devices == [None]:
            return batches[0]
        return strategy.experimental_distribute_values_from_function(
            lambda context: batches[local_index[context.replica_id_in_sync_group]])

    def close():
        iterators.clear()
        gc.collect()  # a DALI pipeline frees its GPU buffers when its iterator is collected

    return EpochStream(next_batch, steps, plan.stream_steps, close)


def local_stream(split: SplitShards, config: InputConfig, plan: EpochPlan) -> EpochStream:
    """One DALI pipeline in this process (no strategy), read as an EpochStream of `plan`."""
    iterators = [iter(dali.make_dataset(split, config.replace(decoder="dali")))]

    def close():
        iterators.clear()
        gc.collect()

    return EpochStream(lambda: next(iterators[0]), plan.steps, plan.stream_steps, close)
