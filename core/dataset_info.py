"""`dataset_info.json`: what a finished dataset holds, so anyone can check nothing was lost.

Written last by `detrec preprocess` (its presence means the dataset is complete); read by
the trainer (the shard list comes from here, never from a glob) and by `detrec inspect`
(which cross-checks every shard's count, size and sha256). Layout::

    {"schema_version": 1, "layout": "det", "source": "...", "created_by": "detrec 0.1.0",
     "num_classes": K + 1, "background_id": 0,
     "classes": [{"id": 0, "synset": "background", "name": "background"}, ...],
     "options": {...},
     "splits": {"train": {"num_examples": N, "num_errors": E, "errors_by_reason": {...},
                          "converted_images": C, "errors_file": "errors-train.jsonl",
                          "shards": [{"file": "train-00000-of-00004.tfrecord",
                                      "num_examples": n, "num_bytes": b, "sha256": "..."}]}}}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import posixpath
from typing import Any

from detrec.core import schema
from detrec.core.errors import UserError


@dataclasses.dataclass(frozen=True)
class ClassInfo:
    id: int
    synset: str
    name: str


class _LocalFiles:
    """The slice of tf.io.gfile used here, for local paths: reading a local dataset (the
    preprocess launcher's summary, `detrec inspect`) then costs no TensorFlow import."""

    exists = staticmethod(os.path.exists)
    isdir = staticmethod(os.path.isdir)
    GFile = staticmethod(open)


def _gfile(path: str):
    if "://" not in path:
        return _LocalFiles
    import tensorflow as tf  # lazily: gs:// and other remote paths

    return tf.io.gfile


def join(directory: str, name: str) -> str:
    """Joins local paths and URLs (gs://...) alike."""
    return posixpath.join(directory, name) if "://" in directory else os.path.join(directory, name)


def load(data_dir: str) -> dict[str, Any]:
    """Reads and sanity-checks `data_dir/dataset_info.json`; UserError says what to do."""
    gfile = _gfile(data_dir)
    if not gfile.exists(data_dir):
        raise UserError(f"{data_dir}: no such directory (pass the OUT folder of `detrec preprocess`)")
    if not gfile.isdir(data_dir):
        raise UserError(f"{data_dir}: not a directory (pass the OUT folder of `detrec preprocess`)")
    path = join(data_dir, schema.DATASET_INFO)
    if not gfile.exists(path):
        raise UserError(
            f"{path} not found: {data_dir} is not a finished detrec dataset "
            "(run `detrec preprocess --output` to completion first)"
        )
    info = read_json(path)
    for key in ("schema_version", "num_classes", "classes", "splits"):
        if key not in info:
            raise UserError(f"{path}: missing key {key!r}; was it written by detrec preprocess?")
    if info["schema_version"] != schema.SCHEMA_VERSION:
        raise UserError(
            f"{path}: schema_version {info['schema_version']}, this detrec reads "
            f"{schema.SCHEMA_VERSION}; re-run detrec preprocess"
        )
    return info


def read_json(path: str) -> Any:
    """A JSON file (local or URL); UserError names the file when it is not JSON."""
    try:
        with _gfile(path).GFile(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def split_info(info: dict[str, Any], split: str, data_dir: str = "") -> dict[str, Any]:
    splits = info["splits"]
    if split not in splits:
        raise UserError(f"{data_dir or 'dataset'} has no split {split!r} (it has: {', '.join(sorted(splits)) or 'none'})")
    return splits[split]


def shard_files(info: dict[str, Any], data_dir: str, split: str) -> list[str]:
    """Full paths of a split's shards, in dataset_info order. UserError if the split is empty."""
    entry = split_info(info, split, data_dir)
    files = [join(data_dir, s["file"]) for s in entry["shards"] if s["num_examples"] > 0]
    if not files:
        raise UserError(f"split {split!r} of {data_dir} has no examples")
    return files


def classes(info: dict[str, Any]) -> list[ClassInfo]:
    """Classes by id, background (0) first."""
    return sorted((ClassInfo(c["id"], c["synset"], c["name"]) for c in info["classes"]), key=lambda c: c.id)


def file_digest(path: str, chunk: int = 1 << 20) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file, streamed."""
    digest, size = hashlib.sha256(), 0
    with _gfile(path).GFile(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            size += len(block)
            digest.update(block)
    return size, digest.hexdigest()
