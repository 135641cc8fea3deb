"""`dataset_info.json`, typed: what a finished dataset holds, so anyone can check nothing was lost.

Written last by `detrec preprocess` (its presence means the dataset is complete); read by the
trainer (the shard list comes from here, never from a glob) and by `detrec inspect` (which
cross-checks every shard's count, size and sha256). `DatasetInfo.from_json` is the one place
that validates the file; everything else reads typed fields. Layout::

    {"schema_version": 1, "created_by": "detrec 0.1.0", "layout": "det", "source": "...",
     "num_classes": K + 1, "background_id": 0, "classes_from": "...",
     "classes": [{"id": 0, "synset": "background", "name": "background"}, ...],
     "options": {...},
     "splits": {"train": {"num_examples": N, "num_errors": E, "errors_by_reason": {...},
                          "converted_images": C, "non_srgb_images": P, "errors_file": "errors-train.jsonl",
                          "label_sources": {"folder": F, "xml": X, "csv": V},
                          "box_sources": {"xml": X, "csv": V, "none": Z}, "label_mismatches": M,
                          "shards": [{"file": "train-00000-of-00004.tfrecord",
                                      "num_examples": n, "num_bytes": b, "sha256": "..."}]}}}

`label_sources` counts records by where their class came from (the record's
`image/detrec/label_source`: "folder", or the name the image's source gives where its boxes
came from: "xml", "csv", "json"...), `box_sources` by where their boxes came from ("none": a
class folder labels the image and it has no boxes), `label_mismatches` the folder-labelled records
whose largest box names another class, `non_srgb_images` the records whose source image carried a
colour profile other than sRGB (converted to sRGB when re-encoded, else kept inside the JPEG
stored as is: see core/colour.py). Files written before these keys existed load with them
empty (0).

`options` records the preprocess flags the dataset was made with. `"shorter_side": N` (with
`"resize_quality"`, written only when set) says its pixels are not all the originals: every image
whose shorter side was over N is stored re-encoded with that side N (`DatasetInfo.shorter_side`).

A split whose tree gives no labels (CLS-LOC test) says `"labelled": false`: its records have
no class (label_sources {"none": N}); it is for predict, never for training (`check_labelled`).
The key is written only then, so a labelled dataset's file is what it was, and absent means labelled.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from detrec import __version__
from detrec.core import fs, schema
from detrec.core.errors import UserError

CREATED_BY = f"detrec {__version__}"


@dataclasses.dataclass(frozen=True)
class ClassInfo:
    id: int
    synset: str
    name: str


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    file: str  # name inside the dataset folder
    num_examples: int
    num_bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    num_examples: int
    shards: tuple[ShardInfo, ...]
    num_errors: int = 0
    errors_by_reason: Mapping[str, int] = dataclasses.field(default_factory=dict)
    converted_images: int = 0
    non_srgb_images: int = 0
    errors_file: str = ""
    label_sources: Mapping[str, int] = dataclasses.field(default_factory=dict)
    box_sources: Mapping[str, int] = dataclasses.field(default_factory=dict)
    label_mismatches: int = 0
    labelled: bool = True  # False: its records have no class (schema.LABEL_NONE)

    @property
    def listed_examples(self) -> int:
        """Examples its shards add up to (equal to num_examples in a sound file)."""
        return sum(s.num_examples for s in self.shards)

    @property
    def num_bytes(self) -> int:
        return sum(s.num_bytes for s in self.shards)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    classes: tuple[ClassInfo, ...]  # by id, background (0) first
    splits: Mapping[str, SplitInfo]
    schema_version: int = schema.SCHEMA_VERSION
    created_by: str = CREATED_BY
    layout: str = ""
    source: str = ""
    background_id: int = schema.BACKGROUND_ID
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    classes_from: str = ""  # where the class list came from (a synset map, class folders, the data)

    @property
    def shorter_side(self) -> int:
        """`detrec preprocess --shorter-side`: images with a longer shorter side are stored resized
        to it; 0 when every image keeps its own size."""
        value = self.options.get("shorter_side", 0)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

    def split(self, name: str, where: str = "dataset") -> SplitInfo:
        """A split by name; UserError listing the ones there are."""
        if name not in self.splits:
            raise UserError(f"{where} has no split {name!r} (it has: {', '.join(sorted(self.splits)) or 'none'})")
        return self.splits[name]

    def shard_of(self, file: str) -> tuple[str, ShardInfo] | None:
        """(split, shard) of a listed shard file name, None when it is not listed."""
        for split, entry in self.splits.items():
            for shard in entry.shards:
                if shard.file == file:
                    return split, shard
        return None

    def to_json(self) -> str:
        out = {
            "schema_version": self.schema_version, "created_by": self.created_by, "layout": self.layout,
            "source": self.source, "num_classes": self.num_classes, "background_id": self.background_id,
            "classes_from": self.classes_from,
            "classes": [dataclasses.asdict(c) for c in self.classes], "options": dict(self.options),
            "splits": {name: {"num_examples": s.num_examples, "num_errors": s.num_errors,
                              "errors_by_reason": dict(s.errors_by_reason), "converted_images": s.converted_images,
                              "non_srgb_images": s.non_srgb_images,
                              "errors_file": s.errors_file, "label_sources": dict(s.label_sources),
                              "box_sources": dict(s.box_sources), "label_mismatches": s.label_mismatches,
                              **({} if s.labelled else {"labelled": False}),
                              "shards": [dataclasses.asdict(sh) for sh in s.shards]}
                       for name, s in self.splits.items()},
        }
        return json.dumps(out, indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, path: str = schema.DATASET_INFO) -> "DatasetInfo":
        """Parses and validates the file's content; UserError(`path: what is wrong`)."""
        try:
            raw = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nesting too deep
            raise UserError(f"{path}: not valid JSON ({exc})") from None
        try:
            return _parse(raw)
        except _Malformed as exc:
            raise UserError(f"{path}: {exc}") from None


