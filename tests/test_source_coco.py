"""The COCO source (#23): a synthetic COCO tree (synth_formats.to_coco) with the quirks real and
hostile files have, converted by the real job and read back with TensorFlow's own parser: every
image once, with its class and every box within 1e-6, or one expected error line."""

from __future__ import annotations

import io
import json
import math
import os

import pytest
import tensorflow as tf

from detrec.core import dataset_info
from detrec.preprocess import json_stream, synth, synth_formats
from tests.conftest import run_preprocess


@pytest.fixture(scope="module")
def coco_tree(tmp_path_factory) -> tuple[str, dict]:
    """A COCO tree of 24 train / 8 val synthetic images, and its train JSON after the quirks."""
    base = tmp_path_factory.mktemp("coco")
    made = synth.generate(synth.SynthConfig(out=str(base), train=24, val=8, classes=4, seed=3, width=96, height=80))
    root = synth_formats.to_coco(made["root"], made["synset_map"], str(base / "coco"))
    path = os.path.join(root, "annotations", "instances_train2017.json")
    doc = json.load(open(path, encoding="utf-8"))
    images = doc["images"]
    by_image = {}
    for ann in doc["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    boxed = [im for im in images if by_image.get(im["id"])]
    first, second, third, fourth, fifth = boxed[:5]
    # A crowd box larger than anything else: kept and marked, never the class.
    w, h = first["width"], first["height"]
    doc["annotations"].append({"id": 9001, "image_id": first["id"], "category_id": 7, "iscrowd": 1,
                               "bbox": [0, 0, w, h], "segmentation": {"counts": [1, 2], "size": [h, w]}})
    # A box a little past the edge (COCO's rounding): clipped, kept.
    doc["annotations"].append({"id": 9002, "image_id": second["id"], "category_id": 1, "iscrowd": 0,
                               "bbox": [2.0, 3.0, second["width"] - 1.5, 4.0]})
    # Bad boxes: no area; outside the image; not finite.
    doc["annotations"].append({"id": 9003, "image_id": third["id"], "category_id": 1, "bbox": [1, 1, 0, 5]})
    doc["annotations"].append({"id": 9004, "image_id": fourth["id"], "category_id": 1,
                               "bbox": [fourth["width"] + 5, 1, 3, 3]})
    doc["annotations"].append({"id": 9005, "image_id": fifth["id"], "category_id": 1, "bbox": [1, 1, math.inf, 5]})
    # An annotation of an image the file does not list; an entry that is not COCO's.
    doc["annotations"].append({"id": 9006, "image_id": 777777, "category_id": 1, "bbox": [1, 1, 2, 2]})
    doc["annotations"].append({"id": 9007, "image_id": first["id"], "category_id": 1, "bbox": "1 1 2 2"})
    # A file_name given with its folder, as some COCO-format tools write it: the same file.
    images[1]["file_name"] = "train2017/" + images[1]["file_name"]
    # An image without annotations: background. One listed without its file; a file not listed.
    lonely = images[-1]
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != lonely["id"]]
    images.append({"id": 424242, "file_name": "gone.jpg", "width": 10, "height": 10})
    os.link(os.path.join(root, images[1]["file_name"]), os.path.join(root, "train2017", "stray.jpg"))
    with open(path, "wb") as f:  # with a BOM and the categories first, as some tools write them
        f.write(b"\xef\xbb\xbf" + json.dumps({"categories": doc.pop("categories"), **doc}).encode())
    doc["categories"] = json.load(open(os.path.join(root, "annotations", "instances_val2017.json")))["categories"]
    return root, doc


def _records(out: str, split: str) -> dict[str, dict]:
    """source id -> the record's fields, parsed by TensorFlow with the OD API's keys."""
    spec = {"image/source_id": tf.io.FixedLenFeature([], tf.string),
            "image/class/label": tf.io.FixedLenFeature([], tf.int64),
            "image/class/text": tf.io.FixedLenFeature([], tf.string),
            "image/detrec/label_source": tf.io.FixedLenFeature([], tf.string, default_value="xml"),
            **{f"image/object/bbox/{k}": tf.io.VarLenFeature(tf.float32) for k in ("xmin", "ymin", "xmax", "ymax")},
            "image/object/class/label": tf.io.VarLenFeature(tf.int64),
            "image/object/is_crowd": tf.io.VarLenFeature(tf.int64)}
    info = dataset_info.load(out)
    files = [os.path.join(out, s.file) for s in info.splits[split].shards]
    out_records = {}
    for serialized in tf.data.TFRecordDataset(files):
        r = tf.io.parse_single_example(serialized, spec)
        dense = {k: (tf.sparse.to_dense(v) if isinstance(v, tf.sparse.SparseTensor) else v).numpy() for k, v in r.items()}
        source_id = dense.pop("image/source_id").decode()
        assert source_id not in out_records  # each image once
        out_records[source_id] = dense
    return out_records


