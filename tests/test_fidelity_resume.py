"""Resume is exact, or refused in one line, where it used to drift silently (issue #22, point 15):

* DALI with `--steps-per-epoch` other than the data's steps: a trainer epoch is then not a
  stream epoch, and the resumed run must pick the stream up where the stopped run left it;
* `--weights` is part of a run's identity (it changes the model's input layers): a resume
  with other weights is refused; and `--weights` takes any path detrec.core.fs takes (URLs);
* ^C on one worker of a multi-worker run stops every worker at the same step, which all
  save together, and the rerun trains exactly what an uninterrupted run trains.

Trainer-level: the stops are the trainer's own ^C flag (in process) or a real SIGINT (the
2-process cluster); which examples each epoch trained on comes from `--record-keys`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from detrec.core.errors import UserError
from detrec.train import distribute, models, rundir
from detrec.train.config import TrainConfig
from detrec.train.data import Data, make_data
from detrec.train.trainer import Trainer
from tests import object_store
from tests.conftest import free_ports
from tests.test_multiworker import (FLAGS as CLUSTER_FLAGS, REPO, STEPS as CLUSTER_STEPS, assert_each_worker_trained_its_shards_once,
                                    assert_identical_weights, checkpoint_contents, run_cluster)
from tests.test_train_resume import BATCH, CLASSES, SIZE, STEPS, RecordingStream


def keys_file(model_dir: str, epoch: int, worker: int = 0) -> list[str]:
    with open(rundir.keys_path(model_dir, epoch, worker), encoding="ascii") as f:
        return f.read().split()


# --- DALI and --steps-per-epoch --------------------------------------------------------------
def train_dali(dataset_dir: str, model_dir: str, *, steps_per_epoch: int, epochs: int,
               stop_after: tuple[int, int] | None = None) -> int:
    """A Trainer on the real DALI line (CPU mode) of `dataset_dir` (96 train images, batch 8:
    12 steps of data per epoch); stops as ^C would right after batch `stop_after` (epoch,
    batch of that epoch's iterator) is drawn."""
    data, _ = make_data(distribute.default_strategy(), dataset_dir, batch_size=8, image_size=64, decoder="dali",
                        preprocess="inception", seed=3, with_keys=True, steps_per_epoch=steps_per_epoch)
    trainer: Trainer | None = None

    def train(epoch: int):
        for i, batch in enumerate(data.train(epoch)):
            if (epoch, i) == stop_after:
                trainer._stop.requested = True
            yield batch

    cfg = TrainConfig(model_dir=model_dir, model=models.ModelConfig("semi_alexnet", len(data.classes), 64),
                      epochs=epochs, batch_size=8, steps_per_epoch=steps_per_epoch, seed=3)
    trainer = Trainer(cfg, dataclasses.replace(data, train=train), out=io.StringIO())
    return trainer.run()


@pytest.mark.dali
@pytest.mark.parametrize("steps_per_epoch, epochs, stop_after", [
    (5, 3, (2, 0)),  # resumed at step 1 of epoch 3: 11 batches into the data's first pass
    (17, 2, (1, 3)),  # an epoch longer than the data: resumed 21 batches in, on its 2nd pass
])
def test_dali_with_its_own_steps_per_epoch_resumes_on_the_uninterrupted_examples(dataset_dir, tmp_path,
                                                                               steps_per_epoch, epochs, stop_after):
    reference = str(tmp_path / "reference")
    assert train_dali(dataset_dir, reference, steps_per_epoch=steps_per_epoch, epochs=epochs) == 0
    model_dir = str(tmp_path / "run")
    assert train_dali(dataset_dir, model_dir, steps_per_epoch=steps_per_epoch, epochs=epochs,
                      stop_after=stop_after) == 130
    assert train_dali(dataset_dir, model_dir, steps_per_epoch=steps_per_epoch, epochs=epochs) == 0
    stream = []
    for epoch in range(1, epochs + 1):  # per epoch (the resumed one included), the same examples in order
        got = keys_file(model_dir, epoch)
        assert len(got) == 8 * steps_per_epoch
        assert got == keys_file(reference, epoch), f"epoch {epoch}"
        stream += got
    # Whatever --steps-per-epoch, the run reads one stream: each pass over the data holds every example once.
    assert len(set(stream[:96])) == 96


# --- --weights: a resume key, and any path core.fs reads --------------------------------------
def save_alexnet_weights(path: str) -> keras.Model:
    model = models.semi_alexnet(len(CLASSES), SIZE)
    model.save_weights(path)
    return model


def run_with_weights(model_dir: str, weights: str | None, epochs: int) -> int:
    stream = RecordingStream()
    cfg = TrainConfig(model_dir=model_dir, model=models.ModelConfig("semi_alexnet", len(CLASSES), SIZE, weights),
                      epochs=epochs, batch_size=BATCH, steps_per_epoch=STEPS)
    stream.trainer = Trainer(cfg, Data(train=stream.train, val=stream.val, classes=CLASSES, with_keys=True),
                             out=io.StringIO())
    return stream.trainer.run()


@pytest.mark.parametrize("first, then", [("a", None), (None, "a"), ("a", "b")])
def test_a_resume_with_other_weights_is_refused_in_one_line(tmp_path, first, then):
    paths = {name: str(tmp_path / f"{name}.weights.h5") for name in ("a", "b")}
    for path in paths.values():
        save_alexnet_weights(path)
    model_dir = str(tmp_path / "run")
    assert run_with_weights(model_dir, paths.get(first), epochs=1) == 0
    with pytest.raises(UserError) as caught:
        run_with_weights(model_dir, paths.get(then), epochs=2)
    message = str(caught.value)
    assert "\n" not in message and "weights:" in message and "use another --model-dir or the same settings" in message
    assert metrics_steps(model_dir) == STEPS  # nothing trained


def test_a_resume_with_the_same_weights_goes_on(tmp_path):
    path = str(tmp_path / "w.weights.h5")
    save_alexnet_weights(path)
    model_dir = str(tmp_path / "run")
    assert run_with_weights(model_dir, path, epochs=1) == 0
    assert run_with_weights(model_dir, path, epochs=2) == 0
    assert metrics_steps(model_dir) == 2 * STEPS


def metrics_steps(model_dir: str) -> int:
    with open(os.path.join(model_dir, rundir.METRICS)) as f:
        return json.load(f)["total_steps"]


@pytest.mark.parametrize("name, suffix", [("semi_alexnet", ".weights.h5"), ("mobilenet_v3_small", ".weights.h5"),
                                          ("semi_alexnet", ".h5")])
def test_weights_from_an_object_store_url(tmp_path, name, suffix):
    """gs:// has no local path: --weights reads through detrec.core.fs, as every other input
    does (here the tests' object store, a URL scheme core.fs serves as it serves gs://)."""
    if name == "semi_alexnet":
        source = models.semi_alexnet(len(CLASSES), SIZE)
    else:
        source = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3),
                                                     include_preprocessing=False, pooling="avg")
    local = str(tmp_path / f"w{suffix}")
    if suffix == ".h5":  # the legacy format keras.applications' downloads use
        source.save(local)
    else:
        source.save_weights(local)
    url = object_store.upload(str(tmp_path), f"memobj://weights-{name}{suffix.replace('.', '-')}")
    model = models.build(models.ModelConfig(name, len(CLASSES), SIZE, weights=f"{url}/w{suffix}"))
    by_name = {layer.name: layer for layer in model.layers}
    for layer in source.layers:
        if layer.get_weights():
            for got, want in zip(by_name[layer.name].get_weights(), layer.get_weights()):
                np.testing.assert_array_equal(got, want)
    with pytest.raises(UserError, match=f"^{url}/missing.weights.h5: weights file not found$"):
        models.build(models.ModelConfig(name, len(CLASSES), SIZE, weights=f"{url}/missing.weights.h5"))


