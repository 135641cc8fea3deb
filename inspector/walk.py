"""Reads shard files frame by frame: counts, sha256, and the records the report needs.

One pass per file through `detrec.core.tfrecord.read_frames`, which knows each record's byte
offset (to point at a corrupt byte and to check the DALI `.idx`) and can seek past payloads
(to count fast): TensorFlow's readers do neither. In "full" mode every payload is read,
hashed, decoded (and with --verify checked) and fed to the split's `SplitStats`; in "quick"
mode only the headers are, plus the few payloads that --show and the contact sheet ask for.

The first defect of a file ends its walk as one `Problem`; the next file is read as usual.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
from typing import Callable

from detrec.core import fs, schema, tfrecord
from detrec.core.errors import one_line
from detrec.inspector.check import BadRecord, ShardResult, read_record
from detrec.inspector.contact_sheet import Sample
from detrec.inspector.problem import Problem
from detrec.inspector.resolve import Target
from detrec.inspector.stats import SplitStats


@dataclasses.dataclass(frozen=True)
class Options:
    """What to read and check.

    Attributes:
      quick: headers only: counts and sizes, payloads skipped.
      verify: schema.check + JPEG decode of every record.
      show: records to return field by field.
      samples: records to keep for a contact sheet.
    """

    quick: bool = False
    verify: bool = False
    show: int = 0
    samples: int = 0


@dataclasses.dataclass(frozen=True)
class Shown:
    """A record picked for --show, and where it was found."""

    target: Target
    index: int
    offset: int
    record: schema.Record


class Walker:
    """Walks shards one at a time, gathering statistics, --show records and contact-sheet samples.

    Attributes:
      stats: split -> its statistics (only filled outside quick mode).
      shown: the first `options.show` readable records, in reading order.
      samples: up to `options.samples` records, taken from the start of every shard in turn.
    """

    def __init__(self, options: Options, num_targets: int, problems: list[Problem],
                 progress: Callable[[int], None] | None = None) -> None:
        """Prepares a walk.

        Args:
          options: what to read and check.
          num_targets: shards that will be walked, to share the contact sheet among them.
          problems: where defects are appended.
          progress: called with bytes done as files are walked.
        """
        self.opt = options
        self.problems = problems
        self.progress = progress or (lambda n: None)
        self.stats: dict[str, SplitStats] = collections.defaultdict(SplitStats)
        self.shown: list[Shown] = []
        self.samples: list[Sample] = []
        # Samples come from the first records of every shard, so the sheet shows them all.
        self.quota = math.ceil(options.samples / max(1, num_targets)) if options.samples else 0

    def _problem(self, *args, **kwargs) -> None:
        self.problems.append(Problem(*args, **kwargs))

    def shard(self, target: Target, size: int | None) -> ShardResult:
        """Walks one file and feeds the statistics.

        Args:
          target: the shard to read.
          size: its size in bytes; None when it could not be had (it is tried again here,
            and the reason reported).

        Returns:
          What was found; `complete` only when the whole file was walked without a defect.
        """
        result = ShardResult(target)
        if size is None:
            try:
                size = fs.size(target.path)
            except fs.access_errors() as exc:
                self._problem(target.path, f"cannot read: {one_line(exc)}")
                return result
        result.num_bytes = size
        expected_empty = target.expected is not None and target.expected.num_examples == 0
        if size == 0:
            if not expected_empty:
                self._problem(target.path, "empty file (0 bytes): not a TFRecord shard")
            result.complete = expected_empty
            if expected_empty:
                result.sha256 = hashlib.sha256(b"").hexdigest()
            return result
        full = not self.opt.quick
        hasher = hashlib.sha256() if full else None

        def want(i: int) -> bool:
            return full or len(self.shown) < self.opt.show or (i < self.quota and len(self.samples) < self.opt.samples)

        done = 0
        try:
            with fs.open(target.path, "rb") as stream:
                for frame in tfrecord.read_frames(stream, size, want, hasher):
                    result.num_examples += 1
                    result.offsets.append((frame.offset, frame.length))
                    if frame.payload is not None:
                        if not self._record(target, frame):
                            break
                    end = frame.offset + tfrecord.record_span(frame.length)
                    self.progress(end - done)
                    done = end
                else:
                    result.complete = True
        except tfrecord.FrameError as exc:
            self._problem(target.path, exc.reason, exc.offset, exc.index)
        except fs.access_errors() as exc:  # permissions, network
            self._problem(target.path, f"read error: {one_line(exc)}")
        self.progress(size - done)
        if result.complete and hasher is not None:
            result.sha256 = hasher.hexdigest()
        return result

    def _record(self, target: Target, frame: tfrecord.Frame) -> bool:
        """Decodes (and with --verify checks) one record; False after reporting a bad one."""
        try:
            record = read_record(frame.payload, target.num_classes, self.opt.verify, target.labelled)
        except BadRecord as exc:
            self._problem(target.path, f"not a valid detrec record: {exc}", frame.offset, frame.index)
            return False
        if not self.opt.quick:
            self.stats[target.split].add(record)
        if len(self.shown) < self.opt.show:
            self.shown.append(Shown(target, frame.index, frame.offset, record))
        if frame.index < self.quota and len(self.samples) < self.opt.samples:
            self.samples.append(Sample(target.path, frame.index, record, frame.offset))
        return True
