"""Exact resume, in the fast loop: a Trainer fed by a recording stream is stopped mid-epoch
(as ^C stops it: the step ends, a checkpoint is saved), a second Trainer resumes the same run
dir, and the stream's record shows which batches each run drew. The resumed run must skip
exactly the batches the stopped one trained on, train on the rest once each, and end with as
many steps as an uninterrupted run. (The end-to-end kill and crash-point tests, in
test_train.py and test_train_crash.py, run the real CLI and are slow.)"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from detrec.core.dataset_info import ClassInfo
from detrec.train import models, rundir
from detrec.train.config import TrainConfig
from detrec.train.data import Data
from detrec.train.trainer import Trainer

STEPS, BATCH, SIZE = 5, 2, 64
CLASSES = [ClassInfo(0, "background", "background"), ClassInfo(1, "n01", "one"), ClassInfo(2, "n02", "two")]


def key(epoch: int, batch: int, row: int) -> str:
    return f"e{epoch}-b{batch:03d}-r{row}".ljust(64, ".")


class RecordingStream:
    """Per epoch, the same batches whenever rebuilt (what exact resume relies on), each with its
    examples' keys; it logs every batch drawn as (epoch, batch), and can ask the trainer to stop
    once a chosen batch has been drawn."""

    def __init__(self) -> None:
        self.drawn: list[tuple[int, int]] = []
        self.stop_after: tuple[int, int] | None = None
        self.trainer: Trainer | None = None

    def train(self, epoch: int):
        for batch in range(STEPS):
            self.drawn.append((epoch, batch))
            if (epoch, batch) == self.stop_after:
                self.trainer._stop.requested = True  # as SIGINT would: this step ends, then save and stop
            rng = np.random.default_rng([epoch, batch])
            images = rng.uniform(-1, 1, (BATCH, SIZE, SIZE, 3)).astype(np.float32)
            labels = rng.integers(0, len(CLASSES), BATCH)
            keys = np.array([list(key(epoch, batch, r).encode("ascii")) for r in range(BATCH)], np.uint8)
            yield tf.constant(images), tf.constant(labels, tf.int64), tf.constant(keys)

    def val(self):
        rng = np.random.default_rng(99)
        yield (tf.constant(rng.uniform(-1, 1, (BATCH, SIZE, SIZE, 3)).astype(np.float32)),
               tf.constant(rng.integers(0, len(CLASSES), BATCH), tf.int64))


def run(model_dir: str, stream: RecordingStream, epochs: int = 2) -> int:
    cfg = TrainConfig(model_dir=model_dir, model=models.ModelConfig("semi_alexnet", len(CLASSES), SIZE),
                      epochs=epochs, batch_size=BATCH, steps_per_epoch=STEPS)
    stream.trainer = Trainer(cfg, Data(train=stream.train, val=stream.val, classes=CLASSES, with_keys=True),
                             out=io.StringIO())
    return stream.trainer.run()


def keys_file(model_dir: str, epoch: int) -> list[str]:
    with open(rundir.keys_path(model_dir, epoch, 0), encoding="ascii") as f:
        return f.read().split()


@pytest.mark.parametrize("stop_after", [(0, 2), (1, 0), (0, STEPS - 1)])
def test_a_resumed_run_skips_exactly_the_trained_batches_and_trains_each_other_once(tmp_path, stop_after):
    model_dir = str(tmp_path / "run")
    first = RecordingStream()
    first.stop_after = stop_after
    assert run(model_dir, first) == 130
    stop_epoch, stop_batch = stop_after
    # The stopped run drew every batch up to the stop, and no further.
    assert first.drawn == [(e, b) for e in range(stop_epoch + 1) for b in range(STEPS)
                           if (e, b) <= stop_after]

    second = RecordingStream()
    assert run(model_dir, second) == 0
    if stop_batch == STEPS - 1:  # stopped on an epoch's last step: the epoch was complete
        resumed = [(e, b) for e in range(stop_epoch + 1, 2) for b in range(STEPS)]
    else:  # the stopped epoch rebuilt and its trained batches skipped, then the rest
        resumed = [(e, b) for e in range(stop_epoch, 2) for b in range(STEPS)]
    assert second.drawn == resumed
    # Per epoch, the batches trained on (the keys file lists the skipped ones too: the run's
    # whole epoch) are every batch once, in order.
    for epoch in sorted({e for e, _ in resumed}):
        assert keys_file(model_dir, epoch + 1) == [key(epoch, b, r) for b in range(STEPS) for r in range(BATCH)]
    with open(os.path.join(model_dir, rundir.METRICS)) as f:
        metrics = json.load(f)
    assert metrics["total_steps"] == 2 * STEPS
    assert [e["steps"] for e in metrics["epochs"]] == [STEPS, STEPS]
