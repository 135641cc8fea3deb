"""What a GPU machine decides before anything runs, checked here with the GPU probe patched.

No GPU needed: `detrec.train.input.common.local_gpu_count` (the one probe the input package
asks) and TensorFlow's device listing are monkeypatched. Covered: the `auto` decoder on a
single host and under MultiWorkerMirroredStrategy (DALI there goes through
`streams.replica_stream`, never the per-replica input TensorFlow refuses), and memory growth
requested by every TensorFlow entry point before it does anything else, and by the image.
"""

from __future__ import annotations

import os
import types

import pytest
import tensorflow as tf

from detrec.pipelines import cli
from detrec.train import data as data_lib
from detrec.train import gpu
from detrec.train import input as input_lib
from detrec.train.input import common, streams

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def one_gpu(monkeypatch):
    """This process 'sees' one GPU and DALI loads."""
    monkeypatch.setattr(common, "local_gpu_count", lambda: 1)
    monkeypatch.setattr(common, "dali_available", lambda: True)


class FakeMultiWorker(tf.distribute.MultiWorkerMirroredStrategy):
    """Worker 1 of a 2-worker MultiWorkerMirroredStrategy, one replica each; nothing started
    (a real one can only be made at process start-up)."""

    num_replicas_in_sync = 2
    cluster_resolver = types.SimpleNamespace(
        task_type="worker", task_id=1, cluster_spec=lambda: tf.train.ClusterSpec({"worker": ["a:1", "b:1"]}))

    def __init__(self):  # noqa: D107  (deliberately no super().__init__)
        pass


# --- the auto decoder ---------------------------------------------------------------------
def test_auto_is_dali_on_a_gpu_host_and_tfdata_elsewhere(monkeypatch, one_gpu):
    assert input_lib.resolve_decoder("auto") == "dali"
    monkeypatch.setattr(common, "dali_available", lambda: False)
    assert input_lib.resolve_decoder("auto") == "cpu"  # a GPU, but no DALI: tf.data
    monkeypatch.setattr(common, "local_gpu_count", lambda: 0)
    monkeypatch.setattr(common, "dali_available", lambda: True)
    assert input_lib.resolve_decoder("auto") == "cpu"  # DALI, but no GPU


def test_auto_under_multi_worker_trains_through_one_dali_pipeline_per_replica(dataset_dir, monkeypatch, one_gpu):
    """The crash this replaces: auto -> DALI -> PER_REPLICA input options, which TF 2.21's
    MultiWorkerMirroredStrategy refuses at the first epoch. Now training goes to
    `streams.replica_stream`, and input_options is never asked."""
    strategy = FakeMultiWorker()
    built = []

    def fake_stream(split, config, strategy_, plan, steps):
        built.append((split.name, config, strategy_, plan, steps))
        return streams.EpochStream(lambda: ("batch",), steps, plan.stream_steps)

    def refuse(*args, **kwargs):
        raise AssertionError("input_options must not be used for DALI")

    monkeypatch.setattr(streams, "replica_stream", fake_stream)
    monkeypatch.setattr(input_lib, "input_options", refuse)
    data, steps = data_lib.make_data(strategy, dataset_dir, batch_size=8, image_size=32, decoder="auto",
                                     preprocess="inception", seed=0)
    assert steps == 12 and data.resume == data_lib.RESUME_EXACT
    iterator = iter(data.train(0))
    assert next(iterator) == ("batch",)
    ((split, config, strategy_, plan, steps_),) = built
    assert (split, config.decoder, config.batch_size, strategy_, steps_) == ("train", "dali", 8, strategy, 12)
    assert (plan.batch_size, plan.num_examples) == (4, 48)  # per replica: its half of the split
    assert iter(data.train(1)) is not None and len(built) == 1  # the next epoch: the same pipelines
    data.train(5)  # a jump (a resumed run): a new stream, started at that epoch
    assert len(built) == 2 and (built[1][1].seed, built[1][1].epoch) == (0, 5)


def test_single_host_auto_trains_through_dali_too(dataset_dir, monkeypatch, one_gpu):
    built = []
    monkeypatch.setattr(streams, "replica_stream", lambda *a: built.append(a) or streams.EpochStream(
        lambda: ("batch",), a[4], a[3].stream_steps))
    data, steps = data_lib.make_data(tf.distribute.get_strategy(), dataset_dir, batch_size=8, image_size=32,
                                     decoder="auto", preprocess="inception", seed=0)
    assert next(iter(data.train(0))) == ("batch",) and built[0][1].decoder == "dali" and steps == 12


def test_input_options_say_what_to_use_under_multi_worker(one_gpu):
    with pytest.raises(ValueError, match="replica_stream"):
        input_lib.input_options("dali", FakeMultiWorker())
    mirrored = input_lib.input_options("dali", tf.distribute.get_strategy())
    assert mirrored.experimental_replication_mode == tf.distribute.InputReplicationMode.PER_REPLICA
    assert input_lib.input_options("cpu", FakeMultiWorker()) == tf.distribute.InputOptions()


# --- memory growth ------------------------------------------------------------------------
def test_memory_growth_is_asked_for_every_gpu(monkeypatch, capsys):
    fakes = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(3)]
    asked = []

    def set_growth(device, enable):
        if device.name.endswith(":2"):
            raise RuntimeError("Physical devices cannot be modified after being initialized")
        asked.append((device.name, enable))

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: fakes if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", set_growth)
    assert gpu.enable_memory_growth() == [d.name for d in fakes[:2]]
    assert asked == [(fakes[0].name, True), (fakes[1].name, True)]
    assert "memory growth not set on /physical_device:GPU:2" in capsys.readouterr().err


class Reached(Exception):
    pass


@pytest.mark.parametrize("argv", [
    ["train", "--data", "/nonexistent", "--model-dir", "/nonexistent/m"],
    ["predict", "--model-dir", "/nonexistent", "x.jpg"],
    ["bench", "input", "--data", "/nonexistent"],
])
def test_every_tensorflow_command_asks_for_memory_growth_first(argv, monkeypatch):
    """Each command reaches `enable_memory_growth` before the bad path could stop it: growth
    must be set before TensorFlow first touches a GPU."""
    def reached():
        raise Reached()

    monkeypatch.setattr(gpu, "enable_memory_growth", reached)
    with pytest.raises(Reached):
        cli.main(argv)


def test_the_trainer_image_sets_memory_growth():
    with open(os.path.join(REPO, "docker", "train.Dockerfile")) as f:
        text = f.read()
    assert "TF_FORCE_GPU_ALLOW_GROWTH=true" in text
