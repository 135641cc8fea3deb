"""`detrec train --data-service grpc://HOST:PORT`: the training input pipeline runs on a real
tf.data service (one dispatcher and two workers on loopback, in this process).

On the session `dataset_dir` (96 train images in 4 shards of 24) with batch 8, every service
worker's share is whole shards, so no partial batch is dropped and one epoch through the
service must be exactly the train split: `--record-keys` lists what the trainer consumed,
compared with the shards read through detrec.core.schema.
"""

from __future__ import annotations

import collections
import json
import os
import time

import pytest
import tensorflow as tf

from detrec.pipelines import cli
from detrec.core import dataset_info, schema
from detrec.train import data_service, rundir

STEPS = 12  # 96 // 8
SMALL = ["--image-size", "64", "--batch-size", "8", "--seed", "0", "--record-keys"]


@pytest.fixture
def service():
    """(address, [workers]): a dispatcher and two workers on loopback, for one test (a worker
    left idle can take its heartbeat interval to stop; a busy one stops at once)."""
    dispatcher = data_service.start_dispatcher(port=0)
    address = data_service.dispatcher_address(dispatcher)
    workers = [data_service.start_worker(address, port=0, worker_address="localhost:%port%") for _ in range(2)]
    deadline = time.monotonic() + 30
    while dispatcher._num_workers() < 2:  # registration is asynchronous; poll the condition
        assert time.monotonic() < deadline, "the workers did not register"
        time.sleep(0.05)
    yield address, workers
    for server in (*workers, dispatcher):
        server.stop()


def train(data: str, model_dir: str, address: str, *flags: str) -> int:
    return cli.main(["train", "--data", data, "--model-dir", model_dir, *SMALL, "--data-service", address, *flags])


def metrics(model_dir: str) -> dict:
    with open(os.path.join(model_dir, rundir.METRICS)) as f:
        return json.load(f)


def trained_keys(model_dir: str, epoch: int) -> list[str]:
    with open(rundir.keys_path(model_dir, epoch, 0)) as f:
        return f.read().split()


def train_keys(data_dir: str) -> collections.Counter:
    info = dataset_info.load(data_dir)
    files = dataset_info.shard_files(info, data_dir, "train")
    return collections.Counter(schema.decode(r.numpy()).sha256 for r in tf.data.TFRecordDataset(files))


@pytest.mark.slow  # ~6 s: two training runs through the service
def test_an_epoch_through_the_service_trains_on_every_example_once(dataset_dir, service, tmp_path, capsys):
    address, workers = service
    tasks_before = sum(w._num_tasks() for w in workers)
    model_dir = str(tmp_path / "m")
    assert train(dataset_dir, model_dir, address, "--epochs", "1", "--checkpoint-every", "5") == 0
    out = capsys.readouterr().out
    assert f"decoder cpu on {address}" in out and "epoch 1/1: train loss" in out
    assert sum(w._num_tasks() for w in workers) > tasks_before  # the service did the work
    doc = metrics(model_dir)
    assert doc["total_steps"] == STEPS
    (epoch,) = doc["epochs"]
    assert epoch["steps"] == STEPS and epoch["images_per_sec"] > 0
    assert 0 <= epoch["val_top1"] <= epoch["val_top5"] <= 1
    assert collections.Counter(trained_keys(model_dir, 1)) == train_keys(dataset_dir)
    assert sorted(os.listdir(os.path.join(model_dir, rundir.EXPORT))) == ["labels.json", "model.keras"]

    # A run that died after its step-10 checkpoint (the state file rolled back to it, as a
    # SIGKILL before the epoch-end save leaves it): the rerun trains the epoch's last 2
    # steps from a fresh service epoch - documented as not example-exact - and ends with the
    # same totals as an uninterrupted run.
    directory = os.path.join(model_dir, rundir.CHECKPOINTS)
    paths = list(tf.train.get_checkpoint_state(directory).all_model_checkpoint_paths)
    assert len(paths) == 3  # steps 5, 10 and the epoch end (12)
    tf.compat.v1.train.update_checkpoint_state(directory, paths[1], all_model_checkpoint_paths=paths[:2])
    assert train(dataset_dir, model_dir, address, "--epochs", "1", "--checkpoint-every", "5") == 0
    out = capsys.readouterr().out
    assert "step 10/12 of the epoch" in out and "not reproducible (tf.data service)" in out
    assert "the remaining 2 steps of epoch 1" in out
    doc = metrics(model_dir)
    assert doc["total_steps"] == STEPS and [e["epoch"] for e in doc["epochs"]] == [1]
    assert len(trained_keys(model_dir, 1)) == 2 * 8  # only what this run trained on


def test_dali_cannot_go_through_the_service(dataset_dir, tmp_path, capsys):
    # Refused before anything connects: no service needed behind the address.
    assert train(dataset_dir, str(tmp_path / "m"), "grpc://localhost:5050", "--decoder", "dali") == 2
    err = capsys.readouterr().err
    assert err.startswith("detrec train: error: --decoder dali cannot go through --data-service")
    assert err.count("\n") == 1


def test_bad_service_address_is_one_line(dataset_dir, tmp_path, capsys):
    assert train(dataset_dir, str(tmp_path / "m"), "localhost:5050") == 2
    err = capsys.readouterr().err
    assert err.startswith("detrec train: error: data service address 'localhost:5050'") and err.count("\n") == 1
