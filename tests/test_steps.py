"""The evaluation step's sums against hand-computed ones (train/steps.py): a model whose logits
are known, and labels at chosen ranks, so that top-1, top-5 and the loss each have one right
answer (a top-5 that counted top-1 hits, or a loss off by a mean, would show)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from detrec.train import distribute
from detrec.train.steps import make_steps

LOGITS = np.array([0.0, 4.0, 3.0, 2.5, 2.0, 1.5, 1.0, -1.0], np.float32)  # ranks: 1, 2, 3, 4, 5, 6, 0, 7


def known_model() -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    logits = keras.layers.Dense(len(LOGITS), kernel_initializer="zeros",
                                bias_initializer=keras.initializers.Constant(LOGITS))(pooled)
    return keras.Model(inputs, logits)


@pytest.mark.parametrize("num_classes, top_k", [(8, 5), (3, 3)])
def test_eval_step_sums_loss_top1_and_top_k_hits(num_classes, top_k):
    model = known_model()
    strategy = distribute.default_strategy()
    _, eval_step = make_steps(model, keras.optimizers.Adam(1e-3), strategy, num_classes=num_classes)
    labels = np.array([1, 2, 4, 5, 6, 7])  # ranks 1, 2, 4, 5, 6, 7 (0-based: 0, 1, 3, 4, 5, 7)
    images = tf.zeros((len(labels), 8, 8, 3))
    loss, top1, topk, examples = eval_step((images, tf.constant(labels, tf.int64))).numpy()
    log_softmax = LOGITS - np.log(np.exp(LOGITS).sum())
    order = list(np.argsort(-LOGITS, kind="stable"))
    assert examples == len(labels)
    assert top1 == 1  # only label 1 is the largest logit
    assert topk == sum(order.index(label) < top_k for label in labels)  # 5: 3 hits; 3: 2 hits
    assert loss == pytest.approx(-log_softmax[labels].sum(), rel=1e-5)
