"""ImageNet CLS-LOC (as the Kaggle download ships it) and image-folder trees, end to end:
real Beam runs on small trees, every shard read back with TensorFlow's own reader, every image
checked to be there exactly once with the class its tree gives it (or to be one error line).

The expected classes are written down with each tree, not computed by detrec."""

from __future__ import annotations

import collections
import glob
import hashlib
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from detrec.core import dataset_info, schema
from tests import image_factory as f
from tests.conftest import run_preprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
W, H = 64, 48  # every image's size, unless said otherwise


def write(path, data: bytes | str) -> None:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def xml(*boxes: tuple[str, int, int, int, int], size=(W, H)) -> bytes:
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                   f"<ymax>{d}</ymax></bndbox></object>" for n, a, b, c, d in boxes)
    return f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>{objs}</annotation>".encode()


def read_split(out: str, split: str) -> list[schema.Record]:
    """Every record of a split, with TensorFlow's reader, from the shards dataset_info.json lists."""
    info = dataset_info.load(out)
    files = [os.path.join(out, s.file) for s in info.splits[split].shards]
    return [schema.decode(r.numpy()) for r in tf.data.TFRecordDataset(files)]


def errors(out: str, split: str) -> dict[str, str]:
    """image-or-label-file path -> reason code, from errors-<split>.jsonl."""
    with open(os.path.join(out, schema.errors_name(split))) as fh:
        lines = [json.loads(line) for line in fh]
    return {line["image"] or line["annotation"]: line["code"] for line in lines}


def digests(out: str) -> dict[str, str]:
    return {os.path.basename(p): hashlib.sha256(open(p, "rb").read()).hexdigest()
            for p in sorted(glob.glob(os.path.join(out, "*.tfrecord*")))}


# --- CLS-LOC, as Kaggle ships it ---------------------------------------------------------------
TENCH, GOLDFISH, SHARK, TIGER = "n01440764", "n01443537", "n01484850", "n01491361"
MAPPING = (f"{SHARK} great white shark, white shark\n{TENCH} tench, Tinca tinca\n"
           f"{GOLDFISH} goldfish, Carassius auratus\n{TIGER} tiger shark, Galeocerdo cuvieri\n")  # not sorted
IDS = {SHARK: 1, TENCH: 2, GOLDFISH: 3, TIGER: 4}  # the file's order

# train: source id -> (XML boxes or None, expected class, boxes in the record, boxes from)
TRAIN = {
    f"{TENCH}/{TENCH}_1": ([(TENCH, 5, 5, 40, 40)], TENCH, 1, "xml"),
    f"{TENCH}/{TENCH}_2": ([(TENCH, 0, 0, 10, 10), (GOLDFISH, 0, 0, 50, 40)], TENCH, 2, "xml"),  # mismatch
    f"{TENCH}/{TENCH}_3": (None, TENCH, 1, "csv"),
    f"{TENCH}/{TENCH}_4": (None, TENCH, 0, "none"),
    f"{TENCH}/{TENCH}_5": (None, TENCH, 0, "none"),  # a PNG named .JPEG
    f"{GOLDFISH}/{GOLDFISH}_1": (None, GOLDFISH, 0, "none"),
    f"{GOLDFISH}/{GOLDFISH}_2": (None, GOLDFISH, 0, "none"),
    f"{GOLDFISH}/{GOLDFISH}_3": (None, GOLDFISH, 0, "none"),
    f"{GOLDFISH}/{GOLDFISH}_4": ([(GOLDFISH, 3, 7, 13, 27), (TENCH, 3, 7, 23, 17)], GOLDFISH, 2, "xml"),  # a tie
    f"{SHARK}/{SHARK}_1": ([(SHARK, 1, 1, 30, 30)], SHARK, 1, "xml"),  # its CSV row (2 boxes) is not used
}
TRAIN_CSV = ("ImageId,PredictionString\n"
             f"{TENCH}_3,{TENCH} 2 3 20 30 \n"
             f"{SHARK}_1,{SHARK} 1 1 30 30 {SHARK} 2 2 3 3\n"
             f"{TIGER}_77,{TIGER} 1 1 5 5\n"  # an image this tree does not have: not an error
             "this line has no comma\n")

