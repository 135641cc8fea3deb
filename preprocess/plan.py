"""Shard plans: which example goes to which shard, at which position (pure: no Beam, no I/O).

Every example's shard and its position there come from the rank of sha256(split/source_id)
among its split's pairs, dealt round-robin, so shards mix classes, differ in size by at most
one planned example (plus the few rejected later), and the bytes written do not depend on
parallelism. One element per shard flows through the job graph (a ShardPlan), not one per
image: Beam's per-element cost would otherwise rival the work.

A plan is the only thing per image that crosses a stage, and the local runners keep every
stage's output in the launcher until the job ends: so a plan holds its pairs packed (pickled
field tuples, zlib level 1: ~26 bytes a pair instead of ~320, ~1 us each way), and so does
the parsed plan the annotation stage makes of it (~50 bytes an item with its boxes, ~8 us to
unpack: each annotation is parsed once, not once for the class list and again to write).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import operator
import pickle
import zlib
from typing import Iterator, Sequence

from detrec.core import schema
from detrec.preprocess import annotations
from detrec.preprocess.pairing import Pair

log = logging.getLogger("detrec.preprocess")


@dataclasses.dataclass(frozen=True)
class ShardKey:
    """One shard of a split: `index` of `count`."""

    split: str
    index: int
    count: int

    @property
    def name(self) -> str:
        return schema.shard_name(self.split, self.index, self.count)


# An image without boxes (its class folder labels it); each source names its own box origins.
BOXES_FROM_NONE = "none"


@dataclasses.dataclass(frozen=True)
class Item:
    """A pair with its boxes (a ParsedPlan carries them to the shard writer).

    `annotation` holds its boxes, from `boxes_from` (its source's name for where they were: its
    XML, its solution-CSV row...), or none (an image its class folder labels, with an empty
    annotation).
    """

    pair: Pair
    annotation: annotations.Annotation
    boxes_from: str


# Every field of a Pair but the split (the plan's key has it), in the constructor's order.
_PAIR_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(Pair)[1:]))


def _pack(rows: tuple, level: int = 1) -> bytes:
    return zlib.compress(pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL), level)


def _compact(value: float) -> float | int:
    """A whole non-negative coordinate as an int (pickled in 2-3 bytes, not 9), which float()
    gives back exactly; any other stays a float (-0.0 too: its sign reaches the record)."""
    return int(value) if value.is_integer() and math.copysign(1.0, value) > 0 else value


def _unpack(packed: bytes) -> tuple:
    return pickle.loads(zlib.decompress(packed))


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """One shard's pairs in write order, packed (see the module docstring): `pairs()` unpacks them.

    A single object of plain fields, so Beam's coder pickles it in one call.
    """

    key: ShardKey
    packed: bytes
    size: int  # pairs planned

    @classmethod
    def of(cls, key: ShardKey, pairs: Sequence[Pair]) -> "ShardPlan":
        return cls(key, _pack(tuple(map(_PAIR_FIELDS, pairs))), len(pairs))

    def pairs(self) -> list[Pair]:
        return [Pair(self.key.split, *row) for row in _unpack(self.packed)]


@dataclasses.dataclass(frozen=True)
class ParsedPlan:
    """A ShardPlan with its annotations parsed: its items in write order (the pairs less those
    whose annotation was rejected), packed as a ShardPlan's pairs are; `items()` unpacks them.
    `labelled` is its split's (SplitSource.labelled): False, its records get no class."""

    key: ShardKey
    packed: bytes
    size: int  # items
    labelled: bool = True

    @classmethod
    def of(cls, key: ShardKey, items: Sequence[Item], labelled: bool = True) -> "ParsedPlan":
        rows = tuple((_PAIR_FIELDS(i.pair), i.boxes_from, i.annotation.width, i.annotation.height,
                      i.annotation.filename,
                      tuple((o.name, *map(_compact, (o.xmin, o.ymin, o.xmax, o.ymax)), o.difficult, o.truncated,
                             o.crowd) for o in i.annotation.objects))
                     for i in items)
        # Level 6: a third smaller than level 1 here (~50 bytes an item), for ~7 ms more a shard.
        return cls(key, _pack(rows, 6), len(rows), labelled)

    def items(self) -> list[Item]:
        split, Object = self.key.split, annotations.Object
        return [Item(Pair(split, *pair),
                     annotations.Annotation(width, height, tuple(
                         Object(name, float(x0), float(y0), float(x1), float(y1), difficult, truncated, crowd)
                         for name, x0, y0, x1, y1, difficult, truncated, crowd in objects), filename),
                     boxes_from)
                for pair, boxes_from, width, height, filename, objects in _unpack(self.packed)]


def shard_hash(split: str, source_id: str) -> str:
    return _digest(split, source_id).hex()


def _digest(split: str, source_id: str) -> bytes:
    return hashlib.sha256(f"{split}/{source_id}".encode("utf-8")).digest()


# Shard size when no count is asked for (`detrec preprocess --target-shard-mb`): TFRecord
# guidance is 100-200 MB, large enough for sequential reads, small enough to spread over hosts.
DEFAULT_TARGET_SHARD_MB = 128.0


# The most packed annotation bytes (Pair.label_data: COCO's ~45 bytes a box) one shard plans:
# a shard's parse and write steps hold its boxes as objects (~150 bytes each), so a split of
# small images with many boxes (1M boxes on 10k thumbnails) gets more shards, not a big worker.
MAX_LABEL_BYTES_PER_SHARD = 4 << 20


def plan_shards(num_examples: int, total_bytes: int, requested: int | None, target_bytes: int,
                label_bytes: int = 0) -> int:
    """Shard count: as requested, else enough for `target_bytes` of images each and at most
    MAX_LABEL_BYTES_PER_SHARD of packed annotations; never more than examples."""
    wanted = requested if requested else max(math.ceil(total_bytes / max(target_bytes, 1)),
                                              math.ceil(label_bytes / MAX_LABEL_BYTES_PER_SHARD))
    return max(1, min(wanted, num_examples))


def plan_split(split: str, pairs: list[Pair], requested: int | None,
               target_bytes: int) -> Iterator[ShardPlan]:
    """Every shard of a split with its pairs in write order: the pairs are dealt to shards
    round-robin in the order of their hashed source ids."""
    # Digests sort as their hex strings do, in half the memory.
    ranked = sorted(pairs, key=lambda p: (_digest(split, p.source_id), p.source_id))
    count = plan_shards(len(ranked), sum(p.image_size for p in ranked), requested, target_bytes,
                        sum(len(p.label_data) for p in ranked))
    log.info("split %s: %d pairs -> %d shards", split, len(ranked), count)
    if not ranked:
        return
    for index in range(count):
        yield ShardPlan.of(ShardKey(split, index, count), ranked[index::count])
