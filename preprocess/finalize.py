"""The job's last step: labels, error reports, stale-file cleanup, then dataset_info.json.

Runs once, after every shard is written (it takes all shard results as a side input), and
writes dataset_info.json last and atomically: its presence means the dataset is complete.
"""

from __future__ import annotations

import collections
import json
import logging
from typing import Iterable

from apache_beam.io.filesystems import FileSystems

from detrec.core import dataset_info, schema
from detrec.preprocess.transforms import Rejected, ShardResult
from detrec.preprocess.vocab import Vocabulary

log = logging.getLogger("detrec.preprocess")


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp-finalize"
    with FileSystems.create(tmp) as f:
        f.write(text.encode("utf-8"))
    FileSystems.rename([tmp], [path])


def _remove_stale(output: str, splits: Iterable[str], keep: set[str]) -> list[str]:
    """Deletes shards/indexes of these splits that this run did not write, and temp files."""
    removed = []
    for meta in FileSystems.match([FileSystems.join(output, "*")])[0].metadata_list:
        name = meta.path.rstrip("/").rsplit("/", 1)[-1]
        base = name[: -len(schema.INDEX_SUFFIX)] if name.endswith(schema.INDEX_SUFFIX) else name
        parsed = schema.parse_shard_name(base)
        stale_shard = parsed is not None and parsed[0] in splits and base not in keep
        if stale_shard or ".tmp-" in name:
            FileSystems.delete([meta.path])
            removed.append(name)
    return removed


def finalize(
    _,
    output: str,
    source: str,
    splits: list[str],
    options: dict,
    vocab: Vocabulary,
    layouts: dict[str, str],
    shards: list[ShardResult],
    rejected: list[Rejected],
) -> dict:
    """Writes labels.txt, errors-<split>.jsonl, removes stale files, writes dataset_info.json."""
    _write_atomic(dataset_info.join(output, schema.LABELS_FILE), vocab.labels_txt())
    info_splits = {}
    for split in splits:
        errors = sorted((r for r in rejected if r.split == split),
                        key=lambda r: (r.annotation, r.image, r.stage, r.code))
        _write_atomic(dataset_info.join(output, schema.errors_name(split)),
                      "".join(r.to_json() + "\n" for r in errors))
        mine = sorted((s for s in shards if s.key.split == split), key=lambda s: s.key.index)
        info_splits[split] = {
            "num_examples": sum(s.num_examples for s in mine),
            "num_errors": len(errors),
            "errors_by_reason": dict(sorted(collections.Counter(r.code for r in errors).items())),
            "converted_images": sum(s.converted for s in mine),
            "errors_file": schema.errors_name(split),
            "shards": [{"file": s.key.name, "num_examples": s.num_examples, "num_bytes": s.num_bytes,
                        "sha256": s.sha256} for s in mine],
        }
    removed = _remove_stale(output, splits, {s.key.name for s in shards})
    if removed:
        log.info("removed %d stale files: %s", len(removed), ", ".join(sorted(removed)[:10]))
    info = {
        "schema_version": schema.SCHEMA_VERSION,
        "layout": ",".join(sorted(set(layouts.values()))) or options.get("layout", ""),
        "source": source,
        "num_classes": vocab.num_classes,
        "background_id": schema.BACKGROUND_ID,
        "classes": vocab.classes(),
        "options": options,
        "splits": info_splits,
    }
    _write_atomic(dataset_info.join(output, schema.DATASET_INFO), json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return info
