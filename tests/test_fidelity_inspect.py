"""Issue #22 points 17 and 19 for `detrec inspect`: one dataset per run, statistics in constant
memory with the figures they always had, a contact-sheet cell that cannot be drawn is reported
and marked, --verify compares labels.txt with dataset_info.json, and only "cannot access"
errors become problems (a bug surfaces).

Expected figures are computed here with numpy over records read by TensorFlow, independently
of detrec.inspector.
"""

from __future__ import annotations

import glob
import os
import random
import tracemalloc

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from detrec.core import fs, schema
from detrec.inspector import contact_sheet, report, stats
from detrec.core.fs import access_errors
from detrec.pipelines import cli, inspect_cmd
from tests import image_factory
from tests.test_inspect import _record, copy_dataset, grey_jpeg, inspect, inspect_json, offsets, write_tfrecord


# --- one dataset per run ------------------------------------------------------------------
def _refused(capsys, *paths: str) -> str:
    """Runs inspect, expects the one-line refusal (exit 2, no report); returns that line."""
    rc = cli.main(["inspect", *paths])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2 and out == "" and len(lines) == 1 and "Traceback" not in err, (rc, out, err)
    assert "run it once per dataset folder" in lines[0]
    return lines[0]


def test_two_dataset_folders_are_refused_in_one_line(dataset_dir, tmp_path, capsys):
    other = copy_dataset(dataset_dir, tmp_path)
    line = _refused(capsys, dataset_dir, other)
    assert dataset_dir in line and other in line
    # A shard of one dataset beside the other dataset, and a glob across both, are two datasets too.
    _refused(capsys, dataset_dir, os.path.join(other, "val-00000-of-00002.tfrecord"))
    _refused(capsys, os.path.join(dataset_dir, "val-00001-of-00002.tfrecord"),
             os.path.join(other, "val-00000-of-00002.tfrecord"))
    os.symlink(dataset_dir, tmp_path / "ds2")
    _refused(capsys, str(tmp_path / "ds*" / "val-*.tfrecord"))


def test_one_dataset_named_several_ways_is_inspected_once(dataset_dir, tmp_path, capsys):
    link = str(tmp_path / "link")
    os.symlink(dataset_dir, link)
    val = sorted(glob.glob(os.path.join(dataset_dir, "val-*.tfrecord")))
    rc, whole, _ = inspect_json(capsys, dataset_dir + "/", link, os.path.join(dataset_dir, "val-*.tfrecord"), val[0])
    assert rc == 0 and whole["ok"] and len(whole["datasets"]) == 1
    assert whole["splits"]["val"]["num_examples"] == sum(len(offsets(p)) for p in val)
    assert whole["splits"]["val"]["num_shards"] == len(val)  # each shard read once
    # Several shard files of one dataset: read, and cross-checked with its dataset_info.json.
    rc, shards, _ = inspect_json(capsys, *val)
    assert rc == 0 and list(shards["splits"]) == ["val"]
    assert shards["splits"]["val"]["labels"] == whole["splits"]["val"]["labels"]


# --- statistics: flat memory, the same figures --------------------------------------------
def _synthetic(n: int, seed: int):
    """n records of random sizes, classes and 0..4 boxes (no real image: stats never decode)."""
    rng = random.Random(seed)
    for i in range(n):
        boxes = []
        for _ in range(rng.randint(0, 4)):
            x0, y0 = rng.random() * 0.6, rng.random() * 0.6
            boxes.append(schema.Box(x0, y0, x0 + rng.random() * 0.4, y0 + rng.random() * 0.4, rng.randint(1, 9), "n"))
        yield schema.Record(encoded=b"", height=rng.randint(20, 2000), width=rng.randint(20, 2000), filename="f",
                            source_id=str(i), objects=tuple(boxes), class_label=rng.randint(0, 9), class_text="n",
                            sha256="-")


