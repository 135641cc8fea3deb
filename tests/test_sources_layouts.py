"""The pure parts behind CLS-LOC and image-folder trees, without Beam: layout detection,
listing, pairing an image with its XML / CSV row / class folder, the solution CSV, the
labelling rule and the vocabulary a tree fixes."""

from __future__ import annotations

import os
import random

import pytest

from detrec.core import schema
from detrec.preprocess import annotations, labels, pairing, solutions, sources, vocab, walk
from detrec.preprocess.annotations import AnnotationError, Annotation, Object


def touch(path, data: bytes = b"x") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


# --- layouts --------------------------------------------------------------------------------
@pytest.fixture
def trees(tmp_path):
    """One small tree of each layout (files only, no real images needed to detect them)."""
    det = tmp_path / "det"
    for split in ("train", "val"):
        touch(det / "Annotations/DET" / split / "a.xml")
        touch(det / "Data/DET" / split / "a.JPEG")
    kaggle = tmp_path / "kaggle"
    touch(kaggle / "ILSVRC/Data/CLS-LOC/train/n1/n1_1.JPEG")
    touch(kaggle / "ILSVRC/Data/CLS-LOC/val/v_1.JPEG")
    touch(kaggle / "LOC_synset_mapping.txt", b"n1 one\n")
    voc = tmp_path / "voc"
    touch(voc / "Annotations/1.xml")
    touch(voc / "JPEGImages/1.jpg")
    touch(voc / "ImageSets/Main/train.txt", b"1\n")
    folder = tmp_path / "folder"
    touch(folder / "train/golden retriever/a.jpg")
    touch(folder / "train/cat/b.png")
    touch(folder / "val/cat/c.jpg")
    return {name: str(tmp_path / name) for name in ("det", "kaggle", "voc", "folder")}


def test_auto_picks_each_layout_by_its_folders(trees):
    assert sources.resolve(trees["det"], "train", "auto") == sources.SplitSource(trees["det"], "train", "det")
    ilsvrc = os.path.join(trees["kaggle"], "ILSVRC")
    for given in (ilsvrc, trees["kaggle"]):  # ROOT, or the Kaggle download's folder that holds it
        assert sources.resolve(given, "train", "auto") == sources.SplitSource(ilsvrc, "train", "cls-loc")
        assert sources.resolve(given, "val", "auto").layout == "cls-loc"  # no Annotations/ at all
    data = os.path.join(ilsvrc, "Data", "CLS-LOC")  # one level too deep: the tree above is meant
    # (this val has neither XML nor a solution CSV: a split without labels, as Kaggle's test)
    assert sources.resolve(data, "val", "auto") == sources.SplitSource(ilsvrc, "val", "cls-loc", labelled=False)
    assert sources.resolve(data, "train", "folder") == sources.SplitSource(data, "train", "folder")
    assert sources.resolve(trees["voc"], "train", "auto").layout == "voc"
    assert sources.resolve(trees["folder"], "train", "auto") == sources.SplitSource(trees["folder"], "train", "folder")


def test_a_split_the_tree_lacks_says_what_it_has(trees):
    with pytest.raises(ValueError, match=r"split 'test' not found.*it holds: train, val"):
        sources.resolve(trees["folder"], "test", "auto")
    with pytest.raises(ValueError, match="pass the folder that holds Annotations/"):
        sources.resolve(trees["det"], "test", "auto")


def test_an_explicit_layout_the_tree_does_not_have_is_an_error(trees, tmp_path):
    flat = tmp_path / "flat"
    touch(flat / "train/a.jpg")
    with pytest.raises(ValueError, match="--layout folder: .*no class folders"):
        sources.resolve(str(flat), "train", "folder")
    with pytest.raises(ValueError, match="--layout folder: .*no folder val/"):
        sources.resolve(str(flat), "val", "folder")
    with pytest.raises(ValueError, match="--layout cls-loc: .*no Data/CLS-LOC/train"):
        sources.resolve(trees["det"], "train", "cls-loc")
    with pytest.raises(ValueError, match="ImageSets/Main/val.txt"):
        sources.resolve(trees["voc"], "val", "voc")


