"""The one definition of a detrec record: keys, encode/decode, parse spec, file names.

The writer (Beam job), the reader (train/) and the inspector all import this module and
nothing else to know what a record is, so the two directions cannot drift apart
(the TFDS ExampleSerializer/ExampleParser lesson). Keys follow the TensorFlow Object
Detection API convention so third-party tools can read our shards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import struct
import sys
from typing import Mapping, Sequence

SCHEMA_VERSION = 1
BACKGROUND_ID = 0
BACKGROUND_TEXT = "background"
# The most classes (background included) a dataset may have for training and predict: well
# above Open Images' ~20k, far below what makes the logits' layer alone take gigabytes (a
# dataset_info.json listing 1,000,005 classes took `detrec train` to 24 GB and the OOM killer).
MAX_CLASSES = 100_000
IMAGE_FORMAT = "jpeg"

# --- feature keys -----------------------------------------------------------------------
ENCODED = "image/encoded"
FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
CHANNELS = "image/channels"
FILENAME = "image/filename"
SOURCE_ID = "image/source_id"
SHA256 = "image/key/sha256"
XMIN = "image/object/bbox/xmin"
YMIN = "image/object/bbox/ymin"
XMAX = "image/object/bbox/xmax"
YMAX = "image/object/bbox/ymax"
OBJECT_LABEL = "image/object/class/label"
OBJECT_TEXT = "image/object/class/text"
DIFFICULT = "image/object/difficult"
TRUNCATED = "image/object/truncated"
# A box of a crowd or group (COCO iscrowd, Open Images IsGroupOf), as the OD API's COCO
# converter writes it. Written only when a record has one (records without stay as they were);
# absent means no box is one. The largest-box rule passes over them.
IS_CROWD = "image/object/is_crowd"
CLASS_LABEL = "image/class/label"
CLASS_TEXT = "image/class/text"
# Not in the OD API: what the source image was when detrec had to re-encode it ("" = bytes
# kept untouched). Lets anyone audit which pixels are not the original file's.
CONVERTED_FROM = "image/detrec/converted_from"
# Not in the OD API: where `image/class/label` came from. LABEL_FROM_XML (the largest box of
# the annotation file) is the default and is left out of the record, so records of trees
# labelled by XML (DET, VOC) stay byte for byte what they were before this key existed.
LABEL_SOURCE = "image/detrec/label_source"
LABEL_FROM_XML = "xml"  # the largest box of the image's XML annotation
LABEL_FROM_CSV = "csv"  # the largest box of its row in a solution CSV (LOC_val_solution.csv)
LABEL_FROM_FOLDER = "folder"  # the class folder holding the image; its boxes may name others
LABEL_SOURCES = (LABEL_FROM_XML, LABEL_FROM_CSV, LABEL_FROM_FOLDER)  # today's sources' names
# An unlabelled split's record (CLS-LOC test): no boxes, no class keys (Record.class_label None).
LABEL_NONE = "none"
NO_CLASS_ID = -1  # what parse_spec(labelled=False) gives a record without a class
# A source names where its boxes come from (preprocess/sources/): any short lower-case word.
_LABEL_SOURCE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,15}")
# Scalar keys a record may lack, and the value a missing one means (decode and parse_spec).
DEFAULTS: dict[str, str] = {CONVERTED_FROM: "", LABEL_SOURCE: LABEL_FROM_XML}

_BYTES, _INT, _FLOAT = "bytes", "int64", "float"
# key -> (kind, per-object?)
KEYS: dict[str, tuple[str, bool]] = {
    ENCODED: (_BYTES, False),
    FORMAT: (_BYTES, False),
    HEIGHT: (_INT, False),
    WIDTH: (_INT, False),
    CHANNELS: (_INT, False),
    FILENAME: (_BYTES, False),
    SOURCE_ID: (_BYTES, False),
    SHA256: (_BYTES, False),
    XMIN: (_FLOAT, True),
    YMIN: (_FLOAT, True),
    XMAX: (_FLOAT, True),
    YMAX: (_FLOAT, True),
    OBJECT_LABEL: (_INT, True),
    OBJECT_TEXT: (_BYTES, True),
    DIFFICULT: (_INT, True),
    TRUNCATED: (_INT, True),
    IS_CROWD: (_INT, True),
    CLASS_LABEL: (_INT, False),
    CLASS_TEXT: (_BYTES, False),
    CONVERTED_FROM: (_BYTES, False),
    LABEL_SOURCE: (_BYTES, False),
}
OBJECT_KEYS = tuple(k for k, (_, per_object) in KEYS.items() if per_object)
OPTIONAL_OBJECT_KEYS = (IS_CROWD,)  # per-object keys a record may lack (then: all 0)


class SchemaError(ValueError):
    """A serialized record does not follow this schema (names the key at fault)."""


@dataclasses.dataclass(frozen=True)
class Box:
    """One object: a box normalised to [0, 1] by the annotated image size, and its class."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    label: int
    text: str
    difficult: bool = False
    truncated: bool = False
    is_crowd: bool = False

    @property
    def area(self) -> float:
        """Share of the image it covers, from the stored (float32-rounded) coordinates."""
        return max(0.0, self.xmax - self.xmin) * max(0.0, self.ymax - self.ymin)