def test_split_stats_memory_does_not_grow_with_records():
    split = stats.SplitStats()
    tracemalloc.start()
    try:
        for record in _synthetic(1_000, seed=1):
            split.add(record)
        before, _ = tracemalloc.get_traced_memory()
        for record in _synthetic(30_000, seed=2):
            split.add(record)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert split.records == 31_000 and split.areas.count > 40_000
    # 30,000 more records (about 60,000 boxes) may not cost even one byte each.
    assert after - before < 30_000, f"{after - before} bytes for 30,000 records"


def _expected_figures(records) -> dict:
    """The statistics as numpy computes them over every value (how inspect computed them before)."""
    areas = [b.area for r in records for b in r.objects]
    per_image = [len(r.objects) for r in records]
    counts, edges = np.histogram(areas, bins=stats.AREA_BINS, range=(0.0, 1.0))
    q = np.quantile(areas, [0.0, 0.1, 0.5, 0.9, 1.0]) if areas else [None] * 5

    def value_range(values):
        return {"min": min(values), "max": max(values), "mean": round(float(np.mean(values)), 4)}

    return {
        "width": value_range([r.width for r in records]),
        "height": value_range([r.height for r in records]),
        "objects_per_image": value_range(per_image),
        "box_area": {"count": len(areas), **{k: None if v is None else round(float(v), 6)
                                             for k, v in zip(("min", "p10", "p50", "p90", "max"), q)},
                     "histogram": [{"lo": round(float(lo), 4), "hi": round(float(hi), 4), "count": int(c)}
                                   for lo, hi, c in zip(edges[:-1], edges[1:], counts)]},
    }


@pytest.mark.parametrize("n", [1, 2, 7, 20_000])
def test_split_stats_figures_are_numpys(n):
    records = list(_synthetic(n, seed=n))
    split = stats.SplitStats()
    for record in records:
        split.add(record)
    got, want = split.to_json({}), _expected_figures(records)
    for key in ("width", "height"):
        assert got[key] == want[key]
    assert {k: got["objects_per_image"][k] for k in ("min", "max", "mean")} == want["objects_per_image"]
    area, expected = got["box_area"], want["box_area"]
    assert area["outside"] == 0
    assert {k: area[k] for k in ("count", "min", "max", "histogram")} == {
        k: expected[k] for k in ("count", "min", "max", "histogram")}
    for k in ("p10", "p50", "p90") if expected["p50"] is not None else ():  # exact, or within 2**-12
        assert abs(area[k] - expected[k]) <= expected[k] * 2.0 ** -stats.SUB_BITS + 1e-6, (k, area[k], expected[k])


def test_split_stats_counts_impossible_areas_apart():
    split = stats.SplitStats()
    for box in (schema.Box(0.0, 0.0, 0.5, 0.5, 1, "n"), schema.Box(0.0, 0.0, 3.0, 1.0, 1, "n"),
                schema.Box(0.0, 0.0, float("inf"), 0.0, 1, "n"), schema.Box(0.2, 0.2, 0.2, 0.9, 1, "n")):
        split.add(schema.Record(encoded=b"", height=10, width=10, filename="f", source_id="s", objects=(box,),
                                class_label=1, class_text="n", sha256="-"))
    area = split.to_json({})["box_area"]
    assert area["count"] == 4 and area["outside"] == 2  # area 3.0 and inf * 0 (NaN)
    assert sum(b["count"] for b in area["histogram"]) == 2 and (area["min"], area["max"]) == (0.0, 0.25)


def _tf_records(paths: list[str]) -> list[schema.Record]:
    return [schema.decode(raw) for p in paths for raw in tf.data.TFRecordDataset(p).as_numpy_iterator()]


