"""Multi-worker training (MultiWorkerMirroredStrategy) with 2 real worker processes on 127.0.0.1.

The two workers run `detrec train --worker-hosts ... --worker-index i` on the session
`dataset_dir` (96 train images in 4 shards of 24, 32 val) at 64 px with a global batch of 8,
so an epoch is 12 steps of 4 images per worker. What is checked comes from outside the
trainer: the weights are read back from both workers' checkpoints, and the examples each
worker trained on (`--record-keys`) are compared with the shards read through
detrec.core.schema. Waits poll the processes; no fixed sleeps.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from detrec.pipelines import cli
from detrec.core import dataset_info, schema
from detrec.core.errors import UserError
from detrec.train import data_service, distribute, rundir
from tests.conftest import free_ports

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12  # 96 train examples // global batch 8
FLAGS = ["--image-size", "64", "--batch-size", "8", "--seed", "0", "--decoder", "cpu", "--record-keys"]


def run_cluster(data: str, model_dirs: str | list[str], logs: str, *flags: str, expect: int = 0,
                timeout: float = 300) -> list[str]:
    """Runs worker 0 (the chief) and worker 1 to completion; returns their outputs.

    `model_dirs`: one dir for both (shared storage) or one per worker. Both must exit with
    `expect`; if one fails early, the other is killed at once instead of waiting for its
    collectives to time out.
    """
    if isinstance(model_dirs, str):
        model_dirs = [model_dirs, model_dirs]
    hosts = ",".join(f"127.0.0.1:{port}" for port in free_ports(2))
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2")
    paths = [os.path.join(logs, f"worker-{i}.log") for i in range(2)]
    procs = []
    for i, path in enumerate(paths):
        with open(path, "a") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "detrec.pipelines.cli", "train", "--data", data, "--model-dir", model_dirs[i],
                 *FLAGS, *flags, "--worker-hosts", hosts, "--worker-index", str(i)],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, expect) for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    texts = []
    for path in paths:
        with open(path) as f:
            texts.append(f.read())
    assert [p.returncode for p in procs] == [expect, expect], "\n\n".join(t[-3000:] for t in texts)
    return texts


def checkpoint_contents(directory: str) -> tuple[dict[str, np.ndarray], dict]:
    """(model and optimizer variables, run state) of the latest checkpoint in `directory`."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(directory))
    names = reader.get_variable_to_shape_map()
    variables = {k: reader.get_tensor(k) for k in names if k.startswith(("model/", "optimizer/"))}
    state = json.loads(reader.get_tensor(next(k for k in names if k.startswith("state/"))))
    return variables, state


def assert_identical_weights(model_dir: str, total_steps: int) -> None:
    chief, chief_state = checkpoint_contents(os.path.join(model_dir, rundir.CHECKPOINTS))
    other, other_state = checkpoint_contents(os.path.join(model_dir, ".worker-1"))
    assert len(chief) > 10 and chief.keys() == other.keys()
    for name, value in chief.items():
        np.testing.assert_array_equal(value, other[name], err_msg=name)
    for state in (chief_state, other_state):
        assert state["total_steps"] == total_steps and state["position"] == 0


def keys_by_shard(data_dir: str, split: str) -> list[list[str]]:
    """Each shard's record keys, in dataset_info order, read through schema.decode only."""
    info = dataset_info.load(data_dir)
    return [[schema.decode(r.numpy()).sha256 for r in tf.data.TFRecordDataset(path)]
            for path in dataset_info.shard_files(info, data_dir, split)]


def assert_each_worker_trained_its_shards_once(data_dir: str, model_dir: str, epoch: int) -> None:
    shards = keys_by_shard(data_dir, "train")
    assert len(shards) == 4
    seen = []
    for worker in range(2):
        with open(rundir.keys_path(model_dir, epoch, worker)) as f:
            keys = f.read().split()
        # Worker i reads shard files i, i+2: disjoint files, each example once.
        expected = shards[worker] + shards[worker + 2]
        assert sorted(keys) == sorted(expected), f"worker {worker}, epoch {epoch}"
        seen += keys
    assert sorted(seen) == sorted(k for shard in shards for k in shard)  # together: all, once


def metrics(model_dir: str) -> dict:
    with open(os.path.join(model_dir, rundir.METRICS)) as f:
        return json.load(f)