# val (flat): stem -> (XML boxes, CSV PredictionString, expected class or error code, label source)
VAL = {
    "ILSVRC2012_val_00000001": ([(GOLDFISH, 0, 0, 60, 40), (TENCH, 0, 0, 10, 10)], None, GOLDFISH, "xml"),
    "ILSVRC2012_val_00000002": (None, f"{SHARK} 0 0 20 20 {TENCH} 0 0 30 30", TENCH, "csv"),
    "ILSVRC2012_val_00000003": (None, f"{TIGER} 3 7 8 8 {SHARK} 3 7 4 12", TIGER, "csv"),  # 5x1 vs 1x5: tie
    "ILSVRC2012_val_00000004": (None, None, "missing_annotation", None),
    "ILSVRC2012_val_00000005": (None, f"{TENCH} 1 2 3", "bad_csv_row", None),
    "ILSVRC2012_val_00000006": ([("n00000000", 0, 0, 5, 5)], None, "unknown_synset", None),
    "ILSVRC2012_val_00000007": (None, "", "empty_csv_row", None),  # a row that names no box
}


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory) -> str:
    """The Kaggle download's folder: ILSVRC/ and the LOC_* files beside it."""
    top = tmp_path_factory.mktemp("imagenet")
    root = top / "ILSVRC"
    for i, (sid, (boxes, *_)) in enumerate(TRAIN.items()):
        image = f.png(W, H) if sid.endswith("_5") else f.jpeg(W, H, seed=i)
        write(root / "Data/CLS-LOC/train" / f"{sid}.JPEG", image)
        if boxes:
            write(root / "Annotations/CLS-LOC/train" / f"{sid}.xml", xml(*boxes))
    write(root / "Data/CLS-LOC/train/n09999999/n09999999_1.JPEG", f.jpeg(W, H))  # not in the mapping
    rows = ["ImageId,PredictionString"]
    for i, (stem, (boxes, csv, *_)) in enumerate(VAL.items()):
        write(root / "Data/CLS-LOC/val" / f"{stem}.JPEG", f.jpeg(W, H, seed=100 + i))
        if boxes:
            write(root / "Annotations/CLS-LOC/val" / f"{stem}.xml", xml(*boxes))
        if csv is not None:
            rows.append(f"{stem},{csv}")
    rows.append(f"ILSVRC2012_val_00000002,{TENCH} 0 0 1 1")  # the same image again
    write(top / "LOC_val_solution.csv", "\n".join(rows) + "\n")
    write(top / "LOC_train_solution.csv", TRAIN_CSV)
    write(top / "LOC_synset_mapping.txt", MAPPING)
    return str(top)


@pytest.fixture(scope="module")
def kaggle_out(kaggle, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("imagenet_out"))
    assert run_preprocess(os.path.join(kaggle, "ILSVRC"), out, "--layout", "cls-loc",
                          "--num-shards", "train=3,val=2") == 0
    return out


def test_every_train_image_is_kept_once_with_its_folders_class(kaggle, kaggle_out):
    records = read_split(kaggle_out, "train")
    by_id = {r.source_id: r for r in records}
    assert len(records) == len(by_id) == len(TRAIN)
    for sid, (_, cls, num_boxes, _) in TRAIN.items():
        r = by_id[sid]
        assert (r.class_text, r.class_label, r.label_source) == (cls, IDS[cls], "folder"), sid
        assert len(r.objects) == num_boxes, sid
        assert r.filename == sid + ".JPEG"
    assert [o.text for o in by_id[f"{TENCH}/{TENCH}_2"].objects] == [TENCH, GOLDFISH]
    csv_box = by_id[f"{TENCH}/{TENCH}_3"].objects[0]
    assert (csv_box.xmin, csv_box.ymax) == pytest.approx((2 / W, 30 / H))  # CSV pixels over the decoded image
    assert by_id[f"{TENCH}/{TENCH}_5"].converted_from == "png"
    root = os.path.join(kaggle, "ILSVRC")
    assert errors(kaggle_out, "train") == {
        os.path.join(root, "Data/CLS-LOC/train/n09999999/n09999999_1.JPEG"): "unknown_class",
        os.path.join(kaggle, "LOC_train_solution.csv") + ":5": "bad_csv_line",
    }


