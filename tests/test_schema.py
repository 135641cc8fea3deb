"""The one schema: round trip, golden bytes, batched parsing, validation, names."""

from __future__ import annotations

import hashlib
import os

import pytest
import tensorflow as tf

from detrec.core import schema
from detrec.core.schema import Box, Record, SchemaError

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def golden_record() -> Record:
    with open(os.path.join(GOLDEN, "tiny.jpg"), "rb") as f:
        jpeg = f.read()
    return Record(
        encoded=jpeg, height=12, width=16,
        filename="ILSVRC2013_train/n01443537/n01443537_00012.JPEG",
        source_id="ILSVRC2013_train/n01443537/n01443537_00012",
        objects=(Box(0.125, 0.25, 0.5, 0.75, 3, "n01443537", difficult=False, truncated=True),
                 Box(0.0, 0.0, 1.0, 1.0, 1, "n01440764", difficult=True, truncated=False)),
        class_label=1, class_text="n01440764",
    )


def test_round_trip_keeps_every_field():
    record = golden_record()
    assert schema.decode(schema.encode(record)) == record


def test_golden_serialized_record():
    """Bytes written by an earlier version still decode to the same record, and encoding is
    stable: a change here breaks every existing dataset, so it must be deliberate."""
    with open(os.path.join(GOLDEN, "record_v1.pb"), "rb") as f:
        golden = f.read()
    assert schema.decode(golden) == golden_record()
    assert schema.encode(golden_record()) == golden


def test_background_record_round_trip():
    record = Record(encoded=b"\xff\xd8x\xff\xd9", height=1, width=1, filename="a.JPEG", source_id="a",
                    objects=(), class_label=0, class_text="background", converted_from="png")
    assert schema.decode(schema.encode(record)) == record


def _protobuf_encode(record: Record) -> bytes:
    """The reference: the same record built with TensorFlow's own Example message."""
    example = tf.train.Example()
    for key, values in schema._values(record).items():
        kind = schema.KEYS[key][0]
        lst = getattr(example.features.feature[key], {"bytes": "bytes_list", "int64": "int64_list", "float": "float_list"}[kind])
        lst.SetInParent()  # present even when empty, as the hand encoder writes it
        lst.value.extend(v.encode("utf-8") if isinstance(v, str) else v for v in values)
    return example.SerializeToString(deterministic=True)


@pytest.mark.parametrize("record", [
    golden_record(),
    Record(encoded=b"", height=0, width=1, filename="", source_id="", objects=(), class_label=0, class_text=""),
    Record(encoded=bytes(range(256)) * 700, height=2**40, width=300, filename="dossier/ünïcödé 画像.JPEG",
           source_id="ü/画像", objects=tuple(Box(0.0625 * i, 0.125, 0.75, 1.0, 200 + i, f"n{i}") for i in range(9)),
           class_label=127, class_text="n128", converted_from="png"),
    Record(encoded=b"\xff\xd8x\xff\xd9", height=5, width=7, filename="golden retriever/x.png", source_id="g/x.png",
           objects=(), class_label=3, class_text="golden retriever", converted_from="png", label_source="folder"),
    Record(encoded=b"\xff\xd8y\xff\xd9", height=5, width=7, filename="v.JPEG", source_id="v",
           objects=(Box(0.0, 0.0, 0.5, 0.5, 2, "n2"),), class_label=2, class_text="n2", label_source="csv"),
    Record(encoded=b"\xff\xd8z\xff\xd9", height=5, width=7, filename="c.jpg", source_id="9",
           objects=(Box(0.0, 0.0, 1.0, 1.0, 3, "5", is_crowd=True), Box(0.0, 0.0, 0.5, 0.5, 2, "3")),
           class_label=2, class_text="3", label_source="json"),
], ids=["golden", "empty", "large-unicode", "from-folder", "from-csv", "with-crowd"])
def test_hand_encoder_matches_protobuf(record):
    """The writer's wire-format encoder is byte-identical to protobuf's deterministic output."""
    assert schema.encode(record) == _protobuf_encode(record)
    assert schema.decode(schema.encode(record)) == record  # float32-exact boxes survive exactly
    inexact = Record(**{**record.__dict__, "objects": tuple(Box(0.1, 0.2, 1 / 3, 0.7, 1, "n") for _ in range(2))})
    assert schema.encode(inexact) == _protobuf_encode(inexact)  # same float32 rounding as protobuf