def test_class_folders_are_sorted_folders_with_images_and_no_links(tmp_path):
    """Hidden folders, links (a link is not a class), folders without images and detrec's own
    datasets are no classes; an image in a subfolder makes one."""
    root = tmp_path / "t"
    for name in ("zebra", "Apple", "golden retriever", ".ipynb_checkpoints"):
        touch(root / "train" / name / "a.jpg")
    (root / "train/empty").mkdir()
    touch(root / "train/notes/readme.txt")
    touch(root / "train/deep/2019/x.PNG")
    touch(root / "train/out/dataset_info.json", b"{}")
    touch(root / "train/out/contact.png")
    touch(root / "train/stray.jpg")
    touch(tmp_path / "elsewhere/kiwi/k.jpg")
    os.symlink(tmp_path / "elsewhere/kiwi", root / "train/kiwi")
    os.symlink(root / "train/zebra", root / "train/zebra2")
    assert walk.class_folders(str(root), "train") == ["Apple", "deep", "golden retriever", "zebra"]


def test_folder_listing_never_follows_a_folder_link(tmp_path):
    root = tmp_path / "t"
    touch(root / "train/cat/a.jpg")
    touch(root / "train/cat/notes.txt")
    touch(root / "train/.ipynb_checkpoints/cp.jpg")
    touch(tmp_path / "elsewhere/dog/b.JPG")
    os.symlink(tmp_path / "elsewhere/dog", root / "train/dog")
    os.symlink(root / "train", root / "train/cat/loop")  # a link back up: a loop
    listed = list(sources.get("folder").files(sources.SplitSource(str(root), "train", "folder")))
    assert sorted(e.key for e in listed if isinstance(e, walk.FileEntry)) == ["cat/a.jpg"]
    assert sorted((os.path.relpath(u.path, root), u.code) for u in listed if isinstance(u, walk.Unusable)) == [
        ("train/cat/loop", "link_loop"), ("train/dog", "link_leaves_split")]


def test_find_beside_looks_in_root_then_its_parent(tmp_path):
    touch(tmp_path / "LOC_synset_mapping.txt")
    (tmp_path / "ILSVRC").mkdir()
    assert walk.find_beside(str(tmp_path / "ILSVRC"), "LOC_synset_mapping.txt") == str(tmp_path / "LOC_synset_mapping.txt")
    touch(tmp_path / "ILSVRC/LOC_synset_mapping.txt")
    assert walk.find_beside(str(tmp_path / "ILSVRC"), "LOC_synset_mapping.txt").startswith(str(tmp_path / "ILSVRC"))
    assert walk.find_beside(str(tmp_path / "ILSVRC"), "nope.csv") == ""


# --- the solution CSV -------------------------------------------------------------------------
CSV = ("\ufeffImageId,PredictionString\n"
       "n01440764_1,n01440764 1 2 30 40 \n"
       "ILSVRC2012_val_00000002,n01484850 0 0 20 20 n01440764 0 0 30 30\n"
       "just garbage\n"
       "ILSVRC2012_val_00000002,n01440764 9 9 10 10\n"
       "\n"
       "ILSVRC2012_val_00000009,\n")


def test_csv_rows_by_image_with_bad_lines_named():
    rows, bad = solutions.read_rows(CSV.splitlines(keepends=True), "LOC_val_solution.csv")
    assert set(rows) == {"n01440764_1", "ILSVRC2012_val_00000002", "ILSVRC2012_val_00000009"}
    assert rows["ILSVRC2012_val_00000002"] == solutions.Row(
        "LOC_val_solution.csv:3", "n01484850 0 0 20 20 n01440764 0 0 30 30")
    assert [(b.where, b.code) for b in bad] == [("LOC_val_solution.csv:4", "bad_csv_line"),
                                               ("LOC_val_solution.csv:5", "duplicate_csv_row")]
    assert "kept the row at LOC_val_solution.csv:3" in bad[1].reason
    # Looked up by the whole key, then by its file stem (train keys carry the synset folder).
    assert solutions.row_for(rows, "n01440764/n01440764_1").where == "LOC_val_solution.csv:2"
    assert solutions.row_for(rows, "n01440764/n01440764_2") is None


