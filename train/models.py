"""The networks detrec trains: the article's semi-AlexNet and three keras.applications backbones.

Every model maps a batch of images as the input pipeline produces them (float, [B, S, S, 3])
to pooled features, and its task's head (detrec.train.tasks) maps those to its outputs: K+1
logits (background is class 0) for "classify", the logits and a box for "localize". Logits,
not probabilities: the loop uses a numerically stable softmax cross-entropy, and the heads
are float32 even under a mixed-precision policy so the loss never runs in float16/bfloat16.

Nothing is downloaded: the applications are built with `weights=None`, or from a weights
file (a Keras `.h5`/`.weights.h5` of the backbone without its top) at any path
detrec.core.fs reads, gs:// included: Keras reads only local files, so a URL is copied to a
temporary local file first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from typing import Iterator

import keras
from keras import layers

from detrec.core import fs
from detrec.core.errors import UserError
from detrec.train import registry

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
    task: str = registry.DEFAULT_TASK  # its head is part of the weights' layout


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


def semi_alexnet(num_classes: int, image_size: int, task: str = registry.DEFAULT_TASK) -> keras.Model:
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
    return keras.Model(inputs, registry.task(task).head(x, num_classes), name="semi_alexnet")


def _resnet50(inputs, weights: str | None):
    x = CaffeInput(name="caffe_input")(inputs) if weights else inputs
    return keras.applications.ResNet50(include_top=False, weights=weights, input_tensor=x, pooling="avg")


def _mobilenet_v3_small(inputs, weights: str | None):
    # include_preprocessing=False: the network then takes [-1, 1], the inception range.
    return keras.applications.MobileNetV3Small(include_top=False, weights=weights, input_tensor=inputs,
                                               pooling="avg", include_preprocessing=False)


def _efficientnet_b0(inputs, weights: str | None):
    # EfficientNet always normalises [0, 255] input itself.
    x = layers.Rescaling(127.5, offset=127.5, name="to_0_255")(inputs) if weights else inputs
    return keras.applications.EfficientNetB0(include_top=False, weights=weights, input_tensor=x, pooling="avg")


# The keras.applications feature extractors (no top, global average pool), by model name.
_BACKBONES = {"resnet50": _resnet50, "mobilenet_v3_small": _mobilenet_v3_small, "efficientnet_b0": _efficientnet_b0}
MODELS = ("semi_alexnet", *_BACKBONES)


def build(config: ModelConfig) -> keras.Model:
    """The model named by `config`, with K+1 float32 logits.

    Raises:
      UserError: unknown name, input too small, or a weights file that is missing or does
        not fit the backbone.
    """
    if config.num_classes < 2:
        raise UserError(f"need at least 2 classes (background + 1), got {config.num_classes}")
    if config.name == "semi_alexnet":
        model = semi_alexnet(config.num_classes, config.image_size, config.task)
        if config.weights:  # the whole model, e.g. from another detrec run's export
            with _local_weights(config.weights) as path:
                try:
                    model.load_weights(path)
                except (ValueError, OSError) as exc:
                    raise UserError(f"{config.weights}: cannot load into {model.name}: {exc}") from None
        return model
    if config.name not in _BACKBONES:
        raise UserError(f"unknown model {config.name!r}; choose one of: {', '.join(MODELS)}")
    if config.image_size < 32:
        raise UserError(f"{config.name} needs --image-size >= 32 (got {config.image_size})")
    inputs = keras.Input((config.image_size, config.image_size, 3), name="image")
    with _local_weights(config.weights) as path:
        try:
            backbone = _BACKBONES[config.name](inputs, path)
        except (ValueError, OSError) as exc:  # keras: shape mismatch; h5py: not an HDF5 file
            raise UserError(f"{config.weights}: cannot load into {config.name}: {exc}") from None
    return keras.Model(inputs, registry.task(config.task).head(backbone.output, config.num_classes), name=config.name)


@contextlib.contextmanager
def _local_weights(path: str | None) -> Iterator[str | None]:
    """`path` as a local file Keras can read: itself, or a temporary copy of a URL (under
    the same name: Keras picks the file format by its suffix). None stays None.

    Raises:
      UserError: no such file (a local path must be a regular file: a FIFO would block
        Keras' reader, a folder is no weights file).
    """
    if path is None:
        yield None
        return
    if not fs.is_url(path):
        if not os.path.isfile(path):  # follows links; False for a FIFO, device or folder
            raise UserError(f"{path}: weights file not found" if not os.path.lexists(path)
                            else f"{path}: not a regular file (a folder, FIFO or device), so no weights file")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="detrec-weights-") as tmp:
        local = os.path.join(tmp, fs.basename(path))
        try:
            with fs.open(path, "rb") as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst)  # in chunks: memory stays flat whatever the file's size
        except Exception as exc:  # each backend (gfile, Beam) has its own "not found"
            if fs.exists(path) and not fs.isdir(path):
                raise UserError(f"{path}: cannot read the weights file ({type(exc).__name__}: {exc})") from None
            raise UserError(f"{path}: weights file not found") from None
        yield local