def test_encoded_entries_are_reused_only_for_equal_values(monkeypatch):
    """The encoder serializes repeating features once per value (schema._ENTRY_CACHE): records
    that share some values and differ in others still encode as protobuf does, also when the
    cache fills and starts over."""
    import random

    monkeypatch.setattr(schema, "_ENTRY_CACHE_SIZE", 40)
    monkeypatch.setattr(schema, "_ENTRY_CACHE", {})
    rng = random.Random(0)
    for i in range(200):
        objects = tuple(Box(0.1, 0.2, 0.5, 0.75, rng.choice([1, 2, 300]), rng.choice(["n1", "n2", "ü"]),
                            rng.random() < 0.5, rng.random() < 0.5) for _ in range(rng.randrange(3)))
        record = Record(encoded=b"\xff\xd8%d\xff\xd9" % i, height=rng.choice([1, 375, 2**33]), width=rng.choice([500, 0]),
                        filename=f"{i}.JPEG", source_id=str(i), objects=objects, class_label=rng.choice([0, 1, 300]),
                        class_text=rng.choice(["background", "n1", "ü"]), converted_from=rng.choice(["", "png"]),
                        label_source=rng.choice(schema.LABEL_SOURCES))
        assert schema.encode(record) == _protobuf_encode(record), i
    assert 0 < len(schema._ENTRY_CACHE) <= 40


def test_parse_example_spec_matches_encode():
    records = [golden_record(), Record(encoded=b"x", height=2, width=3, filename="b", source_id="b",
                                       objects=(), class_label=0, class_text="background")]
    parsed = tf.io.parse_example(tf.constant([schema.encode(r) for r in records]), schema.parse_spec())
    assert parsed[schema.CLASS_LABEL].numpy().tolist() == [1, 0]
    assert parsed[schema.HEIGHT].numpy().tolist() == [12, 2]
    xmin = tf.sparse.to_dense(parsed[schema.XMIN]).numpy()
    assert xmin.shape == (2, 2) and xmin[0].tolist() == [0.125, 0.0]
    assert parsed[schema.ENCODED].numpy()[0] == records[0].encoded


def test_encoded_jpeg_decodes_to_three_channels():
    decoded = tf.io.decode_jpeg(golden_record().encoded, channels=3)
    assert decoded.shape == (12, 16, 3)


def test_is_crowd_is_written_only_for_records_with_a_crowd_box_and_passed_over_by_the_largest_box_rule():
    plain = golden_record()
    assert schema.IS_CROWD.encode() not in schema.encode(plain)  # records without crowds stay as they were
    crowd = Box(0.0, 0.0, 1.0, 1.0, 1, "n01440764", is_crowd=True)
    small = Box(0.125, 0.125, 0.25, 0.25, 3, "n01443537")  # float32-exact
    record = Record(**{**plain.__dict__, "objects": (crowd, small), "class_label": 3, "class_text": "n01443537"})
    assert schema.decode(schema.encode(record)).objects == (crowd, small)
    schema.check(record, num_classes=4)
    assert schema.largest_box_label((crowd, small)) == (3, "n01443537")
    assert schema.largest_box_label((crowd,)) == (schema.BACKGROUND_ID, schema.BACKGROUND_TEXT)
    with pytest.raises(SchemaError, match="largest box"):  # the crowd's class is never the image's
        schema.check(Record(**{**record.__dict__, "class_label": 1, "class_text": "n01440764"}))


def test_check_accepts_good_and_names_bad():
    schema.check(golden_record(), num_classes=4)
    with pytest.raises(SchemaError, match="label 3 outside"):
        schema.check(golden_record(), num_classes=3)
    bad_box = Record(**{**golden_record().__dict__, "objects": (Box(0.5, 0.1, 0.4, 0.2, 1, "n"),), "class_text": "n"})
    with pytest.raises(SchemaError, match="empty or inverted"):
        schema.check(bad_box)
    wrong_label = Record(**{**golden_record().__dict__, "class_label": 3, "class_text": "n01443537"})
    with pytest.raises(SchemaError, match="largest box"):
        schema.check(wrong_label)
    # Any source names where its boxes came from (a new source: no schema change), in a short word.
    schema.check(Record(**{**golden_record().__dict__, "label_source": "json"}), num_classes=4)
    for bad in ("", "CSV", "x" * 17, "a b", "xml\n"):
        with pytest.raises(SchemaError, match="no source name"):
            schema.check(Record(**{**golden_record().__dict__, "label_source": bad}))


