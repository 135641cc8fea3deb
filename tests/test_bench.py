"""`detrec bench preprocess` end to end on a tiny tree, and its memory accounting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from detrec.pipelines import benchutil, cli


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
