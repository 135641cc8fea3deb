"""One training step and one evaluation step over a global batch, under any tf.distribute strategy.

Each step runs its per-replica math through `strategy.run` and sums the replicas' results
with `strategy.reduce`, which is what lets one loop serve the default strategy, Mirrored-
and MultiWorkerMirroredStrategy alike. Steps return sums (not means) in float64, so that a
batch split over replicas and workers, or an evaluation batch cut short, adds up as it
would on one device (up to summation order); the trainer divides once, at the end.
"""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from detrec.train import registry


def make_steps(model: keras.Model, optimizer: keras.optimizers.Optimizer, strategy: tf.distribute.Strategy,
               *, num_classes: int, task: str = registry.DEFAULT_TASK,
               jit_compile: bool = False) -> tuple[Callable, Callable]:
    """(train_step, eval_step), tf.functions taking one (images, labels, *extras) batch
    (extras: what the task asks of the input, e.g. boxes; detrec.train.tasks).

    train_step applies one Adam update and returns [loss sum, correct, examples, non-finite
    gradient replicas]: the last is how many replicas got a gradient that is not finite, which
    poisons the weights even while the loss still looks finite (a NaN that a max-pool hides
    from the logits reaches the weights through the backward pass). Under a
    LossScaleOptimizer, which skips such steps by design, it is always 0. The loss is the
    task's. eval_step returns [class loss sum, top-1 hits, top-5 hits, examples] (top-k with
    k = min(5, num_classes)) followed by the task's `EVAL_SUMS`. Both are summed over the replicas.

    Args:
      jit_compile: XLA on the per-replica math, as Keras' own jit_compile does.
    """
    top_k = min(5, num_classes)
    skips_bad_steps = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    what = registry.task(task)

    def train_replica(images, labels, *extras):
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            logits = what.logits(outputs)
            per_example = what.loss(outputs, labels, extras)
            # Divides by the *global* batch, so summing gradients over replicas is right.
            loss = tf.nn.compute_average_loss(per_example)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        bad_grads = tf.constant(0.0, tf.float64)
        if not skips_bad_steps:
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])
            bad_grads = 1.0 - tf.cast(finite, tf.float64)
        optimizer.apply(grads, model.trainable_variables)
        correct = tf.equal(tf.argmax(logits, -1), labels)
        return tf.stack([tf.reduce_sum(tf.cast(per_example, tf.float64)),
                         tf.reduce_sum(tf.cast(correct, tf.float64)),
                         tf.cast(tf.size(labels), tf.float64), bad_grads])

    def eval_replica(images, labels, *extras):
        outputs = model(images, training=False)
        logits = what.logits(outputs)
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        top1 = tf.equal(tf.argmax(logits, -1), labels)
        topk = tf.math.in_top_k(labels, logits, k=top_k)
        return tf.stack([tf.reduce_sum(tf.cast(per_example, tf.float64)),
                         tf.reduce_sum(tf.cast(top1, tf.float64)),
                         tf.reduce_sum(tf.cast(topk, tf.float64)),
                         tf.cast(tf.size(labels), tf.float64),
                         *what.eval_sums(outputs, labels, extras)])

    if jit_compile:
        train_replica = tf.function(train_replica, jit_compile=True, autograph=False)
        eval_replica = tf.function(eval_replica, jit_compile=True, autograph=False)

    # No AutoGraph: the steps have no Python control flow on tensors (see input.common.plain).
    @tf.function(reduce_retracing=True, autograph=False)
    def train_step(batch):
        sums = strategy.run(train_replica, args=tuple(batch))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

    @tf.function(reduce_retracing=True, autograph=False)
    def eval_step(batch):
        sums = strategy.run(eval_replica, args=tuple(batch))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

    return train_step, eval_step