@dataclasses.dataclass(frozen=True)
class Record:
    """Everything one TFRecord example holds. `encoded` is always a 3-channel-decodable JPEG."""

    encoded: bytes
    height: int
    width: int
    filename: str
    source_id: str
    objects: tuple[Box, ...]
    class_label: int | None  # None: a record of an unlabelled split (label_source LABEL_NONE)
    class_text: str
    converted_from: str = ""
    channels: int = 3
    format: str = IMAGE_FORMAT
    sha256: str = ""
    label_source: str = LABEL_FROM_XML

    def __post_init__(self) -> None:
        if not self.sha256:
            object.__setattr__(self, "sha256", hashlib.sha256(self.encoded).hexdigest())


def _values(record: Record) -> dict[str, Sequence]:
    """Each feature's values; the label source only when it is not the default (see LABEL_SOURCE),
    the class only when there is one (see LABEL_NONE)."""
    objs = record.objects
    optional = {LABEL_SOURCE: [record.label_source]} if record.label_source != DEFAULTS[LABEL_SOURCE] else {}
    classed = {} if record.class_label is None else {CLASS_LABEL: [record.class_label], CLASS_TEXT: [record.class_text]}
    crowd = {IS_CROWD: [int(o.is_crowd) for o in objs]} if any(o.is_crowd for o in objs) else {}
    return {
        ENCODED: [record.encoded],
        FORMAT: [record.format],
        HEIGHT: [record.height],
        WIDTH: [record.width],
        CHANNELS: [record.channels],
        FILENAME: [record.filename],
        SOURCE_ID: [record.source_id],
        SHA256: [record.sha256],
        XMIN: [o.xmin for o in objs],
        YMIN: [o.ymin for o in objs],
        XMAX: [o.xmax for o in objs],
        YMAX: [o.ymax for o in objs],
        OBJECT_LABEL: [o.label for o in objs],
        OBJECT_TEXT: [o.text for o in objs],
        DIFFICULT: [int(o.difficult) for o in objs],
        TRUNCATED: [int(o.truncated) for o in objs],
        **crowd,
        **classed,
        CONVERTED_FROM: [record.converted_from],
        **optional,
    }