@pytest.mark.slow  # ~60-80 s on 2 shared cores: three 2-process runs
def test_two_workers_train_identically_on_disjoint_shards_and_resume_together(dataset_dir, tmp_path):
    model_dir = str(tmp_path / "model")  # shared by both workers, as a gs:// dir would be
    chief_log, worker_log = run_cluster(dataset_dir, model_dir, str(tmp_path), "--epochs", "1")
    assert "2 replica(s) on 2 workers (this is worker 0)" in chief_log
    for log in (chief_log, worker_log):  # each says once that its gRPC port is open to anyone
        warnings = [line for line in log.splitlines() if line.startswith("detrec train: warning:")]
        assert len(warnings) == 1 and "no authentication" in warnings[0] and "127.0.0.1:" in warnings[0]
    assert "epoch 1/1: train loss" in chief_log and "epoch 1/1" not in worker_log  # chief reports
    doc = metrics(model_dir)
    assert doc["total_steps"] == STEPS and doc["epochs"][0]["steps"] == STEPS
    assert 0 <= doc["epochs"][0]["val_top1"] <= 1
    assert_identical_weights(model_dir, STEPS)
    assert_each_worker_trained_its_shards_once(dataset_dir, model_dir, 1)
    assert sorted(os.listdir(os.path.join(model_dir, rundir.EXPORT))) == ["labels.json", "model.keras"]

    # The same command with one more epoch: both workers resume from the chief's checkpoint.
    chief_log, _ = run_cluster(dataset_dir, model_dir, str(tmp_path), "--epochs", "2")
    assert f"resuming from {model_dir}/checkpoints/ckpt-" in chief_log
    doc = metrics(model_dir)
    assert [e["epoch"] for e in doc["epochs"]] == [1, 2] and doc["total_steps"] == 2 * STEPS
    assert_identical_weights(model_dir, 2 * STEPS)
    assert_each_worker_trained_its_shards_once(dataset_dir, model_dir, 2)

    # Worker 1 pointed at an empty dir (e.g. local disks, not shared storage) would start from
    # step 0 while the chief resumes at 24: both stop with the same one-line error, no hang.
    logs = run_cluster(dataset_dir, [model_dir, str(tmp_path / "elsewhere")], str(tmp_path), "--epochs", "3",
                       expect=2)
    for log in logs:
        (line,) = [l for l in log.splitlines() if l.startswith("detrec train: error:")]
        assert "the 2 workers resumed from different checkpoints" in line
    assert metrics(model_dir)["total_steps"] == 2 * STEPS


@pytest.mark.slow  # ~30 s: one 2-process run
def test_two_workers_through_the_data_service(dataset_dir, tmp_path):
    """Each trainer worker sends its own share of the shards through the service (a
    dispatcher and two service workers in this process): same checks as without it, under
    --task localize (the boxes and the object-keeping crops travel with the service's graph)."""
    dispatcher = data_service.start_dispatcher(port=0)
    address = data_service.dispatcher_address(dispatcher)
    servers = [data_service.start_worker(address, port=0, worker_address="localhost:%port%") for _ in range(2)]
    try:
        deadline = time.monotonic() + 30
        while dispatcher._num_workers() < 2:  # registration is asynchronous; poll the condition
            assert time.monotonic() < deadline, "the service workers did not register"
            time.sleep(0.05)
        model_dir = str(tmp_path / "model")
        # A service worker holds its task from the job's start until its first heartbeat after
        # the epoch ends, then drops it: sample the counts while the cluster runs, not after.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            run = pool.submit(run_cluster, dataset_dir, model_dir, str(tmp_path), "--epochs", "1",
                              "--data-service", address, "--task", "localize")
            most_tasks = [0, 0]
            while True:
                most_tasks = [max(seen, server._num_tasks()) for seen, server in zip(most_tasks, servers)]
                if run.done():
                    break
                concurrent.futures.wait([run], timeout=0.05)
            chief_log, _ = run.result()
        assert f"on 2 workers (this is worker 0), decoder cpu on {address}" in chief_log
        assert min(most_tasks) >= 1, most_tasks  # both service workers did work for the job
    finally:
        for server in (*servers, dispatcher):
            server.stop()
    assert metrics(model_dir)["total_steps"] == STEPS
    assert 0 <= metrics(model_dir)["epochs"][0]["val_loc_accuracy"] <= 1
    assert_identical_weights(model_dir, STEPS)
    assert_each_worker_trained_its_shards_once(dataset_dir, model_dir, 1)


# --- flag and TF_CONFIG errors (one line, before any server starts) --------------------------
@pytest.mark.parametrize("flags, message", [
    (["--worker-hosts", "127.0.0.1:2222,127.0.0.1"], "'127.0.0.1' is not HOST:PORT"),
    (["--worker-hosts", "a:1,a:1", "--worker-index", "0"], "lists an address twice"),
    (["--worker-hosts", "a:1,b:1", "--worker-index", "2"], "--worker-index 2 outside the 2 --worker-hosts"),
    (["--worker-hosts", "a:1,b:1"], "needs --worker-index"),
    (["--worker-index", "1"], "--worker-index needs --worker-hosts"),
])
def test_bad_worker_flags_are_one_line_errors(dataset_dir, tmp_path, capsys, flags, message):
    assert cli.main(["train", "--data", dataset_dir, "--model-dir", str(tmp_path / "m"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("detrec train: error: ") and message in err and err.count("\n") == 1
    assert "TF_CONFIG" not in os.environ


def test_tf_config_is_checked(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(UserError, match="TF_CONFIG is not a JSON object"):
        distribute.make_strategy()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1"], "ps": ["c:1"]},
                                                "task": {"type": "ps", "index": 0}}))
    with pytest.raises(UserError, match="task type 'ps'"):
        distribute.make_strategy()
    # A cluster of one task is just a single-process run.
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}))
    assert distribute.make_strategy().num_replicas_in_sync == 1
