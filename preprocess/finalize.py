"""The job's last step: labels, error reports, stale-file cleanup, then dataset_info.json.

Runs once, after every shard is written (it takes all shard results as a side input), and
writes dataset_info.json last and atomically: its presence means the dataset is complete.
It deletes only files of detrec's own names (output_folder.py): stale shards of the splits it
wrote, detrec's temporary files, and the splits of the previous dataset in the folder that
this run's class list no longer fits (those it cannot keep consistent); the previous
dataset's other splits are kept and listed, so the folder always holds one whole dataset.
"""

from __future__ import annotations

import collections
import logging
from typing import Iterable, Mapping

from detrec.core import fs, schema
from detrec.core.crashpoints import crashpoint
from detrec.core.dataset_info import DatasetInfo, ShardInfo, SplitInfo
from detrec.preprocess.dofns import ShardResult
from detrec.preprocess.pairing import Rejected
from detrec.preprocess.sources import SplitSource
from detrec.preprocess.vocab import Vocabulary

log = logging.getLogger("detrec.preprocess")


def _remove_stale(output: str, splits: Iterable[str], keep: set[str]) -> list[str]:
    """Deletes shards/indexes of these splits that this run did not write, and temp files."""
    removed = []
    for name in fs.listdir(output):
        base = name[: -len(schema.INDEX_SUFFIX)] if name.endswith(schema.INDEX_SUFFIX) else name
        parsed = schema.parse_shard_name(base)
        stale_shard = parsed is not None and parsed[0] in splits and base not in keep
        if stale_shard or fs.is_temp(name):
            fs.remove(fs.join(output, name))
            removed.append(name)
    return removed


def _resized(options: Mapping) -> tuple:
    """What --shorter-side did to a dataset's pixels (its options): () when nothing."""
    return (options["shorter_side"], options.get("resize_quality")) if options.get("shorter_side") else ()


def _carry_over(output: str, previous: DatasetInfo | None, splits: list[str], classes: tuple,
                options: Mapping) -> dict[str, SplitInfo]:
    """The previous dataset's splits this run did not write: kept (and listed again) when
    their labels mean what this run's do and their pixels were stored alike (dataset_info's
    options say so of every split), else removed with their files."""
    kept: dict[str, SplitInfo] = {}
    for name, entry in (previous.splits.items() if previous else ()):
        if name in splits:
            continue
        if previous.classes == classes and _resized(previous.options) == _resized(options):
            kept[name] = entry
            continue
        files = [f for s in entry.shards for f in (s.file, s.file + schema.INDEX_SUFFIX)] + [entry.errors_file]
        for file in filter(None, files):
            if fs.exists(fs.join(output, file)):
                fs.remove(fs.join(output, file))
        why = ("its labels used another class list" if previous.classes != classes else
               "its images were stored with another --shorter-side/--resize-quality")
        log.warning("removed split %s of the previous dataset: %s (convert it again with --splits %s)",
                    name, why, ",".join([*splits, name]))
    return kept


def _sum(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: collections.Counter[str] = collections.Counter()
    for c in counts:
        total.update(c)
    return dict(sorted(total.items()))


def finalize(
    _,
    output: str,
    source: str,
    splits: list[str],
    options: dict,
    previous: DatasetInfo | None,
    vocab: Vocabulary,
    found: dict[str, SplitSource],
    shards: list[ShardResult],
    rejected: list[Rejected],
) -> DatasetInfo:
    """Writes labels.txt, errors-<split>.jsonl, removes stale files, writes dataset_info.json."""
    fs.write_atomic(fs.join(output, schema.LABELS_FILE), vocab.labels_txt())
    info_splits = _carry_over(output, previous, splits, vocab.classes(), options)
    for split in splits:
        errors = sorted((r for r in rejected if r.split == split),
                        key=lambda r: (r.annotation, r.image, r.stage, r.code))
        fs.write_atomic(fs.join(output, schema.errors_name(split)), "".join(r.to_json() + "\n" for r in errors))
        mine = sorted((s for s in shards if s.key.split == split), key=lambda s: s.key.index)
        info_splits[split] = SplitInfo(
            num_examples=sum(s.num_examples for s in mine),
            num_errors=len(errors),
            errors_by_reason=dict(sorted(collections.Counter(r.code for r in errors).items())),
            converted_images=sum(s.converted for s in mine),
            non_srgb_images=sum(s.non_srgb for s in mine),
            errors_file=schema.errors_name(split),
            shards=tuple(ShardInfo(s.key.name, s.num_examples, s.num_bytes, s.sha256) for s in mine),
            label_sources=_sum(s.label_sources for s in mine),
            box_sources=_sum(s.box_sources for s in mine),
            label_mismatches=sum(s.label_mismatches for s in mine),
            labelled=found[split].labelled if split in found else True,
        )
    removed = _remove_stale(output, splits, {s.key.name for s in shards})
    if removed:
        log.info("removed %d stale files: %s", len(removed), ", ".join(sorted(removed)[:10]))
    info = DatasetInfo(
        layout=",".join(sorted({f.layout for f in found.values()})) or options.get("layout", ""),
        source=next(iter(found.values())).root if found else source,  # ROOT/ILSVRC when given its parent
        classes_from=vocab.origin,
        num_classes=vocab.num_classes,
        classes=vocab.classes(),
        options=options,
        splits=info_splits,
    )
    crashpoint("finalize")
    fs.write_atomic(fs.join(output, schema.DATASET_INFO), info.to_json())
    return info
