"""`detrec train` (train/trainer.py, train/data.py, pipelines/train_cmd.py) on real shards made by
`detrec preprocess`.

Small runs on the session `dataset_dir` (96 train / 32 val images, 5 classes + background):
semi_alexnet at 64 px, batch 8, so an epoch is 12 steps. Killed runs are real subprocesses;
waits poll the checkpoint directory, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from detrec.pipelines import cli
from detrec.core import schema
from detrec.train import input as input_lib
from detrec.train import rundir
from detrec.train.data import make_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12  # 96 train examples // batch 8
SMALL = ["--image-size", "64", "--batch-size", "8", "--seed", "0", "--decoder", "cpu"]


def train(data: str, model_dir: str, *flags: str) -> int:
    return cli.main(["train", "--data", data, "--model-dir", model_dir, *SMALL, *flags])


def metrics(model_dir: str) -> dict:
    with open(os.path.join(model_dir, rundir.METRICS)) as f:
        return json.load(f)


def spawn(data: str, model_dir: str, log: str, *flags: str) -> subprocess.Popen:
    """`python -m detrec.pipelines.cli train ...` in its own process, output to `log`.

    TF_DETERMINISTIC_OPS makes runs bit-for-bit repeatable, so a resumed run can be compared
    with an uninterrupted one exactly.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_DETERMINISTIC_OPS="1")
    cmd = [sys.executable, "-m", "detrec.pipelines.cli", "train", "--data", data, "--model-dir", model_dir,
           *SMALL, *flags]
    with open(log, "a") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_for_checkpoint(proc: subprocess.Popen, model_dir: str, timeout: float = 300) -> None:
    """Polls until the run has listed a checkpoint; fails if the process ends first."""
    directory = os.path.join(model_dir, rundir.CHECKPOINTS)
    deadline = time.monotonic() + timeout
    while tf.train.get_checkpoint_state(directory) is None:
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before any checkpoint"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def checkpoint_state(model_dir: str) -> dict:
    """The run state (epoch, position, total_steps) stored inside the latest checkpoint."""
    path = tf.train.latest_checkpoint(os.path.join(model_dir, rundir.CHECKPOINTS))
    reader = tf.train.load_checkpoint(path)
    key = next(k for k in reader.get_variable_to_shape_map() if k.startswith("state/"))
    return json.loads(reader.get_tensor(key))


def evaluate(model, dataset: tf.data.Dataset) -> dict:
    """Top-1 of `model` over `dataset` of (images, labels), and how many examples it saw."""
    correct = count = 0
    for images, labels in dataset:
        logits = model(images, training=False)
        correct += int(np.sum(np.argmax(logits, -1) == labels.numpy()))
        count += int(labels.shape[0])
    return {"top1": correct / max(count, 1), "count": count}


def evaluate_export(data: str, model_dir: str) -> dict:
    """Top-1 of the exported model over the val split, through the real input pipeline."""
    import keras

    model = keras.saving.load_model(os.path.join(model_dir, rundir.EXPORT, rundir.EXPORT_MODEL))
    ds = input_lib.make_dataset(data, "val", batch_size=16, image_size=64, training=False, decoder="cpu")
    return evaluate(model, ds)


def copy_dataset(dataset_dir: str, tmp_path) -> str:
    out = str(tmp_path / "data")
    shutil.copytree(dataset_dir, out)
    return out