def test_csv_row_parses_into_an_annotation_in_image_pixels():
    ann = solutions.parse_row(solutions.Row("f:3", "n01484850 0 0 20 20 n01440764 0 0 30.5 30 "))
    assert ann == Annotation(0, 0, (Object("n01484850", 0, 0, 20, 20), Object("n01440764", 0, 0, 30.5, 30)))
    assert solutions.parse_row(solutions.Row("f:4", "")).objects == ()


@pytest.mark.parametrize("boxes, code, message", [
    ("n1 1 2 3", "bad_csv_row", "4 fields"),
    ("n1 1 2 x 4", "bad_csv_row", "not four numbers"),
    ("n1 1 2 inf 4", "bad_csv_row", "not finite"),
    ("n1 30 2 10 4", "inverted_box", "inverted box"),
])
def test_a_bad_csv_row_is_that_images_error(boxes, code, message):
    with pytest.raises(AnnotationError, match=message) as err:
        solutions.parse_row(solutions.Row("LOC_val_solution.csv:7", boxes))
    assert err.value.code == code and str(err.value).startswith("LOC_val_solution.csv:7")


# --- pairing ---------------------------------------------------------------------------------
def _entries(split: str, *files: tuple[str, str]) -> list[walk.FileEntry]:
    return [walk.FileEntry(split, kind, os.path.splitext(rel)[0], f"/{kind}/{rel}", 10) for kind, rel in files]


def test_cls_loc_train_images_keep_their_folder_class_with_or_without_boxes():
    entries = _entries("train", ("image", "n1/n1_1.JPEG"), ("annotation", "n1/n1_1.xml"),
                       ("image", "n1/n1_2.JPEG"), ("image", "n1/n1_3.JPEG"), ("annotation", "n1/n1_9.xml"))
    rows = {"n1_3": solutions.Row("LOC_train_solution.csv:2", "n1 0 0 5 5")}
    out = {o.source_id if isinstance(o, pairing.Pair) else o.code: o
           for o in pairing.pair_split("train", entries, rows, by_folder=True)}
    assert out["n1/n1_1"] == pairing.Pair("train", "n1/n1_1", "/annotation/n1/n1_1.xml", "/image/n1/n1_1.JPEG",
                                          "n1/n1_1.JPEG", 10, "n1")
    assert out["n1/n1_2"].folder_class == "n1" and out["n1/n1_2"].label_file == ""
    assert (out["n1/n1_3"].label_where, out["n1/n1_3"].label_data) == ("LOC_train_solution.csv:2", "n1 0 0 5 5")
    assert out["n1/n1_3"].label_file == "LOC_train_solution.csv:2"
    assert out["missing_image"].annotation == "/annotation/n1/n1_9.xml"


def test_cls_loc_val_images_need_an_xml_or_a_csv_row():
    entries = _entries("val", ("image", "v_1.JPEG"), ("annotation", "v_1.xml"), ("image", "v_2.JPEG"),
                       ("image", "v_3.JPEG"))
    rows = {"v_1": solutions.Row("c:2", "n9 0 0 1 1"), "v_2": solutions.Row("c:3", "n1 0 0 5 5")}
    out = list(pairing.pair_split("val", entries, rows, by_folder=True))
    v1, v2, v3 = out
    assert v1.annotation == "/annotation/v_1.xml" and v1.label_where == "" and v1.folder_class == ""  # XML first
    assert v2.label_where == "c:3" and v2.folder_class == ""
    assert isinstance(v3, pairing.PairProblem) and v3.code == "missing_annotation"


def test_det_images_never_take_a_folder_class():
    (problem,) = pairing.pair_split("train", _entries("train", ("image", "n1/n1_1.JPEG")), {})
    assert problem.code == "missing_annotation"


def test_folder_layout_keeps_every_image_each_with_its_class(monkeypatch):
    folder = sources.get("folder")
    entries = [walk.FileEntry("train", "image", key, f"/r/train/{key}", 5)
               for key in ("golden retriever/x.jpg", "golden retriever/x.png", "cat/sub/y.JPEG", "stray.jpg")]
    monkeypatch.setattr(folder, "files", lambda _source: iter(entries))
    out = list(folder.pairs(sources.SplitSource("/r", "train", "folder")))
    pairs = {p.source_id: p for p in out if isinstance(p, pairing.Pair)}
    assert {k: p.folder_class for k, p in pairs.items()} == {
        "golden retriever/x.jpg": "golden retriever", "golden retriever/x.png": "golden retriever",
        "cat/sub/y.JPEG": "cat"}
    assert pairs["cat/sub/y.JPEG"].image_rel == "cat/sub/y.JPEG" and pairs["cat/sub/y.JPEG"].annotation == ""
    (problem,) = [p for p in out if isinstance(p, pairing.Rejected)]
    assert (problem.code, problem.image) == ("no_class_folder", "/r/train/stray.jpg")