def encode(record: Record) -> bytes:
    """Serializes a Record to tf.train.Example bytes.

    Written straight to the protobuf wire format, byte for byte what
    `Example.SerializeToString(deterministic=True)` gives (tests hold it to that): the Beam
    workers then never import TensorFlow just to build a message (~2 s per process, and
    `--verify-images header` needs no TensorFlow at all). Sizes are summed up front so the
    parts are joined once: the JPEG bytes are copied once, not once per nesting level. The
    features whose values repeat across records (format, class, object labels, flags, often
    the size) are serialized once per distinct value (_ENTRY_CACHE).
    """
    values = _values(record)
    parts: list[bytes] = []
    for key in _KEY_ORDER:  # deterministic serialization orders map entries by key
        items = values.get(key)
        if items is None:
            continue
        if key in _UNIQUE_PER_RECORD:
            parts += _entry(key, items)
            continue
        cache_key = (key, *items)
        entry = _ENTRY_CACHE.get(cache_key)
        if entry is None:
            if len(_ENTRY_CACHE) >= _ENTRY_CACHE_SIZE:
                _ENTRY_CACHE.clear()
            entry = _ENTRY_CACHE[cache_key] = b"".join(_entry(key, items))
        parts.append(entry)
    return b"".join([_FEATURES_TAG, _varint(sum(map(len, parts))), *parts])  # Example { features }


def _entry(key: str, items: Sequence) -> list[bytes]:
    """One feature's map entry, as parts to join."""
    kind = KEYS[key][0]
    if kind == _BYTES:
        blobs = [v.encode("utf-8") if isinstance(v, str) else v for v in items]
        listed = [b for blob in blobs for b in (_BYTES_VALUE_TAG, _varint(len(blob)), blob)]
    elif kind == _INT:
        packed = b"".join(_varint(int(v) & 0xFFFFFFFFFFFFFFFF) for v in items)
        listed = [_PACKED_VALUE_TAG, _varint(len(packed)), packed] if items else []
    else:
        packed = struct.pack(f"<{len(items)}f", *items)
        listed = [_PACKED_VALUE_TAG, _varint(len(packed)), packed] if items else []
    listed_len = sum(map(len, listed))
    feature_head = _FEATURE_TAG[kind] + _varint(listed_len)  # Feature { <kind>_list { value } }
    feature_len = len(feature_head) + listed_len
    entry_head = _ENTRY_KEY[key] + _ENTRY_VALUE_TAG + _varint(feature_len)  # map entry {key, value}
    entry_len = len(entry_head) + feature_len
    return [_ENTRY_TAG, _varint(entry_len), entry_head, feature_head, *listed]


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_VARINTS = [bytes((n,)) for n in range(0x80)]
# Tags of length-delimited fields (field number << 3 | wire type 2), from example.proto and
# feature.proto: Example.features = 1, Features.feature (map) = 1, map entry key = 1 and
# value = 2, Feature.bytes_list = 1 / float_list = 2 / int64_list = 3, *List.value = 1.
_FEATURES_TAG = _ENTRY_TAG = _BYTES_VALUE_TAG = _PACKED_VALUE_TAG = b"\x0a"
_ENTRY_VALUE_TAG = b"\x12"
_FEATURE_TAG = {_BYTES: b"\x0a", _FLOAT: b"\x12", _INT: b"\x1a"}
_ENTRY_KEY = {key: b"\x0a" + _varint(len(key.encode("utf-8"))) + key.encode("utf-8") for key in KEYS}
_KEY_ORDER = sorted(KEYS)
# Features unique to a record (or nearly: boxes), never worth a cache lookup.
_UNIQUE_PER_RECORD = frozenset({ENCODED, FILENAME, SOURCE_ID, SHA256, XMIN, YMIN, XMAX, YMAX})
# Serialized entries of the other features by (key, *values): a few hundred distinct ones in a
# dataset of 1,000 classes; cleared when full, so memory stays bounded whatever the data.
_ENTRY_CACHE: dict[tuple, bytes] = {}
_ENTRY_CACHE_SIZE = 4096


def _read(feature_map: Mapping, key: str) -> list:
    if key not in feature_map:
        raise SchemaError(f"missing feature `{key}`")
    kind = KEYS[key][0]
    feature = feature_map[key]
    which = feature.WhichOneof("kind")
    expected = {"bytes": "bytes_list", "int64": "int64_list", "float": "float_list"}[kind]
    if which not in (expected, None):
        raise SchemaError(f"feature `{key}` is {which}, expected {expected}")
    return list(getattr(feature, expected).value)