def test_val_classes_come_from_the_xml_or_else_the_csv(kaggle, kaggle_out):
    by_id = {r.source_id: r for r in read_split(kaggle_out, "val")}
    kept = {stem: v for stem, v in VAL.items() if v[3]}
    assert set(by_id) == set(kept)
    for stem, (_, _, cls, source) in kept.items():
        r = by_id[stem]
        assert (r.class_text, r.class_label, r.label_source) == (cls, IDS[cls], source), stem
    assert [o.text for o in by_id["ILSVRC2012_val_00000003"].objects] == [TIGER, SHARK]
    root, csv = os.path.join(kaggle, "ILSVRC"), os.path.join(kaggle, "LOC_val_solution.csv")
    assert errors(kaggle_out, "val") == {
        os.path.join(root, "Data/CLS-LOC/val/ILSVRC2012_val_00000004.JPEG"): "missing_annotation",
        os.path.join(root, "Data/CLS-LOC/val/ILSVRC2012_val_00000005.JPEG"): "bad_csv_row",
        os.path.join(root, "Data/CLS-LOC/val/ILSVRC2012_val_00000006.JPEG"): "unknown_synset",
        os.path.join(root, "Data/CLS-LOC/val/ILSVRC2012_val_00000007.JPEG"): "empty_csv_row",
        f"{csv}:{2 + sum(1 for v in VAL.values() if v[1] is not None)}": "duplicate_csv_row",  # after the rows
    }


def test_dataset_info_counts_where_labels_came_from(kaggle, kaggle_out):
    info = dataset_info.load(kaggle_out)
    train, val = info.splits["train"], info.splits["val"]
    assert dict(train.label_sources) == {"folder": len(TRAIN)}
    assert dict(train.box_sources) == dict(collections.Counter(v[3] for v in TRAIN.values()))
    assert train.label_mismatches == 1 and val.label_mismatches == 0
    assert dict(val.label_sources) == {"csv": 2, "xml": 1} and dict(val.box_sources) == {"csv": 2, "xml": 1}
    assert [c.synset for c in info.classes] == ["background", SHARK, TENCH, GOLDFISH, TIGER]
    assert info.classes[2].name == "tench, Tinca tinca"
    assert info.classes_from == os.path.join(kaggle, "LOC_synset_mapping.txt")
    assert info.layout == "cls-loc" and info.source == os.path.join(kaggle, "ILSVRC")


def test_the_summary_shows_where_labels_came_from(kaggle, tmp_path, capsys):
    assert run_preprocess(kaggle, str(tmp_path / "o"), "--splits", "val", "--verify-images", "header") == 0
    out = capsys.readouterr().out
    assert "val      labels from csv=2 xml=1; boxes from csv=2 xml=1" in out
    assert f"4 classes + background, from {os.path.join(kaggle, 'LOC_synset_mapping.txt')}" in out
    # Given the folder that holds ILSVRC/ (the Kaggle download itself): the same records.
    assert digests(str(tmp_path / "o")).keys() == {"val-00000-of-00001.tfrecord", "val-00000-of-00001.tfrecord.idx"}


