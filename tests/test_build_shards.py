"""The preprocess Beam job end to end: bad inputs, determinism, kill-and-rerun, third-party
readers, user errors. Every run is a real pipeline on the DirectRunner writing real shards."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from detrec.core import dataset_info, fs, schema
from tests import image_factory as f
from tests.conftest import file_digest, run_preprocess
from tests.test_annotations import LAUGHS, XXE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYN = "n02672831"  # class 1 of the synth synset map
TRAIN_DIR = f"ILSVRC2013_train/{SYN}"


def read_records(out: str, split: str) -> list[schema.Record]:
    info = dataset_info.load(out)
    files = [fs.join(out, s.file) for s in info.splits[split].shards]
    return [schema.decode(r.numpy()) for r in tf.data.TFRecordDataset(files)]


def digests(out: str) -> dict[str, str]:
    result = {}
    for path in sorted(glob.glob(os.path.join(out, "*"))):
        with open(path, "rb") as fh:
            result[os.path.basename(path)] = hashlib.sha256(fh.read()).hexdigest()
    return result


def xml(name: str = SYN, box=(10, 10, 60, 40), size=(120, 90), extra: str = "") -> bytes:
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height></size>" if size else ""
    x0, y0, x1, y1 = box
    return (f"<annotation>{size_xml}<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>{extra}</annotation>").encode()


def add(root: str, stem: str, annotation: bytes | None, image: bytes | None, ext: str = ".JPEG") -> None:
    for kind, data, suffix in (("Annotations", annotation, ".xml"), ("Data", image, ext)):
        if data is None:
            continue
        path = os.path.join(root, kind, "DET", "train", TRAIN_DIR, stem + suffix)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)


# stem -> (annotation, image, expected error code or None when the record must be kept)
BAD_INPUTS = {
    "bad_malformed": (b"<annotation><object>", f.jpeg(120, 90), "malformed_xml"),
    "bad_xxe": (XXE, f.jpeg(120, 90), "xml_dtd_forbidden"),
    "bad_laughs": (LAUGHS, f.jpeg(120, 90), "xml_dtd_forbidden"),
    "bad_noname": (xml(name=""), f.jpeg(120, 90), "missing_name"),
    "bad_unknown": (xml(name="n00000001"), f.jpeg(120, 90), "unknown_synset"),
    "bad_inverted": (xml(box=(80, 10, 20, 40)), f.jpeg(120, 90), "inverted_box"),
    "bad_truncated": (xml(), f.truncated_jpeg(120, 90), "truncated_image"),
    "bad_empty": (xml(), b"", "empty_file"),
    "bad_html": (xml(), f.HTML, "not_an_image"),
    "bad_noimage": (xml(), None, "missing_image"),
    "bad_orphan": (None, f.jpeg(120, 90), "missing_annotation"),
    "ok_border": (xml(box=(-5, 50, 200, 120)), f.jpeg(120, 90), None),
    "ok_nosize": (xml(size=None, box=(30, 30, 90, 60)), f.jpeg(120, 90), None),
    "ok_zerosize": (xml(size=(0, 0), box=(30, 30, 90, 60)), f.jpeg(120, 90), None),
    "ok_cmyk": (xml(), f.cmyk_jpeg(120, 90), None),
    "ok_png": (xml(), f.png(120, 90), None),
    "ok_gray": (xml(), f.gray_jpeg(120, 90), None),
    "ok_ñandú_日本": (xml(), f.jpeg(120, 90), None),
    "bad_unreadable": (xml(), f.jpeg(120, 90), "unreadable_file"),
}


def unprivileged(cmd: list[str]) -> list[str]:
    """Root reads any file; drop the DAC capabilities so chmod 000 means unreadable."""
    if os.geteuid() != 0:
        return cmd
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *cmd]


@pytest.fixture(scope="module")
def bad_tree(synth_tree, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bad") / "ILSVRC")
    shutil.copytree(synth_tree, root)
    for stem, (ann, img, _) in BAD_INPUTS.items():
        add(root, stem, ann, img, ".JPEG")
    add(root, "ok_png", None, f.png(120, 90), ".png")  # same source id twice: duplicate
    os.chmod(os.path.join(root, "Data", "DET", "train", TRAIN_DIR, "bad_unreadable.JPEG"), 0)
    return root


@pytest.fixture(scope="module")
def bad_run(bad_tree, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bad_out"))
    cmd = [sys.executable, "-m", "detrec.pipelines.cli", "preprocess", "--input", bad_tree, "--output", out,
           "--synset-map", os.path.join(bad_tree, "devkit", "data", "map_det.txt"), "--num-shards", "train=3,val=1",
           "--direct_num_workers=1", "--direct_running_mode=in_memory"]
    proc = subprocess.run(unprivileged(cmd), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_bad_inputs_are_reported_and_good_records_all_kept(bad_run, synth_tree, bad_tree):
    out, stdout = bad_run
    with open(os.path.join(out, "errors-train.jsonl"), encoding="utf-8") as fh:
        errors = [json.loads(line) for line in fh]
    by_stem = {}
    for e in errors:
        path = e["annotation"] or e["image"]
        by_stem.setdefault(os.path.splitext(os.path.basename(path))[0], []).append(e)
    for stem, (_, _, code) in BAD_INPUTS.items():
        if code is None:
            continue
        assert stem in by_stem, f"{stem} not reported"
        (entry,) = by_stem[stem]
        assert entry["code"] == code and entry["reason"] and entry["split"] == "train"
        assert stem in entry["annotation"] + entry["image"]
    (dup,) = by_stem["ok_png"]
    assert dup["code"] == "duplicate_source_id" and dup["image"].endswith("ok_png.png")
    bad = {s for s, (_, _, c) in BAD_INPUTS.items() if c}
    assert set(by_stem) == bad | {"ok_png"}

    records = {r.source_id: r for r in read_records(out, "train")}
    synth_ids = {os.path.relpath(p, os.path.join(synth_tree, "Annotations/DET/train"))[:-4]
                 for p in glob.glob(os.path.join(synth_tree, "Annotations/DET/train/**/*.xml"), recursive=True)}
    kept = {f"{TRAIN_DIR}/{s}" for s, (_, _, c) in BAD_INPUTS.items() if c is None}
    assert set(records) == synth_ids | kept
    info = dataset_info.load(out)
    assert info.splits["train"].num_examples == len(records)
    assert info.splits["train"].num_errors == len(errors)
    assert "unreadable_file=1" in stdout and "missing_image=1" in stdout


def test_fixed_and_clipped_records(bad_run):
    out, _ = bad_run
    records = {r.source_id.rsplit("/", 1)[1]: r for r in read_records(out, "train")}
    for r in records.values():
        schema.check(r, num_classes=6)
        assert tf.io.decode_jpeg(r.encoded, channels=3).shape == (r.height, r.width, 3)
    border = records["ok_border"].objects[0]
    assert (border.xmin, border.xmax, border.ymax) == (0.0, 1.0, 1.0)
    assert border.ymin == pytest.approx(50 / 90)
    nosize = records["ok_nosize"].objects[0]
    assert (nosize.xmin, nosize.xmax) == pytest.approx((30 / 120, 90 / 120))  # decoded size as frame
    assert records["ok_zerosize"].objects == records["ok_nosize"].objects
    assert records["ok_cmyk"].converted_from == "jpeg-cmyk"
    assert records["ok_png"].converted_from == "png"
    assert records["ok_png"].filename == f"{TRAIN_DIR}/ok_png.JPEG"
    assert records["ok_gray"].converted_from == "" and records["ok_gray"].encoded == f.gray_jpeg(120, 90)
    assert records["ok_ñandú_日本"].filename == f"{TRAIN_DIR}/ok_ñandú_日本.JPEG"
    info = dataset_info.load(out)
    assert info.splits["train"].converted_images == 2


def test_labels_and_largest_box_match_the_xml(dataset_dir, synth_tree):
    from detrec.preprocess import annotations

    info = dataset_info.load(dataset_dir)
    ids = {c.synset: c.id for c in info.classes}
    assert info.num_classes == 6 and ids["background"] == 0
    for split in ("train", "val"):
        for r in read_records(dataset_dir, split):
            with open(os.path.join(synth_tree, "Annotations/DET", split, r.source_id + ".xml"), "rb") as fh:
                ann = annotations.parse(fh.read())
            if not ann.objects:
                assert (r.class_label, r.class_text) == (0, "background")
                continue
            big = max(ann.objects, key=lambda o: (o.xmax - o.xmin) * (o.ymax - o.ymin))
            assert (r.class_text, r.class_label) == (big.name, ids[big.name])
            assert [o.text for o in r.objects] == [o.name for o in ann.objects]
    with open(os.path.join(dataset_dir, "labels.txt")) as fh:
        assert fh.readline() == "0\tbackground\tbackground\n"
        assert fh.readline() == "1\tn02672831\taccordion\n"


def test_shards_are_balanced_mixed_and_complete(dataset_dir):
    info = dataset_info.load(dataset_dir)
    for split in ("train", "val"):
        shards = info.splits[split].shards
        counts = [s.num_examples for s in shards]
        assert max(counts) - min(counts) <= 1  # dealt round-robin; nothing rejected in this tree
        for s in shards:
            path = os.path.join(dataset_dir, s.file)
            size, digest = file_digest(path)
            assert (size, digest) == (s.num_bytes, s.sha256)
            labels = {schema.decode(r.numpy()).class_label for r in tf.data.TFRecordDataset(path)}
            assert len(labels) >= 3, f"{s.file} is not class-mixed: {labels}"
    assert [s.file for s in info.splits["train"].shards] == [schema.shard_name("train", i, 4) for i in range(4)]


def test_dali_reads_every_record_with_our_index(dataset_dir):
    """A third-party reader: DALI's TFRecord reader (CPU) driven by our .idx files."""
    from nvidia.dali import fn, pipeline_def, types, tfrecord as tfrec

    info = dataset_info.load(dataset_dir)
    shards = info.splits["train"].shards
    paths = [os.path.join(dataset_dir, s.file) for s in shards]
    total = sum(s.num_examples for s in shards)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def read():
        out = fn.readers.tfrecord(
            path=paths, index_path=[p + ".idx" for p in paths], random_shuffle=False,
            features={schema.SOURCE_ID: tfrec.FixedLenFeature((), tfrec.string, ""),
                      schema.CLASS_LABEL: tfrec.FixedLenFeature([1], tfrec.int64, -1),
                      schema.ENCODED: tfrec.FixedLenFeature((), tfrec.string, "")})
        image = fn.decoders.image(out[schema.ENCODED], device="cpu", output_type=types.RGB)
        return out[schema.SOURCE_ID], out[schema.CLASS_LABEL], image

    pipe = read()
    pipe.build()
    seen = {}
    for _ in range(total):
        sid, label, image = pipe.run()
        seen[bytes(sid.as_array()[0]).decode()] = int(label.as_array()[0][0])
        assert image.as_array()[0].shape[2] == 3
    expected = {r.source_id: r.class_label for r in read_records(dataset_dir, "train")}
    assert seen == expected


