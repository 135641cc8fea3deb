"""Beam DoFns that wrap the pure functions: they count outcomes and route bad records to a
tagged `rejected` output (the user_score.py pattern). No parsing logic lives here.

Shard assignment is deterministic: every example's (shard, position) comes from the rank of
sha256(split/source_id) among its split, dealt round-robin, so shards mix classes, differ in
size by at most one planned example, and the bytes written do not depend on parallelism.
Only small metadata (paths, sizes, parsed boxes) crosses the shuffles; JPEG bytes are read
inside the shard writer and streamed straight to the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import uuid
from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from preprocess import annotations, images, schema, sources
from preprocess.vocab import Vocabulary

REJECTED = "rejected"
LAYOUT = "layout"
NAMESPACE = "detrec"
log = logging.getLogger("detrec.preprocess")


@dataclasses.dataclass(frozen=True)
class Rejected:
    """One input that did not become a record (a line of errors-<split>.jsonl)."""

    split: str
    annotation: str
    image: str
    stage: str
    code: str
    reason: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class Item:
    """A paired, parsed example on its way to a shard (small: no image bytes)."""

    pair: sources.Pair
    annotation: annotations.Annotation


@dataclasses.dataclass(frozen=True, order=True)
class Slot:
    """Where an example goes: shard `index` of `count`, at `position` inside it."""

    index: int
    count: int
    position: int


@dataclasses.dataclass(frozen=True)
class ShardResult:
    split: str
    index: int
    count: int
    file: str
    num_examples: int
    num_bytes: int
    sha256: str
    converted: int


def _reject(r: Rejected):
    Metrics.counter(NAMESPACE, f"rejected_{r.code}").inc()
    return beam.pvalue.TaggedOutput(REJECTED, r)


class ListSplit(beam.DoFn):
    """(root, split, layout) -> every annotation/image FileEntry of the split."""

    def process(self, element: tuple[str, str, str]) -> Iterator:
        root, split, layout = element
        resolved = sources.resolve_layout(root, split, layout)
        yield beam.pvalue.TaggedOutput(LAYOUT, (split, resolved))
        n = 0
        for entry in sources.list_split(sources.SplitSource(root, split, resolved)):
            n += 1
            yield entry
        log.info("listed %d files for split %s (%s layout)", n, split, resolved)


class PairFiles(beam.DoFn):
    """((split, key), [FileEntry]) -> Pair, or Rejected for unpaired and duplicate files."""

    def process(self, element) -> Iterator:
        (split, key), entries = element
        for out in sources.pair(split, key, entries):
            if isinstance(out, sources.Pair):
                Metrics.counter(NAMESPACE, "pairs").inc()
                yield out
            else:
                yield _reject(Rejected(out.split, out.annotation, out.image, "pair", out.code, out.reason))


class ParseAnnotation(beam.DoFn):
    """Pair -> Item with the parsed XML (safe lxml parser), or Rejected."""

    def process(self, pair: sources.Pair) -> Iterator:
        try:
            data = sources.read_bytes(pair.annotation)
        except Exception as exc:  # permissions, vanished files, GCS errors: report, go on
            yield _reject(Rejected(pair.split, pair.annotation, pair.image, "read", "unreadable_file",
                                   f"cannot read annotation: {_short(exc)}"))
            return
        try:
            ann = annotations.parse(data, pair.annotation)
        except annotations.AnnotationError as exc:
            yield _reject(Rejected(pair.split, pair.annotation, pair.image, "xml", exc.code, str(exc)))
            return
        yield Item(pair, ann)


class CheckVocabulary(beam.DoFn):
    """Item -> Item when every synset is in the vocabulary (side input), else Rejected."""

    def process(self, item: Item, vocab: Vocabulary) -> Iterator:
        unknown = sorted({o.name for o in item.annotation.objects if vocab.id_of(o.name) is None})
        if unknown:
            yield _reject(Rejected(item.pair.split, item.pair.annotation, item.pair.image, "label", "unknown_synset",
                                   f"{item.pair.annotation}: synset(s) {', '.join(unknown)} not in the vocabulary"))
        else:
            yield item


def shard_hash(split: str, source_id: str) -> str:
    return hashlib.sha256(f"{split}/{source_id}".encode("utf-8")).hexdigest()


def plan_shards(num_examples: int, total_bytes: int, requested: int | None, target_bytes: int) -> int:
    """Shard count: as requested, else enough for `target_bytes` each; never more than examples."""
    wanted = requested if requested else math.ceil(total_bytes / max(target_bytes, 1))
    return max(1, min(wanted, num_examples))


class AssignSlots(beam.DoFn):
    """(split, [(hash, source_id, size)]) -> ((split, source_id), Slot) for the whole split."""

    def __init__(self, num_shards: dict[str, int], target_bytes: int):
        self._num_shards = num_shards
        self._target = target_bytes

    def process(self, element) -> Iterator:
        split, keys = element
        ranked = sorted(keys)
        count = plan_shards(len(ranked), sum(k[2] for k in ranked), self._num_shards.get(split), self._target)
        log.info("split %s: %d examples -> %d shards", split, len(ranked), count)
        for rank, (_, source_id, _) in enumerate(ranked):
            yield (split, source_id), Slot(rank % count, count, rank // count)


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


class WriteShard(beam.DoFn):
    """((split, index), [(Slot, Item)]) -> ShardResult; bad images/boxes -> Rejected.

    Writes to a temporary name and renames when complete (with its DALI .idx), so a killed
    job never leaves a partial file under a final name and a rerun simply overwrites.
    """

    def __init__(self, output: str, verify: str):
        self._output = output
        self._verify = verify

    def process(self, element, vocab: Vocabulary) -> Iterator:
        import tensorflow as tf

        from preprocess import dataset_info

        (split, index), slotted = element
        slotted = sorted(slotted, key=lambda si: si[0].position)
        count = slotted[0][0].count
        name = schema.shard_name(split, index, count)
        final = sources.join(self._output, name)
        tmp = sources.join(self._output, f".{name}.tmp-{uuid.uuid4().hex}")
        offset, converted, index_lines = 0, 0, []
        with tf.io.TFRecordWriter(tmp) as writer:
            for _, item in slotted:
                result = self._record(item, vocab)
                if isinstance(result, Rejected):
                    yield _reject(result)
                    continue
                payload = schema.encode(result)
                writer.write(payload)
                index_lines.append(schema.dali_index_line(offset, len(payload)))
                offset += schema.record_span(len(payload))
                converted += bool(result.converted_from)
        with tf.io.gfile.GFile(tmp + schema.INDEX_SUFFIX, "w") as f:
            f.write("".join(index_lines))
        num_bytes, digest = dataset_info.file_digest(tmp)
        if num_bytes != offset:
            raise IOError(f"{tmp}: wrote {num_bytes} bytes, expected {offset}")
        tf.io.gfile.rename(tmp + schema.INDEX_SUFFIX, final + schema.INDEX_SUFFIX, overwrite=True)
        tf.io.gfile.rename(tmp, final, overwrite=True)
        Metrics.counter(NAMESPACE, "examples_written").inc(len(index_lines))
        Metrics.counter(NAMESPACE, "converted_images").inc(converted)
        log.info("wrote %s: %d examples, %.1f MB", name, len(index_lines), num_bytes / 1e6)
        yield ShardResult(split, index, count, name, len(index_lines), num_bytes, digest, converted)

    def _record(self, item: Item, vocab: Vocabulary) -> schema.Record | Rejected:
        pair = item.pair
        try:
            data = sources.read_bytes(pair.image)
        except Exception as exc:  # permissions, vanished files, GCS errors: report, go on
            return Rejected(pair.split, pair.annotation, pair.image, "read", "unreadable_file",
                            f"cannot read image: {_short(exc)}")
        try:
            image = images.prepare(data, self._verify)
        except images.ImageError as exc:
            return Rejected(pair.split, pair.annotation, pair.image, "image", exc.code, f"{pair.image}: {exc}")
        try:
            boxes = annotations.normalise(item.annotation, image.width, image.height, vocab.id_of, pair.annotation)
        except annotations.AnnotationError as exc:
            return Rejected(pair.split, pair.annotation, pair.image, "box", exc.code, str(exc))
        label, text = schema.largest_box_label(boxes)
        return schema.Record(
            encoded=image.data, height=image.height, width=image.width, filename=pair.image_rel,
            source_id=pair.source_id, objects=boxes, class_label=label, class_text=text,
            converted_from=image.converted_from,
        )


def slot_items(element) -> Iterable:
    """CoGroupByKey output -> ((split, shard index), (Slot, Item))."""
    (split, _), grouped = element
    for slot in grouped["slot"]:
        for item in grouped["item"]:
            yield (split, slot.index), (slot, item)
