"""The DALI "mixed" (nvJPEG) path on a real GPU: parity with the CPU, training, all GPUs.

Runs where TensorFlow sees a GPU (its GPU build) and DALI loads; elsewhere every test shows
as skipped with the reason. `make gpu-check` runs this file after pipelines/dali_bench.py.
Parity uses the tolerance train/input/dali.py states (`dali.GPU_PARITY`): nvJPEG's IDCT is
not libjpeg's bit for bit, so per image the mean absolute difference may reach 1.0 grey
level and the 99.9th percentile 4.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from detrec.pipelines import cli
from detrec.train import input as input_lib
from detrec.train.input import dali
from tests.test_input import SIZE, epoch, records_by_key
from tests.test_train import metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [
    pytest.mark.skipif(not input_lib.gpu_visible(),
                       reason="needs a GPU that TensorFlow sees (tensorflow[and-cuda]): none here"),
    pytest.mark.skipif(not input_lib.dali_available(),
                       reason="needs nvidia-dali and its TF plugin (see the Makefile)"),
]


def within_tolerance(gpu: np.ndarray, cpu: np.ndarray, scale: float = 1.0) -> dict:
    """Per image: mean and 99.9th percentile of |gpu - cpu| in grey levels (`scale` per level)."""
    diff = np.abs(gpu.astype(np.float32) - cpu.astype(np.float32)) / scale
    stats = {"mean_abs": float(diff.mean()), "p999_abs": float(np.quantile(diff, 0.999))}
    assert stats["mean_abs"] <= dali.GPU_PARITY["mean_abs"], stats
    assert stats["p999_abs"] <= dali.GPU_PARITY["p999_abs"], stats
    return stats


def test_nvjpeg_decodes_like_libjpeg(dataset_dir):
    """The decoders themselves, full and ROI (training's `image_slice`), on every val JPEG."""
    from nvidia.dali import fn, pipeline_def, types

    jpegs = [np.frombuffer(r.encoded, np.uint8) for r in records_by_key(dataset_dir, "val").values()]

    @pipeline_def(batch_size=len(jpegs), num_threads=2, device_id=0)
    def pipe():
        encoded = fn.external_source(source=lambda: jpegs, batch=True)
        out = []
        for device in ("mixed", "cpu"):
            args = dali.decoder_args(gpu=device == "mixed")
            out.append(fn.decoders.image(encoded, device=device, **args))
            out.append(fn.decoders.image_slice(encoded, [0.1, 0.2], [0.5, 0.6], axes=[0, 1], device=device,
                                               normalized_anchor=True, normalized_shape=True, **args))
        return tuple(out)

    p = pipe()
    p.build()
    full_gpu, roi_gpu, full_cpu, roi_cpu = p.run()
    full_gpu, roi_gpu = full_gpu.as_cpu(), roi_gpu.as_cpu()
    for i in range(len(jpegs)):
        within_tolerance(np.array(full_gpu[i]), np.array(full_cpu[i]))
        within_tolerance(np.array(roi_gpu[i]), np.array(roi_cpu[i]))


@pytest.mark.parametrize("preprocess", ["inception", "seed"])
def test_the_gpu_pipeline_matches_tfdata(dataset_dir, preprocess):
    """Whole evaluation epochs, example by example: same labels and boxes, pixels in tolerance."""
    gpu = {row[-1]: row for row in epoch(dataset_dir, "val", decoder="dali", preprocess=preprocess, with_boxes=True)}
    cpu = {row[-1]: row for row in epoch(dataset_dir, "val", decoder="cpu", preprocess=preprocess, with_boxes=True)}
    assert sorted(gpu) == sorted(cpu)
    for key, (image, label, boxes, box_labels, _) in gpu.items():
        c_image, c_label, c_boxes, c_box_labels, _ = cpu[key]
        assert label == c_label and (box_labels == c_box_labels).all()
        np.testing.assert_allclose(boxes, c_boxes, atol=1e-5)
        if preprocess == "inception":
            within_tolerance(image, c_image, scale=1 / 127.5)
        else:  # standardised: a grey level is 1/std of the image
            assert np.abs(image.astype(np.float32) - c_image.astype(np.float32)).mean() < 0.05


def test_batches_stay_on_the_gpu(dataset_dir):
    ds = input_lib.make_dataset(dataset_dir, "train", batch_size=8, image_size=SIZE, training=True, decoder="dali",
                                repeat=True)
    images, labels = next(iter(ds))
    assert "GPU" in images.device and "GPU" in labels.device


def test_one_training_epoch_with_dali(dataset_dir, tmp_path, capsys):
    model_dir = str(tmp_path / "m")
    assert cli.main(["train", "--data", dataset_dir, "--model-dir", model_dir, "--image-size", "64",
                     "--batch-size", "8", "--epochs", "1", "--decoder", "dali"]) == 0
    (record,) = metrics(model_dir)["epochs"]
    assert record["steps"] == 12 and 0 <= record["val_top1"] <= 1
    assert "decoder dali" in capsys.readouterr().out


MIRRORED = """
import json, sys
import tensorflow as tf
from detrec.train import gpu, models
gpu.enable_memory_growth()
from detrec.train.config import TrainConfig
from detrec.train.data import make_data
from detrec.train.trainer import Trainer
data_dir, model_dir = sys.argv[1], sys.argv[2]
strategy = tf.distribute.MirroredStrategy()  # every visible GPU
batch = 8 * strategy.num_replicas_in_sync
data, steps = make_data(strategy, data_dir, batch_size=batch, image_size=64, decoder="dali",
                        preprocess="inception", seed=0)
cfg = TrainConfig(model_dir=model_dir, model=models.ModelConfig("semi_alexnet", len(data.classes), 64),
                  epochs=2, batch_size=batch, steps_per_epoch=steps)
trainer = Trainer(cfg, data, strategy)
rc = trainer.run()
growth = [tf.config.experimental.get_memory_growth(g) for g in tf.config.list_physical_devices("GPU")]
print(json.dumps({"rc": rc, "replicas": strategy.num_replicas_in_sync, "val_examples": trainer.val_examples,
                  "steps": steps, "growth": growth}))
"""


def test_mirrored_strategy_over_every_visible_gpu(dataset_dir, tmp_path):
    """One DALI pipeline per GPU, built once for both epochs; validation sees every example once."""
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, str(script), dataset_dir, str(tmp_path / "m")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    gpus = len(tf.config.list_physical_devices("GPU"))
    assert report["rc"] == 0 and report["replicas"] == gpus and report["val_examples"] == 32
    assert all(report["growth"]) and report["steps"] == 96 // (8 * gpus)
    assert metrics(str(tmp_path / "m"))["total_steps"] == 2 * report["steps"]