def test_same_bytes_whatever_the_parallelism(synth_tree, dataset_dir, tmp_path):
    """dataset_dir ran in-memory on 1 worker; this runs 2 worker processes."""
    out = str(tmp_path / "mp")
    synset_map = os.path.join(synth_tree, "devkit", "data", "map_det.txt")
    cmd = [sys.executable, "-m", "detrec.pipelines.cli", "preprocess", "--input", synth_tree, "--output", out,
           "--num-shards", "train=4,val=2", "--synset-map", synset_map,
           "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert digests(out) == digests(dataset_dir)
    # Progress from the worker processes reaches the user, as plain lines (not Beam's protos).
    wrote = sorted(line.split(" wrote ", 1)[1].split(":")[0] for line in proc.stderr.splitlines() if " wrote " in line)
    assert wrote == sorted(s.file for split in ("train", "val")
                           for s in dataset_info.load(out).splits[split].shards)
    assert "log_location" not in proc.stderr


@pytest.mark.parametrize("point", ["listed", "shard-written:1", "shard-written:4", "finalize"])
def test_a_crash_at_a_chosen_point_then_rerun_equals_clean_run(synth_tree, dataset_dir, tmp_path, point):
    """The process dies at a named point (core/crashpoints.py): after listing, with a shard
    complete but not renamed (the first, then the fourth), or before dataset_info.json.
    Whatever it left, a rerun gives exactly the clean run's files, also when an earlier crash
    had left a partial shard under a final name of another shard count and a temporary."""
    from detrec.core import crashpoints

    out = str(tmp_path / "crashed")
    os.makedirs(out)
    for junk in ("train-00007-of-00009.tfrecord", "train-00000-of-00004.tfrecord",
                 ".val-00000-of-00002.tfrecord.tmp-" + "d" * 32):
        with open(os.path.join(out, junk), "wb") as fh:
            fh.write(b"partial")
    synset_map = os.path.join(synth_tree, "devkit", "data", "map_det.txt")
    cmd = [sys.executable, "-m", "detrec.pipelines.cli", "preprocess", "--input", synth_tree, "--output", out,
           "--num-shards", "train=4,val=2", "--synset-map", synset_map,
           "--direct_num_workers=1", "--direct_running_mode=in_memory"]
    env = {**os.environ, crashpoints.ENV: point}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == crashpoints.CRASH_EXIT, proc.stderr[-2000:]
    left = os.listdir(out)
    assert schema.DATASET_INFO not in left
    renamed = [n for n in left if n.endswith(".tfrecord") and not n.startswith(".")
               and os.path.getsize(os.path.join(out, n)) != len(b"partial")]  # the crashed run's own
    expected_renamed = {"listed": 0, "shard-written:1": 0, "shard-written:4": 3, "finalize": 6}[point]
    assert len(renamed) == expected_renamed, left
    assert run_preprocess(synth_tree, out, "--num-shards", "train=4,val=2", "--synset-map", synset_map) == 0
    assert digests(out) == digests(dataset_dir)


def test_crash_points_are_named_and_counted(monkeypatch):
    from detrec.core import crashpoints

    monkeypatch.setenv(crashpoints.ENV, "no-such-point")
    with pytest.raises(ValueError, match="unknown crash point"):
        crashpoints.crashpoint("listed")
    monkeypatch.setenv(crashpoints.ENV, "finalize:3")
    monkeypatch.setattr(crashpoints, "_counts", {})
    exits = []
    monkeypatch.setattr(crashpoints.os, "_exit", exits.append)
    for _ in range(4):
        crashpoints.crashpoint("finalize")
        crashpoints.crashpoint("listed")  # another point: not counted, never fires
    assert exits == [crashpoints.CRASH_EXIT]  # the third time only


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "/nonexistent/tree"], "no such file or directory"),
        (["--num-shards", "train=x"], "--num-shards wants SPLIT=N"),
        (["--num-shards", "test=3"], "not in --splits"),
        (["--bogus_flag=1"], "unknown option --bogus_flag"),
        (["--splits", ","], "--splits is empty"),
        (["--synset-map", "/nonexistent/map.txt"], "no such file"),
    ],
)
def test_user_errors_are_one_line(args, message, synth_tree, tmp_path, capsys):
    from detrec.pipelines import cli

    base = {"--input": synth_tree, "--output": str(tmp_path / "o")}
    argv = ["preprocess"]
    for key, value in base.items():
        if key not in args:
            argv += [key, value]
    code = cli.main(argv + args)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_synset_map_is_a_user_error(synth_tree, tmp_path, capsys):
    from detrec.pipelines import cli

    bad = tmp_path / "map.txt"
    bad.write_text("n1 1 a\nn1 2 b\n")
    assert cli.main(["preprocess", "--input", synth_tree, "--output", str(tmp_path / "o"), "--synset-map", str(bad)]) == 2
    assert "listed twice" in capsys.readouterr().err


