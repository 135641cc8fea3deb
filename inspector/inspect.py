"""Look inside detrec shards: counts, integrity, label statistics, samples for a contact sheet.

`detrec inspect` (pipelines/inspect_cmd.py) is a thin CLI over `inspect_paths()`, which
returns one JSON-ready report. Records are read only through `detrec.core.schema`; the
TFRecord framing is walked by `read_frames()`, a small reader that knows each record's byte
offset, because TensorFlow's readers neither report offsets (needed to point at a corrupt
byte and to check the DALI `.idx` files) nor seek past payloads (needed to count fast).

Bad input is data here, not an exception: every defect becomes a `Problem` (file, byte
offset, record index, one-line reason) in the report, inspection goes on with the next
file, and the CLI exits 1 when there is any.

Report keys (`detrec inspect --json` prints exactly this dict)::

    report_version  1
    ok              true when `problems` is empty
    mode            "full" (every record read) or "quick" (headers only, payloads skipped)
    verified        true with --verify (schema check and JPEG decode of every record)
    problems        [{file, offset, record, reason}]  offset/record are null when not known
    notes           [str]  things worth knowing that are not failures
    datasets        [{dir, source, created_by, num_classes, checked_shards, cross_check_ok}]
    classes         [{id, synset, name}]  the vocabulary used for names, background first
    splits          {split: {
                       num_examples, num_bytes, num_shards   counted from the files
                       expected_examples, converted_images, num_errors, errors_by_reason
                                                              from dataset_info.json (or null)
                       shards: [{file, num_examples, num_bytes, sha256, complete}]
                                 complete: the whole file was walked (false after a problem)
                       -- the rest only in "full" mode --
                       records_read        records behind the statistics below
                       converted_counted   records whose image was re-encoded, by source format
                       labels: [{id, synset, name, images, objects}]  images = image class
                       objects_per_image: {min, max, mean, histogram: {"n": images}}
                       width, height: {min, max, mean}  pixels
                       box_area: {count, min, p10, p50, p90, max, histogram: [{lo, hi, count}]}
                                 box area as a fraction of its image}}
    records         --show N: [{shard, record, offset, split, filename, source_id, width, height,
                     channels, format, encoded_bytes, sha256, class_label, class_text, class_name,
                     converted_from, objects: [{label, text, name, xmin, ymin, xmax, ymax, area,
                     difficult, truncated}]}]  never the image bytes
    contact_sheet   --contact-sheet only: {file, width, height, cell, cols, rows,
                     cells: [{shard, record, filename, x, y, scale}]}
                     Each image is scaled to fit a cell x cell square and centred in it; x, y is
                     its top-left corner in the sheet, scale is sheet pixels per image pixel.
                     The largest box is drawn in contact_sheet.LARGEST_BOX_COLOR with its
                     class name, the others in contact_sheet.OTHER_BOX_COLOR.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import os
import posixpath
import re
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from detrec.core import dataset_info, schema

from detrec.core import images
from detrec.inspector.contact_sheet import Sample
from detrec.core.errors import UserError

REPORT_VERSION = 1
AREA_BINS = 10  # box-area histogram: equal bins over [0, 1]
_HEADER, _FOOTER = schema.FRAME_HEADER, schema.FRAME_FOOTER


# --- framing ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Frame:
    """One framed record: where it starts, its payload size, the payload when it was read."""

    index: int
    offset: int
    length: int
    payload: bytes | None


class FrameError(Exception):
    """The bytes at `offset` are not a valid TFRecord frame (record `index` of the file)."""

    def __init__(self, offset: int, index: int, reason: str):
        super().__init__(reason)
        self.offset, self.index, self.reason = offset, index, reason


def read_frames(stream, size: int, want: Callable[[int], bool], hasher=None) -> Iterator[Frame]:
    """Walks a TFRecord file frame by frame, yielding each record's offset and (maybe) payload.

    The length CRC is always checked (8 bytes, free) so a flipped length bit is caught before
    it sends the walk astray. A payload is read, and its CRC checked, only when `want(index)`
    says so or a `hasher` needs every byte; otherwise the walk seeks past it, which is what
    keeps counting fast on large shards.

    Args:
      stream: a binary file object positioned at 0 (tf.io.gfile.GFile: local or gs://).
      size: the file's size in bytes, so truncation is found without reading past the end.
      want: record index -> whether its payload is needed.
      hasher: a hashlib object fed every byte of the file, in order, when given.

    Raises:
      FrameError: at the first frame that is truncated or fails a CRC.
    """
    offset = index = 0
    while offset < size:
        left = size - offset
        if left < _HEADER.size and index == 0:
            raise FrameError(offset, index, f"not a TFRecord file ({left} bytes, shorter than one record header)")
        if left < _HEADER.size:
            raise FrameError(offset, index, f"truncated: {left} trailing byte(s), a record header needs {_HEADER.size}")
        header = stream.read(_HEADER.size)
        if len(header) != _HEADER.size:
            raise FrameError(offset, index, "file shrank while being read")
        length, length_crc = _HEADER.unpack(header)
        if schema.masked_crc32c(header[:8]) != length_crc:
            if index == 0:
                raise FrameError(offset, index, "not a TFRecord file (the first record header fails its CRC)")
            raise FrameError(offset, index, "length CRC mismatch: corrupt record length or length CRC")
        span = schema.record_span(length)
        if span > left:
            raise FrameError(offset, index, f"truncated: record of {length} bytes needs {span} bytes, {left} left")
        payload = None
        if hasher is not None or want(index):
            payload = stream.read(length)
            footer = stream.read(_FOOTER.size)
            if len(payload) != length or len(footer) != _FOOTER.size:
                raise FrameError(offset, index, "file shrank while being read")
            if hasher is not None:
                hasher.update(header)
                hasher.update(payload)
                hasher.update(footer)
            if schema.masked_crc32c(payload) != _FOOTER.unpack(footer)[0]:
                raise FrameError(offset, index, "data CRC mismatch: corrupt payload or payload CRC")
        else:
            stream.seek(offset + span)
        yield Frame(index, offset, length, payload if want(index) else None)
        offset += span
        index += 1


# --- what to read -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Problem:
    """One defect: the file, the byte offset of the record at fault, its 0-based index in the file."""

    file: str
    reason: str
    offset: int | None = None
    record: int | None = None

    def line(self) -> str:
        where = []
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        if self.record is not None:
            where.append(f"record {self.record}")
        return f"{self.file}: {', '.join(where) + ': ' if where else ''}{self.reason}"


@dataclasses.dataclass
class Dataset:
    dir: str
    info: dict[str, Any] | None
    shards: list["Target"] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Target:
    """One shard file to read, and what dataset_info.json says it should be (if anything)."""

    path: str
    split: str
    expected: dict[str, Any] | None = None
    num_classes: int | None = None


def _gfile():
    import tensorflow as tf  # lazily: `detrec --help` must not pay for TensorFlow

    return tf.io.gfile


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _dirname(path: str) -> str:
    return posixpath.dirname(path) if "://" in path else (os.path.dirname(path) or ".")


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _split_of(path: str) -> str:
    parsed = schema.parse_shard_name(_basename(path))
    return parsed[0] if parsed else "(unnamed)"


def read_labels_txt(text: str) -> list[dataset_info.ClassInfo]:
    """`id<TAB>synset<TAB>name` lines (vocab.labels_txt) -> classes; unreadable lines skipped."""
    out = []
    for line in text.splitlines():
        parts = line.split("\t") if "\t" in line else line.split(None, 2)
        if len(parts) >= 2 and parts[0].strip().isdigit():
            synset = parts[1].strip()
            out.append(dataset_info.ClassInfo(int(parts[0]), synset, (parts[2] if len(parts) > 2 else synset).strip()))
    return out


class _Resolver:
    """Turns PATH arguments into datasets and shard targets, reporting what cannot be read."""

    def __init__(self) -> None:
        self.gfile = _gfile()
        self.datasets: list[Dataset] = []
        self.targets: list[Target] = []
        self.problems: list[Problem] = []
        self.notes: list[str] = []
        self.classes: dict[int, dataset_info.ClassInfo] = {}
        self._seen: set[str] = set()
        self._info_cache: dict[str, dict | None] = {}
        self._labels_count: dict[str, int] = {}

    def add(self, path: str) -> None:
        if _is_glob(path):
            try:
                matches = sorted(self.gfile.glob(path))
            except Exception as exc:  # gs:// auth/network errors surface as OpError
                self.problems.append(Problem(path, f"cannot list: {_short(exc)}"))
                return
            if not matches:
                self.problems.append(Problem(path, "no file matches this pattern"))
            for match in matches:
                self._add_one(match)
        else:
            self._add_one(path)

    def _add_one(self, path: str) -> None:
        try:
            exists = self.gfile.exists(path)
            is_dir = exists and self.gfile.isdir(path)
        except Exception as exc:
            self.problems.append(Problem(path, f"cannot access: {_short(exc)}"))
            return
        if not exists:
            self.problems.append(Problem(path, "no such file or directory"))
        elif is_dir:
            self._add_dataset(path.rstrip("/") or "/")
        else:
            self._add_shard(path)

    def _target(self, target: Target) -> None:
        if target.path not in self._seen:
            self._seen.add(target.path)
            self.targets.append(target)

    def _load_info(self, directory: str) -> dict | None:
        """dataset_info.json of `directory`, None when absent; a broken one is a Problem."""
        if directory not in self._info_cache:
            info = None
            if self.gfile.exists(dataset_info.join(directory, schema.DATASET_INFO)):
                try:
                    info = dataset_info.load(directory)
                except UserError as exc:
                    path = dataset_info.join(directory, schema.DATASET_INFO)
                    reason = str(exc).removeprefix(path + ": ")  # load() names the file; Problem does too
                    self.problems.append(Problem(path, reason))
                except Exception as exc:  # unreadable file, odd JSON types
                    self.problems.append(Problem(dataset_info.join(directory, schema.DATASET_INFO), _short(exc)))
            malformed = _malformed(info) if info is not None else None
            if malformed:
                self.problems.append(Problem(dataset_info.join(directory, schema.DATASET_INFO),
                                             f"{malformed}; not cross-checked"))
                info = None
            if info is not None:
                for c in dataset_info.classes(info):
                    self.classes.setdefault(c.id, c)
            else:
                self._load_labels(directory)
            self._info_cache[directory] = info
        return self._info_cache[directory]

    def _load_labels(self, directory: str) -> None:
        """Class names (and the class count for --verify) from labels.txt, when there is one."""
        path = dataset_info.join(directory, schema.LABELS_FILE)
        try:
            if self.gfile.exists(path):
                with self.gfile.GFile(path, "rb") as f:
                    found = read_labels_txt(f.read().decode("utf-8", "replace"))
                for c in found:
                    self.classes.setdefault(c.id, c)
                if found:
                    self._labels_count[directory] = max(c.id for c in found) + 1
        except Exception as exc:
            self.notes.append(f"{path}: unreadable ({_short(exc)}); class names come from the records")

    def _add_dataset(self, directory: str) -> None:
        if any(d.dir == directory for d in self.datasets):
            return
        info = self._load_info(directory)
        try:
            names = sorted(self.gfile.listdir(directory))
        except Exception as exc:
            self.problems.append(Problem(directory, f"cannot list: {_short(exc)}"))
            return
        shard_names = [n.rstrip("/") for n in names if n.endswith(schema.SHARD_SUFFIX)]
        leftovers = [n for n in names if n.startswith(".") and ".tmp-" in n]
        if leftovers:
            self.notes.append(f"{directory}: {len(leftovers)} temporary file(s) left by an interrupted job, "
                              f"e.g. {leftovers[0]}")
        info_path = dataset_info.join(directory, schema.DATASET_INFO)
        dataset = Dataset(directory, info)
        self.datasets.append(dataset)
        if info is None:
            if not self.gfile.exists(info_path):
                self.problems.append(Problem(directory, f"no {schema.DATASET_INFO}: not a finished detrec dataset "
                                                        f"(inspecting its {len(shard_names)} shard file(s) anyway)"
                                             if shard_names else
                                             f"no {schema.DATASET_INFO} and no *{schema.SHARD_SUFFIX} files: "
                                             "not a detrec dataset"))
            for name in shard_names:
                target = Target(dataset_info.join(directory, name), _split_of(name), None,
                                self._labels_count.get(directory))
                dataset.shards.append(target)
                self._target(target)
            return
        listed = self._add_listed(dataset, info)
        for name in shard_names:
            if name not in listed:
                self.problems.append(Problem(dataset_info.join(directory, name),
                                             f"unlisted shard: not in {info_path} (left over from another run?)"))

    def _add_listed(self, dataset: Dataset, info: dict[str, Any]) -> set[str]:
        """Targets for the shards dataset_info.json lists; returns their file names."""
        directory = dataset.dir
        info_path = dataset_info.join(directory, schema.DATASET_INFO)
        listed = set()
        num_classes = info.get("num_classes")
        for split, entry in sorted(info["splits"].items()):
            shards = entry.get("shards", [])
            total = sum(s["num_examples"] for s in shards)
            if entry.get("num_examples") is not None and entry["num_examples"] != total:
                self.problems.append(Problem(info_path, f"split {split}: num_examples {entry['num_examples']} but its "
                                                        f"shards list {total}"))
            for shard in shards:
                listed.add(shard["file"])
                path = dataset_info.join(directory, shard["file"])
                target = Target(path, split, shard, num_classes)
                dataset.shards.append(target)
                if not self.gfile.exists(path):
                    if shard.get("num_examples", 0) or shard.get("num_bytes", 0):
                        self.problems.append(Problem(path, f"missing: listed in {schema.DATASET_INFO} with "
                                                           f"{shard.get('num_examples')} examples"))
                    continue
                self._target(target)
        return listed

    def _add_shard(self, path: str) -> None:
        directory = _dirname(path)
        info = self._load_info(directory)
        if info is None:
            self._target(Target(path, _split_of(path), None, self._labels_count.get(directory)))
            return
        name = _basename(path)
        for split, entry in info["splits"].items():
            for shard in entry.get("shards", []):
                if shard["file"] == name:
                    self._target(Target(path, split, shard, info.get("num_classes")))
                    return
        info_path = dataset_info.join(directory, schema.DATASET_INFO)
        self.problems.append(Problem(path, f"unlisted shard: not in {info_path}"))
        self._target(Target(path, _split_of(path), None, info.get("num_classes")))


def _malformed(info: dict[str, Any]) -> str | None:
    """What is structurally wrong with a loaded dataset_info.json (None: the layout holds)."""
    splits = info.get("splits")
    if not isinstance(splits, dict):
        return "`splits` is not an object"
    for split, entry in splits.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("shards", []), list):
            return f"split {split!r}: `shards` is not a list"
        if not isinstance(entry.get("num_examples", 0), int):
            return f"split {split!r}: `num_examples` is not a number"
        for i, shard in enumerate(entry.get("shards", [])):
            if not isinstance(shard, dict) or not isinstance(shard.get("file"), str):
                return f"split {split!r}: shard entry {i} has no `file`"
            for key, kind in (("num_examples", int), ("num_bytes", int), ("sha256", str)):
                if not isinstance(shard.get(key), kind):
                    return f"split {split!r}: shard {shard['file']}: `{key}` is missing or of the wrong type"
    if not isinstance(info.get("num_classes"), int):
        return "`num_classes` is not a number"
    classes = info.get("classes")
    if not isinstance(classes, list) or not all(
            isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("synset"), str)
            and isinstance(c.get("name"), str) for c in classes):
        return "`classes` is not a list of {id, synset, name}"
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# --- statistics ---------------------------------------------------------------------------
class SplitStats:
    """Running label/size/box statistics of one split, fed one decoded record at a time."""

    def __init__(self) -> None:
        self.records = 0
        self.images_by_label: collections.Counter[int] = collections.Counter()
        self.objects_by_label: collections.Counter[int] = collections.Counter()
        self.texts: dict[int, str] = {}
        self.objects_per_image: collections.Counter[int] = collections.Counter()
        self.widths: list[int] = []
        self.heights: list[int] = []
        self.areas: list[float] = []
        self.converted: collections.Counter[str] = collections.Counter()

    def add(self, record: schema.Record) -> None:
        self.records += 1
        self.images_by_label[record.class_label] += 1
        self.texts.setdefault(record.class_label, record.class_text)
        self.objects_per_image[len(record.objects)] += 1
        self.widths.append(record.width)
        self.heights.append(record.height)
        for box in record.objects:
            self.objects_by_label[box.label] += 1
            self.texts.setdefault(box.label, box.text)
            self.areas.append(box.area)
        if record.converted_from:
            self.converted[record.converted_from] += 1

    def to_json(self, classes: dict[int, dataset_info.ClassInfo]) -> dict[str, Any]:
        ids = sorted(set(classes) | set(self.images_by_label) | set(self.objects_by_label))
        labels = []
        for i in ids:
            known = classes.get(i)
            synset = known.synset if known else self.texts.get(i, "?")
            labels.append({"id": i, "synset": synset, "name": known.name if known else synset,
                           "images": self.images_by_label.get(i, 0), "objects": self.objects_by_label.get(i, 0)})
        return {
            "records_read": self.records,
            "converted_counted": dict(sorted(self.converted.items())),
            "labels": labels,
            "objects_per_image": {**_range(list(self.objects_per_image.elements())),
                                  "histogram": {str(k): v for k, v in sorted(self.objects_per_image.items())}},
            "width": _range(self.widths),
            "height": _range(self.heights),
            "box_area": _area_distribution(self.areas),
        }


def _range(values: Sequence[float]) -> dict[str, Any]:
    if not len(values):
        return {"min": None, "max": None, "mean": None}
    return {"min": min(values), "max": max(values), "mean": round(float(np.mean(values)), 4)}


def _area_distribution(areas: list[float]) -> dict[str, Any]:
    counts, edges = np.histogram(areas, bins=AREA_BINS, range=(0.0, 1.0))
    histogram = [{"lo": round(float(lo), 4), "hi": round(float(hi), 4), "count": int(n)}
                 for lo, hi, n in zip(edges[:-1], edges[1:], counts)]
    if not areas:
        return {"count": 0, "min": None, "p10": None, "p50": None, "p90": None, "max": None, "histogram": histogram}
    q = np.quantile(areas, [0.0, 0.1, 0.5, 0.9, 1.0])
    return {"count": len(areas), **{k: round(float(v), 6) for k, v in zip(("min", "p10", "p50", "p90", "max"), q)},
            "histogram": histogram}


# --- per-record checks --------------------------------------------------------------------
def check_jpeg(record: schema.Record) -> None:
    """Raises SchemaError unless the image is a JPEG of the recorded size that the trainer decodes.

    The decode is the trainer's own op, tf.io.decode_jpeg(channels=3), at 1/8 scale as in
    preprocess/images.py: every coefficient is still entropy-decoded, so corrupt or truncated
    data fails as at full size, for a fraction of the cost. The magic bytes are checked first
    because decode_jpeg quietly accepts PNG, GIF and BMP too.
    """
    import tensorflow as tf

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
        reason = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:\w+\]", "", _short(exc))  # drop TF's op decorations
        raise schema.SchemaError(f"`{schema.ENCODED}` does not decode: {reason}") from None
    if channels != 3:
        raise schema.SchemaError(f"JPEG decodes to {channels} channels, expected 3")


def record_fields(record: schema.Record, classes: dict[int, dataset_info.ClassInfo]) -> dict[str, Any]:
    """A record as JSON-ready fields, image bytes replaced by their size."""
    def name(i: int, text: str) -> str:
        return classes[i].name if i in classes else text

    return {
        "filename": record.filename, "source_id": record.source_id,
        "width": record.width, "height": record.height, "channels": record.channels, "format": record.format,
        "encoded_bytes": len(record.encoded), "sha256": record.sha256,
        "class_label": record.class_label, "class_text": record.class_text,
        "class_name": name(record.class_label, record.class_text),
        "converted_from": record.converted_from,
        "objects": [{"label": b.label, "text": b.text, "name": name(b.label, b.text),
                     "xmin": round(b.xmin, 6), "ymin": round(b.ymin, 6), "xmax": round(b.xmax, 6),
                     "ymax": round(b.ymax, 6), "area": round(b.area, 6),
                     "difficult": b.difficult, "truncated": b.truncated} for b in record.objects],
    }


# --- the inspection -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Options:
    quick: bool = False  # headers only: counts and sizes, payloads skipped
    verify: bool = False  # schema.check + JPEG decode of every record
    show: int = 0  # records to return field by field
    samples: int = 0  # records to keep for a contact sheet


@dataclasses.dataclass
class _ShardResult:
    target: Target
    num_examples: int = 0
    num_bytes: int = 0
    sha256: str | None = None
    complete: bool = False
    offsets: list[tuple[int, int]] = dataclasses.field(default_factory=list)


class _Inspector:
    def __init__(self, resolver: _Resolver, options: Options, progress: Callable[[int], None] | None):
        self.r = resolver
        self.opt = options
        self.progress = progress or (lambda n: None)
        self.stats: dict[str, SplitStats] = collections.defaultdict(SplitStats)
        self.shown: list[dict[str, Any]] = []
        self.samples: list[Sample] = []
        n = max(1, len(resolver.targets))
        self.quota = math.ceil(options.samples / n) if options.samples else 0

    def problem(self, *args, **kwargs) -> None:
        self.r.problems.append(Problem(*args, **kwargs))

    def shard(self, target: Target, size: int | None) -> _ShardResult:
        """Walks one file (size None: it could not be stat'ed) and feeds the statistics."""
        gfile = self.r.gfile
        result = _ShardResult(target)
        if size is None:
            try:
                size = gfile.stat(target.path).length
            except Exception as exc:
                self.problem(target.path, f"cannot read: {_short(exc)}")
                return result
        result.num_bytes = size
        expected_empty = target.expected is not None and target.expected.get("num_examples") == 0
        if size == 0:
            if not expected_empty:
                self.problem(target.path, "empty file (0 bytes): not a TFRecord shard")
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
            with gfile.GFile(target.path, "rb") as stream:
                for frame in read_frames(stream, size, want, hasher):
                    result.num_examples += 1
                    result.offsets.append((frame.offset, frame.length))
                    if frame.payload is not None:
                        if not self._record(target, frame):
                            break
                    end = frame.offset + schema.record_span(frame.length)
                    self.progress(end - done)
                    done = end
                else:
                    result.complete = True
        except FrameError as exc:
            self.problem(target.path, exc.reason, exc.offset, exc.index)
        except Exception as exc:  # I/O errors from gfile (permissions, network)
            self.problem(target.path, f"read error: {_short(exc)}")
        self.progress(size - done)
        if result.complete and hasher is not None:
            result.sha256 = hasher.hexdigest()
        return result

    def _record(self, target: Target, frame: Frame) -> bool:
        """Decodes (and with --verify checks) one record; False after reporting a bad one."""
        try:
            record = schema.decode(frame.payload)
            if self.opt.verify:
                schema.check(record, target.num_classes)
                check_jpeg(record)
        except schema.SchemaError as exc:
            self.problem(target.path, f"not a valid detrec record: {exc}", frame.offset, frame.index)
            return False
        except Exception as exc:  # a record crafted to break decoding in some other way
            self.problem(target.path, f"not a valid detrec record: {_short(exc)}", frame.offset, frame.index)
            return False
        if not self.opt.quick:
            self.stats[target.split].add(record)
        if len(self.shown) < self.opt.show:
            self.shown.append({"shard": target.path, "record": frame.index, "offset": frame.offset,
                               "split": target.split, **record_fields(record, self.r.classes)})
        if frame.index < self.quota and len(self.samples) < self.opt.samples:
            self.samples.append(Sample(target.path, frame.index, record))
        return True

    def cross_check(self, result: _ShardResult) -> None:
        """Compares a shard with its dataset_info.json entry and its DALI index."""
        exp, path = result.target.expected, result.target.path
        if exp is not None and result.num_bytes != exp["num_bytes"]:
            self.problem(path, f"size {result.num_bytes} bytes, {schema.DATASET_INFO} says {exp['num_bytes']}")
        if not result.complete:
            return
        if exp is not None and result.num_examples != exp["num_examples"]:
            self.problem(path, f"{result.num_examples} records, {schema.DATASET_INFO} says {exp['num_examples']}")
        if exp is not None and result.sha256 is not None and result.sha256 != exp["sha256"]:
            self.problem(path, f"sha256 {result.sha256[:16]}... differs from {schema.DATASET_INFO}'s "
                               f"{exp['sha256'][:16]}...")
        self._check_index(result)

    def _check_index(self, result: _ShardResult) -> None:
        """The DALI .idx beside a shard must list exactly its frames (offset, framed size)."""
        path = result.target.path + schema.INDEX_SUFFIX
        gfile = self.r.gfile
        if not gfile.exists(path):
            if result.num_examples and result.target.expected is not None:
                self.r.notes.append(f"{path}: missing (the DALI input needs it; make it with tfrecord2idx)")
            return
        try:
            with gfile.GFile(path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except Exception as exc:
            self.problem(path, f"cannot read: {_short(exc)}")
            return
        expected = [schema.dali_index_line(o, n).strip() for o, n in result.offsets]
        got = [" ".join(line.split()) for line in lines if line.strip()]
        if got != expected:
            bad = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            self.problem(path, f"DALI index disagrees with the shard at entry {bad} "
                               f"({len(got)} entries for {len(expected)} records)")


def inspect_paths(paths: Sequence[str], options: Options = Options(),
                  progress: Callable[[int], None] | None = None,
                  on_total: Callable[[int], None] | None = None) -> tuple[dict[str, Any], list[Sample]]:
    """Inspects datasets / shard files / globs; returns (report, contact-sheet samples).

    Args:
      paths: dataset directories, shard files or glob patterns, local or gs://.
      options: what to read and check.
      progress: called with bytes done as files are walked (for a tqdm bar).
      on_total: called once with the total bytes to walk, before the walk starts.
    """
    resolver = _Resolver()
    for path in paths:
        resolver.add(path)
    inspector = _Inspector(resolver, options, progress)
    sizes: dict[str, int | None] = {}
    for t in resolver.targets:
        try:
            sizes[t.path] = resolver.gfile.stat(t.path).length
        except Exception:
            sizes[t.path] = None  # shard() stats again and reports why
    if on_total:
        on_total(sum(v or 0 for v in sizes.values()))
    results = []
    for target in resolver.targets:
        result = inspector.shard(target, sizes[target.path])
        inspector.cross_check(result)
        results.append(result)
    if options.quick and any(t.expected for t in resolver.targets):
        resolver.notes.append("--quick: sha256 and record contents not checked")
    report = _report(resolver, inspector, results, options)
    return report, inspector.samples


def _report(r: _Resolver, ins: _Inspector, results: list[_ShardResult], options: Options) -> dict[str, Any]:
    by_split: dict[str, list[_ShardResult]] = collections.defaultdict(list)
    for result in results:
        by_split[result.target.split].append(result)
    split_info: dict[str, dict] = {}
    for d in r.datasets:
        for split, entry in (d.info or {}).get("splits", {}).items():
            split_info.setdefault(split, entry)
    splits = {}
    for split in sorted(set(by_split) | set(split_info)):
        shards = by_split.get(split, [])
        entry = split_info.get(split, {})
        out = {
            "num_examples": sum(s.num_examples for s in shards),
            "num_bytes": sum(s.num_bytes for s in shards),
            "num_shards": len(shards),
            "expected_examples": entry.get("num_examples"),
            "converted_images": entry.get("converted_images"),
            "num_errors": entry.get("num_errors"),
            "errors_by_reason": entry.get("errors_by_reason"),
            "shards": [{"file": s.target.path, "num_examples": s.num_examples, "num_bytes": s.num_bytes,
                        "sha256": s.sha256, "complete": s.complete} for s in shards],
        }
        if not options.quick:
            out.update(ins.stats[split].to_json(r.classes))
        splits[split] = out
    datasets = []
    for d in r.datasets:
        prefix = d.dir.rstrip("/") + "/"
        clean = not any(p.file == d.dir or p.file.startswith(prefix) for p in r.problems)
        datasets.append({
            "dir": d.dir,
            "source": (d.info or {}).get("source"),
            "created_by": (d.info or {}).get("created_by"),
            "num_classes": (d.info or {}).get("num_classes"),
            "checked_shards": len(d.shards),
            "cross_check_ok": d.info is not None and clean,
        })
    return {
        "report_version": REPORT_VERSION,
        "ok": not r.problems,
        "mode": "quick" if options.quick else "full",
        "verified": options.verify and not options.quick,
        "problems": [dataclasses.asdict(p) for p in r.problems],
        "notes": r.notes,
        "datasets": datasets,
        "classes": [dataclasses.asdict(c) for _, c in sorted(r.classes.items())],
        "splits": splits,
        "records": ins.shown,
    }