def test_decode_rejects_foreign_records():
    foreign = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"]))})).SerializeToString()
    with pytest.raises(SchemaError, match="missing feature"):
        schema.decode(foreign)
    with pytest.raises(SchemaError, match="not a tf.train.Example"):
        schema.decode(b"\xff\xff\xff garbage")


def test_our_example_class_parses_as_tensorflows_does():
    """core.example_proto (no TensorFlow) against tf.train.Example on records and on damage."""
    from google.protobuf.message import DecodeError

    from detrec.core.example_proto import Example

    good = schema.encode(golden_record())
    samples = [good, good[:-3], good[:40], b"", b"\x0a\x05garbage", bytes(range(256)),
               _protobuf_encode(golden_record())]
    for data in samples:
        try:
            theirs = tf.train.Example.FromString(data).SerializeToString(deterministic=True)
        except DecodeError:
            theirs = None
        try:
            ours = Example.FromString(data).SerializeToString(deterministic=True)
        except DecodeError:
            ours = None
        assert ours == theirs, data[:20]
    assert Example.FromString(good).features.feature[schema.CLASS_TEXT].WhichOneof("kind") == "bytes_list"


def test_largest_box_ties_go_to_document_order():
    boxes = (Box(0, 0, 0.5, 0.5, 2, "b"), Box(0.5, 0.5, 1, 1, 1, "a"))
    assert schema.largest_box_label(boxes) == (2, "b")
    assert schema.largest_box_label(boxes[::-1]) == (1, "a")
    assert schema.largest_box_label(()) == (0, "background")
    assert schema.largest_box([]) is None and schema.largest_box([3.0, 5.0, 5.0, 1.0]) == 1


# --- where the class came from: image/detrec/label_source ---------------------------------
def test_the_default_label_source_is_left_out_and_others_round_trip():
    """xml (the default) is not written, so DET/VOC records keep their bytes; csv and folder are."""
    xml = golden_record()
    assert xml.label_source == schema.LABEL_FROM_XML
    assert schema.LABEL_SOURCE.encode() not in schema.encode(xml)
    for source in (schema.LABEL_FROM_CSV, schema.LABEL_FROM_FOLDER):
        record = Record(**{**xml.__dict__, "label_source": source})
        data = schema.encode(record)
        assert schema.LABEL_SOURCE.encode() in data and len(data) > len(schema.encode(xml))
        assert schema.decode(data) == record


def test_parse_spec_defaults_a_missing_label_source_to_xml():
    folder = Record(encoded=b"x", height=2, width=3, filename="c/b.png", source_id="c/b.png", objects=(),
                    class_label=4, class_text="c", label_source=schema.LABEL_FROM_FOLDER)
    parsed = tf.io.parse_example(tf.constant([schema.encode(golden_record()), schema.encode(folder)]),
                                 schema.parse_spec())
    assert parsed[schema.LABEL_SOURCE].numpy().tolist() == [b"xml", b"folder"]
    assert parsed[schema.CLASS_LABEL].numpy().tolist() == [1, 4]


def test_check_accepts_a_folder_class_whatever_the_boxes_say():
    """ImageNet labels a train image by its folder: its largest box may name another class."""
    record = Record(**{**golden_record().__dict__, "class_label": 3, "class_text": "n01443537",
                       "label_source": schema.LABEL_FROM_FOLDER})
    schema.check(record, num_classes=4)
    schema.check(Record(**{**record.__dict__, "objects": ()}), num_classes=4)  # no boxes at all
    with pytest.raises(SchemaError, match="from the image's folder"):
        schema.check(Record(**{**record.__dict__, "class_label": 0, "class_text": "background"}))
    with pytest.raises(SchemaError, match="largest box"):  # from a CSV row: the largest box's again
        schema.check(Record(**{**record.__dict__, "label_source": schema.LABEL_FROM_CSV}))
    with pytest.raises(SchemaError, match="no source name"):
        schema.check(Record(**{**record.__dict__, "label_source": "Guess!"}))
    with pytest.raises(SchemaError, match="largest box"):  # another source's boxes: the largest box's rule
        schema.check(Record(**{**record.__dict__, "label_source": "guess"}))