def test_wrong_layout_is_a_user_error(tmp_path, capsys):
    from detrec.pipelines import cli

    (tmp_path / "empty").mkdir()
    assert cli.main(["preprocess", "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o")]) == 2
    assert "pass the folder that holds Annotations/" in capsys.readouterr().err


def _sample(name: str) -> bytes:
    from tests.conftest import SAMPLES

    with open(os.path.join(SAMPLES, name), "rb") as fh:
        return fh.read()


def test_voc_layout_with_imagesets(tmp_path):
    root = tmp_path / "VOC2007"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    (root / "Annotations" / "000002.xml").write_bytes(_sample("VOC2007_000002.xml"))
    (root / "JPEGImages" / "000002.jpg").write_bytes(f.jpeg(335, 500))
    (root / "Annotations" / "000009.xml").write_bytes(_sample("voc_two_objects.xml"))
    (root / "JPEGImages" / "000009.jpg").write_bytes(f.jpeg(11, 14))
    (root / "Annotations" / "000010.xml").write_bytes(_sample("voc_two_objects.xml"))  # not in train.txt
    (root / "ImageSets/Main/train.txt").write_text("000002\n000009\n")
    (tmp_path / "voc_classes.txt").write_text("tvmonitor\ntrain\n")
    out = str(tmp_path / "out")
    assert run_preprocess(str(root), out, "--splits", "train", "--synset-map", str(tmp_path / "voc_classes.txt")) == 0
    info = dataset_info.load(out)
    assert info.layout == "voc"
    records = {r.source_id: r for r in read_records(out, "train")}
    assert set(records) == {"000002", "000009"}
    assert (records["000002"].class_text, records["000002"].class_label) == ("train", 2)
    assert records["000002"].filename == "000002.jpg"
    two = records["000009"]
    assert [o.text for o in two.objects] == ["tvmonitor", "train"] and two.objects[0].truncated
    assert (two.class_text, two.class_label) == ("tvmonitor", 1)  # 5x5 beats 4x6