# --- the labelling rule ----------------------------------------------------------------------------
IDS = {"n1": 1, "n2": 2, "n3": 3}.get


def test_the_folder_wins_and_a_disagreeing_largest_box_is_flagged():
    ann = Annotation(100, 100, (Object("n1", 0, 0, 10, 10), Object("n2", 0, 0, 50, 50)))
    got = labels.label_image(ann, "xml", "n1", 100, 100, IDS)
    assert (got.class_label, got.class_text, got.source, got.disagrees) == (1, "n1", "folder", True)
    assert [b.text for b in got.boxes] == ["n1", "n2"]
    agree = labels.label_image(ann, "xml", "n2", 100, 100, IDS)
    assert (agree.class_label, agree.disagrees) == (2, False)
    bare = labels.label_image(Annotation(0, 0, ()), "none", "n3", 64, 48, IDS)
    assert (bare.boxes, bare.class_label, bare.source, bare.disagrees) == ((), 3, "folder", False)


def test_boxes_decide_without_a_folder_and_say_where_they_came_from():
    ann = Annotation(0, 0, (Object("n3", 0, 0, 20, 20), Object("n2", 0, 0, 30, 30)))
    got = labels.label_image(ann, "csv", "", 64, 48, IDS)
    assert (got.class_label, got.class_text, got.source) == (2, "n2", "csv")
    assert got.boxes[1].xmax == 30 / 64  # no <size>: the decoded image is the frame
    assert labels.label_image(Annotation(10, 10, ()), "xml", "", 64, 48, IDS).class_label == schema.BACKGROUND_ID


def test_a_csv_row_without_boxes_labels_nothing_unless_a_folder_does():
    with pytest.raises(AnnotationError, match="no boxes, so no class") as err:
        labels.label_image(Annotation(0, 0, ()), "csv", "", 64, 48, IDS, "LOC_val_solution.csv:9")
    assert err.value.code == "empty_csv_row"
    assert labels.label_image(Annotation(0, 0, ()), "csv", "n1", 64, 48, IDS).class_label == 1


def test_an_unknown_folder_class_is_an_error_of_that_image():
    with pytest.raises(AnnotationError, match="class folder 'zebra'") as err:
        labels.label_image(Annotation(0, 0, ()), "none", "zebra", 64, 48, IDS, "/r/val/zebra/z.jpg")
    assert err.value.code == "unknown_class"


@pytest.mark.parametrize("first, second", [((10, 20), (20, 10)), ((20, 10), (10, 20)), ((1, 5), (5, 1)),
                                           ((5, 1), (1, 5))])
def test_equal_pixel_areas_go_to_the_first_box_in_document_order(first, second):
    objects = (Object("n1", 3, 7, 3 + first[0], 7 + first[1]), Object("n2", 3, 7, 3 + second[0], 7 + second[1]))
    for w, h in ((500, 375), (500, 333), (375, 500)):
        got = labels.label_image(Annotation(w, h, objects), "xml", "", w, h, IDS)
        assert got.class_text == "n1"
        assert annotations.pixel_areas(Annotation(w, h, objects), w, h) == (first[0] * first[1],) * 2