class _Malformed(Exception):
    pass


_KINDS = {int: "a number", str: "a string", list: "a list", dict: "an object", bool: "true or false"}


def _get(obj: Any, key: str, kind: type, where: str, default: Any = ...) -> Any:
    """obj[key] checked to be of `kind`; `where` ("" at the top) names the place in the file."""
    at = f"{where}: " if where else ""
    if not isinstance(obj, dict):
        raise _Malformed(f"{where or 'the file'} is not an object")
    if key not in obj:
        if default is not ...:
            return default
        raise _Malformed(f"{at}`{key}` is missing; was it written by detrec preprocess?")
    value = obj[key]
    # bool is an int in Python; a count that is `true` is still malformed.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Malformed(f"{at}`{key}` is not {_KINDS[kind]}")
    return value


def _parse(raw: Any) -> DatasetInfo:
    top = ""
    version = _get(raw, "schema_version", int, top)
    if version != schema.SCHEMA_VERSION:
        raise _Malformed(f"schema_version {version}, this detrec reads {schema.SCHEMA_VERSION}; re-run detrec preprocess")
    classes = []
    for i, c in enumerate(_get(raw, "classes", list, top)):
        where = f"classes[{i}]"
        classes.append(ClassInfo(_get(c, "id", int, where), _get(c, "synset", str, where), _get(c, "name", str, where)))
    splits = {}
    for name, entry in _get(raw, "splits", dict, top).items():
        where = f"split {name!r}"
        shards = []
        for i, sh in enumerate(_get(entry, "shards", list, where, [])):
            at = f"{where}: shard entry {i}"
            file = _get(sh, "file", str, at)
            at = f"{where}: shard {file}"
            shards.append(ShardInfo(file, _count(sh, "num_examples", at), _count(sh, "num_bytes", at),
                                    _get(sh, "sha256", str, at)))
        splits[name] = SplitInfo(
            num_examples=_count(entry, "num_examples", where, sum(s.num_examples for s in shards)),
            shards=tuple(shards),
            num_errors=_get(entry, "num_errors", int, where, 0),
            errors_by_reason=dict(_get(entry, "errors_by_reason", dict, where, {})),
            converted_images=_get(entry, "converted_images", int, where, 0),
            non_srgb_images=_count(entry, "non_srgb_images", where, 0),
            errors_file=_get(entry, "errors_file", str, where, ""),
            label_sources=_counts(entry, "label_sources", where),
            box_sources=_counts(entry, "box_sources", where),
            label_mismatches=_get(entry, "label_mismatches", int, where, 0),
            labelled=_get(entry, "labelled", bool, where, True),
        )
    return DatasetInfo(
        schema_version=version,
        num_classes=_get(raw, "num_classes", int, top),
        classes=tuple(sorted(classes, key=lambda c: c.id)),
        splits=splits,
        created_by=_get(raw, "created_by", str, top, ""),
        layout=_get(raw, "layout", str, top, ""),
        source=_get(raw, "source", str, top, ""),
        background_id=_get(raw, "background_id", int, top, schema.BACKGROUND_ID),
        options=_get(raw, "options", dict, top, {}),
        classes_from=_get(raw, "classes_from", str, top, ""),
    )


