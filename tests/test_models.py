"""train/models.py: every network gives K+1 float32 logits; the article's layer stack; weights files."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from detrec.pipelines import train_cmd
from detrec.core.errors import UserError
from detrec.train import models


def test_cli_lists_the_library_models():
    assert train_cmd.MODELS == models.MODELS


@pytest.mark.parametrize("name", models.MODELS)
def test_every_model_gives_k_plus_1_float32_logits(name):
    model = models.build(models.ModelConfig(name, num_classes=11, image_size=96))
    out = model(np.zeros((2, 96, 96, 3), np.float32), training=False)
    assert tuple(out.shape) == (2, 11)
    assert out.dtype == "float32"


def test_semi_alexnet_is_the_articles_stack():
    model = models.semi_alexnet(num_classes=201, image_size=224)
    convs = [(l.filters, l.kernel_size, l.strides, l.padding) for l in model.layers
             if isinstance(l, keras.layers.Conv2D)]
    assert convs == [(48, (11, 11), (4, 4), "valid"), (128, (5, 5), (1, 1), "valid"),
                     (192, (3, 3), (1, 1), "same"), (192, (3, 3), (1, 1), "same"),
                     (128, (3, 3), (1, 1), "same")]
    pools = [(l.pool_size, l.strides) for l in model.layers if isinstance(l, keras.layers.MaxPooling2D)]
    assert pools == [((5, 5), (2, 2)), ((3, 3), (2, 2))]
    dense = [l.units for l in model.layers if isinstance(l, keras.layers.Dense)]
    assert dense == [2048, 2048, 201]
    # No normalisation, no dropout, ReLU everywhere but the logits.
    assert not [l for l in model.layers if isinstance(l, (keras.layers.Dropout, keras.layers.BatchNormalization))]
    acts = [l.activation.__name__ for l in model.layers if hasattr(l, "activation")]
    assert acts == ["relu"] * 7 + ["linear"]


def test_semi_alexnet_any_size_down_to_its_minimum():
    smallest = models.semi_alexnet_min_size()
    assert smallest == 59
    for size in (smallest, 96, 131):
        out = models.semi_alexnet(5, size)(np.zeros((1, size, size, 3), np.float32))
        assert tuple(out.shape) == (1, 5)
    with pytest.raises(UserError, match="--image-size >= 59"):
        models.semi_alexnet(5, smallest - 1)


def test_unknown_model_and_too_few_classes_are_user_errors():
    with pytest.raises(UserError, match="unknown model"):
        models.build(models.ModelConfig("vgg", 5, 96))
    with pytest.raises(UserError, match="at least 2 classes"):
        models.build(models.ModelConfig("semi_alexnet", 1, 96))


def test_mixed_precision_keeps_logits_float32():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = models.build(models.ModelConfig("semi_alexnet", 4, 64))
        assert model.get_layer("conv1").compute_dtype == "bfloat16"
        assert model(np.zeros((1, 64, 64, 3), np.float32)).dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_backbone_from_a_local_weights_file(tmp_path):
    # A no-top backbone's weights, as keras.applications would download them, saved locally.
    source = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(64, 64, 3),
                                                 pooling="avg", include_preprocessing=False)
    path = str(tmp_path / "mobilenet_v3_small_notop.weights.h5")
    source.save_weights(path)
    model = models.build(models.ModelConfig("mobilenet_v3_small", 6, 64, weights=path))
    first_conv = next(l for l in model.layers if isinstance(l, keras.layers.Conv2D))
    expected = source.get_layer(first_conv.name).get_weights()[0]
    np.testing.assert_array_equal(first_conv.get_weights()[0], expected)


def test_missing_or_foreign_weights_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        models.build(models.ModelConfig("resnet50", 6, 64, weights=str(tmp_path / "nope.h5")))
    other = models.semi_alexnet(6, 64)
    path = str(tmp_path / "alexnet.weights.h5")
    other.save_weights(path)
    with pytest.raises(UserError, match="cannot load"):
        models.build(models.ModelConfig("semi_alexnet", 9, 64, weights=path))


def test_caffe_input_matches_keras_resnet_preprocessing():
    rgb = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    ours = models.CaffeInput()(rgb / 127.5 - 1.0)
    theirs = keras.applications.resnet50.preprocess_input(rgb.copy())
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-3)