def _scalar(feature_map: Mapping, key: str):
    if key not in feature_map and key in DEFAULTS:
        return DEFAULTS[key].encode("utf-8")
    values = _read(feature_map, key)
    if len(values) != 1:
        raise SchemaError(f"feature `{key}` has {len(values)} values, expected 1")
    return values[0]


def decode(serialized: bytes) -> Record:
    """Parses tf.train.Example bytes back into a Record; SchemaError names the bad key."""
    from detrec.core.example_proto import Example  # lazily: the writers never decode

    try:
        example = Example.FromString(serialized)
    except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
        raise SchemaError(f"not a tf.train.Example: {exc}") from None
    fmap = example.features.feature
    columns = {key: _read(fmap, key) for key in OBJECT_KEYS if key in fmap or key not in OPTIONAL_OBJECT_KEYS}
    counts = {len(v) for v in columns.values()}
    if len(counts) > 1:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in columns.items())
        raise SchemaError(f"per-object features disagree in length: {sizes}")
    text = lambda b: b.decode("utf-8")  # noqa: E731
    objects = tuple(
        Box(
            xmin=columns[XMIN][i],
            ymin=columns[YMIN][i],
            xmax=columns[XMAX][i],
            ymax=columns[YMAX][i],
            label=columns[OBJECT_LABEL][i],
            text=text(columns[OBJECT_TEXT][i]),
            difficult=bool(columns[DIFFICULT][i]),
            truncated=bool(columns[TRUNCATED][i]),
            is_crowd=bool(columns[IS_CROWD][i]) if IS_CROWD in columns else False,
        )
        for i in range(counts.pop() if counts else 0)
    )
    converted = _read(fmap, CONVERTED_FROM) if CONVERTED_FROM in fmap else [b""]
    label_source = text(_scalar(fmap, LABEL_SOURCE))
    classless = label_source == LABEL_NONE and CLASS_LABEL not in fmap and CLASS_TEXT not in fmap  # else: missing
    return Record(
        encoded=_scalar(fmap, ENCODED),
        format=text(_scalar(fmap, FORMAT)),
        height=_scalar(fmap, HEIGHT),
        width=_scalar(fmap, WIDTH),
        channels=_scalar(fmap, CHANNELS),
        filename=text(_scalar(fmap, FILENAME)),
        source_id=text(_scalar(fmap, SOURCE_ID)),
        sha256=text(_scalar(fmap, SHA256)),
        objects=objects,
        class_label=None if classless else _scalar(fmap, CLASS_LABEL),
        class_text="" if classless else text(_scalar(fmap, CLASS_TEXT)),
        converted_from=text(converted[0]) if converted else "",
        label_source=label_source,
    )


