"""The Open Images source (#23): a synthetic Open Images V7 tree (synth_formats.to_open_images)
with the quirks real and hostile CSVs have, converted by the real job and read back with
TensorFlow's parser: every image once, its class and every box within 1e-6, or one expected line."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest

from detrec.core import dataset_info
from detrec.preprocess import synth, synth_formats
from tests.conftest import run_preprocess
from tests.test_source_coco import _records


@pytest.fixture(scope="module")
def oi_tree(tmp_path_factory) -> tuple[str, list[dict]]:
    """An Open Images tree of 24 train / 8 validation images, and its train rows after the quirks."""
    base = tmp_path_factory.mktemp("oi")
    made = synth.generate(synth.SynthConfig(out=str(base), train=24, val=8, classes=4, seed=5, width=96, height=80))
    root = synth_formats.to_open_images(made["root"], made["synset_map"], str(base / "oi"))
    path = os.path.join(root, "train-annotations-bbox.csv")
    rows = list(csv.DictReader(open(path, encoding="utf-8")))
    ids = list(dict.fromkeys(r["ImageID"] for r in rows))
    row = lambda image_id, label, x0, x1, y0, y1, group=0: dict(  # noqa: E731
        zip(synth_formats.OI_HEADER, (image_id, "activemil", label, 1, x0, x1, y0, y1, 0, 0, group, 0, 0)))
    rows.append(row(ids[0], "/m/0s03", 0.0, 1.0, 0.0, 1.0, group=1))  # a group, larger than all: kept, never the class
    rows.append(row(ids[1], "/m/0s01", 0.5, 0.4, 0.1, 0.2))  # XMin > XMax: bad_box
    rows.append(row(ids[2], "/m/0s01", 0.1, 1.2, 0.1, 0.2))  # outside [0, 1]: bad_box
    rows.append(row("ffffffffffffffff", "/m/0s01", 0.1, 0.2, 0.1, 0.2))  # no such image: missing_image
    text = io.StringIO()
    writer = csv.DictWriter(text, synth_formats.OI_HEADER, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    text.write('"{0}","xclick","/m/0s01","1","left","0.9","0.1","0.2","0","0","0","0","0"\r\n'.format(ids[3]))
    with open(path, "w", encoding="utf-8-sig", newline="") as f:  # a BOM, quoted fields, CRLF
        f.write(text.getvalue())
    return root, rows


def test_every_open_images_image_once_with_its_class_and_boxes_or_one_error_line(oi_tree, tmp_path):
    root, rows = oi_tree
    out = str(tmp_path / "out")
    assert run_preprocess(root, out, "--splits", "train,val") == 0
    info = dataset_info.load(out)
    with open(os.path.join(root, synth_formats.OI_CLASSES), encoding="utf-8") as f:
        classes = list(csv.reader(f))[1:]
    assert [(c.synset, c.name) for c in info.classes[1:]] == [tuple(c) for c in classes]  # the file's order
    label_of = {mid: n for n, (mid, _) in enumerate(classes, start=1)}
    errors = [json.loads(line) for line in open(os.path.join(out, "errors-train.jsonl"), encoding="utf-8")]
    by_code = {}
    for e in errors:
        by_code.setdefault(e["code"], []).append(e)
    files = {os.path.splitext(n)[0] for n in os.listdir(os.path.join(root, "train"))}
    boxed = {r["ImageID"] for r in rows}
    assert sorted(by_code) == ["bad_box", "bad_csv_line", "missing_image", "no_boxes"], errors
    assert len(by_code["bad_box"]) == 2 and len(by_code["bad_csv_line"]) == 1 and len(by_code["missing_image"]) == 1
    assert {os.path.basename(e["image"])[:-4] for e in by_code["no_boxes"]} == files - boxed != set()
    bad = {e["annotation"].rsplit(":", 1)[-1] for e in by_code["bad_box"]}

    records = _records(out, "train")
    assert set(records) == (files & boxed) - bad
    for image_id, rec in records.items():
        mine = [r for r in rows if r["ImageID"] == image_id]
        got = list(zip(*(rec[f"image/object/bbox/{k}"] for k in ("xmin", "ymin", "xmax", "ymax"))))
        expect = [tuple(float(r[k]) for k in ("XMin", "YMin", "XMax", "YMax")) for r in mine]
        assert len(got) == len(expect) and all(abs(a - b) < 1e-6 for g, e in zip(got, expect) for a, b in zip(g, e))
        assert list(rec["image/object/class/label"]) == [label_of[r["LabelName"]] for r in mine]
        group = [int(r["IsGroupOf"]) for r in mine]
        assert list(rec["image/object/is_crowd"]) == (group if any(group) else [])
        counted = [r for r in mine if not int(r["IsGroupOf"])]
        largest = max(counted, key=lambda r: (float(r["XMax"]) - float(r["XMin"])) * (float(r["YMax"]) - float(r["YMin"])))
        assert rec["image/class/label"] == label_of[largest["LabelName"]]
    assert info.splits["val"].num_examples == len(_records(out, "val")) > 0  # `val` reads validation/


def test_validation_is_also_read_by_its_own_name(oi_tree, tmp_path):
    root, _ = oi_tree
    out = str(tmp_path / "out")
    assert run_preprocess(root, out, "--splits", "validation") == 0
    assert dataset_info.load(out).splits["validation"].num_examples > 0
