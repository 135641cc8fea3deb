"""Unlabelled splits (issue #24): a split whose tree gives no labels at all (CLS-LOC test, a folder
tree's test/*.jpg) becomes records without a class (label_source none, no boxes), said so in
dataset_info.json, refused for training by `check_labelled`, read by decode, parse_spec and inspect;
a labelled split's record without a class stays an error.

Two real Beam runs (a CLS-LOC tree, a folder tree); the expected records are written down with
each tree, not computed by detrec."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import io
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from detrec.core import dataset_info, schema
from detrec.core.dataset_info import DatasetInfo, ShardInfo, SplitInfo
from detrec.core.errors import UserError
from detrec.inspector import contact_sheet
from detrec.pipelines import cli
from detrec.preprocess import sources
from tests import image_factory as f
from tests.conftest import run_preprocess

W, H = 64, 48
TENCH, GOLDFISH = "n01440764", "n01443537"
MAPPING = f"{GOLDFISH} goldfish\n{TENCH} tench\n"  # ids: goldfish 1, tench 2
TEST_IDS = [f"ILSVRC2012_test_0000000{i}" for i in range(1, 5)]
BROKEN_TEST = "ILSVRC2012_test_00000009"


def write(path, data: bytes | str) -> None:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def raw_features(out: str, split: str) -> list[dict]:
    """Each record of a split as {key: feature}, read with TensorFlow's reader and protobuf class."""
    info = dataset_info.load(out)
    files = [os.path.join(out, s.file) for s in info.splits[split].shards]
    return [dict(tf.train.Example.FromString(r.numpy()).features.feature) for r in tf.data.TFRecordDataset(files)]


def text(feature) -> str:
    return feature.bytes_list.value[0].decode()