def _count(obj: Any, key: str, where: str, default: Any = ...) -> int:
    """obj[key], a number of at least 0 (a negative count is malformed, not an empty shard)."""
    value = _get(obj, key, int, where, default)
    if value < 0:
        raise _Malformed(f"{where}: `{key}` is negative ({value})")
    return value


def _counts(entry: Any, key: str, where: str) -> dict[str, int]:
    """A {name: count} object (absent: empty); every count a number of at least 0."""
    counts = _get(entry, key, dict, where, {})
    for name in counts:
        if _get(counts, name, int, f"{where}: `{key}`") < 0:
            raise _Malformed(f"{where}: `{key}`: `{name}` is negative")
    return dict(counts)


def check_class_count(count: int, where: str) -> None:
    """UserError when a model over `count` classes (background included) is more than
    detrec builds (schema.MAX_CLASSES): said before anything is built, not by the OOM killer."""
    if count > schema.MAX_CLASSES:
        raise UserError(f"{where} lists {count:,} classes; detrec trains and predicts with at most "
                        f"{schema.MAX_CLASSES:,} (the model's last layer and its optimizer state grow with them)")


def check_labelled(info: DatasetInfo, split: str, data_dir: str, what: str) -> None:
    """UserError when `split` of the dataset has no class in its records (an unlabelled split:
    CLS-LOC test), or when the dataset has no such split: `what` (the flag or command that named
    it, e.g. "--val-split") heads the message. Training and validation need labels; predict
    reads such a split."""
    if not info.split(split, data_dir).labelled:
        raise UserError(f"{what}: split {split} of {data_dir} is unlabelled (no class in its records): train and "
                        f"validate on labelled splits; `detrec predict --data {data_dir} --split {split}` predicts it")


def path_in(data_dir: str) -> str:
    return fs.join(data_dir, schema.DATASET_INFO)


def load(data_dir: str) -> DatasetInfo:
    """Reads and validates `data_dir/dataset_info.json`; UserError says what to do."""
    if not fs.exists(data_dir):
        raise UserError(f"{data_dir}: no such directory (pass the OUT folder of `detrec preprocess`)")
    if not fs.isdir(data_dir):
        raise UserError(f"{data_dir}: not a directory (pass the OUT folder of `detrec preprocess`)")
    path = path_in(data_dir)
    if not fs.exists(path):
        raise UserError(
            f"{path} not found: {data_dir} is not a finished detrec dataset "
            "(run `detrec preprocess --output` to completion first)"
        )
    return DatasetInfo.from_json(fs.read_bytes(path), path)


def shard_files(info: DatasetInfo, data_dir: str, split: str) -> list[str]:
    """Full paths of a split's non-empty shards, in dataset_info order. UserError if there are none."""
    files = [fs.join(data_dir, s.file) for s in info.split(split, data_dir).shards if s.num_examples > 0]
    if not files:
        raise UserError(f"split {split!r} of {data_dir} has no examples")
    return files