# --- errors ---------------------------------------------------------------------------------
def one_line_error(capsys) -> str:
    """The one error line (progress bars may precede it on stderr); no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("detrec")]
    assert len(lines) == 1 and lines[0].startswith("detrec train: error:"), err
    return lines[0]


def test_bad_data_path_is_one_line_exit_2(tmp_path, capsys):
    assert train(str(tmp_path / "nowhere"), str(tmp_path / "m")) == 2
    assert "nowhere: no such directory" in one_line_error(capsys)


def test_dataset_without_dataset_info_is_one_line_exit_2(dataset_dir, tmp_path, capsys):
    data = copy_dataset(dataset_dir, tmp_path)
    os.remove(os.path.join(data, schema.DATASET_INFO))
    assert train(data, str(tmp_path / "m")) == 2
    assert "dataset_info.json not found" in one_line_error(capsys)


def test_empty_split_is_one_line_exit_2(dataset_dir, tmp_path, capsys):
    data = copy_dataset(dataset_dir, tmp_path)
    path = os.path.join(data, schema.DATASET_INFO)
    with open(path) as f:
        info = json.load(f)
    info["splits"]["val"].update(num_examples=0, shards=[])
    with open(path, "w") as f:
        json.dump(info, f)
    assert train(data, str(tmp_path / "m")) == 2
    line = one_line_error(capsys)
    assert "split 'val'" in line and "has no examples" in line


def test_model_dir_of_another_model_is_refused(dataset_dir, tmp_path, capsys):
    model_dir = str(tmp_path / "m")
    assert train(dataset_dir, model_dir, "--epochs", "1", "--steps-per-epoch", "1") == 0
    capsys.readouterr()
    assert train(dataset_dir, model_dir, "--epochs", "2", "--steps-per-epoch", "1", "--model",
                 "mobilenet_v3_small") == 2
    line = one_line_error(capsys)
    assert "holds a checkpoint of another model" in line and "'semi_alexnet' there" in line
    assert cli.main(["train", "--data", dataset_dir, "--model-dir", model_dir, "--image-size", "72",
                     "--batch-size", "8", "--seed", "0", "--epochs", "2", "--steps-per-epoch", "1"]) == 2
    assert "image_size: 64 there, 72 now" in one_line_error(capsys)


def truncated_copy(dataset_dir: str, tmp_path) -> tuple[str, str]:
    data = copy_dataset(dataset_dir, tmp_path)
    shard = os.path.join(data, "train-00001-of-00004.tfrecord")
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    return data, shard


def test_corrupt_shard_is_one_line_naming_the_file(dataset_dir, tmp_path, capsys):
    data, shard = truncated_copy(dataset_dir, tmp_path)
    assert train(data, str(tmp_path / "m"), "--epochs", "1") == 2
    line = one_line_error(capsys)
    assert "corrupt shard" in line and shard in line


def test_skip_corrupt_goes_on_and_counts(dataset_dir, tmp_path, capfd):
    data, shard = truncated_copy(dataset_dir, tmp_path)
    assert train(data, str(tmp_path / "m"), "--epochs", "1", "--skip-corrupt") == 0
    out = capfd.readouterr()
    assert "unreadable records skipped" in out.out
    assert shard in out.err  # the input pipeline's line naming the shard it skips
    assert metrics(str(tmp_path / "m"))["total_steps"] == STEPS  # the epoch stays whole


# --- what a run leaves behind ---------------------------------------------------------------
@pytest.mark.slow  # ~7 s: three epochs over two runs
def test_run_writes_metrics_logs_checkpoints_export_and_resumes(dataset_dir, tmp_path, capsys):
    model_dir = str(tmp_path / "m")
    assert train(dataset_dir, model_dir, "--epochs", "1", "--checkpoint-every", "5") == 0
    doc = metrics(model_dir)
    assert set(doc) == {"epochs", "total_steps"} and doc["total_steps"] == STEPS
    (epoch,) = doc["epochs"]
    assert set(epoch) == {"epoch", "train_loss", "train_accuracy", "val_loss", "val_top1", "val_top5",
                          "images_per_sec", "steps", "input_wait_fraction"}
    assert epoch["epoch"] == 1 and epoch["steps"] == STEPS
    assert 0 <= epoch["val_top1"] <= epoch["val_top5"] <= 1 and epoch["images_per_sec"] > 0
    assert 0 <= epoch["input_wait_fraction"] < 1
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints", "best"))
    assert sorted(os.listdir(os.path.join(model_dir, "export"))) == ["labels.json", "model.keras"]
    out = capsys.readouterr().out
    assert "epoch 1/1: train loss" in out and "val loss" in out and "top5" in out

    events = [os.path.join(model_dir, "logs", f) for f in os.listdir(os.path.join(model_dir, "logs"))]
    tags = {v.tag for path in events for e in tf.compat.v1.train.summary_iterator(path) for v in e.summary.value}
    assert {"train/loss", "train/accuracy", "train/learning_rate", "train/images_per_sec",
            "epoch/val_top1", "epoch/val_loss"} <= tags

    # The same command with more epochs resumes and says from where.
    assert train(dataset_dir, model_dir, "--epochs", "2") == 0
    assert "resuming from" in capsys.readouterr().out
    doc = metrics(model_dir)
    assert [e["epoch"] for e in doc["epochs"]] == [1, 2] and doc["total_steps"] == 2 * STEPS
    # The export is the best epoch's model: evaluating it gives that epoch's val top-1.
    best = max(doc["epochs"], key=lambda e: (e["val_top1"], -e["val_loss"]))
    result = evaluate_export(dataset_dir, model_dir)
    assert result["count"] == 32
    assert result["top1"] == pytest.approx(best["val_top1"])


def test_epoch_input_order_is_reproducible(dataset_dir):
    """What resume relies on: epoch e's batches are the same every time its input is rebuilt."""
    data, steps = make_data(tf.distribute.get_strategy(), dataset_dir, batch_size=8, image_size=64,
                            decoder="cpu", preprocess="inception", seed=0)
    assert steps == STEPS

    def first(epoch, n=4):
        it = iter(data.train(epoch))
        return [next(it) for _ in range(n)]

    a, b, other = first(1), first(1), first(2)
    for (ia, la), (ib, lb) in zip(a, b):
        np.testing.assert_array_equal(ia.numpy(), ib.numpy())
        np.testing.assert_array_equal(la.numpy(), lb.numpy())
    assert any(not np.array_equal(x[1].numpy(), y[1].numpy()) for x, y in zip(a, other))