def test_the_printed_statistics_of_a_real_dataset_are_as_before(dataset_dir, capsys):
    rc, got, _ = inspect_json(capsys, dataset_dir)
    assert rc == 0
    before = dict(got, splits={})
    for split, s in got["splits"].items():
        want = _expected_figures(_tf_records([sh["file"] for sh in s["shards"]]))
        assert s["width"] == want["width"] and s["height"] == want["height"]
        assert {k: s["objects_per_image"][k] for k in ("min", "max", "mean")} == want["objects_per_image"]
        assert {k: v for k, v in s["box_area"].items() if k != "outside"} == want["box_area"]
        before["splits"][split] = {**s, **want, "objects_per_image": {**s["objects_per_image"],
                                                                    **want["objects_per_image"]}}
    rc, printed, _ = inspect(capsys, dataset_dir)
    assert rc == 0 and printed.strip() == inspect_cmd.render_text(before).strip()
    assert "box area (share of image, " in printed


# --- contact sheet: an image that does not decode -----------------------------------------
@pytest.mark.parametrize("broken", [b"not an image at all", image_factory.jpeg(48, 32)[:200]])
def test_an_undecodable_sample_is_reported_and_its_cell_marked(tmp_path, capsys, broken):
    good = _record(grey_jpeg(64, 64), 64, 64, [schema.Box(0.1, 0.1, 0.9, 0.9, 1, "n1")])
    bad = _record(broken, 48, 32, [schema.Box(0.1, 0.1, 0.9, 0.9, 1, "n1")])
    shard = str(tmp_path / "train-00000-of-00001.tfrecord")
    write_tfrecord(shard, [schema.encode(r) for r in (good, bad, good)])
    sheet = str(tmp_path / "sheet.png")
    rc, report_, lines = inspect_json(capsys, shard, "--contact-sheet", sheet, "--grid", "2x2", "--cell", "128")
    problem = report_["problems"][0]
    assert rc == 1 and not report_["ok"] and len(report_["problems"]) == 1
    assert (problem["file"], problem["record"], problem["offset"]) == (shard, 1, offsets(shard)[1][0])
    assert "does not decode" in problem["reason"] and "x.JPEG" in problem["reason"]
    assert lines == [f"detrec inspect: {shard}: offset {problem['offset']}, record 1: {problem['reason']}"]
    assert [(c["record"], c["x"], c["y"]) for c in report_["contact_sheet"]["cells"]] == [(0, 0, 0), (2, 0, 128)]
    pixels = np.asarray(Image.open(sheet)).astype(int)
    marked = pixels[:128, 128:256]  # the second cell: top right
    assert (marked == contact_sheet.UNDECODABLE_COLOR).all(axis=-1).mean() > 0.5
    assert (marked.min(axis=-1) > 200).sum() > 30  # white letters on it
    assert (pixels[128:, 128:] == 24).all()  # the unused fourth cell stays plain dark
    rc, _, _ = inspect_json(capsys, shard)  # without a contact sheet nothing decodes the image
    assert rc == 0


# --- --verify: labels.txt against dataset_info.json ---------------------------------------
def _rewrite_labels(ds: str, edit) -> str:
    path = os.path.join(ds, schema.LABELS_FILE)
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(edit(lines))
    return path


def _swap(lines):
    lines[2], lines[3] = lines[3], lines[2]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("edit, reason", [
    (_swap, "classes in another order: line 3 is `3 n02219486 ant`, dataset_info.json has `2 n02691156 airplane`"),
    (lambda lines: ("\n".join(lines) + "\n").replace("\tant\n", "\tbee\n"),
     "another class: line 4 is `3 n02219486 bee`, dataset_info.json has `3 n02219486 ant`"),
    (lambda lines: "\n".join(lines[:-1]) + "\n", "5 classes, dataset_info.json has 6: line 6 is missing"),
    (lambda lines: "\n".join(lines + ["6\tn0000\textra"]) + "\n", "7 classes, dataset_info.json has 6: line 7 is"),
    (lambda lines: "\n".join(lines[:2] + ["oops"] + lines[2:]) + "\n", "line 3 is not `id<TAB>synset<TAB>name`"),
])
def test_verify_compares_labels_txt_with_dataset_info(dataset_dir, tmp_path, capsys, edit, reason):
    ds = copy_dataset(dataset_dir, tmp_path)
    path = _rewrite_labels(ds, edit)
    rc, report_, lines = inspect_json(capsys, "--verify", ds)
    assert rc == 1 and not report_["datasets"][0]["cross_check_ok"]
    assert len(lines) == 1 and lines[0].startswith(f"detrec inspect: {path}: {reason}")
    rc, _, _ = inspect_json(capsys, ds)  # a plain read does not look at labels.txt
    assert rc == 0