def test_cls_loc_layout_with_synset_mapping(tmp_path):
    root = tmp_path / "ILSVRC"
    (root / "Annotations/CLS-LOC/val").mkdir(parents=True)
    (root / "Data/CLS-LOC/val").mkdir(parents=True)
    (root / "Annotations/CLS-LOC/val/ILSVRC2012_val_00000001.xml").write_bytes(_sample("ILSVRC2012_val_00000001.xml"))
    (root / "Data/CLS-LOC/val/ILSVRC2012_val_00000001.JPEG").write_bytes(f.jpeg(500, 375))
    mapping = tmp_path / "LOC_synset_mapping.txt"
    mapping.write_text("n01440764 tench, Tinca tinca\nn01751748 sea snake\n")
    out = str(tmp_path / "out")
    assert run_preprocess(str(root), out, "--splits", "val", "--synset-map", str(mapping)) == 0
    (record,) = read_records(out, "val")
    assert (record.class_label, record.class_text) == (2, "n01751748")
    assert record.objects[0].xmin == pytest.approx(111 / 500)
    assert dataset_info.load(out).classes[2] == dataset_info.ClassInfo(2, "n01751748", "sea snake")


# --- the per-shard plan -------------------------------------------------------------------
def _pairs(tmp_path, n: int, bad: set[int] = frozenset()):
    from detrec.preprocess import pairing

    pairs = []
    for i in range(n):
        path = tmp_path / f"{i}.xml"
        path.write_bytes(xml(f"n{i}", (1, 1, 5, 5), (10, 10)) if i not in bad else b"<annotation><unclosed>")
        pairs.append(pairing.Pair("train", f"id{i}", str(path), str(tmp_path / f"{i}.JPEG"), f"{i}.JPEG", 1000))
    return pairs