MIRRORED = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from detrec.train import models
from detrec.train.config import TrainConfig
from detrec.train.data import make_data
from detrec.train.trainer import Trainer
data_dir, model_dir, replicas = sys.argv[1], sys.argv[2], int(sys.argv[3])
decoder = sys.argv[4] if len(sys.argv) > 4 else "cpu"
task = sys.argv[5] if len(sys.argv) > 5 else "classify"
strategy = (tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)]) if replicas > 1
            else tf.distribute.get_strategy())
data, steps = make_data(strategy, data_dir, batch_size=8, image_size=64, decoder=decoder,
                        preprocess="inception", seed=0, task=task)
cfg = TrainConfig(model_dir=model_dir, model=models.ModelConfig("semi_alexnet", len(data.classes), 64, task=task),
                  epochs=1, batch_size=8, steps_per_epoch=steps)
trainer = Trainer(cfg, data, strategy)
rc = trainer.run()
print(json.dumps({"rc": rc, "replicas": strategy.num_replicas_in_sync, "val_examples": trainer.val_examples}))
"""


@pytest.mark.slow  # ~18 s each: two training processes
@pytest.mark.parametrize("task", ["classify", "localize"])
def test_mirrored_strategy_on_two_replicas_matches_one(dataset_dir, tmp_path, task):
    """The loop under MirroredStrategy (2 logical CPUs): each global batch is split between the
    replicas, gradients summed, validation sees every example once - the same numbers as on
    one replica, up to float summation order; the localize task's box loss and metrics too."""
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    runs = {}
    for replicas in (1, 2):
        model_dir = str(tmp_path / f"r{replicas}")
        done = subprocess.run([sys.executable, str(script), dataset_dir, model_dir, str(replicas), "cpu", task],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report == {"rc": 0, "replicas": replicas, "val_examples": 32}
        runs[replicas] = metrics(model_dir)
    assert runs[1]["total_steps"] == runs[2]["total_steps"] == STEPS
    keys = [key for key in runs[1]["epochs"][0] if key.startswith(("train_", "val_")) and key != "input_wait_fraction"]
    assert ("val_loc_accuracy" in keys) == (task == "localize")
    for key in keys:
        assert runs[2]["epochs"][0][key] == pytest.approx(runs[1]["epochs"][0][key], rel=1e-4, abs=1e-6), key


@pytest.mark.slow  # ~8 s: a training process
@pytest.mark.dali
def test_mirrored_strategy_with_dali_gives_each_replica_its_own_pipeline(dataset_dir, tmp_path):
    """DALI under MirroredStrategy (2 logical CPUs, DALI's CPU mode): one pipeline per replica,
    each half the global batch and its own half of the records, joined per step; with the
    localize task's boxes and crops."""
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, str(script), dataset_dir, str(tmp_path / "m"), "2", "dali", "localize"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"rc": 0, "replicas": 2, "val_examples": 32}
    assert metrics(str(tmp_path / "m"))["total_steps"] == STEPS
    assert 0 <= metrics(str(tmp_path / "m"))["epochs"][0]["val_mean_iou"] <= 1