def test_verify_accepts_labels_txt_with_a_bom_and_crlf(dataset_dir, tmp_path, capsys):
    ds = copy_dataset(dataset_dir, tmp_path)
    _rewrite_labels(ds, lambda lines: "\ufeff" + "\r\n".join(lines) + "\r\n")
    val = sorted(glob.glob(os.path.join(ds, "val-*.tfrecord")))
    rc, report_, _ = inspect_json(capsys, "--verify", *val)  # shards alone: their folder's labels.txt
    assert rc == 0 and report_["ok"]
    os.remove(os.path.join(ds, schema.LABELS_FILE))
    rc, report_, _ = inspect_json(capsys, "--verify", *val)
    assert rc == 0 and any("labels.txt: missing" in n for n in report_["notes"])


# --- only "cannot access" is a problem: a bug surfaces ------------------------------------
def test_a_bug_while_reading_surfaces_instead_of_a_read_error(dataset_dir, monkeypatch):
    def broken(self, record):
        raise ZeroDivisionError("a bug in the statistics")

    monkeypatch.setattr(stats.SplitStats, "add", broken)
    with pytest.raises(ZeroDivisionError):
        report.inspect_paths([dataset_dir])


def test_a_bug_while_resolving_surfaces_instead_of_cannot_access(dataset_dir, monkeypatch):
    def broken(path):
        raise TypeError("a bug in the file layer")

    monkeypatch.setattr(fs, "isdir", broken)
    with pytest.raises(TypeError):
        report.inspect_paths([dataset_dir])


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"),
                                   tf.errors.PermissionDeniedError(None, None, "403 Forbidden"),
                                   tf.errors.UnavailableError(None, None, "connection reset")])
def test_what_cannot_be_reached_is_a_problem(dataset_dir, monkeypatch, capsys, error):
    def unreachable(path):
        raise error

    monkeypatch.setattr(fs, "listdir", unreachable)
    found, _ = report.inspect_paths([dataset_dir])
    assert [p["reason"] for p in found["problems"]] == [f"cannot list: {str(error).splitlines()[0]}"]
    monkeypatch.undo()
    monkeypatch.setattr(fs, "size", unreachable)
    shard = os.path.join(dataset_dir, "val-00000-of-00002.tfrecord")
    found, _ = report.inspect_paths([shard])
    assert [p["reason"].split(":")[0] for p in found["problems"]] == ["cannot read"]  # not "size 0 bytes"
    assert found["splits"]["val"]["shards"][0]["num_bytes"] is None
    rc, out, lines = inspect(capsys, shard)
    assert rc == 1 and len(lines) == 1 and "val-00000-of-00002.tfrecord          0              -" in out


def test_access_errors_name_io_errors_only():
    errors = access_errors()
    assert issubclass(FileNotFoundError, errors) and issubclass(tf.errors.NotFoundError, errors)
    for bug in (TypeError, KeyError, ZeroDivisionError, tf.errors.InternalError, AssertionError):
        assert not issubclass(bug, errors), bug


def test_an_unwritable_contact_sheet_is_one_line(dataset_dir, tmp_path, capsys):
    sheet = str(tmp_path / "no" / "such" / "folder" / "sheet.png")
    assert cli.main(["inspect", dataset_dir, "--contact-sheet", sheet]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "Traceback" not in err
