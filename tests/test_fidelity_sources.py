"""Issue #22, points 4-9: what a source tree says reaches the records as it is meant, whatever
its links, class names, output folder, BOMs, CRLFs, quotes and sizes. Real Beam runs on small
trees (the records read back with TensorFlow's reader); the expected outcome is written down
with each tree, not computed by detrec."""

from __future__ import annotations

import collections
import json
import os
import time

import pytest

from detrec.core import dataset_info, schema
from detrec.preprocess import sources, vocab, walk
from tests import image_factory as f
from tests.conftest import run_preprocess
from tests.test_classification_trees import read_split, write, xml

N1, N2, N3 = "n01440764", "n01443537", "n01484850"


def error_lines(out: str, split: str) -> list[dict]:
    with open(os.path.join(out, schema.errors_name(split)), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def coded(out: str, split: str, top: str) -> list[tuple[str, str]]:
    """(path under `top` of the line's file, code) of every error line, sorted."""
    return sorted((os.path.relpath(e["image"] or e["annotation"], top), e["code"]) for e in error_lines(out, split))


def labelled(out: str, split: str) -> dict[str, tuple[str, int]]:
    """source id -> (class text, class id) of every record of a split; each id once."""
    records = read_split(out, split)
    by_id = {r.source_id: (r.class_text, r.class_label) for r in records}
    assert len(by_id) == len(records), "an image written twice"
    return by_id


def one_line_error(capsys, *args: str) -> str:
    from detrec.pipelines import cli

    code = cli.main(["preprocess", *args])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


# --- 4. links: walked by real path, never out of the split, each folder and image once --------
def test_folder_links_never_leave_the_split_nor_give_an_image_two_labels(tmp_path):
    top = tmp_path / "tree"
    write(top / "train/a/1.jpg", f.jpeg(seed=1))
    write(top / "train/b/2.jpg", f.jpeg(seed=2))
    write(top / "val/a/3.jpg", f.jpeg(seed=3))
    write(tmp_path / "elsewhere/d/4.jpg", f.jpeg(seed=4))
    os.symlink("../..", top / "train/b/root")  # an ancestor: would pull val into train, under b
    os.symlink(".", top / "train/c")  # the split itself: would be an empty class c (and a loop)
    os.symlink("../b", top / "train/a/sib")  # a sibling class: b's images would be a's too
    os.symlink("../a/1.jpg", top / "train/b/1-again.jpg")  # one image, two labels
    os.symlink("../a/1.jpg", top / "train/a/0-first.jpg")  # one image twice in one class
    os.symlink(tmp_path / "elsewhere/d", top / "train/d")  # a class folder from outside the split
    os.symlink(tmp_path / "elsewhere/d/4.jpg", top / "train/b/4.jpg")  # a file link: a file, wherever it is
    out = str(tmp_path / "out")
    assert run_preprocess(str(top), out, "--num-shards", "train=2,val=1") == 0
    info = dataset_info.load(out)
    assert [c.synset for c in info.classes] == ["background", "a", "b"]
    # Each image once, with the class of its first path in sorted order.
    assert labelled(out, "train") == {"a/0-first.jpg": ("a", 1), "b/2.jpg": ("b", 2), "b/4.jpg": ("b", 2)}
    assert labelled(out, "val") == {"a/3.jpg": ("a", 1)}
    assert coded(out, "train", str(top)) == [
        ("train/a/1.jpg", "duplicate_image"), ("train/a/sib", "duplicate_folder"),
        ("train/b/1-again.jpg", "duplicate_image"), ("train/b/root", "link_leaves_split"),
        ("train/c", "link_loop"), ("train/d", "link_leaves_split")]
    assert info.splits["train"].errors_by_reason == {"duplicate_folder": 1, "duplicate_image": 2,
                                                     "link_leaves_split": 2, "link_loop": 1}
    kept = next(e for e in error_lines(out, "train") if e["image"].endswith("1-again.jpg"))
    assert kept["stage"] == "list" and "a/0-first.jpg" in kept["reason"]


def test_chained_links_list_an_image_once_in_linear_time(tmp_path):
    """14 folders, each with two links to the one before: 2**14 paths to one image if links
    were followed; here one record and one line per link."""
    top = tmp_path / "tree"
    write(top / "train/cls/f0/img.jpg", f.jpeg())
    for i in range(1, 15):
        (top / f"train/cls/f{i}").mkdir()
        for name in ("p", "q"):
            os.symlink(f"../f{i - 1}", top / f"train/cls/f{i}/{name}")
    out = str(tmp_path / "out")
    assert run_preprocess(str(top), out, "--splits", "train", "--num-shards", "train=1") == 0
    assert labelled(out, "train") == {"cls/f0/img.jpg": ("cls", 1)}
    assert dataset_info.load(out).splits["train"].errors_by_reason == {"duplicate_folder": 28}


def test_links_in_a_det_tree_follow_the_same_rules(tmp_path):
    ann, img = tmp_path / "Annotations/DET/train", tmp_path / "Data/DET/train"
    for stem in ("a", "b", "c"):
        write(ann / f"{stem}.xml", xml((N1, 1, 1, 30, 30)))
    write(img / "a.JPEG", f.jpeg(seed=1))
    write(img / "c.JPEG", f.jpeg(seed=3))
    os.symlink("a.JPEG", img / "b.JPEG")  # the same image under a second id: kept once, as a
    write(tmp_path / "elsewhere/d.JPEG", f.jpeg(seed=4))
    write(ann / "more/d.xml", xml((N1, 1, 1, 30, 30)))
    os.symlink(tmp_path / "elsewhere", img / "more")  # a folder outside the split
    os.symlink("..", img / "up")  # the folder above the split: out of it
    write(img / "sub/e.JPEG", f.jpeg(seed=5))
    write(ann / "sub/e.xml", xml((N1, 1, 1, 30, 30)))
    os.symlink("..", img / "sub/back")  # the split itself, from inside: a loop
    os.link(img / "c.JPEG", img / "c2.JPEG")  # a hard link is a file of its own (its own real path)
    write(ann / "c2.xml", xml((N1, 1, 1, 30, 30)))
    out = str(tmp_path / "out")
    assert run_preprocess(str(tmp_path), out, "--splits", "train", "--num-shards", "train=1") == 0
    assert set(labelled(out, "train")) == {"a", "c", "c2", "sub/e"}
    # One line per input: b's XML is not reported again as an annotation without image.
    assert coded(out, "train", str(tmp_path)) == [
        ("Annotations/DET/train/more/d.xml", "missing_image"), ("Data/DET/train/b.JPEG", "duplicate_image"),
        ("Data/DET/train/more", "link_leaves_split"), ("Data/DET/train/sub/back", "link_loop"),
        ("Data/DET/train/up", "link_leaves_split")]


def test_listing_is_linear_in_the_files_not_the_paths_to_them(tmp_path):
    """Without Beam: the listing of a split whose folders link to each other in a ring and a
    ladder returns each file once (and stops)."""
    base = tmp_path / "train"
    for i in range(12):
        write(base / f"c{i}/x.jpg", b"x")
        os.symlink(f"../c{(i + 1) % 12}", base / f"c{i}/next")
        os.symlink(f"../c{(i + 5) % 12}", base / f"c{i}/jump")
    listed = list(sources.get("folder").files(sources.SplitSource(str(tmp_path), "train", "folder")))
    files = [e.key for e in listed if isinstance(e, walk.FileEntry)]
    assert sorted(files) == sorted(f"c{i}/x.jpg" for i in range(12))
    assert collections.Counter(u.code for u in listed if isinstance(u, walk.Unusable)) == {"duplicate_folder": 24}


# --- 5. a class named background ---------------------------------------------------------------
def test_a_box_named_background_is_that_images_error_and_ids_do_not_shift(tmp_path):
    """DET, classes from the data: `background` (any case) is no class; the images naming it are
    `reserved_class_name` lines and every other id stays as if it were not there."""
    ann, img = tmp_path / "Annotations/DET/train", tmp_path / "Data/DET/train"
    boxes = {"a": [(N1, 1, 1, 30, 30)], "b": [(N2, 1, 1, 30, 30)], "c": [("background", 1, 1, 30, 30)],
             "d": [(N2, 1, 1, 40, 40), (" Background ", 1, 1, 5, 5)], "e": []}
    for i, (stem, objs) in enumerate(boxes.items()):
        write(ann / f"{stem}.xml", xml(*objs))
        write(img / f"{stem}.JPEG", f.jpeg(seed=i))
    out = str(tmp_path / "out")
    assert run_preprocess(str(tmp_path), out, "--splits", "train", "--num-shards", "train=1") == 0
    info = dataset_info.load(out)
    assert [(c.id, c.synset) for c in info.classes] == [(0, "background"), (1, N1), (2, N2)]
    assert labelled(out, "train") == {"a": (N1, 1), "b": (N2, 2), "e": ("background", 0)}
    lines = error_lines(out, "train")
    assert sorted((os.path.basename(e["annotation"]), e["stage"], e["code"]) for e in lines) == [
        ("c.xml", "label", "reserved_class_name"), ("d.xml", "label", "reserved_class_name")]
    with open(os.path.join(out, "labels.txt"), encoding="utf-8") as fh:
        assert [line.split("\t")[1] for line in fh] == ["background", N1, N2]


def test_background_is_no_class_of_the_data_nor_of_a_cls_loc_folder():
    from detrec.preprocess import labels
    from detrec.preprocess.annotations import Annotation, AnnotationError

    got = vocab.from_synsets([N2, "background", N1, "BACKGROUND ", N2])
    assert got.synsets == (N1, N2) and got.id_of(N1) == 1 and got.id_of("background") is None
    with pytest.raises(AnnotationError, match="class folder 'Background' is the background class") as err:
        labels.label_image(Annotation(0, 0, ()), "none", "Background", 64, 48, got.id_of, "/t/train/Background/x.JPEG")
    assert err.value.code == "reserved_class_name" and err.value.code in labels.LABEL_CODES


@pytest.mark.parametrize("folder", ["background", "Background"])
def test_a_class_folder_named_background_is_refused_in_one_line(tmp_path, capsys, folder):
    write(tmp_path / "tree/train/cat/a.jpg", f.jpeg())
    write(tmp_path / f"tree/train/{folder}/b.jpg", f.jpeg(seed=1))
    err = one_line_error(capsys, "--input", str(tmp_path / "tree"), "--output", str(tmp_path / "out"),
                         "--splits", "train")
    assert f"class folder named {folder!r}" in err and "rename the folder" in err
    assert not os.path.exists(tmp_path / "out" / schema.DATASET_INFO)


@pytest.mark.parametrize("line", ["background 3 x", "n00000003 3 Background", "n00000003 0 x"])
def test_a_synset_map_naming_background_is_refused_in_one_line(tmp_path, capsys, line):
    write(tmp_path / "Annotations/DET/train/a.xml", xml((N1, 1, 1, 30, 30)))
    write(tmp_path / "Data/DET/train/a.JPEG", f.jpeg())
    write(tmp_path / "map.txt", f"{N1} 1 tench\n{N2} 2 goldfish\n{line}\n")
    err = one_line_error(capsys, "--input", str(tmp_path), "--output", str(tmp_path / "out"), "--splits", "train",
                         "--synset-map", str(tmp_path / "map.txt"))
    assert "map.txt:3:" in err and "background" in err


# --- 6. detrec's output folder, and folders without images, are no classes ----------------------
def test_an_output_folder_inside_a_split_is_no_class(tmp_path):
    top = tmp_path / "tree"
    write(top / "train/cat/a.jpg", f.jpeg(seed=1))
    write(top / "train/dog/b.jpg", f.jpeg(seed=2))
    write(top / "train/notes/readme.txt", "no image here")
    (top / "train/empty").mkdir()
    write(top / "train/old/dataset_info.json", "{}")  # another detrec dataset, with a contact sheet
    write(top / "train/old/contact.png", f.png())
    out = str(top / "train/zzout")
    for _ in range(2):  # and again, into the dataset the first run wrote
        assert run_preprocess(str(top), out, "--splits", "train", "--num-shards", "train=1") == 0
        info = dataset_info.load(out)
        assert [c.synset for c in info.classes] == ["background", "cat", "dog"] and info.num_classes == 3
        with open(os.path.join(out, "labels.txt"), encoding="utf-8") as fh:
            assert [line.split("\t")[1] for line in fh] == ["background", "cat", "dog"]
        assert labelled(out, "train") == {"cat/a.jpg": ("cat", 1), "dog/b.jpg": ("dog", 2)}
        assert error_lines(out, "train") == []


# --- 7. synset maps: BOM, CRLF, blank lines, repeats ------------------------------------------
def det_tree(root, stems: dict[str, str]) -> str:
    for i, (stem, synset) in enumerate(stems.items()):
        write(root / "Annotations/DET/train" / f"{stem}.xml", xml((synset, 1, 1, 30, 30)))
        write(root / "Data/DET/train" / f"{stem}.JPEG", f.jpeg(seed=i))
    return str(root)


@pytest.mark.parametrize("text", [
    f"\ufeff{N1} 1 tench\r\n{N2} 2 goldfish\r\n\r\n{N3} 3 great white shark\r\n",
    f"\ufeff\r\n{N1}\ttench, Tinca tinca\r\n{N2} goldfish\r\n  \r\n{N3} great white shark",
])
def test_a_synset_map_with_a_bom_and_crlf_keeps_its_first_class(tmp_path, text):
    tree = det_tree(tmp_path / "tree", {"a": N1, "b": N1, "c": N2, "d": N3})
    with open(tmp_path / "map.txt", "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    out = str(tmp_path / "out")
    assert run_preprocess(tree, out, "--splits", "train", "--num-shards", "train=1",
                          "--synset-map", str(tmp_path / "map.txt")) == 0
    assert labelled(out, "train") == {"a": (N1, 1), "b": (N1, 1), "c": (N2, 2), "d": (N3, 3)}
    assert error_lines(out, "train") == []
    assert [c.synset for c in dataset_info.load(out).classes] == ["background", N1, N2, N3]


def test_a_loc_synset_mapping_with_a_bom_keeps_its_first_class(tmp_path):
    root = tmp_path / "ILSVRC"
    write(root / f"Data/CLS-LOC/train/{N1}/{N1}_1.JPEG", f.jpeg(seed=1))
    write(root / f"Data/CLS-LOC/train/{N2}/{N2}_1.JPEG", f.jpeg(seed=2))
    write(tmp_path / "LOC_synset_mapping.txt", f"\ufeff{N1} tench, Tinca tinca\r\n{N2} goldfish\r\n".encode())
    out = str(tmp_path / "out")
    assert run_preprocess(str(root), out, "--splits", "train", "--num-shards", "train=1") == 0
    assert labelled(out, "train") == {f"{N1}/{N1}_1": (N1, 1), f"{N2}/{N2}_1": (N2, 2)}
    assert dataset_info.load(out).classes[1].name == "tench, Tinca tinca"


@pytest.mark.parametrize("text, message", [
    (f"{N1} 1 a\n{N2} 2 b\n\n{N3} 2 c\n", "map.txt:4: id 2 listed twice (first at line 2)"),
    (f"{N1} a\n\n{N2} b\r\n{N1} c\n", f"map.txt:4: synset '{N1}' listed twice (first at line 1)"),
    (f"{N1} 1 a\n{N2} 3 b\n", "no id 2"),  # would be renumbered
    (f"{N1} 1 a\n{N2} b\n", "line 1 gives an id and line 2 does not"),
])
def test_a_synset_map_with_repeats_is_one_line_naming_both(tmp_path, capsys, text, message):
    tree = det_tree(tmp_path / "tree", {"a": N1})
    write(tmp_path / "map.txt", text)
    err = one_line_error(capsys, "--input", tree, "--output", str(tmp_path / "out"), "--splits", "train",
                         "--synset-map", str(tmp_path / "map.txt"))
    assert message in err


# --- 8. solution CSVs through the csv module ------------------------------------------------------
def test_a_solution_csv_with_quotes_bom_crlf_and_extra_columns(tmp_path):
    root = tmp_path / "ILSVRC"
    for i in range(6):
        write(root / f"Data/CLS-LOC/val/v{i}.JPEG", f.jpeg(seed=i))
    write(tmp_path / "LOC_synset_mapping.txt", f"{N1} tench\n{N2} goldfish\n")
    rows = ['\ufeff"Source","ImageId","PredictionString","Notes"',
            f'x,v0,"{N2} 1 1 30 30 {N1} 1 1 5 5",ok',
            f'x,"v1",{N1} 2 2 40 40,"a note, with a comma"',
            f'x,v2,"{N2} 0 0 10 10\n{N1} 0 0 20 20",two lines',  # a quoted field over two lines
            'x,v3,"TOPSECRET 1 2 3 4 5 6",bad',  # 6 numbers: not boxes of five
            'x,TOPSECRET-ID with spaces',  # no PredictionString
            f'x,v4,{N1} 1 1 TOPSECRET 9,bad',
            f'x,v5,"{N1} 3 3 30 30"']
    write(tmp_path / "LOC_val_solution.csv", "\r\n".join(rows) + "\r\n")
    out = str(tmp_path / "out")
    assert run_preprocess(str(root), out, "--splits", "val", "--num-shards", "val=1") == 0
    assert labelled(out, "val") == {"v0": (N2, 2), "v1": (N1, 1), "v2": (N1, 1), "v5": (N1, 1)}
    lines = error_lines(out, "val")
    csv_path = str(tmp_path / "LOC_val_solution.csv")
    assert sorted((e["annotation"], e["code"]) for e in lines) == [
        (f"{csv_path}:6", "bad_csv_row"), (f"{csv_path}:7", "bad_csv_line"), (f"{csv_path}:8", "bad_csv_row")]
    assert not any("TOPSECRET" in e["reason"] for e in lines)


# --- 9. a synset map of a million lines ---------------------------------------------------------
def test_a_synset_map_of_a_million_lines_reads_in_seconds(tmp_path):
    """The quadratic reader took 281 s for 80,000 lines (hours for a million): the bound here
    is generous for a loaded machine, and far below what any quadratic reader needs."""
    path = tmp_path / "map.txt"
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(f"c{i} n{i % 10}\n" for i in range(1_000_000))  # ~10 MB, as in the issue
    assert os.path.getsize(path) < vocab.MAX_SYNSET_MAP_BYTES
    start = time.process_time()
    v = vocab.read_synset_map(str(path))
    assert time.process_time() - start < 60
    assert v.num_classes == 1_000_001 and v.id_of("c999999") == 1_000_000 and v.names[:2] == ("n0", "n1")


# --- the same bugs in VOC's split lists -----------------------------------------------------------
def test_a_voc_split_list_with_a_bom_and_crlf_and_ids_without_files(tmp_path):
    for i, stem in enumerate(("2007_000001", "2007_000002", "2007_000003")):
        write(tmp_path / f"Annotations/{stem}.xml", xml((N1, 1, 1, 30, 30)))
        write(tmp_path / f"JPEGImages/{stem}.jpg", f.jpeg(seed=i))
    write(tmp_path / "ImageSets/Main/train.txt",
          "\ufeff2007_000001\r\n2007_000002\r\n\r\n2007_000009\r\n2007_000003\r\n".encode())
    out = str(tmp_path / "out")
    assert run_preprocess(str(tmp_path), out, "--splits", "train", "--num-shards", "train=1") == 0
    assert set(labelled(out, "train")) == {"2007_000001", "2007_000002", "2007_000003"}
    (line,) = error_lines(out, "train")
    assert (line["annotation"], line["code"]) == (str(tmp_path / "ImageSets/Main/train.txt") + ":4", "missing_files")
    assert "'2007_000009'" in line["reason"]