@pytest.mark.dali
def test_dali_builds_its_pipelines_once_per_run(dataset_dir, tmp_path, monkeypatch):
    """Two epochs, one training pipeline and one validation pipeline; a rerun builds again."""
    from detrec.train.input import dali

    built = []
    real = dali.make_dataset
    monkeypatch.setattr(dali, "make_dataset", lambda split, config: built.append(config.training) or
                        real(split, config))
    model_dir = str(tmp_path / "m")
    assert train(dataset_dir, model_dir, "--epochs", "2", "--decoder", "dali") == 0
    assert built == [True, False]
    doc = metrics(model_dir)
    assert doc["total_steps"] == 2 * STEPS and [e["steps"] for e in doc["epochs"]] == [STEPS, STEPS]
    assert train(dataset_dir, model_dir, "--epochs", "3", "--decoder", "dali") == 0
    assert built == [True, False, True, False] and metrics(model_dir)["total_steps"] == 3 * STEPS


@pytest.mark.slow  # ~18 s: a 2-process cluster
@pytest.mark.dali
def test_two_workers_with_dali(dataset_dir, tmp_path):
    """MultiWorkerMirroredStrategy + DALI (CPU mode): TensorFlow 2.21 refuses the per-replica
    input DALI on GPUs used to need; one pipeline per replica works under it. Both workers
    end with the same weights; each epoch they trained on disjoint examples, none twice."""
    from tests.test_multiworker import assert_identical_weights, run_cluster

    model_dir = str(tmp_path / "model")
    chief_log, _ = run_cluster(dataset_dir, model_dir, str(tmp_path), "--epochs", "2", "--decoder", "dali")
    assert "2 replica(s) on 2 workers (this is worker 0), decoder dali" in chief_log
    assert metrics(model_dir)["total_steps"] == 2 * STEPS
    assert_identical_weights(model_dir, 2 * STEPS)
    everything = set(schema.decode(r.numpy()).sha256 for r in tf.data.TFRecordDataset(
        sorted(os.path.join(dataset_dir, f) for f in os.listdir(dataset_dir) if f.startswith("train-")
               and f.endswith(".tfrecord"))))
    for epoch in (1, 2):
        keys = []
        for worker in range(2):
            with open(rundir.keys_path(model_dir, epoch, worker)) as f:
                keys.append(f.read().split())
        assert len(keys[0]) == len(keys[1]) == STEPS * 4
        assert not set(keys[0]) & set(keys[1]) and len(set(keys[0] + keys[1])) == 2 * STEPS * 4
        assert set(keys[0] + keys[1]) <= everything


# --- interruption ---------------------------------------------------------------------------
@pytest.mark.slow  # ~15 s: two training processes
def test_sigint_saves_then_stops_and_the_rerun_finishes(dataset_dir, tmp_path):
    model_dir, log = str(tmp_path / "m"), str(tmp_path / "run.log")
    flags = ("--epochs", "2", "--checkpoint-every", "3")
    proc = spawn(dataset_dir, model_dir, log, *flags)
    wait_for_checkpoint(proc, model_dir)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) == 130
    with open(log) as f:
        text = f.read()
    assert "saving a checkpoint, then stopping" in text and "run the same command to resume" in text
    assert "Traceback" not in text
    state = checkpoint_state(model_dir)  # saved at the step where ^C arrived
    assert state["total_steps"] >= 3 and state["epoch"] * STEPS + state["position"] == state["total_steps"]
    assert not os.path.exists(os.path.join(model_dir, rundir.EXPORT))

    proc = spawn(dataset_dir, model_dir, log, *flags)
    assert proc.wait(timeout=600) == 0
    assert metrics(model_dir)["total_steps"] == 2 * STEPS


# --- the acceptance run ---------------------------------------------------------------------
@pytest.mark.slow
def test_synthetic_10_classes_reach_80_percent_val_top1(learned):
    """Issue 6's proof that labels flow from XML to loss: the session's `learned` run (conftest:
    800/200 synth images, 10 classes, CPU, the article's Adam 1e-3 and batch 32, 5 epochs at
    64 px). How long it takes is a benchmark's business (`detrec bench`), not a test's."""
    history = metrics(learned["model"])["epochs"]
    assert len(history) == 5 and all(e["steps"] == 25 for e in history)
    best = max(e["val_top1"] for e in history)
    print(f"acceptance: best val top-1 {best:.3f}")
    assert best >= 0.80
