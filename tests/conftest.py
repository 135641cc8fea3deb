"""Shared fixtures: a small synthetic ILSVRC tree and the shards preprocess makes of it.

Generated once per session in tmp dirs (nothing downloaded, nothing checked in but the golden
record), the TFDS fake-data way.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from detrec.preprocess import synth  # noqa: E402

# Real-format annotation files (see samples/README.md): inside tests/, so a bare clone passes.
SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")

# Small but real: 500x375-like JPEGs scaled down so the whole suite stays fast on 2 cores.
TINY = dict(train=96, val=32, classes=5, seed=7, width=160, height=120)


@pytest.fixture(scope="session")
def synth_tree(tmp_path_factory) -> str:
    """Path of a synthetic tree's ILSVRC folder (holds Annotations/ and Data/)."""
    out = tmp_path_factory.mktemp("synth")
    result = synth.generate(synth.SynthConfig(out=str(out), **TINY))
    return result["root"]


def file_digest(path: str) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file."""
    with open(path, "rb") as f:
        data = f.read()
    return len(data), hashlib.sha256(data).hexdigest()


def run_preprocess(input_root: str, output: str, *extra: str) -> int:
    """`detrec preprocess` in-process on the fast single-process DirectRunner."""
    from detrec.pipelines import cli

    return cli.main(["preprocess", "--input", input_root, "--output", output,
                     "--direct_num_workers=1", "--direct_running_mode=in_memory", *extra])


@pytest.fixture(scope="session")
def dataset_dir(synth_tree, tmp_path_factory) -> str:
    """A finished dataset made by the real preprocess job from `synth_tree`:
    train (4 shards) and val (2 shards), 5 classes + background, real synset names."""
    out = str(tmp_path_factory.mktemp("dataset"))
    synset_map = os.path.join(synth_tree, "devkit", "data", "map_det.txt")
    assert run_preprocess(synth_tree, out, "--num-shards", "train=4,val=2", "--synset-map", synset_map) == 0
    return out


# Issue 6's proof that labels flow from XML to loss, at a size that trains in seconds: 10 synth
# classes, 800 train / 200 val images of 160x120, 5 epochs of semi_alexnet at 64 px on the CPU
# with the article's optimiser (Adam 1e-3, batch 32). Shared by every test that needs a model
# that has learned something (tests/test_train.py checks what it reached, test_predict.py uses it).
LEARN = dict(train=800, val=200, classes=10, seed=0, width=160, height=120)
LEARN_SIZE = 64


def shared_folder(tmp_path_factory, worker_id: str):
    """The run's temporary folder that every xdist worker sees (its own when not under xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (all held open together, so they are distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@contextlib.contextmanager
def exclusive(tmp_path_factory, worker_id: str, name: str):
    """Held by one xdist worker at a time: a lock file in the shared folder (fcntl, so a worker
    that dies lets go of it)."""
    with open(shared_folder(tmp_path_factory, worker_id) / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # released when the file closes


@pytest.fixture
def repo_build(tmp_path_factory, worker_id):
    """For tests that build in the repository folder (setuptools writes build/ and *.egg-info
    there): one at a time across workers."""
    with exclusive(tmp_path_factory, worker_id, "repo-build"):
        yield


@pytest.fixture(scope="session")
def learned(tmp_path_factory, worker_id) -> dict[str, str]:
    """{"root": the synth tree, "data": its shards, "model": the trained run dir (exported)}.

    Made once per `make test`, whichever xdist worker asks first: the others wait for it and
    take what it made.
    """
    from detrec.pipelines import cli

    out = shared_folder(tmp_path_factory, worker_id) / "learned"
    paths = {"root": str(out / "synth" / "ILSVRC"), "data": str(out / "data"), "model": str(out / "model")}
    with exclusive(tmp_path_factory, worker_id, "learned"):
        if (out / "done").exists():
            return paths
        root = synth.generate(synth.SynthConfig(out=str(out / "synth"), **LEARN))["root"]
        assert root == paths["root"]
        assert run_preprocess(root, paths["data"], "--num-shards", "train=4,val=2",
                              "--synset-map", os.path.join(root, "devkit", "data", "map_det.txt")) == 0
        assert cli.main(["train", "--data", paths["data"], "--model-dir", paths["model"],
                         "--image-size", str(LEARN_SIZE), "--batch-size", "32", "--epochs", "5", "--decoder", "cpu",
                         "--seed", "0", "--checkpoint-every", "0"]) == 0
        (out / "done").touch()
    return paths


DALI_MISSING = ("needs the DALI TF plugin (nvidia-dali-tf-plugin-cuda120), which `make install` installs "
                "from the lock; tests/test_lock.py fails where the environment lacks it")


def pytest_collection_modifyitems(config, items):
    """Tests of the DALI input line (marked `dali`, or given decoder "dali") skip, saying why,
    where the plugin cannot load; `make test` installs it, so CI runs them."""
    from detrec.train import input as input_lib

    if input_lib.dali_available():
        return
    skip = pytest.mark.skip(reason=DALI_MISSING)
    for item in items:
        callspec = getattr(item, "callspec", None)
        if item.get_closest_marker("dali") or (callspec and "dali" in callspec.params.values()):
            item.add_marker(skip)


# A model whose answer is known, for tests of predict's own work (reading, decoding, ranking)
# that need no training: ids 1 and 4 tie for first, and the lower id comes first.
KNOWN_LOGITS = [0.5, 3.0, -1.0, 2.0, 3.0, 1.0]
KNOWN_SIZE = 64


@pytest.fixture(scope="session")
def known_model_dir(tmp_path_factory) -> str:
    """An exported model whose logits are KNOWN_LOGITS for any image (a zero kernel, that bias)."""
    import keras

    from detrec.core.dataset_info import ClassInfo
    from detrec.train import export, models
    from detrec.train.config import TrainConfig

    out = str(tmp_path_factory.mktemp("known") / "model")
    inputs = keras.Input((KNOWN_SIZE, KNOWN_SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    logits = keras.layers.Dense(len(KNOWN_LOGITS), kernel_initializer="zeros",
                                bias_initializer=keras.initializers.Constant(KNOWN_LOGITS))(pooled)
    classes = [ClassInfo(0, "background", "background")] + [
        ClassInfo(i, f"n{i:08d}", f"class {i}") for i in range(1, len(KNOWN_LOGITS))]
    cfg = TrainConfig(model_dir=out, model=models.ModelConfig("semi_alexnet", len(KNOWN_LOGITS), KNOWN_SIZE),
                      epochs=1, batch_size=1, steps_per_epoch=1)
    export.export_model(keras.Model(inputs, logits), out, cfg, classes, best_epoch=1, val_top1=0.0)
    return out
