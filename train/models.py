"""The networks detrec trains: the article's semi-AlexNet and three keras.applications backbones.

Every model maps a batch of images as the input pipeline produces them (float, [B, S, S, 3])
to K+1 logits (background is class 0). Logits, not probabilities: the loop uses a numerically
stable softmax cross-entropy, and the last layer is float32 even under a mixed-precision
policy so the loss never runs in float16/bfloat16.

Nothing is downloaded: the applications are built with `weights=None`, or from a local
weights file (a Keras `.h5`/`.weights.h5` of the backbone without its top).
"""

from __future__ import annotations

import dataclasses
import os

import keras
from keras import layers

from detrec.core.errors import UserError

MODELS = ("semi_alexnet", "resnet50", "mobilenet_v3_small", "efficientnet_b0")

# The input pipeline's "inception" preprocessing gives pixels in [-1, 1]; pretrained
# backbones expect their own input convention. Only pretrained weights care, so the adapters
# are added only when a weights file is given.
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What defines a model's weights layout; stored next to its checkpoints to refuse a mismatch."""

    name: str
    num_classes: int  # K + 1, background included
    image_size: int
    weights: str | None = None


@keras.saving.register_keras_serializable(package="detrec")
class CaffeInput(layers.Layer):
    """[-1, 1] RGB -> the mean-subtracted BGR in [0, 255] that ImageNet ResNet50 weights expect."""

    def call(self, inputs):
        rgb = (inputs + 1.0) * 127.5
        bgr = keras.ops.flip(rgb, axis=-1)
        return bgr - keras.ops.convert_to_tensor(_CAFFE_BGR_MEAN, dtype=bgr.dtype)


def semi_alexnet_min_size() -> int:
    """Smallest square input for which every valid conv and pool still has an output pixel."""
    size = 1  # after the last max-pool
    size = (size - 1) * 2 + 3  # max-pool 3x3 stride 2 (the 3x3 "same" convs keep the size)
    size = (size - 1) * 2 + 5  # max-pool 5x5 stride 2
    size = size + 5 - 1  # conv 5x5 valid
    return (size - 1) * 4 + 11  # conv 11x11 stride 4 valid


def semi_alexnet(num_classes: int, image_size: int) -> keras.Model:
    """The article's `semi_alexnet_v1`, layer for layer, at any input size >= 59.

    Kept as published (ReLU everywhere, no normalisation, no dropout) so detrec's result is
    comparable with the article's; the flatten makes the first dense layer's size depend on
    the input size, which is why the model config records `image_size`.
    """
    minimum = semi_alexnet_min_size()
    if image_size < minimum:
        raise UserError(f"semi_alexnet needs --image-size >= {minimum} (got {image_size})")
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = layers.Conv2D(48, 11, strides=4, padding="valid", activation="relu", name="conv1")(inputs)
    x = layers.Conv2D(128, 5, padding="valid", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(5, strides=2, name="pool2")(x)
    x = layers.Conv2D(192, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool3")(x)
    x = layers.Conv2D(192, 3, padding="same", activation="relu", name="conv4")(x)
    x = layers.Conv2D(128, 3, padding="same", activation="relu", name="conv5")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(2048, activation="relu", name="fc6")(x)
    x = layers.Dense(2048, activation="relu", name="fc7")(x)
    logits = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name="semi_alexnet")


def _backbone(name: str, inputs, weights: str | None):
    """A keras.applications feature extractor (no top, global average pool) on `inputs`."""
    apps = keras.applications
    if name == "resnet50":
        x = CaffeInput(name="caffe_input")(inputs) if weights else inputs
        return apps.ResNet50(include_top=False, weights=weights, input_tensor=x, pooling="avg")
    if name == "mobilenet_v3_small":
        # include_preprocessing=False: the network then takes [-1, 1], the inception range.
        return apps.MobileNetV3Small(include_top=False, weights=weights, input_tensor=inputs,
                                     pooling="avg", include_preprocessing=False)
    if name == "efficientnet_b0":
        # EfficientNet always normalises [0, 255] input itself.
        x = layers.Rescaling(127.5, offset=127.5, name="to_0_255")(inputs) if weights else inputs
        return apps.EfficientNetB0(include_top=False, weights=weights, input_tensor=x, pooling="avg")
    raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")


def build(config: ModelConfig) -> keras.Model:
    """The model named by `config`, with K+1 float32 logits.

    Raises:
      UserError: unknown name, input too small, or a weights file that is missing or does
        not fit the backbone.
    """
    if config.num_classes < 2:
        raise UserError(f"need at least 2 classes (background + 1), got {config.num_classes}")
    if config.name == "semi_alexnet":
        model = semi_alexnet(config.num_classes, config.image_size)
        if config.weights:  # the whole model, e.g. from another detrec run's export
            _load_weights(model, config.weights)
        return model
    if config.name not in MODELS:
        raise UserError(f"unknown model {config.name!r}; choose one of: {', '.join(MODELS)}")
    if config.image_size < 32:
        raise UserError(f"{config.name} needs --image-size >= 32 (got {config.image_size})")
    if config.weights and not os.path.exists(config.weights):
        raise UserError(f"{config.weights}: weights file not found")
    inputs = keras.Input((config.image_size, config.image_size, 3), name="image")
    try:
        backbone = _backbone(config.name, inputs, config.weights)
    except ValueError as exc:  # keras: shape mismatch when loading a foreign weights file
        raise UserError(f"{config.weights}: cannot load into {config.name}: {exc}") from None
    logits = layers.Dense(config.num_classes, dtype="float32", name="logits")(backbone.output)
    return keras.Model(inputs, logits, name=config.name)


def _load_weights(model: keras.Model, path: str) -> None:
    if not os.path.exists(path):
        raise UserError(f"{path}: weights file not found")
    try:
        model.load_weights(path)
    except ValueError as exc:
        raise UserError(f"{path}: cannot load into {model.name}: {exc}") from None