def check(record: Record, num_classes: int | None = None, labelled: bool | None = None) -> None:
    """Raises SchemaError unless the record is internally consistent.

    A class from the XML or a CSV row must be the largest box's (`is_largest_box_label`); a
    class from the image's folder is a real class of its own, whatever its boxes name; a record
    of an unlabelled split has neither class nor boxes (LABEL_NONE).

    Args:
      record: a decoded record.
      num_classes: classes including background; when given, label ids must be below it.
      labelled: whether its split is labelled (None: not known); see check_class_presence.
    """
    if record.format != IMAGE_FORMAT or record.channels != 3:
        raise SchemaError(f"format {record.format!r}/{record.channels} channels, expected jpeg/3")
    if record.height <= 0 or record.width <= 0:
        raise SchemaError(f"image size {record.width}x{record.height} is not positive")
    if hashlib.sha256(record.encoded).hexdigest() != record.sha256:
        raise SchemaError(f"`{SHA256}` does not match `{ENCODED}`")
    for i, box in enumerate(record.objects):
        coords = (box.xmin, box.ymin, box.xmax, box.ymax)
        if not all(0.0 <= c <= 1.0 for c in coords):
            raise SchemaError(f"object {i}: box {coords} outside [0, 1]")
        if not (box.xmin < box.xmax and box.ymin < box.ymax):
            raise SchemaError(f"object {i}: box {coords} is empty or inverted")
        if box.label <= BACKGROUND_ID or (num_classes is not None and box.label >= num_classes):
            raise SchemaError(f"object {i}: label {box.label} outside 1..{(num_classes or 0) - 1}")
    if not _LABEL_SOURCE_NAME.fullmatch(record.label_source):
        raise SchemaError(f"`{LABEL_SOURCE}` {record.label_source!r} is no source name (a short lower-case word "
                          f"such as {', '.join(LABEL_SOURCES)})")
    if (record.class_label is None) != (record.label_source == LABEL_NONE):
        raise SchemaError(f"`{LABEL_SOURCE}` {record.label_source!r} with `{CLASS_LABEL}` {record.class_label}")
    check_class_presence(record, labelled)
    if record.class_label is None and record.objects:  # an unlabelled split's image has no boxes either
        raise SchemaError(f"{len(record.objects)} boxes in a record without a class")
    if record.class_label is None:
        return
    if record.label_source == LABEL_FROM_FOLDER:
        if record.class_label <= BACKGROUND_ID or (num_classes is not None and record.class_label >= num_classes):
            raise SchemaError(f"`{CLASS_LABEL}` {record.class_label} (from the image's folder) outside "
                              f"1..{(num_classes or 0) - 1}")
        return
    if not is_largest_box_label(record.objects, record.class_label, record.class_text):
        expected = largest_box_label(record.objects)
        raise SchemaError(
            f"`{CLASS_LABEL}` {record.class_label}/{record.class_text} is not the largest box's "
            f"{expected[0]}/{expected[1]}"
        )


def check_class_presence(record: Record, labelled: bool | None) -> None:
    """SchemaError when a labelled split's record has no class, or an unlabelled split's has one."""
    if labelled and record.class_label is None:
        raise SchemaError(f"no `{CLASS_LABEL}` (`{LABEL_SOURCE}` {LABEL_NONE}) in a record of a labelled split")
    if labelled is False and record.class_label is not None:
        raise SchemaError(f"`{CLASS_LABEL}` {record.class_label} in a record of an unlabelled split")


# --- the largest-box rule -----------------------------------------------------------------
# An image labelled by its boxes takes the class of the largest one; equal areas go to the
# first box in document order. The writer decides with exact areas (pixels of the annotated
# frame, `largest_box_label(boxes, pixel_areas)`): normalised to [0, 1], two boxes of equal
# pixel area (10x20 and 20x10 in a 500x375 image) differ in the last bit and the tie breaks
# by rounding. Readers only have the stored float32 corners, so `is_largest_box_label`
# accepts every box whose stored area is within float32 rounding of the largest
# (`AREA_SLACK`): writer and checker then agree on every record the writer makes.
#
# Bound: each corner c in [0, 1] is stored as float32 with |error| <= 2**-24, so a side w is
# off by <= 2**-23 and an area w*h by <= (w + h) * 2**-23 (+ 2**-46). Two boxes of equal exact
# area so differ by at most (sum of both boxes' sides) * 2**-23; AREA_SLACK doubles that for the
# float64 arithmetic before storage. Areas closer than that are ties for a reader. The slack is
# below 4 * 2**-22 < 1e-6 of the image (under 0.2 pixel of a 500x375 image), so it only ever
# hides differences float32 corners cannot show anyway.
AREA_SLACK = 2.0**-22


def largest_box(areas: Sequence[float]) -> int | None:
    """Index of the largest area, ties to the first (document order); None for no boxes."""
    best = None
    for i, area in enumerate(areas):
        if best is None or area > areas[best]:
            best = i
    return best