def test_every_planned_shard_is_written_even_when_its_xml_all_fails(tmp_path):
    """Each shard travels as one element; a shard whose every annotation is rejected still
    gets written (empty), so a split's n-of-N shard names never have gaps."""
    from detrec.preprocess import dofns, plan as planning, vocab

    pairs = _pairs(tmp_path, 7, bad={0, 1, 2, 3, 4, 5, 6})
    plans = list(planning.plan_split("train", pairs, 3, 1))
    assert [plan.key.name for plan in plans] == [f"train-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert sorted(plan.size for plan in plans) == [2, 2, 3]
    assert sorted(p.source_id for plan in plans for p in plan.pairs()) == sorted(p.source_id for p in pairs)
    (tmp_path / "out").mkdir()
    for plan in plans:
        det = {"train": dofns.sources.SplitSource(str(tmp_path), "train", "det")}
        *rejected, parsed = dofns.ParseShard(["train"], names=False).process(plan, det)
        assert all(r.value.code == "malformed_xml" for r in rejected) and len(rejected) == plan.size
        assert parsed.key == plan.key and parsed.size == 0 and parsed.items() == []
        (result,) = dofns.WriteShard(str(tmp_path / "out"), "header").process(parsed, vocab.from_synsets([]))
        assert result.key == plan.key and result.num_examples == 0  # the shard itself, empty
        assert (tmp_path / "out" / plan.key.name).exists()


def test_a_plan_keeps_its_pairs_in_hash_order_packed(tmp_path):
    from detrec.preprocess import plan as planning

    pairs = _pairs(tmp_path, 50)
    plan, = planning.plan_split("train", pairs, 1, 1)
    # Write order: the rank of sha256("split/source_id"), computed here independently of plan.py.
    assert plan.pairs() == sorted(pairs, key=lambda p: hashlib.sha256(f"train/{p.source_id}".encode()).digest())
    assert len(plan.packed) < 40 * len(pairs)  # packed: a Pair pickles to ~300 bytes


def test_a_parsed_shard_carries_its_items_and_its_names(tmp_path):
    """Each annotation is parsed once: a train shard's names (of what parses) go to the class
    list, its items, packed, to the writer; what does not parse is reported, here only."""
    from detrec.preprocess import dofns, plan as planning, sources

    pairs = _pairs(tmp_path, 5, bad={2})
    plan, = planning.plan_split("train", pairs, 1, 1)
    found = {"train": sources.SplitSource(str(tmp_path), "train", "det")}
    out = list(dofns.ParseShard(["train"]).process(plan, found))
    (rejected,) = [o.value for o in out if getattr(o, "tag", None) == dofns.REJECTED]
    (names,) = [o.value for o in out if getattr(o, "tag", None) == dofns.NAMES]
    parsed = out[-1]
    assert rejected.code == "malformed_xml" and rejected.annotation == pairs[2].annotation
    assert names == {"n0", "n1", "n3", "n4"}
    items = parsed.items()
    assert [item.pair for item in items] == [p for p in plan.pairs() if p != pairs[2]]  # write order kept
    # What _pairs wrote: one box (1, 1)-(5, 5) named n<i> in a 10x10 frame.
    assert [(a.width, a.height, [(o.name, o.xmin, o.ymin, o.xmax, o.ymax) for o in a.objects])
            for a in (item.annotation for item in items)] == [
        (10, 10, [(f"n{i}", 1.0, 1.0, 5.0, 5.0)]) for i in (int(item.pair.source_id[2:]) for item in items)]
    assert len(parsed.packed) < 120 * len(items)
    # No names when the class list is fixed elsewhere (a synset map), or for another split.
    assert not [o for o in dofns.ParseShard(["train"], names=False).process(plan, found)
                if getattr(o, "tag", None) == dofns.NAMES]


def test_a_parsed_plan_gives_back_every_coordinate_exactly():
    """Whole coordinates travel as ints: each comes back as the same float, sign of zero too."""
    import math

    from detrec.preprocess import annotations, pairing, plan as planning

    values = (0.0, -0.0, 1.0, 499.0, 0.5, -3.0, 1e20, 2.0 ** 60 + 2048, 1e-300, 12345.678)
    objects = tuple(annotations.Object("n1", v, v, v, v, True, False) for v in values)
    item = planning.Item(pairing.Pair("train", "id", "a.xml", "a.JPEG", "a.JPEG", 10), annotations.Annotation(5, 4, objects, "a"), "xml")
    (back,) = planning.ParsedPlan.of(planning.ShardKey("train", 0, 1), [item]).items()
    assert back == item
    got = [o.xmin for o in back.annotation.objects]
    assert all(type(v) is float for v in got)
    assert [math.copysign(1.0, v) for v in got] == [math.copysign(1.0, v) for v in values]


def test_a_shard_plan_is_pickled_in_one_call(tmp_path):
    """Beam's coder falls back to pickle once for the whole plan, not once per example."""
    import pickle

    from apache_beam.coders import coders

    from detrec.preprocess import plan as planning

    plan, = planning.plan_split("train", _pairs(tmp_path, 5), 1, 1)
    coder = coders.FastPrimitivesCoder()
    assert coder.decode(coder.encode(plan)) == plan
    assert pickle.loads(coder.encode(plan)[1:]) == plan


@pytest.mark.parametrize("verify", ["header", "full"])
def test_a_shard_is_the_same_bytes_whatever_the_writer_threads(synth_tree, tmp_path, monkeypatch, verify):
    from detrec.preprocess import dofns, plan as planning, sources, vocab as vocab_lib

    plans = [o for o in dofns.ListAndAssign({"train": 1}, 1).process((synth_tree, "train", "auto"))
             if isinstance(o, planning.ShardPlan)]
    found = {"train": sources.resolve(synth_tree, "train", "auto")}
    (names, parsed) = dofns.ParseShard(["train"]).process(plans[0], found)
    vocab = vocab_lib.from_synsets(names.value)
    results = []
    for threads in (1, 4):
        monkeypatch.setitem(dofns.LOCAL_WRITER_THREADS, verify, threads)
        out = tmp_path / str(threads)
        out.mkdir()
        (result,) = list(dofns.WriteShard(str(out), verify).process(parsed, vocab))
        results.append(result)
    assert results[0].num_examples == plans[0].size > 10
    assert results[0].sha256 == results[1].sha256


@pytest.mark.parametrize("recursive", [True, False])
def test_local_listing_lists_what_beams_match_lists(tmp_path, recursive):
    """The os.scandir listing of local folders against Beam's own FileSystems.match: nested
    and hidden files, unicode names, a symlinked folder (not followed), a dangling link."""
    from apache_beam.io.filesystems import FileSystems

    from detrec.preprocess import sources, walk

    base = tmp_path / "Annotations"
    for rel, size in (("a.xml", 3), (".hidden.xml", 1), ("n01/b.xml", 5), ("n01/deep/c.xml", 7), ("ünï/d.xml", 2)):
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(b"x" * size)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/e.xml").write_bytes(b"e")
    os.symlink(tmp_path / "elsewhere", base / "linked")
    os.symlink(tmp_path / "nowhere.xml", base / "dangling.xml")
    pattern = os.path.join(base, "**" if recursive else "*")
    expected = sorted((m.path, m.size_in_bytes) for m in FileSystems.match([pattern])[0].metadata_list)
    assert walk.list_files(str(base), recursive) == expected
    assert len(expected) == (5 if recursive else 2)


def test_summary_has_each_splits_time_and_rate(synth_tree, tmp_path, capsys):
    """Splits are written concurrently: each row's seconds come from its own shards' metrics."""
    assert run_preprocess(synth_tree, str(tmp_path / "out"), "--num-shards", "train=2,val=1",
                          "--verify-images", "header") == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("split ")))
    rows = {line.split()[0]: line.split() for line in lines[header + 1:header + 3]}
    info = dataset_info.load(str(tmp_path / "out"))
    for split in ("train", "val"):
        examples, seconds, rate = int(rows[split][1]), float(rows[split][6]), float(rows[split][7])
        assert examples == info.splits[split].num_examples
        assert seconds >= 0 and rate > 0  # measured, not "-" (a tiny split takes milliseconds)
    # The arithmetic, with known times; a split without metrics shows "-".
    from detrec.pipelines.preprocess_cmd import summary_table

    table = summary_table(info, {"train": 2.0}).splitlines()
    train, val = (next(r.split() for r in table if r.startswith(s)) for s in ("train ", "val "))
    assert train[6:8] == ["2.0", f"{info.splits['train'].num_examples / 2:.0f}"]
    assert val[6:8] == ["-", "-"]


