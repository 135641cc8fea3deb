"""The checks: is a record a valid detrec record, and is a shard what its dataset says it is.

Two levels, both reporting defects as data (`BadRecord`, or `Problem`s appended to a list):

* per record, `read_record`: the payload decodes with `detrec.core.schema` and has a class
  when its split is labelled (none when it is not: dataset_info.json says), and with --verify
  it also passes `schema.check` and `check_jpeg` (the trainer's own JPEG decode);
* per shard, `cross_check`: what the walk found (`ShardResult`) against the shard's
  dataset_info.json entry (size, record count, sha256) and its DALI `.idx` (every frame's
  offset and framed size), so a shard the trainer would stumble on is caught here first;
* per split, `cross_check_counts`: dataset_info.json's counts of converted images and of where
  classes came from, against the records of a split read whole;
* per dataset, with --verify, `check_labels`: labels.txt lists dataset_info.json's classes.

TensorFlow is imported only by `check_jpeg` (and by `schema.decode`), when a record is read.
"""

from __future__ import annotations

import dataclasses
import re

from detrec.core import fs, images, schema, tfrecord
from detrec.core.dataset_info import ClassInfo, DatasetInfo, SplitInfo
from detrec.core.errors import one_line
from detrec.inspector.problem import Problem
from detrec.inspector.resolve import Target, labels_line
from detrec.inspector.stats import SplitStats


class BadRecord(Exception):
    """A payload that is not a valid detrec record; the message says why, in one line."""


def read_record(payload: bytes, num_classes: int | None = None, verify: bool = False,
                labelled: bool | None = None) -> schema.Record:
    """Decodes one record's payload and, with `verify`, checks it through and through.

    Args:
      payload: the record's bytes, as framed in the shard.
      num_classes: the number of classes a label may name (None: not checked).
      verify: also `schema.check` the record and `check_jpeg` its image.
      labelled: whether its split is labelled (None: not known, as without dataset_info.json).

    Raises:
      BadRecord: whatever is wrong with it, including a payload crafted to break decoding.
    """
    try:
        record = schema.decode(payload)
        schema.check_class_presence(record, labelled)
        if verify:
            schema.check(record, num_classes, labelled)
            check_jpeg(record)
    except schema.SchemaError as exc:
        raise BadRecord(str(exc)) from None
    except ValueError as exc:  # e.g. a text feature that is not UTF-8
        raise BadRecord(one_line(exc)) from None
    return record


def check_jpeg(record: schema.Record) -> None:
    """Raises SchemaError unless the image is a JPEG of the recorded size that the trainer decodes.

    The decode is the trainer's own op, tf.io.decode_jpeg(channels=3), at 1/8 scale as in
    preprocess/decode_check.py: every coefficient is still entropy-decoded, so corrupt or
    truncated data fails as at full size, for a fraction of the cost. The magic bytes are
    checked first because decode_jpeg quietly accepts PNG, GIF and BMP too.
    """
    import tensorflow as tf  # lazily: only --verify decodes images

    kind = images.sniff(record.encoded)
    if kind != "jpeg":
        raise schema.SchemaError(f"`{schema.ENCODED}` is {kind or 'not an image'}, not JPEG")
    try:
        header = images.jpeg_header(record.encoded)
    except images.ImageError as exc:
        raise schema.SchemaError(f"`{schema.ENCODED}`: {exc}") from None
    if (header.width, header.height) != (record.width, record.height):
        raise schema.SchemaError(f"JPEG is {header.width}x{header.height} but the record says "
                                 f"{record.width}x{record.height}")
    try:
        channels = tf.io.decode_jpeg(record.encoded, channels=3, ratio=8).shape[-1]
    except (tf.errors.OpError, ValueError) as exc:
        reason = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:\w+\]", "", one_line(exc))  # drop TF's op decorations
        raise schema.SchemaError(f"`{schema.ENCODED}` does not decode: {reason}") from None
    if channels != 3:
        raise schema.SchemaError(f"JPEG decodes to {channels} channels, expected 3")


@dataclasses.dataclass
class ShardResult:
    """What walking one shard found: the facts the cross-check compares and the report lists.

    Attributes:
      target: the shard and what it should be.
      num_examples: whole records found (up to the first defect).
      num_bytes: the file's size; None when it could not be had (a problem says why).
      sha256: the file's digest; None unless every byte was read without a defect.
      complete: the whole file was walked (False after a problem).
      offsets: (byte offset, payload length) of every record found, in order.
    """

    target: Target
    num_examples: int = 0
    num_bytes: int | None = None
    sha256: str | None = None
    complete: bool = False
    offsets: list[tuple[int, int]] = dataclasses.field(default_factory=list)