def test_writer_and_reader_agree_on_20000_images():
    """The issue's symptom: a 20,000-image dataset must pass `inspect --verify`'s class check.
    Random images, many with equal-area boxes in both orders, through the writer's rule, the
    record's float32 features and the reader's check; the class is also recomputed here
    independently (largest pixel area, first in document order)."""
    rng = random.Random(20000)
    for n in range(20000):
        w, h = rng.randint(40, 1200), rng.randint(40, 1200)
        objects = []
        for i in range(rng.randint(1, 4)):
            bw, bh = rng.randint(1, w // 2), rng.randint(1, h // 2)
            if objects and rng.random() < 0.5:  # a twin of an earlier box, maybe turned
                prev = objects[rng.randrange(len(objects))]
                pw, ph = int(prev.xmax - prev.xmin), int(prev.ymax - prev.ymin)
                bw, bh = (ph, pw) if rng.random() < 0.5 and ph <= w // 2 and pw <= h // 2 else (pw, ph)
            x, y = rng.randint(0, w - bw), rng.randint(0, h - bh)
            objects.append(Object(f"n{rng.randint(1, 3)}", x, y, x + bw, y + bh))
        ann = Annotation(w, h, tuple(objects))
        got = labels.label_image(ann, "xml", "", w, h, IDS)
        areas = [(o.xmax - o.xmin) * (o.ymax - o.ymin) for o in objects]
        assert got.class_text == objects[areas.index(max(areas))].name, n
        record = schema.Record(encoded=b"x", height=h, width=w, filename="a", source_id=str(n), objects=got.boxes,
                               class_label=got.class_label, class_text=got.class_text)
        schema.check(schema.decode(schema.encode(record)), num_classes=4)


# --- the vocabulary a tree fixes ---------------------------------------------------------------------
def test_tree_vocabulary_folder_classes_then_loc_mapping_then_the_data(trees):
    collected = vocab.from_synsets(["n9"])
    folder = {"train": sources.resolve(trees["folder"], "train", "auto")}
    got = sources.vocabulary(collected, folder, ["train"])
    assert got.synsets == ("cat", "golden retriever") and got.names == got.synsets
    assert got.origin.endswith(os.path.join("folder", "train"))
    val_only = {"val": sources.resolve(trees["folder"], "val", "auto")}
    assert sources.vocabulary(collected, val_only, ["val"]).synsets == ("cat", "golden retriever")  # train's, still
    loc = {"val": sources.resolve(trees["kaggle"], "val", "auto")}
    got = sources.vocabulary(collected, loc, ["val"])
    assert got.classes()[1] == vocab.ClassInfo(1, "n1", "one") and got.origin.endswith("LOC_synset_mapping.txt")
    det = {"train": sources.resolve(trees["det"], "train", "auto")}
    assert sources.vocabulary(collected, det, ["train"]) is collected


# --- what listing never reads ----------------------------------------------------------------
def test_listing_judges_each_path_before_anything_reads_it(tmp_path):
    """FIFOs, device links and dangling links become not_a_regular_file, names that are not
    UTF-8 bad_file_name (shown escaped); links to regular files are files; other names are
    left alone as before."""
    ann = tmp_path / "Annotations" / "DET" / "train"
    img = tmp_path / "Data" / "DET" / "train"
    ann.mkdir(parents=True)
    img.mkdir(parents=True)
    (img / "plain.JPEG").write_bytes(b"x")
    (tmp_path / "real.JPEG").write_bytes(b"xy")
    os.symlink(tmp_path / "real.JPEG", img / "linked.JPEG")
    os.symlink("/dev/zero", img / "zero.JPEG")
    os.symlink(tmp_path / "gone", img / "dangling.JPEG")
    os.mkfifo(ann / "fifo.xml")
    os.mkfifo(ann / "fifo.txt")  # not an input's extension: not listed at all
    with open(os.fsencode(ann) + b"/caf\xe9.xml", "wb") as fh:
        fh.write(b"<annotation/>")
    listed = list(sources.get("det").files(sources.SplitSource(str(tmp_path), "train", "det")))
    entries = sorted((e.kind, e.key, e.size) for e in listed if isinstance(e, walk.FileEntry))
    assert entries == [("image", "linked", 2), ("image", "plain", 1)]
    unusable = sorted((u.kind, os.path.basename(u.path), u.code, u.key) for u in listed if isinstance(u, walk.Unusable))
    assert unusable == [("annotation", "caf\\xe9.xml", "bad_file_name", "caf\udce9"),
                        ("annotation", "fifo.xml", "not_a_regular_file", "fifo"),
                        ("image", "dangling.JPEG", "not_a_regular_file", "dangling"),
                        ("image", "zero.JPEG", "not_a_regular_file", "zero")]
    assert walk.shown_path("ok/ñandú") == "ok/ñandú" and walk.is_text("ok/日本")
