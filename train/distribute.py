"""Which tf.distribute strategy a run uses, and where this process stands in its cluster.

Several machines (MultiWorkerMirroredStrategy)
----------------------------------------------
`make_strategy()` returns a MultiWorkerMirroredStrategy when TF_CONFIG names a cluster of
several tasks (`detrec train --worker-hosts ... --worker-index i` writes TF_CONFIG). Every
worker runs the same training loop in lockstep: each step's gradients and sums are
all-reduced, so every worker holds the same weights after every step. Each worker's input
pipeline reads its own disjoint set of shard files (`detrec.train.input.dataset_fn`; with
DALI, each replica's pipeline its own records, `detrec.train.input.streams`); an
epoch is the same number of steps on every worker (the smallest worker's share decides it,
otherwise one worker would wait forever in a collective), and validation is split between
the workers and summed. Checkpoint saves are collective, so every worker saves at the same
steps: the chief to `DIR/checkpoints`, the others to a scratch `DIR/.worker-<i>` (same
contents). On resume every worker restores the chief's checkpoint when it can see it (a
shared model dir: gs://, NFS) and its own scratch copy otherwise (one local disk per
machine); the workers then check that they all resumed at the same step before training
(`check_same_step`: the same one-line error on every worker if not, instead of training
diverging copies). Only the chief writes metrics, logs and the export.

^C (SIGINT) on any worker stops them all at the same step: after every step (and every
validation batch, and every epoch) the workers all-reduce "was I interrupted?"
(`any_worker`), so all see the same answer at the same step, save that step's checkpoint
together and exit 130; the same commands resume it exactly. A worker that is killed
instead (SIGTERM/SIGKILL) takes the others down at their next collective; restarted, they
resume from the last checkpoint (`--checkpoint-every` bounds the work lost).
"""

from __future__ import annotations

import json
import os
from typing import Callable

import tensorflow as tf

from detrec.core.errors import UserError


def default_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over all local GPUs when there are several, else the default strategy."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def make_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy when TF_CONFIG names a cluster of several tasks, else
    `default_strategy()`.

    Call it before any other TensorFlow op: the strategy configures the process's collective
    ops, which TensorFlow only allows at start-up. It starts this worker's gRPC server; the
    first collective (restoring or initialising the model) waits for the other workers.

    Raises:
      UserError: TF_CONFIG is not JSON, or names a task type this trainer does not run.
    """
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return default_strategy()
    try:
        config = json.loads(text)
        cluster, task = config.get("cluster") or {}, config.get("task") or {}
        tasks = sum(len(cluster.get(kind) or []) for kind in ("chief", "worker"))
    except (ValueError, AttributeError, TypeError) as exc:
        raise UserError(f"TF_CONFIG is not a JSON object with 'cluster' and 'task' ({exc})") from None
    if tasks <= 1:
        return default_strategy()
    if task.get("type") not in ("chief", "worker"):
        raise UserError(f"TF_CONFIG task type {task.get('type')!r}: detrec train runs 'chief' or "
                        "'worker' tasks of a MultiWorkerMirroredStrategy cluster")
    return tf.distribute.MultiWorkerMirroredStrategy()


def worker_position(strategy: tf.distribute.Strategy) -> tuple[int, int]:
    """(number of worker processes, this one's index), the chief first; (1, 0) on one machine."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 1, 0
    spec = resolver.cluster_spec().as_dict()
    chiefs = len(spec.get("chief", []))
    workers = chiefs + len(spec.get("worker", []))
    index = resolver.task_id if resolver.task_type == "chief" else chiefs + resolver.task_id
    return max(workers, 1), index


def server_address(strategy: tf.distribute.Strategy) -> str:
    """HOST:PORT of the gRPC server a multi-worker strategy started in this process; "" for none.

    TensorFlow's server listens on every interface and authenticates nobody: the CLI warns.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type or worker_position(strategy)[0] < 2:
        return ""
    return resolver.cluster_spec().task_address(resolver.task_type, resolver.task_id)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes logs, metrics and the real checkpoints (multi-worker runs)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    spec = resolver.cluster_spec().as_dict()
    if "chief" in spec:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def check_same_step(strategy: tf.distribute.Strategy, total_steps: int, workers: int) -> None:
    """The same UserError on every worker unless all resumed at the same step.

    Each worker contributes (1, x, x*x) for its step count x; with the sums (n, Sx, Sxx),
    identical on every worker, n*Sxx == Sx*Sx holds exactly when all x are equal
    (Cauchy-Schwarz), so every worker reaches the same verdict.

    Args:
      total_steps: the optimizer steps this worker's restored checkpoint has done.
      workers: the number of worker processes (for the message).
    """
    steps = float(total_steps)
    mine = tf.constant([1.0, steps, steps * steps], tf.float64)
    n, total, squares = (float(v) for v in _all_sum(strategy)(mine).numpy())
    if abs(n * squares - total * total) > 0.5:
        raise UserError(
            f"the {workers} workers resumed from different checkpoints (this one at step "
            f"{int(steps)}, mean {total / n:g}): give every worker the same --model-dir on shared "
            "storage, or start them all from empty model dirs")


def any_worker(strategy: tf.distribute.Strategy) -> Callable[[bool], bool]:
    """`vote(flag)`: whether `flag` is set on any worker, the same answer on every worker.

    A collective under a multi-worker strategy: every worker must call it at the same points
    of the loop (each call waits for the others'). With one worker, the flag itself.
    """
    if worker_position(strategy)[0] < 2:
        return bool
    all_sum = _all_sum(strategy)
    return lambda flag: float(all_sum(tf.constant([float(flag)], tf.float64))[0]) > 0


def _all_sum(strategy: tf.distribute.Strategy) -> Callable[[tf.Tensor], tf.Tensor]:
    """A tf.function summing a float64 vector over all replicas of all workers (each replica
    adds its worker's vector once)."""

    @tf.function(autograph=False)
    def all_sum(values: tf.Tensor) -> tf.Tensor:
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(values,)), axis=None)

    return all_sum
