"""The "classify" task: the class of the image's largest object, softmax cross-entropy."""

from __future__ import annotations

import tensorflow as tf
from keras import layers

WITH_BOXES = False
MIN_OBJECT_COVERED = 0.0
EVAL_SUMS: tuple[str, ...] = ()


def head(features, num_classes: int):
    # float32 even under a mixed-precision policy: the loss never runs in float16/bfloat16.
    return layers.Dense(num_classes, dtype="float32", name="logits")(features)


def logits(outputs) -> tf.Tensor:
    return tf.cast(outputs, tf.float32)


def loss(outputs, labels: tf.Tensor, extras: tuple) -> tf.Tensor:
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits(outputs))


def eval_sums(outputs, labels: tf.Tensor, extras: tuple) -> list[tf.Tensor]:
    return []


def eval_record(sums: dict[str, float]) -> dict[str, float]:
    return {}
