"""The run's bookkeeping, saved inside every checkpoint next to the weights.

Crash safety
------------
`tf.train.CheckpointManager` writes a checkpoint under a fresh, never reused prefix
(`ckpt-<save counter>`) and only then atomically rewrites the `checkpoint` state file that
names the latest one, so a process killed at any moment leaves the previous checkpoint
readable and listed. Epoch, step, position, the epoch's running sums and the metrics history
live *inside* the checkpoint (`RunState`, a `PythonState`), so they can never disagree with
the weights; so does the record of the best epoch (`BestRecord`, inside the best checkpoint).

Both serialise to one JSON string in the checkpoint, in the same form as earlier detrec
versions wrote, so their checkpoints still resume.
"""

from __future__ import annotations

import dataclasses
import json
import math

import tensorflow as tf


class _JsonState(tf.train.experimental.PythonState):
    """Fields saved as one JSON string inside the checkpoint."""

    def to_json(self) -> dict:
        raise NotImplementedError

    def from_json(self, doc: dict) -> None:
        raise NotImplementedError

    def serialize(self) -> str:
        return json.dumps(self.to_json())

    def deserialize(self, string_value) -> None:
        text = string_value.decode("utf-8") if isinstance(string_value, bytes) else string_value
        self.from_json(json.loads(text))


@dataclasses.dataclass
class EpochSums:
    """The running sums of the epoch in progress, from which its train metrics come."""

    loss: float = 0.0  # per-example cross-entropy, summed
    correct: float = 0.0  # top-1 hits
    examples: float = 0.0
    seconds: float = 0.0  # wall time of the steps, waits for the input included
    input_wait: float = 0.0  # of which spent waiting for the next batch

    @property
    def mean_loss(self) -> float:
        return self.loss / max(self.examples, 1.0)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.examples, 1.0)

    @property
    def images_per_sec(self) -> float:
        return self.examples / max(self.seconds, 1e-9)

    @property
    def input_wait_fraction(self) -> float:
        return self.input_wait / max(self.seconds, 1e-9)

    def add_step_sums(self, values) -> None:
        """Adds a train step's device sums (loss, correct, examples)."""
        loss, correct, examples = (float(v) for v in values)
        self.loss += loss
        self.correct += correct
        self.examples += examples

    def as_list(self) -> list[float]:
        return [self.loss, self.correct, self.examples, self.seconds, self.input_wait]


class RunState(_JsonState):
    """Where the run is: the checkpoint's answer to "what has been trained".

    Attributes:
      epoch: 0-based index of the epoch in progress (== epochs when training is done).
      position: batches of that epoch already trained.
      total_steps: optimizer steps done, over all epochs.
      history: one metrics record per finished epoch (metrics.json's "epochs").
      sums: the epoch's running sums so far.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.position = 0
        self.total_steps = 0
        self.history: list[dict] = []
        self.sums = EpochSums()

    def to_json(self) -> dict:
        # "partial" is the sums' name in checkpoints of every detrec version: a list, in
        # EpochSums' field order.
        return {"epoch": self.epoch, "position": self.position, "total_steps": self.total_steps,
                "history": self.history, "partial": self.sums.as_list()}

    def from_json(self, doc: dict) -> None:
        self.epoch, self.position, self.total_steps = doc["epoch"], doc["position"], doc["total_steps"]
        self.history = doc["history"]
        self.sums = EpochSums(*doc["partial"])


class BestRecord(_JsonState):
    """The best epoch so far by val top-1 (ties: lower val loss); epoch 0 before any."""

    def __init__(self) -> None:
        self.epoch = 0
        self.val_top1 = -1.0
        self.val_loss = math.inf

    def beaten_by(self, val_top1: float, val_loss: float) -> bool:
        # Ties on top-1 (common on small val sets) go to the lower val loss.
        return (val_top1, -val_loss) > (self.val_top1, -self.val_loss)

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "val_top1": self.val_top1, "val_loss": self.val_loss}

    def from_json(self, doc: dict) -> None:
        self.epoch, self.val_top1, self.val_loss = doc["epoch"], doc["val_top1"], doc["val_loss"]
