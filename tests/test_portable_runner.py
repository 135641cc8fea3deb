"""The real preprocess job through Beam's portable Job API (the path to Flink, Spark and Prism
clusters), on this machine: Beam's local job service and an external SDK worker pool, started
as `detrec beam-service` from a shell without the venv on PATH, in a network namespace of the
test's own (tests/portable_job.py). The shards and dataset_info must be byte-identical to the
DirectRunner's, and the summary printed with each split's seconds (the Job API has metrics)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from detrec.core import dataset_info

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "portable_job.py")


def _namespaces() -> bool:
    return bool(shutil.which("unshare")) and subprocess.run(
        ["unshare", "-rn", "true"], capture_output=True).returncode == 0


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not _namespaces(), reason="no network namespaces here (`unshare -rn` fails): "
                                 "Beam's servers listen on every interface, and this test exposes nothing")]


def test_the_job_through_the_portable_job_api_equals_the_direct_runners(synth_tree, dataset_dir, tmp_path):
    out = str(tmp_path / "portable")
    synset_map = os.path.join(synth_tree, "devkit", "data", "map_det.txt")
    proc = subprocess.run(
        ["unshare", "-rn", sys.executable, HELPER, "--", "--input", synth_tree, "--output", out,
         "--num-shards", "train=4,val=2", "--synset-map", synset_map],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    assert run["rc"] == 0, run["stderr"][-3000:]
    assert "Traceback" not in run["stderr"]
    assert run["ready"] == ["job service ready on port 8099 (--runner PortableRunner --job_endpoint localhost:8099)",
                            "worker pool ready on port 50000 (--environment_type EXTERNAL "
                            "--environment_config localhost:50000)"]
    assert run["server_exit_codes"] == [0, 0]  # SIGTERM stops both cleanly

    # Byte-identical to the DirectRunner's dataset (conftest's dataset_dir: same tree and flags).
    assert sorted(os.listdir(out)) == sorted(os.listdir(dataset_dir))
    for name in os.listdir(dataset_dir):
        with open(os.path.join(out, name), "rb") as a, open(os.path.join(dataset_dir, name), "rb") as b:
            assert a.read() == b.read(), name

    info = dataset_info.load(out)
    rows = {cells[0]: cells for cells in map(str.split, run["stdout"].splitlines())
            if cells[:1] in (["train"], ["val"]) and cells[1].isdigit()}  # the table's rows
    for split, entry in info.splits.items():
        assert rows[split][1] == str(entry.num_examples)
        assert rows[split][6] != "-", run["stdout"]  # seconds, from the job service's metrics
    assert "not available" not in run["stdout"]
