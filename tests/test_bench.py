"""`detrec bench preprocess` end to end on a tiny tree, its memory accounting, and
pipelines/dali_bench.py (DALI alone) in DALI's CPU mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from detrec.pipelines import benchutil, cli


@pytest.mark.slow  # ~55 s: every preprocess contender on the synth tree
def test_bench_preprocess_reports_every_contender(synth_tree, capsys):
    assert cli.main(["bench", "preprocess", synth_tree, "--small", "10", "--repeat", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for row in report["rows"]:  # two rounds: the faster time counts, and the median (mean) peak
        assert len(row["runs"]) == 2 and row["seconds"] == pytest.approx(min(row["runs"]), abs=0.005)
        assert row["peak_mb"] == pytest.approx(sum(row["peaks_mb"]) / 2, abs=1)
    names = [row["name"] for row in report["rows"]]
    assert names[:2] == ["copy floor (cp -r)", "naive converter (1 process)"]
    assert sum(name.startswith("detrec preprocess") for name in names) == 4
    assert [row["images"] for row in report["rows"][-2:]] == [10, 10]
    assert all(row["seconds"] > 0 and row["peak_mb"] > 0 for row in report["rows"])
    assert set(report["ratios"]) == {"full_vs_naive", "header_vs_copy", "memory_growth_max"}
    full = next(r for r in report["rows"] if r["name"] == "detrec preprocess --verify-images full")
    assert report["ratios"]["full_vs_naive"] == full["vs_naive"]
    # Beam's worker processes are counted: two workers with TensorFlow loaded outweigh the
    # single in-memory process that does the same job.
    in_memory = next(r for r in report["rows"] if r["name"] == "detrec preprocess --verify-images full (in-memory)")
    assert full["peak_mb"] > in_memory["peak_mb"]


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
    from detrec.train import augment
    from detrec.train.input import config, dali

    for gpu in (False, True):
        library = dali.decoder_args(gpu)
        library.pop("output_type")
        assert dali_bench.decoder_args(gpu) == library
    assert (dali_bench.HW_DECODER_LOAD, dali_bench.PREALLOCATE) == (config.HW_DECODER_LOAD, config.PREALLOCATE)
    assert dali_bench.IMAGENET_PREALLOCATE == config.IMAGENET_PREALLOCATE
    assert dali_bench.MAX_THREADS == dali.MAX_THREADS and dali_bench.TOLERANCE == dali.GPU_PARITY
    assert (dali_bench.AREA, dali_bench.ASPECT, dali_bench.ATTEMPTS, dali_bench.SCALE) == (
        augment.AREA_RANGE, augment.ASPECT_RATIO_RANGE, augment.MAX_ATTEMPTS, augment.INCEPTION_SCALE)
    from detrec.core import schema

    assert (dali_bench.ENCODED, dali_bench.LABEL) == (schema.ENCODED, schema.CLASS_LABEL)


def test_dali_bench_examples_parse_as_tf_examples():
    import tensorflow as tf

    from detrec.pipelines import dali_bench

    parsed = tf.io.parse_single_example(dali_bench.example(b"\xff\xd8jpeg", 300), {
        "image/encoded": tf.io.FixedLenFeature([], tf.string), "image/class/label": tf.io.FixedLenFeature([], tf.int64)})
    assert parsed["image/encoded"].numpy() == b"\xff\xd8jpeg" and int(parsed["image/class/label"]) == 300
