"""TensorBoard scalars written through core TensorFlow, without the `tensorboard` package.

`tf.summary.scalar` lives in the `tensorboard` package, which tensorflow-cpu does not
install (it is the `train` extra, for viewing the logs); `scalar_summary` writes the same
event it would (scalars plugin, scalar data class) with `tf.summary.write`.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR)


def scalar_summary(tag: str, value: float, step: int) -> None:
    """A TensorBoard scalar on the default summary writer, without the tensorboard package."""
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=_SCALAR_METADATA)