def test_a_weights_path_that_is_no_file_is_one_line(tmp_path):
    fifo = str(tmp_path / "w.weights.h5")
    os.mkfifo(fifo)  # opening it to read would block until a writer came
    for path, said in ((fifo, "not a regular file"), (str(tmp_path), "not a regular file"),
                       (str(tmp_path / "nope.weights.h5"), "weights file not found")):
        with pytest.raises(UserError, match=f"^{path}: {said}"):
            models.build(models.ModelConfig("semi_alexnet", len(CLASSES), SIZE, weights=path))


# --- ^C on one worker of a 2-worker run -------------------------------------------------------
def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # polling a condition, not standing in for one


@pytest.mark.slow  # two 2-process runs (~70 s): the non-chief, the reported case; the chief
@pytest.mark.parametrize("interrupted", [1])  # takes the same vote, so 0 adds time, not coverage
def test_ctrl_c_on_one_worker_stops_all_at_one_step_and_the_rerun_is_exact(dataset_dir, tmp_path, interrupted):
    model_dir = str(tmp_path / "model")
    hosts = ",".join(f"127.0.0.1:{port}" for port in free_ports(2))
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2")
    logs = [str(tmp_path / f"worker-{i}.log") for i in range(2)]
    procs = []
    try:
        for i, log in enumerate(logs):
            with open(log, "w") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "detrec.pipelines.cli", "train", "--data", dataset_dir, "--model-dir",
                     model_dir, *CLUSTER_FLAGS, "--epochs", "30", "--checkpoint-every", "2",
                     "--worker-hosts", hosts, "--worker-index", str(i)],
                    cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
        # The first checkpoint: training is under way, inside the ^C handler's reach.
        wait_for(lambda: tf.train.latest_checkpoint(os.path.join(model_dir, rundir.CHECKPOINTS)) is not None
                 or any(p.poll() is not None for p in procs), 300, "the first checkpoint")
        procs[interrupted].send_signal(signal.SIGINT)
        wait_for(lambda: all(p.poll() is not None for p in procs)
                 or any(p.poll() not in (None, 130) for p in procs), 300, "both workers to stop")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    texts = [open(log).read() for log in logs]
    assert [p.returncode for p in procs] == [130, 130], "\n\n".join(t[-3000:] for t in texts)
    assert "interrupt: saving a checkpoint" in texts[interrupted]
    assert "stopped at epoch" in texts[0] and "run the same command to resume" in texts[0]
    # Both saved once, at the same step: the same weights, optimizer slots and position.
    chief, chief_state = checkpoint_contents(os.path.join(model_dir, rundir.CHECKPOINTS))
    other, other_state = checkpoint_contents(os.path.join(model_dir, ".worker-1"))
    where = ("epoch", "position", "total_steps")
    assert [chief_state[k] for k in where] == [other_state[k] for k in where] and chief.keys() == other.keys()
    for name, value in chief.items():
        np.testing.assert_array_equal(value, other[name], err_msg=name)
    stopped = chief_state["epoch"]
    assert chief_state["total_steps"] == stopped * CLUSTER_STEPS + chief_state["position"] < 30 * CLUSTER_STEPS

    # The same command (to the end of the stopped epoch): the rest of the epoch, and only it.
    epochs = stopped + 1
    run_cluster(dataset_dir, model_dir, str(tmp_path), "--epochs", str(epochs))
    assert_identical_weights(model_dir, epochs * CLUSTER_STEPS)
    for epoch in range(1, epochs + 1):
        assert_each_worker_trained_its_shards_once(dataset_dir, model_dir, epoch)
