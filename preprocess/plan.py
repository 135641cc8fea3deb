"""Shard plans: which example goes to which shard, at which position (pure: no Beam, no I/O).

Every example's shard and its position there come from the rank of sha256(split/source_id)
among its split's pairs, dealt round-robin, so shards mix classes, differ in size by at most
one planned example (plus the few rejected later), and the bytes written do not depend on
parallelism. One element per shard flows through the job graph (a ShardPlan), not one per
image: Beam's per-element cost would otherwise rival the work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from typing import Iterator

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


BOXES_FROM_XML, BOXES_FROM_CSV, BOXES_FROM_NONE = "xml", "csv", "none"


@dataclasses.dataclass(frozen=True)
class Item:
    """A paired, parsed example on its way to a shard (small: no image bytes).

    `annotation` holds its boxes, from `boxes_from`: its XML, its solution-CSV row, or none
    (an image its class folder labels, with an empty annotation).
    """

    pair: Pair
    annotation: annotations.Annotation
    boxes_from: str = BOXES_FROM_XML


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """One shard's examples in write order: Pairs as listed, Items once parsed.

    The element every stage passes on. A single object, so Beam's coder pickles it in one
    call; as a tuple of a list it would pickle each example apart, ~10x slower to decode.
    """

    key: ShardKey
    entries: tuple


def shard_hash(split: str, source_id: str) -> str:
    return hashlib.sha256(f"{split}/{source_id}".encode("utf-8")).hexdigest()


def plan_shards(num_examples: int, total_bytes: int, requested: int | None, target_bytes: int) -> int:
    """Shard count: as requested, else enough for `target_bytes` each; never more than examples."""
    wanted = requested if requested else math.ceil(total_bytes / max(target_bytes, 1))
    return max(1, min(wanted, num_examples))


def plan_split(split: str, pairs: list[Pair], requested: int | None,
               target_bytes: int) -> Iterator[ShardPlan]:
    """Every shard of a split with its pairs in write order: the pairs are dealt to shards
    round-robin in the order of their hashed source ids."""
    ranked = sorted(pairs, key=lambda p: (shard_hash(split, p.source_id), p.source_id))
    count = plan_shards(len(ranked), sum(p.image_size for p in ranked), requested, target_bytes)
    log.info("split %s: %d pairs -> %d shards", split, len(ranked), count)
    if not ranked:
        return
    for index in range(count):
        yield ShardPlan(ShardKey(split, index, count), tuple(ranked[index::count]))