# --- the largest-box rule: writer (pixels) and reader (stored float32) agree -----------------
def _stored(boxes: tuple[Box, ...]) -> tuple[Box, ...]:
    """Boxes as a reader gets them back: through a record's float32 features."""
    record = Record(encoded=b"x", height=1, width=1, filename="a", source_id="a", objects=boxes,
                    class_label=boxes[0].label, class_text=boxes[0].text)
    return schema.decode(schema.encode(record)).objects


def _boxes(sizes, w: int, h: int, at=(0, 0)) -> tuple[Box, ...]:
    x, y = at
    return tuple(Box(x / w, y / h, (x + bw) / w, (y + bh) / h, i + 1, f"n{i + 1}") for i, (bw, bh) in enumerate(sizes))


def _float_split_tie(w: int, h: int):
    """A box size a x b whose twin b x a (same pixel area) has another area once normalised
    and stored as float32: the case where rounding used to break the tie."""
    for a in range(1, 80):
        for b in range(a + 1, 80):
            pair = _stored(_boxes([(a, b), (b, a)], w, h, at=(3, 7)))
            if pair[0].area != pair[1].area:
                return a, b
    raise AssertionError("no rounding-split tie found")


@pytest.mark.parametrize("w, h", [(500, 375), (375, 500), (333, 500)])
def test_ties_in_both_orders_go_to_the_first_box_for_writer_and_reader(w, h):
    a, b = _float_split_tie(w, h)
    for sizes in ([(a, b), (b, a)], [(b, a), (a, b)]):
        boxes = _boxes(sizes, w, h, at=(3, 7))
        pixels = [float(bw * bh) for bw, bh in sizes]
        assert schema.largest_box_label(boxes, pixels) == (1, "n1")  # the writer: exact tie, first wins
        stored = _stored(boxes)
        assert schema.largest_box_candidates(stored) == [0, 1]  # the reader: a tie within rounding
        assert schema.is_largest_box_label(stored, 1, "n1")
    # Without the pixel areas one of the two orders goes to the second box: the old bug.
    naive = {schema.largest_box_label(_stored(_boxes(s, w, h, at=(3, 7))))[1] for s in ([(a, b), (b, a)],
                                                                                          [(b, a), (a, b)])}
    assert naive != {"n1"}


def test_10x20_and_20x10_in_a_non_square_image():
    for order in ([(10, 20), (20, 10)], [(20, 10), (10, 20)]):
        boxes = _boxes(order, 500, 333, at=(41, 17))
        assert schema.largest_box_label(boxes, [200.0, 200.0]) == (1, "n1")
        stored = _stored(boxes)
        assert schema.is_largest_box_label(stored, 1, "n1") and schema.is_largest_box_label(stored, 2, "n2")
        schema.check(Record(encoded=b"x", height=333, width=500, filename="a", source_id="a", objects=stored,
                            class_label=1, class_text="n1", sha256=hashlib.sha256(b"x").hexdigest()))


def test_one_pixel_more_is_never_a_tie():
    """The slack only covers float32 rounding: a box one pixel larger must win, in a large image too."""
    for w, h in ((500, 375), (4000, 3000)):
        boxes = _stored(_boxes([(10, 20), (10, 20), (201, 1)], w, h, at=(5, 5)))
        big = _stored(_boxes([(10, 20), (201, 1)], w, h, at=(5, 5)))
        assert schema.largest_box_candidates(big) == [1]
        assert not schema.is_largest_box_label(big, 1, "n1")
        assert schema.largest_box_candidates(boxes) == [2]


def test_shard_names():
    assert schema.shard_name("train", 3, 64) == "train-00003-of-00064.tfrecord"
    assert schema.parse_shard_name("val-00001-of-00008.tfrecord") == ("val", 1, 8)
    assert schema.parse_shard_name("val-00001-of-00008.tfrecord.idx") is None
    with pytest.raises(ValueError):
        schema.shard_name("train", 64, 64)


def test_writer_side_imports_no_tensorflow():
    """The launcher, the schema and the shard writer load without TensorFlow (~2 s per Beam
    worker); only the readers import it, and the full decode check for a JPEG libjpeg warns about."""
    import subprocess
    import sys

    code = ("import sys, detrec.pipelines.preprocess_cmd, detrec.preprocess.dofns, detrec.preprocess.finalize; "
            "from detrec.core import schema; schema.encode(schema.Record(b'x', 1, 1, 'a', 'a', (), 0, 'background')); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
