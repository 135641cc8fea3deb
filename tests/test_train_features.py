"""`detrec train` flags that README and `--help` promise, each in one short real run.

--mixed-precision, --xla, --decoder dali (DALI's CPU mode) and a keras.applications model,
each on the session `dataset_dir` for 2 steps at a small size: every run must end with a
finite loss, an export that loads and answers with finite probabilities, and the feature
visibly in effect (the Keras policy of the trained layers, an XLA-compiled train step, the
DALI line building the pipelines, the backbone's own layers).
"""

from __future__ import annotations

import json
import math
import os

import keras
import numpy as np
import pytest

from detrec.pipelines import cli
from detrec.train import rundir

BASE = ["--batch-size", "8", "--seed", "0", "--epochs", "1", "--steps-per-epoch", "2", "--checkpoint-every", "0"]


def run(data: str, model_dir: str, *flags: str, size: int = 64) -> dict:
    """Trains, then returns the one epoch's metrics; checks what every run must leave."""
    assert cli.main(["train", "--data", data, "--model-dir", model_dir, "--image-size", str(size), *BASE,
                     *flags]) == 0
    with open(os.path.join(model_dir, rundir.METRICS)) as f:
        (epoch,) = json.load(f)["epochs"]
    assert all(math.isfinite(epoch[k]) for k in ("train_loss", "val_loss", "val_top1"))
    return epoch


def load_export(model_dir: str, size: int = 64) -> keras.Model:
    from detrec.train import models  # noqa: F401  (registers detrec's layers for loading)

    model = keras.saving.load_model(os.path.join(model_dir, rundir.EXPORT, rundir.EXPORT_MODEL))
    logits = np.asarray(model(np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype("float32")))
    assert logits.shape == (2, 6) and np.isfinite(logits).all()
    return model


def test_mixed_precision_trains_in_bfloat16_on_cpu(dataset_dir, tmp_path, monkeypatch):
    from detrec.train import trainer as trainer_lib

    seen = {}
    real = trainer_lib.make_steps

    def spy(model, optimizer, *args, **kwargs):
        seen["policy"] = keras.mixed_precision.global_policy().name
        seen["conv1"] = model.get_layer("conv1").compute_dtype
        seen["optimizer"] = type(optimizer).__name__
        return real(model, optimizer, *args, **kwargs)

    monkeypatch.setattr(trainer_lib, "make_steps", spy)
    model_dir = str(tmp_path / "m")
    run(dataset_dir, model_dir, "--mixed-precision", "--decoder", "cpu")
    # No GPU here: mixed_bfloat16 (no loss scaling needed); on a GPU it is mixed_float16.
    assert seen == {"policy": "mixed_bfloat16", "conv1": "bfloat16", "optimizer": "Adam"}
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the run
    model = load_export(model_dir)
    assert model.get_layer("conv1").dtype_policy.name == "mixed_bfloat16"
    with open(os.path.join(model_dir, rundir.RUN_CONFIG)) as f:
        assert json.load(f)["mixed_precision"] is True


@pytest.mark.slow  # ~7 s: XLA compiles both steps
def test_xla_compiles_the_train_step(dataset_dir, tmp_path, monkeypatch):
    from detrec.train import trainer as trainer_lib

    steps = {}
    real = trainer_lib.make_steps

    def spy(*args, **kwargs):
        steps["train"], steps["eval"] = real(*args, **kwargs)
        return steps["train"], steps["eval"]

    monkeypatch.setattr(trainer_lib, "make_steps", spy)
    model_dir = str(tmp_path / "m")
    run(dataset_dir, model_dir, "--xla", "--decoder", "cpu")
    load_export(model_dir)

    def xla_functions(step) -> int:
        """Functions in the traced step's graph that XLA must compile."""
        return sum(f.attr["_XlaMustCompile"].b for concrete in step._list_all_concrete_functions_for_serialization()
                   for f in concrete.graph.as_graph_def().library.function)

    assert xla_functions(steps["train"]) >= 1 and xla_functions(steps["eval"]) >= 1


@pytest.mark.dali
def test_dali_decoder_in_cpu_mode(dataset_dir, tmp_path, monkeypatch, capsys):
    from detrec.train.input import dali

    built = []
    real = dali.make_dataset
    monkeypatch.setattr(dali, "make_dataset", lambda split, config: built.append(config.training) or
                        real(split, config))
    model_dir = str(tmp_path / "m")
    run(dataset_dir, model_dir, "--decoder", "dali")
    assert "decoder dali" in capsys.readouterr().out
    assert built == [True, False]  # the training stream and the validation stream, DALI both
    load_export(model_dir)


@pytest.mark.slow  # ~11 s: MobileNetV3 builds, trains and saves
def test_a_keras_applications_backbone(dataset_dir, tmp_path):
    model_dir = str(tmp_path / "m")
    run(dataset_dir, model_dir, "--model", "mobilenet_v3_small", "--decoder", "cpu")
    model = load_export(model_dir)
    names = [layer.name for sub in model.layers for layer in getattr(sub, "layers", [sub])]
    assert any("expanded_conv" in name for name in names), names[:20]  # MobileNetV3's own blocks
    with open(os.path.join(model_dir, rundir.EXPORT, rundir.EXPORT_LABELS)) as f:
        assert json.load(f)["model"] == "mobilenet_v3_small"