def run_quietly(root: str, out: str, *extra: str) -> str:
    """Runs preprocess (must succeed) and returns what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run_preprocess(root, out, *extra) == 0
    return printed.getvalue()


# --- CLS-LOC as Kaggle ships it: train/val labelled, test/ without labels -------------------------
@pytest.fixture(scope="module")
def kaggle(tmp_path_factory) -> str:
    top = tmp_path_factory.mktemp("kaggle")
    data = top / "ILSVRC/Data/CLS-LOC"
    for i, sid in enumerate([f"{TENCH}/{TENCH}_1", f"{TENCH}/{TENCH}_2", f"{GOLDFISH}/{GOLDFISH}_1"]):
        write(data / "train" / f"{sid}.JPEG", f.jpeg(W, H, seed=i))
    write(top / f"ILSVRC/Annotations/CLS-LOC/train/{TENCH}/{TENCH}_1.xml",
          f"<annotation><object><name>{TENCH}</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax>"
          "<ymax>9</ymax></bndbox></object></annotation>")
    write(data / "val/ILSVRC2012_val_00000001.JPEG", f.jpeg(W, H, seed=10))
    write(top / "LOC_val_solution.csv", f"ImageId,PredictionString\nILSVRC2012_val_00000001,{GOLDFISH} 0 0 30 20\n")
    for i, stem in enumerate(TEST_IDS):
        write(data / "test" / f"{stem}.JPEG", f.jpeg(W, H, seed=20 + i))
    write(data / "test" / f"{BROKEN_TEST}.JPEG", f.truncated_jpeg(W, H))
    # Kaggle's only file about test: its ImageIds, no labels. It must not label anything.
    write(top / "LOC_sample_submission.csv", "ImageId,PredictionString\n"
          + "".join(f"{stem},{TENCH} 0 0 10 10\n" for stem in TEST_IDS))
    write(top / "LOC_synset_mapping.txt", MAPPING)
    return str(top / "ILSVRC")


@pytest.fixture(scope="module")
def kaggle_run(kaggle, tmp_path_factory) -> tuple[str, str]:
    out = str(tmp_path_factory.mktemp("kaggle_out"))
    printed = run_quietly(kaggle, out, "--splits", "train,val,test", "--num-shards", "train=1,val=1,test=2")
    return out, printed


def test_cls_loc_test_records_carry_no_class(kaggle, kaggle_run):
    out, _ = kaggle_run
    records = raw_features(out, "test")
    assert sorted(text(r[schema.SOURCE_ID]) for r in records) == TEST_IDS  # each image exactly once
    for r in records:
        assert schema.CLASS_LABEL not in r and schema.CLASS_TEXT not in r
        assert text(r[schema.LABEL_SOURCE]) == "none"
        assert list(r[schema.XMIN].float_list.value) == []
    decoded = [schema.decode(p.numpy()) for p in tf.data.TFRecordDataset(
        [os.path.join(out, s.file) for s in dataset_info.load(out).splits["test"].shards])]
    assert {(d.class_label, d.class_text, d.objects, d.label_source) for d in decoded} == {(None, "", (), "none")}
    # The broken image is one error line, as in any split.
    with open(os.path.join(out, "errors-test.jsonl")) as fh:
        lines = [json.loads(line) for line in fh]
    assert [line["image"] for line in lines] == [os.path.join(kaggle, "Data/CLS-LOC/test", f"{BROKEN_TEST}.JPEG")]
    # The labelled splits are as ever: folder classes in train, the CSV's in val.
    train = {text(r[schema.SOURCE_ID]): r[schema.CLASS_LABEL].int64_list.value[0] for r in raw_features(out, "train")}
    assert train == {f"{TENCH}/{TENCH}_1": 2, f"{TENCH}/{TENCH}_2": 2, f"{GOLDFISH}/{GOLDFISH}_1": 1}
    assert [r[schema.CLASS_LABEL].int64_list.value[0] for r in raw_features(out, "val")] == [1]


def test_dataset_info_says_test_is_unlabelled_and_check_labelled_refuses_it(kaggle_run):
    out, printed = kaggle_run
    with open(os.path.join(out, schema.DATASET_INFO)) as fh:
        raw = json.load(fh)["splits"]
    assert raw["test"]["labelled"] is False and "labelled" not in raw["train"] and "labelled" not in raw["val"]
    info = dataset_info.load(out)
    assert info.layout == "cls-loc"
    test = info.splits["test"]
    assert (test.num_examples, test.labelled, dict(test.label_sources), dict(test.box_sources)) == (
        4, False, {"none": 4}, {"none": 4})
    assert [c.synset for c in info.classes] == ["background", GOLDFISH, TENCH]  # the vocabulary is unaffected
    with open(os.path.join(out, schema.LABELS_FILE)) as fh:
        assert [line.split("\t")[1] for line in fh.read().splitlines()] == ["background", GOLDFISH, TENCH]
    with pytest.raises(UserError) as caught:
        dataset_info.check_labelled(info, "test", out, "--val-split")
    assert str(caught.value) == (f"--val-split: split test of {out} is unlabelled (no class in its records): train "
                                 f"and validate on labelled splits; `detrec predict --data {out} --split test` "
                                 "predicts it")
    dataset_info.check_labelled(info, "train", out, "--train-split")  # labelled: no error
    dataset_info.check_labelled(info, "val", out, "--val-split")
    assert "test     unlabelled: no class, no boxes (for predict)" in printed.splitlines()
    assert any(line.startswith("test ") and line.split()[1:3] == ["4", "1"] for line in printed.splitlines())


def test_inspect_verifies_the_unlabelled_split(kaggle_run, tmp_path, capsys):
    out, _ = kaggle_run
    sheet = str(tmp_path / "sheet.png")
    assert cli.main(["inspect", "--verify", "--json", "--show", "9", "--contact-sheet", sheet, "--grid", "4x2",
                     out]) == 0
    report = json.loads(capsys.readouterr().out)
    test = report["splits"]["test"]
    counts = (test["num_examples"], test["expected_examples"], test["records_read"], test["without_class"])
    assert counts == (4, 4, 4, 4)
    assert (test["labelled"], test["labels"], test["label_sources_counted"]) == (False, [], {"none": 4})
    assert report["splits"]["train"]["labelled"] is True and report["splits"]["train"]["without_class"] == 0
    assert [row["images"] for row in report["splits"]["train"]["labels"]] == [0, 1, 2]
    shown = [r for r in report["records"] if r["split"] == "test"]
    assert shown and all((r["class_label"], r["class_name"], r["label_source"]) == (None, "", "none") for r in shown)
    assert report["datasets"][0]["cross_check_ok"] is True
    assert any(cell["filename"].startswith("ILSVRC2012_test_") for cell in report["contact_sheet"]["cells"])
    assert cli.main(["inspect", "--verify", out]) == 0
    rendered = capsys.readouterr().out
    assert "  dataset_info.json: unlabelled: no class, no boxes (for predict)" in rendered
    assert "  unlabelled: 4 records without a class (no class histogram)" in rendered


# --- an image-folder tree: train/<class>/*.jpg and test/*.jpg --------------------------------------
FOLDER_TEST = ["t1.jpg", "t2.jpg", "t3.png"]


@pytest.fixture(scope="module")
def flowers(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("flowers")
    write(root / "train/daisy/a.jpg", f.jpeg(W, H, seed=1))
    write(root / "train/daisy/b.jpg", f.jpeg(W, H, seed=2))
    write(root / "train/rose/c.jpg", f.jpeg(W, H, seed=3))
    write(root / "test/t1.jpg", f.jpeg(W, H, seed=4))
    write(root / "test/t2.jpg", f.jpeg(W, H, seed=5))
    write(root / "test/t3.png", f.png(W, H))
    write(root / "test/notes.txt", "not an image")
    return str(root)


@pytest.fixture(scope="module")
def flowers_out(flowers, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("flowers_out"))
    run_quietly(flowers, out, "--splits", "train,test", "--num-shards", "train=1,test=1")
    return out


def test_folder_tree_test_images_are_records_without_a_class(flowers_out):
    info = dataset_info.load(flowers_out)
    assert info.layout == "folder" and [c.synset for c in info.classes] == ["background", "daisy", "rose"]
    assert (info.splits["train"].labelled, info.splits["test"].labelled) == (True, False)
    records = raw_features(flowers_out, "test")
    assert sorted(text(r[schema.SOURCE_ID]) for r in records) == FOLDER_TEST
    assert all(schema.CLASS_LABEL not in r and text(r[schema.LABEL_SOURCE]) == "none" for r in records)
    assert info.splits["test"].converted_images == 1  # the PNG, as in any split
    with open(os.path.join(flowers_out, "errors-test.jsonl")) as fh:
        assert fh.read() == ""
    assert cli.main(["inspect", "--verify", flowers_out]) == 0


def _unlabel_first_record(out: str) -> str:
    """Rewrites train's shard with its record 0 made classless (label_source none), keeping
    dataset_info.json's size and sha256 true: only the record itself is wrong. Returns the shard."""
    info = dataset_info.load(out)
    shard = info.splits["train"].shards[0]
    path = os.path.join(out, shard.file)
    payloads = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    first = dataclasses.replace(schema.decode(payloads[0]), class_label=None, class_text="", label_source="none")
    with tf.io.TFRecordWriter(path) as writer:
        for payload in [schema.encode(first), *payloads[1:]]:
            writer.write(payload)
    os.remove(path + schema.INDEX_SUFFIX)  # stale now; a missing index is only a note
    with open(path, "rb") as fh:
        data = fh.read()
    with open(os.path.join(out, schema.DATASET_INFO)) as fh:
        raw = json.load(fh)
    raw["splits"]["train"]["shards"][0].update(num_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    with open(os.path.join(out, schema.DATASET_INFO), "w") as fh:
        json.dump(raw, fh)
    return path


def test_a_labelled_splits_record_without_a_class_is_still_caught(flowers_out, tmp_path, capsys):
    out = str(tmp_path / "ds")
    shutil.copytree(flowers_out, out)
    path = _unlabel_first_record(out)
    for flags in (["--verify"], []):
        assert cli.main(["inspect", "--json", *flags, out]) == 1
        problems = json.loads(capsys.readouterr().out)["problems"]
        assert [(p["file"], p["record"]) for p in problems] == [(path, 0)]
        assert "no `image/class/label` (`image/detrec/label_source` none) in a record of a labelled split" in \
            problems[0]["reason"]


# --- the contract, without Beam ------------------------------------------------------------------
def test_sources_decide_per_split(kaggle, flowers, tmp_path):
    assert [sources.resolve(kaggle, s, "auto").labelled for s in ("train", "val", "test")] == [True, True, False]
    assert [sources.resolve(flowers, s, "auto").labelled for s in ("train", "test")] == [True, False]
    # A CLS-LOC train of class folders alone (no XML, no CSV) is labelled by its folders.
    write(tmp_path / "bare/Data/CLS-LOC/train/n1/n1_1.JPEG", f.jpeg())
    assert sources.resolve(str(tmp_path / "bare"), "train", "cls-loc").labelled
    # Images alone with no class folders anywhere in the tree: no folder dataset (as before).
    write(tmp_path / "alone/test/a.jpg", f.jpeg())
    with pytest.raises(ValueError, match=r"no class folders \(expected test/<class>/<image>\)"):
        sources.resolve(str(tmp_path / "alone"), "test", "folder")


def test_schema_round_trips_a_record_without_a_class():
    record = schema.Record(encoded=f.jpeg(8, 8), height=8, width=8, filename="t.JPEG", source_id="t", objects=(),
                           class_label=None, class_text="", label_source=schema.LABEL_NONE)
    payload = schema.encode(record)
    keys = set(tf.train.Example.FromString(payload).features.feature)
    assert schema.CLASS_LABEL not in keys and schema.CLASS_TEXT not in keys and schema.LABEL_SOURCE in keys
    assert schema.decode(payload) == record
    schema.check(record)
    schema.check(record, labelled=False)
    with pytest.raises(schema.SchemaError, match="in a record of a labelled split"):
        schema.check(record, labelled=True)
    labelled = dataclasses.replace(record, class_label=0, class_text=schema.BACKGROUND_TEXT,
                                   label_source=schema.LABEL_FROM_XML)
    with pytest.raises(schema.SchemaError, match="`image/class/label` 0 in a record of an unlabelled split"):
        schema.check(labelled, labelled=False)
    # Only a record saying label_source none may lack its class: any other is a missing feature, as ever.
    with pytest.raises(schema.SchemaError, match="missing feature `image/class/label`"):
        schema.decode(schema.encode(dataclasses.replace(record, label_source=schema.LABEL_FROM_FOLDER)))
    with pytest.raises(schema.SchemaError, match="label_source` 'none' with `image/class/label` 0"):
        schema.check(dataclasses.replace(labelled, label_source=schema.LABEL_NONE))
    boxed = dataclasses.replace(record, objects=(schema.Box(0.1, 0.1, 0.5, 0.5, 1, "n1"),))
    with pytest.raises(schema.SchemaError, match="1 boxes in a record without a class"):
        schema.check(boxed)
    batch = tf.constant([payload, schema.encode(labelled)])
    parsed = tf.io.parse_example(batch, schema.parse_spec(labelled=False))
    assert parsed[schema.CLASS_LABEL].numpy().tolist() == [schema.NO_CLASS_ID, 0] == [-1, 0]
    assert parsed[schema.CLASS_TEXT].numpy().tolist() == [b"", b"background"]
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.parse_example(batch, schema.parse_spec())  # training reads labelled splits: still an error


def test_dataset_info_labelled_key():
    def info(labelled: bool) -> DatasetInfo:
        split = SplitInfo(1, (ShardInfo("test-00000-of-00001.tfrecord", 1, 10, "ab"),), labelled=labelled)
        return DatasetInfo(1, (), {"test": split})

    assert "labelled" not in info(True).to_json()  # a labelled dataset's file is as it was
    raw = json.loads(info(False).to_json())
    assert raw["splits"]["test"]["labelled"] is False
    assert DatasetInfo.from_json(json.dumps(raw)).splits["test"].labelled is False
    del raw["splits"]["test"]["labelled"]
    assert DatasetInfo.from_json(json.dumps(raw)).splits["test"].labelled is True  # older files: labelled
    raw["splits"]["test"]["labelled"] = 0
    with pytest.raises(UserError, match="split 'test': `labelled` is not true or false"):
        DatasetInfo.from_json(json.dumps(raw))
    with pytest.raises(UserError, match="has no split 'val'"):
        dataset_info.check_labelled(info(False), "val", "out", "--val-split")


def test_contact_sheet_names_no_class_for_a_record_without_one():
    grey = f.encode(np.full((32, 32, 3), 128, np.uint8), quality=95)
    record = schema.Record(encoded=grey, height=32, width=32, filename="t.jpg", source_id="t", objects=(),
                           class_label=None, class_text="", label_source=schema.LABEL_NONE)
    named = dataclasses.replace(record, class_label=1, class_text="rose", label_source=schema.LABEL_FROM_FOLDER)

    def caption_pixels(r: schema.Record) -> int:
        sheet, placed = contact_sheet.contact_sheet([contact_sheet.Sample("s", 0, r)], 1, 1, {1: "rose"}, 64)
        assert len(placed) == 1
        pixels = np.asarray(sheet).astype(int)
        return int(((pixels[..., 0] > 150) & (pixels[..., 2] < 100)).sum())  # yellow caption on grey

    assert caption_pixels(named) > 0 and caption_pixels(record) == 0



def test_train_refuses_an_unlabelled_val_split_before_building_anything(kaggle_run, tmp_path, capsys):
    import shutil

    from detrec.pipelines import cli

    out = str(tmp_path / "data")
    shutil.copytree(kaggle_run[0], out)
    path = os.path.join(out, schema.DATASET_INFO)
    with open(path) as fh:
        doc = json.load(fh)
    doc["splits"]["val"] = doc["splits"].pop("test")  # the test shards as the val split
    with open(path, "w") as fh:
        json.dump(doc, fh)
    assert cli.main(["train", "--data", out, "--model-dir", str(tmp_path / "m"), "--epochs", "1",
                     "--batch-size", "2", "--image-size", "64", "--decoder", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"detrec train: error: --data: split val of {out} is unlabelled (no class in its records): train "
                   f"and validate on labelled splits; `detrec predict --data {out} --split val` predicts it")
    assert not os.path.exists(tmp_path / "m")  # refused before the run folder was made