def largest_box_label(objects: Sequence[Box], areas: Sequence[float] | None = None) -> tuple[int, str]:
    """The image's class when its boxes decide: the largest box's (ties: first in document
    order), crowd boxes passed over (COCO's rule: the class is a single object's).

    Args:
      objects: the boxes, in document order.
      areas: each box's exact area, in pixels of the annotated frame (what the writer has);
        None: the boxes' own normalised areas (a reader's best).

    Returns:
      (label, text) of that box; (BACKGROUND_ID, BACKGROUND_TEXT) without such a box.
    """
    counted = [i for i, o in enumerate(objects) if not o.is_crowd]
    every = [o.area for o in objects] if areas is None else areas
    best = largest_box([every[i] for i in counted])
    if best is None:
        return BACKGROUND_ID, BACKGROUND_TEXT
    return objects[counted[best]].label, objects[counted[best]].text


def largest_box_candidates(objects: Sequence[Box]) -> list[int]:
    """Indexes of the boxes a writer may have found largest, judged from stored corners: those
    not of a crowd whose area is within float32 rounding of the largest (see AREA_SLACK), in
    document order."""
    counted = [o for o in objects if not o.is_crowd]
    if not counted:
        return []
    top = counted[largest_box([o.area for o in counted])]
    top_sides = (top.xmax - top.xmin) + (top.ymax - top.ymin)
    return [i for i, o in enumerate(objects) if not o.is_crowd
            and o.area >= top.area - (top_sides + (o.xmax - o.xmin) + (o.ymax - o.ymin)) * AREA_SLACK]


def is_largest_box_label(objects: Sequence[Box], label: int, text: str) -> bool:
    """Whether (label, text) is what `largest_box_label` gives for these boxes with exact areas."""
    candidates = largest_box_candidates(objects)
    if not candidates:
        return (label, text) == (BACKGROUND_ID, BACKGROUND_TEXT)
    return any((objects[i].label, objects[i].text) == (label, text) for i in candidates)


def parse_spec(labelled: bool = True) -> dict:
    """The `tf.io.parse_example` spec for batched parsing, for readers that run TensorFlow.

    Takes TensorFlow from the readers' process instead of importing it: this module is the
    writers' too, and they run without it. Keys a record may lack (DEFAULTS) parse to their default;
    so does the class with `labelled` False (an unlabelled split, for predict: NO_CLASS_ID, "").
    """
    tf = sys.modules.get("tensorflow")
    if tf is None:
        raise RuntimeError("schema.parse_spec() is for TensorFlow readers: import tensorflow first")

    dtype = {_BYTES: tf.string, _INT: tf.int64, _FLOAT: tf.float32}
    spec = {}
    for key, (kind, per_object) in KEYS.items():
        if per_object:
            spec[key] = tf.io.VarLenFeature(dtype[kind])
        else:
            default = DEFAULTS[key].encode("utf-8") if key in DEFAULTS else None
            spec[key] = tf.io.FixedLenFeature([], dtype[kind], default_value=default)
    if not labelled:
        spec[CLASS_LABEL] = tf.io.FixedLenFeature([], tf.int64, default_value=NO_CLASS_ID)
        spec[CLASS_TEXT] = tf.io.FixedLenFeature([], tf.string, default_value=b"")
    return spec


# --- file names ---------------------------------------------------------------------------
DATASET_INFO = "dataset_info.json"
LABELS_FILE = "labels.txt"
SHARD_SUFFIX = ".tfrecord"
INDEX_SUFFIX = ".idx"
# A split's error report is ERRORS_PREFIX + split + ERRORS_SUFFIX (errors_name).
ERRORS_PREFIX, ERRORS_SUFFIX = "errors-", ".jsonl"
_SHARD_RE = re.compile(r"^(?P<split>[\w.-]+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.tfrecord$")


def shard_name(split: str, index: int, count: int) -> str:
    """`{split}-{index:05d}-of-{count:05d}.tfrecord`."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} outside 0..{count - 1}")
    return f"{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def parse_shard_name(name: str) -> tuple[str, int, int] | None:
    """(split, index, count) of a shard file name, or None when it is not one."""
    match = _SHARD_RE.match(name)
    if not match:
        return None
    return match["split"], int(match["index"]), int(match["count"])


def errors_name(split: str) -> str:
    return f"{ERRORS_PREFIX}{split}{ERRORS_SUFFIX}"