def test_every_coco_image_once_with_its_class_and_boxes_or_one_error_line(coco_tree, tmp_path):
    root, doc = coco_tree
    out = str(tmp_path / "out")
    assert run_preprocess(root, out, "--splits", "train,val") == 0
    info = dataset_info.load(out)
    ids = sorted(c["id"] for c in doc["categories"])
    assert [(c.synset, c.name) for c in info.classes[1:]] == [
        (str(i), next(c["name"] for c in doc["categories"] if c["id"] == i)) for i in ids]
    label_of = {cid: n for n, cid in enumerate(ids, start=1)}
    records = _records(out, "train")
    errors = [json.loads(line) for line in open(os.path.join(out, "errors-train.jsonl"), encoding="utf-8")]
    codes = sorted(e["code"] for e in errors)
    assert codes == sorted(["bad_box"] * 3 + ["bad_annotation", "annotation_without_image", "missing_image",
                                                "image_not_listed"]), errors

    anns = {}
    for ann in doc["annotations"]:
        if isinstance(ann.get("bbox"), list):
            anns.setdefault(ann["image_id"], []).append(ann)
    bad = {e["annotation"].rsplit(" ", 1)[-1] for e in errors if e["code"] == "bad_box"}
    expected_ids = {str(im["id"]) for im in doc["images"] if im["id"] != 424242} - bad
    assert set(records) == expected_ids
    for im in doc["images"]:
        if str(im["id"]) not in records:
            continue
        rec, boxes = records[str(im["id"])], anns.get(im["id"], [])
        w, h = im["width"], im["height"]
        expect = [(max(0, a["bbox"][0] / w), max(0, a["bbox"][1] / h), min(1, (a["bbox"][0] + a["bbox"][2]) / w),
                   min(1, (a["bbox"][1] + a["bbox"][3]) / h)) for a in boxes]
        got = list(zip(*(rec[f"image/object/bbox/{k}"] for k in ("xmin", "ymin", "xmax", "ymax"))))
        assert len(got) == len(expect)
        for g, e in zip(got, expect):
            assert all(abs(a - b) < 1e-6 for a, b in zip(g, e)), (im["id"], g, e)
        assert list(rec["image/object/class/label"]) == [label_of[a["category_id"]] for a in boxes]
        crowd = [a.get("iscrowd", 0) for a in boxes]
        assert list(rec["image/object/is_crowd"]) == (crowd if any(crowd) else [])
        counted = [a for a in boxes if not a.get("iscrowd")]
        largest = max(counted, key=lambda a: a["bbox"][2] * a["bbox"][3], default=None)
        assert rec["image/class/label"] == (label_of[largest["category_id"]] if largest else 0), im["id"]
        assert rec["image/detrec/label_source"] == b"json"
    assert info.splits["train"].label_sources == {"json": len(records)}
    assert info.splits["val"].num_examples == len(_records(out, "val")) == 8


def test_the_categories_are_the_same_read_from_the_files_end_or_streamed(coco_tree):
    """val's JSON ends with its categories (read from its last MB), train's starts with them
    (streamed): one class list either way, by ascending COCO id."""
    from detrec.preprocess import sources

    root, doc = coco_tree
    last = sources.get("coco").vocabulary({"val": sources.SplitSource(root, "val", "coco")}, ["val"])
    first = sources.get("coco").vocabulary({"train": sources.SplitSource(root, "train", "coco")}, ["train"])
    assert (last.synsets, last.names) == (first.synsets, first.names)
    assert [int(s) for s in first.synsets] == sorted(c["id"] for c in doc["categories"])


def test_the_json_is_read_one_element_at_a_time_whatever_its_layout():
    """Keys in any order, a BOM, nested values passed over, every element once; a broken file
    is one error naming where."""
    doc = {"info": {"a": [1, {"b": []}]}, "annotations": [{"id": i, "bbox": [i, 1.5e-3, 2, 3]} for i in range(3000)],
           "images": [{"id": i} for i in range(500)], "licenses": []}
    raw = b"\xef\xbb\xbf" + json.dumps(doc, indent=1).encode()
    for block in (5, 1 << 20):
        json_stream.BLOCK, saved = block, json_stream.BLOCK
        try:
            got = list(json_stream.top_level_elements(io.BytesIO(raw), {"images", "annotations"}))
        finally:
            json_stream.BLOCK = saved
        assert [e for k, e in got if k == "annotations"] == doc["annotations"]
        assert [e for k, e in got if k == "images"] == doc["images"]
    for broken in (b"[]", b'{"images": [1, 2', b'{"images": [1 2]}', b'{"a": 1} trailing'):
        with pytest.raises(json_stream.JsonStreamError, match="at character"):
            list(json_stream.top_level_elements(io.BytesIO(broken), {"images"}))