def cross_check(result: ShardResult, problems: list[Problem], notes: list[str]) -> None:
    """Compares a shard with its dataset_info.json entry and its DALI index.

    The size is compared even for a shard that could not be walked to its end; counts,
    sha256 and the index only for a complete one (a partial count would only repeat the
    framing problem already reported).

    Args:
      result: what the walk found.
      problems: where defects are appended.
      notes: where things worth knowing that are not defects are appended.
    """
    exp, path = result.target.expected, result.target.path
    if exp is not None and result.num_bytes is not None and result.num_bytes != exp.num_bytes:
        problems.append(Problem(path, f"size {result.num_bytes} bytes, {schema.DATASET_INFO} says {exp.num_bytes}"))
    if not result.complete:
        return
    if exp is not None and result.num_examples != exp.num_examples:
        problems.append(Problem(path, f"{result.num_examples} records, {schema.DATASET_INFO} says "
                                      f"{exp.num_examples}"))
    if exp is not None and result.sha256 is not None and result.sha256 != exp.sha256:
        problems.append(Problem(path, f"sha256 {result.sha256[:16]}... differs from {schema.DATASET_INFO}'s "
                                      f"{exp.sha256[:16]}..."))
    check_index(result, problems, notes)


def check_index(result: ShardResult, problems: list[Problem], notes: list[str]) -> None:
    """The DALI .idx beside a shard must list exactly its frames (offset, framed size).

    It is read with `tfrecord.parse_index`, as the trainer reads it, so an index the DALI
    input would refuse is refused here too. A missing index is only a note: the tf.data
    input does not need one.
    """
    path = result.target.path + schema.INDEX_SUFFIX
    text = _read_optional(path, problems)
    if text is _UNREADABLE:
        return
    if text is None:
        if result.num_examples and result.target.expected is not None:
            notes.append(f"{path}: missing (the DALI input needs it; make it with tfrecord2idx)")
        return
    try:
        got = tfrecord.parse_index(text)
    except ValueError as exc:
        problems.append(Problem(path, f"not a DALI index: {exc}"))
        return
    expected = [(offset, tfrecord.record_span(length)) for offset, length in result.offsets]
    if got != expected:
        bad = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        problems.append(Problem(path, f"DALI index disagrees with the shard at entry {bad} "
                                      f"({len(got)} entries for {len(expected)} records)"))


def cross_check_counts(info_path: str, split: str, expected: SplitInfo, stats: SplitStats,
                       problems: list[Problem]) -> None:
    """Compares what dataset_info.json counts for a split with the records themselves: images
    re-encoded (`image/detrec/converted_from`) and where classes came from. Called only when
    every shard of the split was read to its end, so the records are the whole split."""
    counted = sum(stats.converted.values())
    if counted != expected.converted_images:
        problems.append(Problem(info_path, f"split {split}: {counted} records hold a re-encoded image, "
                                           f"{schema.DATASET_INFO} counts {expected.converted_images} converted images"))
    sources = {k: v for k, v in stats.label_sources.items() if v}
    if expected.label_sources and sources != dict(expected.label_sources):
        problems.append(Problem(info_path, f"split {split}: records take their class from {sorted(sources.items())}, "
                                           f"{schema.DATASET_INFO} says {sorted(expected.label_sources.items())}"))


def check_labels(directory: str, info: DatasetInfo, problems: list[Problem], notes: list[str]) -> None:
    """--verify: labels.txt must list dataset_info.json's classes, in order, with the same names.

    preprocess writes both from one vocabulary; a labels.txt edited by hand or left by another
    run names the classes wrongly for whoever reads it. The first difference is one Problem.
    """
    path = fs.join(directory, schema.LABELS_FILE)
    text = _read_optional(path, problems)
    if text is _UNREADABLE:
        return
    if text is None:
        notes.append(f"{path}: missing; class names not cross-checked with {schema.DATASET_INFO}")
        return
    lines = [line for line in text.lstrip("\ufeff").splitlines() if line.strip()]
    reason = _labels_difference(lines, list(info.classes))
    if reason:
        problems.append(Problem(path, f"{reason} (--verify compares it with {schema.DATASET_INFO})"))


def _labels_difference(lines: list[str], want: list[ClassInfo]) -> str | None:
    """What differs first between labels.txt's lines and the classes; None when nothing does."""
    got = []
    for number, line in enumerate(lines, 1):
        found = labels_line(line)
        if found is None:
            return f"line {number} is not `id<TAB>synset<TAB>name`: {line[:80]!r}"
        got.append(found)

    def show(c: ClassInfo) -> str:
        return f"`{c.id} {c.synset} {c.name}`"

    at = next((i for i in range(max(len(got), len(want)))
               if i >= len(got) or i >= len(want) or got[i] != want[i]), None)
    if at is None:
        return None
    line = show(got[at]) if at < len(got) else "missing"
    there = f"{schema.DATASET_INFO} has {show(want[at]) if at < len(want) else 'no class there'}"
    if len(got) != len(want):
        return f"{len(got)} classes, {schema.DATASET_INFO} has {len(want)}: line {at + 1} is {line}, {there}"
    kind = "classes in another order" if sorted(got, key=str) == sorted(want, key=str) else "another class"
    return f"{kind}: line {at + 1} is {line}, {there}"


_UNREADABLE = object()  # what _read_optional returns once it has said why a file cannot be read


def _read_optional(path: str, problems: list[Problem]) -> str | None | object:
    """A small text file beside the shards: its text, None when it does not exist, or
    _UNREADABLE after adding the problem that says why it cannot be read."""
    try:
        if not fs.exists(path):
            return None
        return fs.read_bytes(path).decode("utf-8", "replace")
    except fs.access_errors() as exc:
        problems.append(Problem(path, f"cannot read: {one_line(exc)}"))
        return _UNREADABLE