def test_inspect_verifies_and_shows_label_sources(kaggle_out, capsys):
    from detrec.pipelines import cli

    assert cli.main(["inspect", "--verify", "--json", kaggle_out]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["verified"]
    train = report["splits"]["train"]
    assert train["label_sources_counted"] == {"folder": len(TRAIN)} == train["label_sources"]
    assert train["label_mismatches"] == 1 and train["box_sources"]["none"] == 5
    assert cli.main(["inspect", "--show", "1", kaggle_out]) == 0
    text = capsys.readouterr().out
    assert "image classes from: folder 10" in text and "1 folder label unlike the largest box's" in text
    assert "from folder" in text and "no objects (background image)" not in text


def test_training_input_reads_records_without_boxes(kaggle_out):
    """Records without boxes are ordinary records for the trainer's tf.data input."""
    from detrec.train import input as train_input

    ds = train_input.make_dataset(kaggle_out, "train", batch_size=4, image_size=32, training=False, decoder="cpu",
                                  with_boxes=True, max_boxes=4)
    labels, boxes = [], 0
    for images, batch_labels, batch_boxes, box_labels in ds:
        assert images.shape[1:] == (32, 32, 3)
        labels += batch_labels.numpy().tolist()
        boxes += int(tf.math.count_nonzero(box_labels))
    assert sorted(labels) == sorted(IDS[v[1]] for v in TRAIN.values())
    assert boxes == sum(v[2] for v in TRAIN.values())


# --- image folders (Keras image_dataset_from_directory / torchvision ImageFolder) ---------------
FOLDER_TRAIN = {  # path under train/ -> image bytes; the class is the first folder
    "cat/a.jpg": f.jpeg(W, H, seed=1),
    "cat/b.png": f.png(W, H),
    "cat/c.JPEG": f.jpeg(W, H, seed=2),
    "cat/sub/d.jpg": f.jpeg(W, H, seed=3),
    "golden retriever/x.jpg": f.jpeg(W, H, seed=4),
    "golden retriever/x.png": f.png(40, 30),  # same stem as x.jpg: two images all the same
    "ñandú/e.jpeg": f.gray_jpeg(W, H),
}
FOLDER_CLASSES = ["cat", "golden retriever", "ñandú"]  # sorted train class folders with images
FOLDER_VAL = {"cat/v1.jpg": f.jpeg(W, H, seed=5), "golden retriever/v2.png": f.png(W, H)}


@pytest.fixture(scope="module")
def folder_tree(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("flowers")
    for rel, data in FOLDER_TRAIN.items():
        write(root / "train" / rel, data)
    for rel, data in FOLDER_VAL.items():
        write(root / "val" / rel, data)
    (root / "train" / "empty").mkdir()  # a folder without images is no class (issue #22)
    write(root / "train/cat/notes.txt", "not an image")
    write(root / "train/.ipynb_checkpoints/cp.jpg", f.jpeg(W, H))  # not a class
    write(root / "train/stray.jpg", f.jpeg(W, H))  # outside any class folder
    write(root / "val/zebra/z.jpg", f.jpeg(W, H))  # a class train does not have
    return str(root)


@pytest.fixture(scope="module")
def folder_out(folder_tree, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("flowers_out"))
    assert run_preprocess(folder_tree, out, "--num-shards", "train=2,val=1") == 0
    return out


def test_folder_tree_keeps_every_image_with_its_folders_class(folder_tree, folder_out):
    info = dataset_info.load(folder_out)
    assert info.layout == "folder"
    assert [c.synset for c in info.classes] == ["background", *FOLDER_CLASSES]
    assert [c.name for c in info.classes[1:]] == FOLDER_CLASSES
    ids = {c.synset: c.id for c in info.classes}
    for split, files in (("train", FOLDER_TRAIN), ("val", FOLDER_VAL)):
        records = read_split(folder_out, split)
        assert sorted(r.source_id for r in records) == sorted(files)  # each image exactly once
        for r in records:
            cls = r.source_id.split("/")[0]
            assert (r.class_text, r.class_label, r.label_source, r.objects) == (cls, ids[cls], "folder", ()), r.source_id
            assert r.filename == r.source_id
            assert tf.io.decode_jpeg(r.encoded, channels=3).shape == (r.height, r.width, 3)
        assert dict(info.splits[split].label_sources) == {"folder": len(files)}
        assert dict(info.splits[split].box_sources) == {"none": len(files)}
    by_id = {r.source_id: r for r in read_split(folder_out, "train")}
    assert (by_id["golden retriever/x.png"].width, by_id["golden retriever/x.png"].converted_from) == (40, "png")
    assert errors(folder_out, "train") == {os.path.join(folder_tree, "train/stray.jpg"): "no_class_folder"}
    assert errors(folder_out, "val") == {os.path.join(folder_tree, "val/zebra/z.jpg"): "unknown_class"}
    assert info.classes_from == "class folders of " + os.path.join(folder_tree, "train")


def test_a_val_only_run_numbers_classes_as_train_does(folder_tree, folder_out, tmp_path):
    out = str(tmp_path / "val_only")
    assert run_preprocess(folder_tree, out, "--splits", "val", "--num-shards", "val=1") == 0
    assert dataset_info.load(out).classes == dataset_info.load(folder_out).classes
    assert digests(out) == {k: v for k, v in digests(folder_out).items() if k.startswith("val-")}


def test_folder_tree_on_multi_processing_workers_gives_the_same_bytes(folder_tree, folder_out, tmp_path):
    """The CLI in a subprocess, two worker processes: the shards are byte for byte the in-memory run's."""
    out = str(tmp_path / "mp")
    cmd = [sys.executable, "-m", "detrec.pipelines.cli", "preprocess", "--input", folder_tree, "--output", out,
           "--layout", "folder", "--num-shards", "train=2,val=1",
           "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train    labels from folder=7; boxes from none=7" in proc.stdout
    assert digests(out) == digests(folder_out)
    assert dataset_info.load(out).splits["val"].errors_by_reason == {"unknown_class": 1}


def test_inspect_verifies_a_folder_dataset(folder_out, capsys):
    from detrec.pipelines import cli

    assert cli.main(["inspect", "--verify", folder_out]) == 0
    out = capsys.readouterr().out
    assert "labels from folder 7; boxes from none 7" in out and "OK" in out.splitlines()[-1]


@pytest.mark.parametrize("make, args, message", [
    (lambda root: write(root / "train/a.jpg", f.jpeg()), ["--layout", "folder", "--splits", "train"],
     "no class folders (expected train/<class>/<image>)"),
    (lambda root: write(root / "train/cat/a.jpg", f.jpeg()), [], "split 'val' not found"),
    (lambda root: write(root / "train/cat/a.jpg", f.jpeg()), ["--layout", "cls-loc", "--splits", "train"],
     "no Data/CLS-LOC/train"),
])
def test_tree_mistakes_are_one_line_user_errors(tmp_path, capsys, make, args, message):
    from detrec.pipelines import cli

    root = tmp_path / "tree"
    make(root)
    code = cli.main(["preprocess", "--input", str(root), "--output", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_broken_loc_synset_mapping_is_a_user_error(tmp_path, capsys):
    from detrec.pipelines import cli

    write(tmp_path / "ILSVRC/Data/CLS-LOC/val/v.JPEG", f.jpeg())
    write(tmp_path / "LOC_synset_mapping.txt", "n1 a\nn1 b\n")
    code = cli.main(["preprocess", "--input", str(tmp_path / "ILSVRC"), "--output", str(tmp_path / "o"),
                     "--splits", "val"])
    err = capsys.readouterr().err
    assert code == 2 and "listed twice" in err and "--synset-map" in err and len(err.strip().splitlines()) == 1


def test_trees_in_an_object_store_give_the_same_shards(kaggle, kaggle_out, folder_tree, folder_out, tmp_path):
    """gs:// has no folders, only object names: the same trees uploaded to an object store
    (the Kaggle download's folder, an image-folder tree with an empty class's `name/` marker)
    give byte for byte the shards of the local runs, and the same classes and errors."""
    from tests import object_store

    for local, url, local_out, args in (
        (kaggle, "memobj://bucket/imagenet", kaggle_out, ["--layout", "cls-loc", "--num-shards", "train=3,val=2"]),
        (folder_tree, "memobj://bucket/flowers", folder_out, ["--num-shards", "train=2,val=1"]),
    ):
        out = str(tmp_path / url.rsplit("/", 1)[1])
        assert run_preprocess(object_store.upload(local, url), out, *args) == 0
        assert digests(out) == digests(local_out)
        info, local_info = dataset_info.load(out), dataset_info.load(local_out)
        assert info.classes == local_info.classes and info.layout == local_info.layout
        assert {s: e.errors_by_reason for s, e in info.splits.items()} == {
            s: e.errors_by_reason for s, e in local_info.splits.items()}
    assert dataset_info.load(str(tmp_path / "imagenet")).source == "memobj://bucket/imagenet/ILSVRC"


def test_a_remote_tree_mistake_is_a_one_line_user_error_too(tmp_path, capsys):
    from detrec.pipelines import cli
    from tests import object_store

    write(tmp_path / "flat/train/a.jpg", f.jpeg())
    url = object_store.upload(str(tmp_path / "flat"), "memobj://bucket/flat")
    code = cli.main(["preprocess", "--input", url, "--output", str(tmp_path / "o"), "--layout", "folder",
                     "--splits", "train"])
    err = capsys.readouterr().err
    assert code == 2 and "memobj://bucket/flat/train: no class folders" in err and len(err.strip().splitlines()) == 1