def test_header_mode_runs_end_to_end_without_tensorflow(synth_tree, tmp_path):
    """`--verify-images header` needs no TensorFlow anywhere: not in the launcher, not in
    Beam's worker processes (a `tensorflow` that fails to import is first on their path)."""
    fake = tmp_path / "no_tf" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('tensorflow is not installed here (test)')\n")
    out = str(tmp_path / "out")
    env = {**os.environ, "PYTHONPATH": str(fake.parent)}
    cmd = [sys.executable, "-m", "detrec.pipelines.cli", "preprocess", "--input", synth_tree, "--output", out,
           "--verify-images", "header", "--num-shards", "train=2,val=1", "--direct_num_workers=2"]
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    info = dataset_info.load(out)
    for split in ("train", "val"):
        records = [schema.decode(r.numpy()) for r in tf.data.TFRecordDataset(dataset_info.shard_files(info, out, split))]
        assert len(records) == info.splits[split].num_examples > 0
        assert all(tf.io.decode_jpeg(r.encoded, channels=3).shape[-1] == 3 for r in records)


def test_pairing_lets_the_listing_go_as_it_pairs(synth_tree):
    """pair_split empties the list it is given once the files are grouped (the caller's list
    would otherwise keep every listed file alive beside every pair: the listing's peak)."""
    from detrec.preprocess import pairing, sources

    source = sources.resolve(synth_tree, "train", "auto")
    entries = list(sources.get(source.layout).files(source))
    n = len(entries)
    pairs = [p for p in pairing.pair_split("train", entries, {}) if isinstance(p, pairing.Pair)]
    assert entries == [] and len(pairs) * 2 == n > 0
