"""`detrec inspect`: the report against a known dataset, the cross-check, every kind of bad
input (corrupt copies made in tmp_path, byte offsets checked) and the contact sheet.

Expected values are computed independently of detrec.inspector and detrec.core.tfrecord: counts and statistics
from the synth tree's XML, record offsets from tf.data.TFRecordDataset's payload lengths.
"""

from __future__ import annotations

import collections
import glob
import hashlib
import io
import itertools
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from lxml import etree
from PIL import Image

from detrec.pipelines import cli
from detrec.core import schema, tfrecord
from detrec.inspector import contact_sheet
from tests import image_factory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- helpers ------------------------------------------------------------------------------
def inspect(capsys, *args: str) -> tuple[int, str, list[str]]:
    """Runs `detrec inspect` in-process: (exit code, stdout, problem lines from stderr)."""
    rc = cli.main(["inspect", *args])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("detrec inspect:")]
    return rc, out, lines


def inspect_json(capsys, *args: str) -> tuple[int, dict, list[str]]:
    rc, out, lines = inspect(capsys, "--json", *args)
    report = json.loads(out)
    assert len(lines) == len(report["problems"])  # every problem is one line on stderr too
    return rc, report, lines


def offsets(path: str) -> list[tuple[int, int]]:
    """(offset, payload length) of every record, from TF's own reader (not ours)."""
    lengths = [len(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    starts = itertools.accumulate([0] + [tfrecord.record_span(n) for n in lengths[:-1]])
    return list(zip(starts, lengths))


def copy_dataset(dataset_dir: str, tmp_path) -> str:
    dst = str(tmp_path / "ds")
    shutil.copytree(dataset_dir, dst)
    return dst


def flip_bit(path: str, offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def truncate(path: str, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def write_tfrecord(path: str, payloads: list[bytes]) -> None:
    with tf.io.TFRecordWriter(path) as writer:
        for payload in payloads:
            writer.write(payload)


def only_problem(report: dict) -> dict:
    assert len(report["problems"]) == 1, report["problems"]
    return report["problems"][0]


def train_shard(ds: str, index: int = 1) -> str:
    return sorted(glob.glob(os.path.join(ds, "train-*.tfrecord")))[index]


# --- the report against a known dataset ---------------------------------------------------
def xml_truth(synth_tree: str, split: str) -> dict:
    """Per-split counts straight from the synth tree's annotations."""
    ids = {}
    with open(os.path.join(synth_tree, "devkit", "data", "map_det.txt")) as f:
        for line in f:
            synset, i, _ = line.split(None, 2)
            ids[synset] = int(i)
    truth = dict(images=0, objects=collections.Counter(), image_class=collections.Counter(),
                 per_image=collections.Counter(), widths=[], heights=[])
    for path in glob.glob(os.path.join(synth_tree, "Annotations", "DET", split, "**", "*.xml"), recursive=True):
        root = etree.parse(path).getroot()
        w, h = int(root.findtext("size/width")), int(root.findtext("size/height"))
        boxes = []
        for obj in root.iter("object"):
            b = {k: int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")}
            boxes.append(((b["xmax"] - b["xmin"]) * (b["ymax"] - b["ymin"]), ids[obj.findtext("name")]))
        truth["images"] += 1
        truth["widths"].append(w)
        truth["heights"].append(h)
        truth["per_image"][len(boxes)] += 1
        truth["objects"].update(label for _, label in boxes)
        truth["image_class"][max(boxes)[1] if boxes else 0] += 1
    return truth


def test_json_report_matches_the_synth_tree(dataset_dir, synth_tree, capsys):
    rc, report, lines = inspect_json(capsys, dataset_dir)
    assert rc == 0 and report["ok"] and lines == []
    assert report["mode"] == "full" and report["verified"] is False
    assert report["datasets"][0]["cross_check_ok"] is True
    assert [c["name"] for c in report["classes"]] == ["background", "accordion", "airplane", "ant", "antelope", "apple"]
    info = json.load(open(os.path.join(dataset_dir, schema.DATASET_INFO)))
    assert set(report["splits"]) == {"train", "val"}
    for split, s in report["splits"].items():
        truth = xml_truth(synth_tree, split)
        assert s["num_examples"] == s["records_read"] == s["expected_examples"] == truth["images"]
        assert s["converted_images"] == info["splits"][split]["converted_images"]
        assert s["num_shards"] == len(glob.glob(os.path.join(dataset_dir, f"{split}-*.tfrecord")))
        for shard in s["shards"]:
            assert shard["complete"]
            assert shard["num_examples"] == len(offsets(shard["file"]))
            assert shard["num_bytes"] == os.path.getsize(shard["file"])
            assert shard["sha256"] == hashlib.sha256(open(shard["file"], "rb").read()).hexdigest()
        assert s["num_bytes"] == sum(sh["num_bytes"] for sh in s["shards"])
        labels = {row["id"]: row for row in s["labels"]}
        assert set(labels) == set(range(6))
        assert labels[0]["synset"] == "background" and labels[1]["synset"] == "n02672831"
        assert {i: r["objects"] for i, r in labels.items() if r["objects"]} == dict(truth["objects"])
        assert {i: r["images"] for i, r in labels.items() if r["images"]} == dict(truth["image_class"])
        assert s["objects_per_image"]["histogram"] == {str(k): v for k, v in sorted(truth["per_image"].items())}
        assert (s["width"]["min"], s["width"]["max"]) == (min(truth["widths"]), max(truth["widths"]))
        assert (s["height"]["min"], s["height"]["max"]) == (min(truth["heights"]), max(truth["heights"]))
        area = s["box_area"]
        assert area["count"] == sum(truth["objects"].values()) == sum(b["count"] for b in area["histogram"])
        assert 0 < area["min"] <= area["p10"] <= area["p50"] <= area["p90"] <= area["max"] <= 1


def test_text_summary_names_splits_shards_and_classes(dataset_dir, capsys):
    rc, out, lines = inspect(capsys, dataset_dir, "--show", "2")
    assert rc == 0 and lines == []
    for text in ("split train:", "split val:", "train-00000-of-00004.tfrecord", "n02691156", "airplane",
                 "background", "objects per image:", "box area", "against dataset_info.json: ok", "record 1"):
        assert text in out
    assert "\\x" not in out and "b'" not in out  # --show never prints raw bytes


def test_verify_passes_a_good_dataset_and_show_returns_fields(dataset_dir, capsys):
    rc, report, lines = inspect_json(capsys, dataset_dir, "--verify", "--show", "3")
    assert rc == 0 and report["ok"] and report["verified"]
    first = report["records"][0]
    assert first["offset"] == 0 and first["record"] == 0
    assert "encoded" not in first and first["encoded_bytes"] > 0
    assert [r["offset"] for r in report["records"][:3]] == [o for o, _ in offsets(first["shard"])[:3]]


def test_glob_and_single_shard_are_cross_checked_against_their_dataset_info(dataset_dir, capsys):
    rc, report, _ = inspect_json(capsys, os.path.join(dataset_dir, "val-*.tfrecord"))
    assert rc == 0 and list(report["splits"]) == ["val"]
    assert report["splits"]["val"]["num_examples"] == sum(len(offsets(p)) for p in
                                                          glob.glob(os.path.join(dataset_dir, "val-*.tfrecord")))
    rc, report, _ = inspect_json(capsys, os.path.join(dataset_dir, "nothing-*.tfrecord"))
    assert rc == 1 and only_problem(report)["reason"] == "no file matches this pattern"


def test_quick_mode_counts_from_headers_and_seeks_past_payloads(dataset_dir, capsys):
    rc, report, _ = inspect_json(capsys, "--quick", dataset_dir)
    assert rc == 0 and report["mode"] == "quick"
    assert report["splits"]["train"]["num_examples"] == sum(
        len(offsets(p)) for p in glob.glob(os.path.join(dataset_dir, "train-*.tfrecord")))
    assert "labels" not in report["splits"]["train"]

    class CountingFile(io.BytesIO):
        read_bytes = 0

        def read(self, n=-1):
            data = super().read(n)
            CountingFile.read_bytes += len(data)
            return data

    path = train_shard(dataset_dir)
    data = open(path, "rb").read()
    frames = list(tfrecord.read_frames(CountingFile(data), len(data), want=lambda i: False))
    assert [(f.offset, f.length) for f in frames] == offsets(path)
    assert CountingFile.read_bytes == 12 * len(frames)  # headers only


def test_read_frames_offsets_match_the_dali_index(dataset_dir):
    path = train_shard(dataset_dir, 0)
    with open(path, "rb") as f:
        frames = list(tfrecord.read_frames(f, os.path.getsize(path), want=lambda i: True))
    with open(path + schema.INDEX_SUFFIX) as f:
        assert [f"{fr.offset} {tfrecord.record_span(fr.length)}" for fr in frames] == f.read().split("\n")[:-1]
    assert [fr.payload for fr in frames] == [r.numpy() for r in tf.data.TFRecordDataset(path)]


# --- cross-check --------------------------------------------------------------------------
def test_deleted_shard_is_reported(dataset_dir, tmp_path, capsys):
    ds = copy_dataset(dataset_dir, tmp_path)
    victim = train_shard(ds)
    os.remove(victim)
    rc, report, lines = inspect_json(capsys, ds)
    assert rc == 1 and not report["datasets"][0]["cross_check_ok"]
    problem = only_problem(report)
    assert problem["file"] == victim and problem["reason"].startswith("missing: listed in dataset_info.json")
    assert lines == [f"detrec inspect: {victim}: {problem['reason']}"]


def test_extra_shard_beside_the_listed_ones_is_reported(dataset_dir, tmp_path, capsys):
    ds = copy_dataset(dataset_dir, tmp_path)
    extra = os.path.join(ds, "train-00007-of-00008.tfrecord")
    shutil.copy(train_shard(ds), extra)
    rc, report, _ = inspect_json(capsys, ds)
    assert rc == 1
    assert only_problem(report)["file"] == extra and "unlisted shard" in only_problem(report)["reason"]


def test_shard_truncated_by_one_byte_fails_size_and_framing(dataset_dir, tmp_path, capsys):
    ds = copy_dataset(dataset_dir, tmp_path)
    victim = train_shard(ds)
    size = os.path.getsize(victim)
    last_offset, _ = offsets(victim)[-1]
    n = len(offsets(victim))
    truncate(victim, size - 1)
    rc, report, lines = inspect_json(capsys, ds)
    assert rc == 1
    problems = {p["reason"].split(":")[0].split(" ")[0]: p for p in report["problems"]}
    assert set(problems) == {"truncated", "size"}
    assert problems["truncated"]["offset"] == last_offset and problems["truncated"]["record"] == n - 1
    assert problems["size"]["reason"] == f"size {size - 1} bytes, dataset_info.json says {size}"
    assert all(line.startswith(f"detrec inspect: {victim}: ") for line in lines)


def test_same_size_different_bytes_fails_sha256(dataset_dir, tmp_path, capsys):
    ds = copy_dataset(dataset_dir, tmp_path)
    victim = train_shard(ds)
    write_tfrecord(victim, [r.numpy() for r in tf.data.TFRecordDataset(victim)][::-1])  # same records, reversed
    rc, report, _ = inspect_json(capsys, ds)
    assert rc == 1
    problems = [p for p in report["problems"] if p["file"] == victim]
    assert len(problems) == 1 and problems[0]["reason"].startswith("sha256 ")
    # ...and its DALI index no longer matches either
    assert any(p["file"] == victim + ".idx" for p in report["problems"])


def test_directory_without_dataset_info_is_inspected_but_flagged(dataset_dir, tmp_path, capsys):
    ds = copy_dataset(dataset_dir, tmp_path)
    os.remove(os.path.join(ds, schema.DATASET_INFO))
    rc, report, _ = inspect_json(capsys, ds)
    assert rc == 1 and "no dataset_info.json" in only_problem(report)["reason"]
    assert report["splits"]["val"]["num_examples"] == 32
    assert report["classes"][1]["name"] == "accordion"  # names from labels.txt


def _drop_num_bytes(info: dict) -> str:
    del info["splits"]["val"]["shards"][0]["num_bytes"]
    return json.dumps(info)


@pytest.mark.parametrize("rewrite, reason", [
    (lambda info: "{not json", "not valid JSON"),
    (lambda info: json.dumps({**info, "splits": []}), "`splits` is not an object"),
    (_drop_num_bytes, "split 'val': shard val-00000-of-00002.tfrecord: `num_bytes` is missing"),
])
def test_broken_dataset_info_is_one_problem(dataset_dir, tmp_path, capsys, rewrite, reason):
    ds = copy_dataset(dataset_dir, tmp_path)
    info_path = os.path.join(ds, schema.DATASET_INFO)
    with open(info_path) as f:
        info = json.load(f)
    with open(info_path, "w") as f:
        f.write(rewrite(info))
    rc, report, lines = inspect_json(capsys, ds)
    assert rc == 1 and lines[0].startswith(f"detrec inspect: {info_path}: {reason}")
    assert only_problem(report)["file"] == info_path


# --- bad input ----------------------------------------------------------------------------
def test_missing_path(tmp_path, capsys):
    missing = str(tmp_path / "nope.tfrecord")
    rc, report, lines = inspect_json(capsys, missing)
    assert rc == 1 and lines == [f"detrec inspect: {missing}: no such file or directory"]


def test_empty_file(tmp_path, capsys):
    empty = tmp_path / "train-00000-of-00001.tfrecord"
    empty.write_bytes(b"")
    rc, report, lines = inspect_json(capsys, str(empty))
    assert rc == 1 and lines == [f"detrec inspect: {empty}: empty file (0 bytes): not a TFRecord shard"]


@pytest.mark.parametrize("content", [b"hello, this is a text file\n" * 10, image_factory.jpeg(), b"abc"])
def test_not_a_tfrecord(tmp_path, capsys, content):
    path = tmp_path / "x.tfrecord"
    path.write_bytes(content)
    rc, report, _ = inspect_json(capsys, str(path))
    problem = only_problem(report)
    assert rc == 1 and problem["offset"] == 0 and problem["record"] == 0
    assert problem["reason"].startswith("not a TFRecord file")


@pytest.mark.parametrize("where, reason", [
    ("length", "length CRC mismatch"),
    ("length_crc", "length CRC mismatch"),
    ("payload", "data CRC mismatch"),
    ("data_crc", "data CRC mismatch"),
])
def test_flipped_bit_is_located(dataset_dir, tmp_path, capsys, where, reason):
    ds = copy_dataset(dataset_dir, tmp_path)
    victim = train_shard(ds)
    frames = offsets(victim)
    k = 5
    start, length = frames[k]
    at = {"length": start, "length_crc": start + 8, "payload": start + 12 + length // 2,
          "data_crc": start + 12 + length}[where]
    flip_bit(victim, at, bit=3)
    rc, report, lines = inspect_json(capsys, "--verify", victim)
    problem = only_problem(report)
    assert rc == 1 and (problem["offset"], problem["record"]) == (start, k)
    assert problem["reason"].startswith(reason)
    assert lines == [f"detrec inspect: {victim}: offset {start}, record {k}: {problem['reason']}"]
    assert not report["splits"]["train"]["shards"][0]["complete"]


@pytest.mark.parametrize("cut", [5, 40])
def test_truncated_shard_is_located(tmp_path, dataset_dir, capsys, cut):
    path = str(tmp_path / "train-00000-of-00001.tfrecord")
    shutil.copy(train_shard(dataset_dir), path)
    start, _ = offsets(path)[3]
    truncate(path, start + cut)
    rc, report, _ = inspect_json(capsys, path)
    problem = only_problem(report)
    assert rc == 1 and (problem["offset"], problem["record"]) == (start, 3)
    assert problem["reason"].startswith("truncated: ")
    assert report["splits"]["train"]["num_examples"] == 3  # the whole records before it


def test_first_corruption_of_a_file_is_reported_then_the_next_file_is_read(dataset_dir, tmp_path, capsys):
    ds = copy_dataset(dataset_dir, tmp_path)
    bad, good = train_shard(ds, 0), train_shard(ds, 1)
    frames = offsets(bad)
    for k in (2, 6):
        flip_bit(bad, frames[k][0] + 12 + 30)
    rc, report, _ = inspect_json(capsys, "--verify", bad, good)
    problem = only_problem(report)
    assert rc == 1 and (problem["file"], problem["offset"], problem["record"]) == (bad, frames[2][0], 2)
    by_file = {s["file"]: s for s in report["splits"]["train"]["shards"]}
    assert by_file[good]["complete"] and by_file[good]["num_examples"] == len(offsets(good))


def test_foreign_schema_record(tmp_path, capsys):
    path = str(tmp_path / "foreign.tfrecord")
    foreign = tf.train.Example(features=tf.train.Features(feature={
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))})).SerializeToString()
    write_tfrecord(path, [foreign, foreign])
    rc, report, lines = inspect_json(capsys, path)
    problem = only_problem(report)
    assert rc == 1 and (problem["offset"], problem["record"]) == (0, 0)
    assert problem["reason"].startswith("not a valid detrec record: missing feature")


def _record(encoded: bytes, w: int, h: int, boxes=(), **kwargs) -> schema.Record:
    label, text = schema.largest_box_label(boxes)
    return schema.Record(encoded=encoded, height=h, width=w, filename="x.JPEG", source_id="x",
                         objects=tuple(boxes), class_label=label, class_text=text, **kwargs)


@pytest.mark.parametrize("bad, reason", [
    (_record(image_factory.png(32, 24), 32, 24), "`image/encoded` is png, not JPEG"),
    (_record(image_factory.jpeg(32, 24), 40, 24), "JPEG is 32x24 but the record says 40x24"),
    (_record(image_factory.jpeg(32, 24)[:-300], 32, 24), "`image/encoded` does not decode"),
    (_record(image_factory.jpeg(32, 24), 32, 24, [schema.Box(0.1, 0.1, 1.5, 0.9, 1, "n1")]), "object 0: box"),
    (_record(image_factory.jpeg(32, 24), 32, 24, [schema.Box(0.1, 0.1, 0.5, 0.9, 9, "n9")]), "object 0: label 9"),
])
def test_verify_checks_schema_and_jpeg(tmp_path, dataset_dir, capsys, bad, reason):
    """A foreign record inside a copy of a real dataset's shard: only --verify looks this deep."""
    path = str(tmp_path / "val-00000-of-00001.tfrecord")
    source = sorted(glob.glob(os.path.join(dataset_dir, "val-*.tfrecord")))[0]
    good = [r.numpy() for r in tf.data.TFRecordDataset(source)]
    write_tfrecord(path, good[:2] + [schema.encode(bad)] + good[2:])
    shutil.copy(os.path.join(dataset_dir, schema.LABELS_FILE), tmp_path)  # 6 classes: label 9 is out
    rc, report, _ = inspect_json(capsys, path)
    assert rc == 0
    rc, report, _ = inspect_json(capsys, "--verify", path)
    problem = only_problem(report)
    assert rc == 1 and (problem["offset"], problem["record"]) == (offsets(path)[2][0], 2)
    assert reason in problem["reason"]


def test_bad_inputs_never_give_a_traceback_from_the_console(tmp_path):
    (tmp_path / "empty.tfrecord").write_bytes(b"")
    (tmp_path / "text.tfrecord").write_bytes(b"not a record at all")
    paths = [str(tmp_path / n) for n in ("missing.tfrecord", "empty.tfrecord", "text.tfrecord")]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-m", "detrec.pipelines.cli", "inspect", *paths], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("detrec inspect:")]
    assert [line.split(": ")[1] for line in lines] == paths
    assert "3 problem(s)" in proc.stdout


def test_bad_flags_exit_2(dataset_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["inspect", dataset_dir, "--grid", "4by4"])
    assert exc.value.code == 2
    assert cli.main(["inspect", dataset_dir, "--quick", "--verify"]) == 2
    assert cli.main(["inspect", dataset_dir, "--contact-sheet", "sheet.jpg"]) == 2


# --- contact sheet ------------------------------------------------------------------------
GREY = (128, 128, 128)


def grey_jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), GREY).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_contact_sheet_draws_every_box_where_it_belongs(tmp_path, capsys):
    """Plain grey pictures with known boxes: any box-coloured pixel is a drawn box."""
    wide = _record(grey_jpeg(200, 100), 200, 100, [schema.Box(0.1, 0.2, 0.6, 0.9, 1, "n1"),
                                                   schema.Box(0.7, 0.1, 0.9, 0.4, 2, "n2")])
    tall = _record(grey_jpeg(64, 128), 64, 128, [schema.Box(0.25, 0.25, 0.75, 0.75, 2, "n2")])
    empty = _record(grey_jpeg(128, 128), 128, 128)
    shard = str(tmp_path / "train-00000-of-00001.tfrecord")
    write_tfrecord(shard, [schema.encode(r) for r in (wide, tall, empty)])
    (tmp_path / schema.LABELS_FILE).write_text("0\tbackground\tbackground\n1\tn1\tcat\n2\tn2\tdog\n")
    sheet = str(tmp_path / "sheet.png")
    rc, report, _ = inspect_json(capsys, shard, "--contact-sheet", sheet, "--grid", "2x2")
    assert rc == 0
    image = Image.open(sheet)
    assert image.format == "PNG" and image.size == (512, 512) and image.mode == "RGB"
    pixels = np.asarray(image)
    # By the documented rule (fit 256x256, centred): wide 200x100 -> 256x128 at (0, 64);
    # tall 64x128 -> 128x256 at (256 + 64, 0); the square one fills the first cell of row 2.
    assert [(c["x"], c["y"]) for c in report["contact_sheet"]["cells"]] == [(0, 64), (320, 0), (0, 256)]

    def colour(x, y):
        return tuple(int(v) for v in pixels[y, x])

    def box_edges(x0, y0, w, h, box):
        left, right = round(x0 + box.xmin * w), round(x0 + box.xmax * w) - 1
        top, bottom = round(y0 + box.ymin * h), round(y0 + box.ymax * h) - 1
        return left, top, right, bottom

    for (x0, y0, w, h), box, col in [((0, 64, 256, 128), wide.objects[0], contact_sheet.LARGEST_BOX_COLOR),
                                     ((0, 64, 256, 128), wide.objects[1], contact_sheet.OTHER_BOX_COLOR),
                                     ((320, 0, 128, 256), tall.objects[0], contact_sheet.LARGEST_BOX_COLOR)]:
        left, top, right, bottom = box_edges(x0, y0, w, h, box)
        mid_x, mid_y = (left + right) // 2, (top + bottom) // 2
        for x, y in [(left, mid_y), (left + 1, mid_y), (right, mid_y), (mid_x, bottom), (mid_x, bottom - 1)]:
            assert colour(x, y) == col, (x, y)
        assert colour(mid_x, mid_y) != col  # an outline, not a filled box
        assert max(abs(a - b) for a, b in zip(colour(left - 3, mid_y), GREY)) <= 3  # picture just outside
    # The largest box carries its class name (yellow text pixels near its top-left corner).
    left, top, _, _ = box_edges(0, 64, 256, 128, wide.objects[0])
    label = pixels[top + 2: top + 20, left + 2: left + 40].astype(int)
    yellowish = (label[..., 0] > 180) & (label[..., 1] > 180) & (label[..., 2] < 90)
    black = (label.max(axis=-1) < 20)
    assert yellowish.sum() > 20 and black.sum() > 50  # antialiased letters on a black tab
    # The object-less picture is drawn without any box.
    empty_cell = pixels[256 + 30:, :256]
    assert not (empty_cell == contact_sheet.OTHER_BOX_COLOR).all(axis=-1).any()


def test_contact_sheet_of_a_real_dataset(dataset_dir, tmp_path, capsys):
    sheet = str(tmp_path / "sheet.png")
    rc, report, _ = inspect_json(capsys, dataset_dir, "--contact-sheet", sheet, "--grid", "4x3", "--cell", "128")
    assert rc == 0
    image = Image.open(sheet)
    assert image.format == "PNG" and image.size == (4 * 128, 3 * 128)
    cells = report["contact_sheet"]["cells"]
    assert len(cells) == 12
    pixels = np.asarray(image)
    checked = 0
    for cell in cells:
        payload = [r.numpy() for r in tf.data.TFRecordDataset(cell["shard"])][cell["record"]]
        record = schema.decode(payload)
        if not record.objects:
            continue
        checked += 1
        box = max(record.objects, key=lambda b: b.area)
        w, h = round(record.width * cell["scale"]), round(record.height * cell["scale"])
        left = round(cell["x"] + box.xmin * w)
        mid_y = round(cell["y"] + (box.ymin + box.ymax) / 2 * h)
        assert tuple(pixels[mid_y, left]) == contact_sheet.LARGEST_BOX_COLOR
    assert checked >= len(cells) // 2, "most synth images have boxes: the check must not skip them all"


def test_url_paths_go_through_tf_gfile(dataset_dir, capsys):
    """gs:// cannot be reached here; TF's in-memory ram:// filesystem takes the same URL code path.

    (Files are copied in sorted order: ram:// mistakes `X` for a folder once `X.idx` exists.)
    """
    root = "ram://inspect-test/ds"
    for name in sorted(os.listdir(dataset_dir)):
        tf.io.gfile.copy(os.path.join(dataset_dir, name), f"{root}/{name}", overwrite=True)
    rc, remote, _ = inspect_json(capsys, "--verify", root)
    assert rc == 0 and remote["datasets"][0]["cross_check_ok"]
    rc, local, _ = inspect_json(capsys, dataset_dir)
    for split in ("train", "val"):
        assert remote["splits"][split]["labels"] == local["splits"][split]["labels"]
        assert [s["sha256"] for s in remote["splits"][split]["shards"]] == [
            s["sha256"] for s in local["splits"][split]["shards"]]
    rc, report, _ = inspect_json(capsys, f"{root}/val-*.tfrecord")
    assert rc == 0 and report["splits"]["val"]["num_examples"] == local["splits"]["val"]["num_examples"]
