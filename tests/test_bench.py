"""`detrec bench preprocess` end to end on a tiny tree, its memory accounting, and
pipelines/dali_bench.py (DALI alone) in DALI's CPU mode."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from detrec.pipelines import bench_classic, bench_preprocess, bench_tfds, benchutil, cli


@pytest.mark.slow  # ~90 s: every preprocess contender on the synth tree, and on it twice over
def test_bench_preprocess_reports_every_contender(synth_tree, capsys):
    assert cli.main(["bench", "preprocess", synth_tree, "--small", "10", "--repeat", "1", "--scale", "2",
                     "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for row in report["rows"]:  # one round (how rounds combine: the next test)
        assert len(row["runs"]) == 1 and row["seconds"] == pytest.approx(row["runs"][0], abs=0.005)
    names = [row["name"] for row in report["rows"]]
    assert names[:2] == ["copy floor (cp -r)", "naive converter (1 process)"]
    assert sum(name.startswith("detrec preprocess") for name in names) == 4
    by = {row["name"]: row for row in report["rows"]}
    n = report["images"]
    assert by["naive, 10-image subset"]["images"] == by["detrec full, 10-image subset"]["images"] == 10
    assert by["naive, 2x tree"]["images"] == by["detrec full, 2x tree"]["images"] == 2 * n
    assert all(row["seconds"] > 0 and row["peak_mb"] > 0 for row in report["rows"])
    assert set(report["ratios"]) == {"full_vs_naive", "header_vs_copy", "memory_growth_max"}
    full = by["detrec preprocess --verify-images full"]
    assert report["ratios"]["full_vs_naive"] == full["vs_naive"]
    # Beam's worker processes are counted: two workers with TensorFlow loaded outweigh the
    # single in-memory process that does the same job.
    assert full["peak_mb"] > by["detrec preprocess --verify-images full (in-memory)"]["peak_mb"]
    scale = report["scale"]
    assert (scale["k"], scale["base_images"], scale["images"]) == (2, n, 2 * n)
    assert [s["images"] for s in scale["sizes"]] == [n, 2 * n]
    assert scale["kb_per_extra_image"] == pytest.approx(
        (by["detrec full, 2x tree"]["peak_mb"] - full["peak_mb"]) * 1000 / n)
    if bench_tfds.available():  # the TFDS build wrote all n examples, or the bench failed
        assert by["TFDS default build"]["images"] == n
        assert report["tfds"]["full_vs_tfds"] == pytest.approx(full["img_per_s"] / by["TFDS default build"]["img_per_s"])
    else:
        assert "TFDS default build" not in by and "not installed" in report["tfds"]["skipped"]


def _xml_and_jpegs(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "*", "DET", "train", "**", "*.*"), recursive=True))


def test_scaled_tree_is_hard_linked_with_new_ids(synth_tree, tmp_path):
    """--scale's tree: K copies of every image under new ids, sharing the original's inodes
    (no image bytes copied), which detrec preprocess converts to K x N records."""
    from detrec.core import dataset_info
    from tests.conftest import run_preprocess

    scaled = bench_preprocess.link_tree(synth_tree, "train", str(tmp_path / "scaled"), copies=2)
    originals = _xml_and_jpegs(synth_tree)
    n = sum(p.endswith(".xml") for p in originals)
    copies = _xml_and_jpegs(scaled)
    assert len(copies) == 2 * len(originals)
    for path in copies:
        rel = os.path.relpath(path, scaled)
        stem, ext = os.path.splitext(rel)
        original = os.path.join(synth_tree, stem.rsplit("_s", 1)[0] + ext)
        assert os.stat(path).st_ino == os.stat(original).st_ino and os.stat(path).st_nlink > 1
    ids = {os.path.splitext(os.path.relpath(p, os.path.join(scaled, "Annotations", "DET", "train")))[0]
           for p in copies if p.endswith(".xml")}
    assert len(ids) == 2 * n
    out = str(tmp_path / "out")
    assert run_preprocess(scaled, out, "--splits", "train") == 0
    assert dataset_info.load(out).splits["train"].num_examples == 2 * n


def _fake_measure(root: str, *_args) -> tuple[float, int]:
    """A contender that takes 1 ms and 100 MB + 10 KB per image of the tree it runs on."""
    images = bench_preprocess._count(root, "train")
    return 0.001 * images, 100_000_000 + 10_000 * images


def test_each_time_is_the_fastest_of_its_rounds_and_each_peak_their_median(synth_tree, monkeypatch, capsys):
    """Rounds: every contender once per round; its time is its fastest run, its peak the median."""
    rounds = [(3.0, 300_000_000), (1.0, 100_000_000), (2.0, 200_000_000)]  # a contender's 1st, 2nd, 3rd run
    calls: dict[tuple, int] = {}

    def contender(kind: str):
        def measure(*args):
            n = calls[(kind, repr(args))] = calls.get((kind, repr(args)), 0) + 1
            return rounds[n - 1]
        return measure

    for kind in ("_copy", "_naive", "_detrec"):
        monkeypatch.setattr(bench_preprocess, kind, contender(kind))
    monkeypatch.setattr(bench_tfds, "available", lambda: False)
    assert cli.main(["bench", "preprocess", synth_tree, "--small", "10", "--repeat", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for row in report["rows"]:
        assert len(row["runs"]) == 3 and sorted(row["runs"]) == [1.0, 2.0, 3.0], row
        assert row["seconds"] == 1.0 and row["peak_mb"] == pytest.approx(200), row


@pytest.mark.parametrize("with_tfds", [True, False])
def test_report_folds_in_scale_and_tfds_rows(synth_tree, monkeypatch, capsys, with_tfds):
    """The report's shape and arithmetic, with every contender faked (real runs: above)."""
    monkeypatch.setattr(bench_preprocess, "_copy", _fake_measure)
    monkeypatch.setattr(bench_preprocess, "_naive", _fake_measure)
    monkeypatch.setattr(bench_preprocess, "_detrec", _fake_measure)
    monkeypatch.setattr(bench_preprocess, "_tfds", lambda root, split, work, n: (0.002 * n, 600_000_000))
    monkeypatch.setattr(bench_tfds, "available", lambda: with_tfds)
    assert cli.main(["bench", "preprocess", synth_tree, "--small", "10", "--repeat", "1", "--scale", "3",
                     "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    n = report["images"]
    names = [row["name"] for row in report["rows"]]
    assert names[-4:] == ["naive, 10-image subset", "detrec full, 10-image subset", "naive, 3x tree",
                          "detrec full, 3x tree"]
    assert [row["images"] for row in report["rows"][-2:]] == [3 * n, 3 * n]
    scale = report["scale"]
    assert [s["size"] for s in scale["sizes"]] == ["N", "3N"]
    assert [s["full_img_per_s"] for s in scale["sizes"]] == pytest.approx([1000, 1000])
    assert [s["full_peak_mb"] for s in scale["sizes"]] == pytest.approx([100 + 0.01 * n, 100 + 0.03 * n])
    assert scale["kb_per_extra_image"] == pytest.approx(10) and scale["naive_kb_per_extra_image"] == pytest.approx(10)
    assert scale["met"] == {"full_vs_naive": False, "kb_per_extra_image": False}  # 1.0x, 10 KB
    if with_tfds:
        assert "TFDS default build" in names
        assert report["tfds"]["full_vs_tfds"] == pytest.approx(2) and report["tfds"]["header_vs_tfds"] == pytest.approx(2)
        assert report["tfds"]["met"] == {"full_vs_tfds": True, "header_vs_tfds": True}
    else:
        assert "TFDS default build" not in names and "not installed" in captured.err
        assert report["tfds"] == {"skipped": bench_preprocess.TFDS_MISSING}
    assert cli.main(["bench", "preprocess", synth_tree, "--small", "10", "--repeat", "1"]) == 0
    text = capsys.readouterr().out  # without --scale: the default report, no scale section
    assert "naive, 10-image subset" in text and "x tree" not in text and "per extra image" in text
    assert cli.main(["bench", "preprocess", synth_tree, "--small", "10", "--repeat", "1", "--scale", "3"]) == 0
    text = capsys.readouterr().out
    assert "detrec full vs naive at 3N: 1.00 (target >= 2.5) MISSED" in text
    assert "10.00 KB (target <= 1.0) MISSED" in text
    assert ("detrec full x2.00 (target >= 1.0) OK" in text) == with_tfds


def test_peers_add_the_classic_converter_with_its_targets(synth_tree, monkeypatch, capsys):
    """--peers: one more row, and detrec full and header over it, each against issue 27's target."""
    for kind in ("_copy", "_naive"):
        monkeypatch.setattr(bench_preprocess, kind, _fake_measure)
    speeds = {"full": 2.0, "header": 4.0}  # x the classic converter's 1 ms per image
    monkeypatch.setattr(bench_preprocess, "_detrec", lambda root, split, work, verify, runner: (
        0.001 * bench_preprocess._count(root, "train") / speeds[verify], 100_000_000))
    monkeypatch.setattr(bench_preprocess, "_classic", lambda root, split, work, n: (0.001 * n, 300_000_000))
    monkeypatch.setattr(bench_tfds, "available", lambda: False)
    assert cli.main(["bench", "preprocess", synth_tree, "--small", "10", "--repeat", "1", "--peers", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "classic threaded converter" in [row["name"] for row in report["rows"]]
    peers = report["peers"]
    assert peers["full_vs_classic"] == pytest.approx(2.0) and peers["header_vs_classic"] == pytest.approx(4.0)
    assert peers["met"] == {"full_vs_classic": True, "header_vs_classic": True}  # targets 1.8 and 3.8
    speeds["header"] = 3.0
    assert cli.main(["bench", "preprocess", synth_tree, "--small", "10", "--repeat", "1", "--peers"]) == 0
    text = capsys.readouterr().out
    assert "detrec full x2.00 (target >= 1.8) OK, detrec header x3.00 (target >= 3.8) MISSED" in text
    assert cli.main(["bench", "preprocess", synth_tree, "--small", "10", "--repeat", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["peers"] is None  # only with --peers


def test_classic_converter_writes_every_image_with_its_label_and_boxes(synth_tree, tmp_path):
    """The peer does the classic converter's work for real: every image once, its own bytes,
    its XML's synset and boxes, in the shard count asked for, from two threads."""
    import tensorflow as tf
    from lxml import etree


    pairs = benchutil.det_pairs(synth_tree, "train")
    assert bench_classic.classic_convert(synth_tree, "train", str(tmp_path), num_threads=2, num_shards=4) == len(pairs)
    shards = sorted(os.listdir(tmp_path))
    assert shards == [f"train-{i:05d}-of-00004" for i in range(4)]
    by_name = {}
    for shard in shards:
        for record in tf.data.TFRecordDataset(str(tmp_path / shard)):
            feature = tf.train.Example.FromString(record.numpy()).features.feature
            by_name[feature["image/filename"].bytes_list.value[0].decode()] = feature
    assert len(by_name) == len(pairs)
    for xml, image in pairs:
        feature = by_name[os.path.relpath(image, os.path.join(synth_tree, "Data", "DET", "train"))[:-5]]
        with open(image, "rb") as f:
            assert feature["image/encoded"].bytes_list.value[0] == f.read()
        root = etree.parse(xml).getroot()
        names = [obj.findtext("name") for obj in root.iter("object")]
        assert feature["image/class/synset"].bytes_list.value[0].decode() == (names[0] if names else "")
        assert (feature["image/class/label"].int64_list.value[0] > 0) == bool(names)
        width = float(root.findtext("size/width"))
        xmins = [float(obj.findtext("bndbox/xmin")) / width for obj in root.iter("object")]
        assert list(feature["image/object/bbox/xmin"].float_list.value) == pytest.approx(xmins)
        assert feature["image/height"].int64_list.value[0] == int(root.findtext("size/height"))


def test_scale_must_be_at_least_two(synth_tree, capsys):
    assert cli.main(["bench", "preprocess", synth_tree, "--scale", "1"]) == 2
    assert "--scale" in capsys.readouterr().err


def test_tfds_builder_module_imports_without_tensorflow_datasets():
    """bench-tfds is an optional extra: the module imports, and says so, where it is missing."""
    code = ("import sys; sys.modules['tensorflow_datasets'] = None\n"
            "from detrec.pipelines import bench_tfds, bench_preprocess\n"
            "assert not bench_tfds.available()\n"
            "try:\n    bench_tfds.builder_class()\nexcept ImportError:\n    print('lazy')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "lazy", done.stderr[-2000:]


def test_tfds_build_writes_every_example(synth_tree, tmp_path):
    import tensorflow_datasets as tfds  # `make test` installs the bench-tfds extra

    n = bench_preprocess._count(synth_tree, "train")
    assert bench_tfds.build(synth_tree, "train", str(tmp_path / "tfds")) == n
    (builder_dir,) = glob.glob(str(tmp_path / "tfds" / "det_tree" / "*"))
    builder = tfds.builder_from_directory(builder_dir)
    assert builder.info.features["label"].names[0] == "background"
    example = next(iter(tfds.as_numpy(builder.as_dataset(split="train").take(1))))
    assert example["image"].ndim == 3 and len(example["objects"]["label"]) == len(example["objects"]["bbox"])


def test_tree_rss_counts_children_started_from_threads():
    """Beam starts its SDK workers from a thread: /proc/PID/task/PID/children misses them."""
    started, children = threading.Event(), []

    def spawn():
        children.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]))
        started.set()

    threading.Thread(target=spawn).start()
    started.wait()
    child = children[0]
    try:
        assert child.pid in benchutil._children(os.getpid())
    finally:
        child.kill()
        child.wait()


def test_peak_memory_outlives_a_failed_sample(monkeypatch):
    """A long run's sampler skips a sample that fails instead of dying with it."""
    values = iter([RuntimeError("odd /proc read"), 5, 7, 6])

    def fake_tree_rss(pid):
        value = next(values, 1)
        if isinstance(value, Exception):
            raise value
        return value

    monkeypatch.setattr(benchutil, "tree_rss", fake_tree_rss)
    with benchutil.PeakMemory(os.getpid(), interval=0.01) as mem:
        while mem.samples < 4:
            time.sleep(0.01)
    assert mem.peak == 7 and mem.failed == 1


def test_run_measured_keeps_the_end_of_long_output():
    code = "import sys; sys.stderr.write('x' * 200000 + 'END'); print('done')"
    seconds, _, proc = benchutil.run_measured([sys.executable, "-c", code])
    assert proc.returncode == 0 and seconds > 0 and proc.stdout == "done\n"
    assert len(proc.stderr) == benchutil.OUTPUT_TAIL and proc.stderr.endswith("xEND")


# --- pipelines/dali_bench.py: DALI alone, for GPU machines without TensorFlow --------------
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DALI_BENCH = os.path.join(REPO, "pipelines", "dali_bench.py")


def test_dali_bench_runs_without_tensorflow_or_detrec(tmp_path):
    """What a GPU session runs: synthetic shards, img/s, parity, one JSON document. Here on
    DALI's CPU decoder; the script must import neither TensorFlow nor detrec (a GPU machine
    may have neither)."""
    code = ("import runpy, sys, json; sys.argv = ['dali_bench', '--synth', '96', '--batch-size', '16', "
            "'--seconds', '0.5', '--warmup', '0.2', '--parity', '--json']\n"
            "try:\n    runpy.run_path(%r, run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'detrec', 'keras'))\n"
            "print('IMPORTED', json.dumps(bad))" % DALI_BENCH)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out, imported = done.stdout.rsplit("IMPORTED", 1)
    assert json.loads(imported) == []
    report = json.loads(out)
    assert report["device"] == "cpu" and report["dali_mixed_img_s"] is None and not report["meets_target"]
    (row,) = report["rows"]
    assert row["img_s"] > 0 and row["batches"] >= 1 and report["best"] == row
    assert report["parity"]["ok"] and report["parity"]["tolerance"] == {"mean_abs": 1.0, "p999_abs": 4.0}
    assert report["target_img_s"] == 10_000


def test_dali_bench_reads_detrec_shards(dataset_dir, capsys):
    from detrec.pipelines import dali_bench

    assert dali_bench.main(["--data", dataset_dir, "--batch-size", "8", "--image-size", "32", "--seconds", "0.3",
                            "--warmup", "0.1"]) == 0
    assert "DALI cpu:" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no split 'test'"):
        dali_bench.main(["--data", dataset_dir, "--split", "test"])


def test_dali_bench_builds_the_trainers_decoders():
    """The bench keeps its own copy of the settings (it may not import detrec): held equal here."""
    from detrec.pipelines import dali_bench
    from detrec.train.input import config, dali
    from detrec.train.transforms import inception

    for gpu in (False, True):
        library = dali.decoder_args(gpu)
        library.pop("output_type")
        assert dali_bench.decoder_args(gpu) == library
    assert (dali_bench.HW_DECODER_LOAD, dali_bench.PREALLOCATE) == (config.HW_DECODER_LOAD, config.PREALLOCATE)
    assert dali_bench.MAX_THREADS == dali.MAX_THREADS and dali_bench.TOLERANCE == dali.GPU_PARITY
    assert (dali_bench.AREA, dali_bench.ASPECT, dali_bench.ATTEMPTS, dali_bench.SCALE) == (
        inception.AREA_RANGE, inception.ASPECT_RATIO_RANGE, inception.MAX_ATTEMPTS, inception.INCEPTION_SCALE)
    from detrec.core import schema

    assert (dali_bench.ENCODED, dali_bench.LABEL) == (schema.ENCODED, schema.CLASS_LABEL)


def test_dali_bench_examples_parse_as_tf_examples():
    import tensorflow as tf

    from detrec.pipelines import dali_bench

    parsed = tf.io.parse_single_example(dali_bench.example(b"\xff\xd8jpeg", 300), {
        "image/encoded": tf.io.FixedLenFeature([], tf.string), "image/class/label": tf.io.FixedLenFeature([], tf.int64)})
    assert parsed["image/encoded"].numpy() == b"\xff\xd8jpeg" and int(parsed["image/class/label"]) == 300
