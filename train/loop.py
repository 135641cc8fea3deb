"""The training loop: Adam on softmax cross-entropy, validation, checkpoints, resume, export.

A custom loop rather than `Model.fit`: every step goes through `strategy.run` and
`strategy.reduce`, so the same code runs under the default strategy (one CPU/GPU),
`MirroredStrategy` (several GPUs) and `MultiWorkerMirroredStrategy` (Keras 3's `fit` fails
under the latter). It also gives us the exact control over steps that resume needs.

Resume and the input position
-----------------------------
Epoch `e` reads `data.train(e)`, a stream whose order is a pure function of the run's seed
and `e` (`epoch_seed`; the input pipeline seeds its shuffles and per-example augmentation
with it and keeps interleave and map order deterministic - tests/test_train.py checks this).
The checkpoint stores the number of batches already consumed in the current epoch; a resumed
run rebuilds epoch `e`'s stream and drops that many batches from its iterator, so it sees
exactly the batches the interrupted run had not yet trained on: same epochs, same optimizer
steps, and (with deterministic ops) bit-for-bit the same learning curve as an uninterrupted
run. Dropping batches from the iterator rather than `Dataset.skip` works for every input:
distributed datasets and GPU-placed DALI datasets accept no further tf.data ops.
We chose this over checkpointing the tf.data iterator itself: an iterator checkpoint holds
the shuffle and prefetch buffers (megabytes to gigabytes of records in every checkpoint),
cannot capture a DALI pipeline, and ties the checkpoint to the exact graph of the input
pipeline. The price is re-reading (and decoding) the dropped batches once per resume, at
most one epoch's worth; `--checkpoint-every` bounds the work lost, not this cost.

Crash safety
------------
`tf.train.CheckpointManager` writes a checkpoint under a fresh, never reused prefix
(`ckpt-<save counter>`) and only then atomically rewrites the `checkpoint` state file that
names the latest one, so a process killed at any moment leaves the previous checkpoint
readable and listed. Epoch, step, position, the epoch's running sums and the metrics history
live *inside* the checkpoint (a `PythonState`), so they can never disagree with the weights;
`metrics.json` and `run_config.json` are written with write-to-temp + rename.

Several machines (MultiWorkerMirroredStrategy)
----------------------------------------------
`make_strategy()` returns a MultiWorkerMirroredStrategy when TF_CONFIG names a cluster of
several tasks (`detrec train --worker-hosts ... --worker-index i` writes TF_CONFIG). Every
worker runs this same loop in lockstep: each step's gradients and sums are all-reduced, so
every worker holds the same weights after every step. Each worker's input pipeline reads its
own disjoint set of shard files (`input.dataset_fn`); an epoch is the same number of steps
on every worker (the smallest worker's share decides it, otherwise one worker would wait
forever in a collective), and validation is split between the workers and summed.
Checkpoint saves are collective, so every worker saves at the same steps: the chief to
`DIR/checkpoints`, the others to a scratch `DIR/.worker-<i>` (same contents). On resume
every worker restores the chief's checkpoint when it can see it (a shared model dir: gs://,
NFS) and its own scratch copy otherwise (one local disk per machine); the workers then
check that they all resumed at the same step before training (the same one-line error on
every worker if not, instead of training diverging copies). Only the chief writes metrics,
logs and the export. ^C's save-and-stop is for single-process runs (each worker would stop
at a different step, and saves are collective): stop a multi-worker run by ending all its
workers (SIGTERM/SIGKILL) and restart them all; they resume from the last checkpoint
(`--checkpoint-every` bounds the work lost).

tf.data service (`--data-service`)
----------------------------------
The training pipeline (read, parse, decode, augment, batch: the tf.data decoder only, a
DALI pipeline cannot be serialised to other machines) then runs on the service's workers
(train/data_service.py, "distributed_epoch": the dispatcher hands out shard files). Each
epoch starts one service epoch (per trainer worker, over its own share of the files),
whose batches hold every example once; the trainer takes `steps_per_epoch` of them (when
the service workers' dropped partial batches leave a service epoch short, the rest come
from the next one). The order in which the service delivers batches depends on worker
timing and is *not* reproducible, so resume cannot drop "the batches already trained": a
run resumed mid-epoch trains only the epoch's remaining step count, drawn from a fresh
service epoch, so in that one epoch some examples are seen twice and others not at all.
Totals (epochs, optimizer steps) still match an uninterrupted run. Validation still reads
the val split locally, so trainers need read access to --data too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from typing import Callable, Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2
from tqdm import tqdm

from detrec.core.dataset_info import ClassInfo
from detrec.core import dataset_info, fs
from detrec.core.errors import UserError
from detrec.train import models

RUN_CONFIG = "run_config.json"
METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
BEST = "best"
LOGS = "logs"
EXPORT = "export"
EXPORT_MODEL = "model.keras"
EXPORT_LABELS = "labels.json"
KEYS = "keys"
# Fields of run_config.json that must match to resume: they define the weights' layout and
# meaning (model, classes, size, input scaling, optimizer state layout) or the step and
# input-position bookkeeping (batch size, steps per epoch, seed).
RESUME_KEYS = ("model", "num_classes", "image_size", "synsets", "preprocess", "batch_size",
               "steps_per_epoch", "seed", "mixed_precision")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run is, apart from its data."""

    model_dir: str
    model: models.ModelConfig
    epochs: int
    batch_size: int  # global: summed over replicas and workers
    steps_per_epoch: int
    lr: float = 1e-3
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0 = only at epoch ends
    seed: int = 0
    preprocess: str = "inception"
    mixed_precision: bool = False
    jit_compile: bool = False
    keep_checkpoints: int = 3


@dataclasses.dataclass(frozen=True)
class Data:
    """The loop's view of a dataset, already shaped for the trainer's strategy.

    Attributes:
      train: epoch -> an endless iterable of batches ((images, labels), distributed for the
        strategy) whose order depends only on the epoch (see the module docstring).
      val: () -> one pass over the validation split, every example exactly once.
      classes: the K+1 classes by id, background first.
      skipped: () -> records dropped so far by --skip-corrupt (None when not counting).
      reproducible: whether `train(e)` gives the same batches every time it is rebuilt (the
        tf.data service's order is not); resume skips trained batches only when it does.
      with_keys: train batches carry a third element, the examples' keys ([B, 64] uint8),
        which the trainer records (`keys_path`).
    """

    train: Callable[[int], Iterable]
    val: Callable[[], Iterable]
    classes: Sequence[ClassInfo]
    skipped: Callable[[], int] | None = None
    reproducible: bool = True
    with_keys: bool = False


def epoch_seed(seed: int, epoch: int) -> int:
    """The input seed of one epoch: a new order every epoch, the same order on every resume."""
    return seed * 1_000_003 + epoch


def make_data(strategy: tf.distribute.Strategy, data_dir: str, *, batch_size: int,
              image_size: int, decoder: str, preprocess: str, seed: int,
              skip_corrupt: bool = False, data_service: str | None = None,
              with_keys: bool = False) -> tuple[Data, int]:
    """`Data` from a detrec dataset through train/input.py, and the train steps per epoch.

    Training goes through `strategy.distribute_datasets_from_function` (each input pipeline
    reads its own disjoint part; DALI pipelines sit on their replica's GPU). Validation on
    one replica walks exactly one epoch with `take_epoch` (which trims DALI's padded last
    batch); on several replicas or workers it uses the tf.data decoder, whose last batch is
    simply short, through `experimental_distribute_dataset`, which splits it across replicas
    (and, under MultiWorkerMirroredStrategy, the val files across workers).

    Args:
      data_service: `grpc://HOST:PORT` of a tf.data service dispatcher: the training
        pipeline runs there (see the module docstring); validation stays local.
      with_keys: also deliver each training example's key (see `Data.with_keys`).

    Raises:
      UserError: a bad dataset or split, a batch that does not divide over the replicas or
        is larger than a worker's share, or DALI combined with the data service.
    """
    from detrec.core import dataset_info, fs
    from detrec.train import input as input_lib

    service = None
    if data_service is not None:
        from detrec.train import data_service as service_lib

        service = service_lib.parse_address(data_service)
        if decoder == "dali":
            raise UserError("--decoder dali cannot go through --data-service: the service runs tf.data "
                            "graphs on CPU workers, DALI decodes on this machine's GPU; use --decoder cpu")
        decoder = "cpu"  # "auto" included: only the tf.data decoder can be serialised
    info = dataset_info.load(data_dir)
    classes = list(info.classes)
    decoder = input_lib.resolve_decoder(decoder)
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise UserError(f"--batch-size {batch_size} is not a multiple of the {replicas} replicas")
    workers, index = worker_position(strategy)
    # Every worker must run the same number of steps (each step is a collective), so the
    # smallest share decides; with even shards nothing is left out.
    plans = [input_lib.epoch_plan(data_dir, "train", batch_size=batch_size // workers, training=True,
                                  decoder=decoder, num_workers=workers, worker_index=i,
                                  skip_corrupt=skip_corrupt) for i in range(workers)]
    steps = min(plan.steps for plan in plans)
    if steps < 1:
        smallest = min(plans, key=lambda plan: plan.steps)
        share = f"worker {plans.index(smallest)}'s share of " if workers > 1 else ""
        raise UserError(f"{share}the train split of {data_dir} has {smallest.num_examples} examples, "
                        f"fewer than one batch of {smallest.batch_size}")
    input_lib.shard_entries(data_dir, "val")  # UserError now, not after the first epoch
    counter = input_lib.SkipCounter() if skip_corrupt else None
    common = dict(image_size=image_size, preprocess=preprocess, skip_corrupt=skip_corrupt,
                  counter=counter)

    def train(epoch: int) -> Iterable:
        if service:
            return strategy.distribute_datasets_from_function(
                _service_dataset_fn(data_dir, service, global_batch_size=batch_size,
                                    seed=epoch_seed(seed, epoch), with_keys=with_keys,
                                    **dict(common, counter=None)))
        fn = input_lib.dataset_fn(data_dir, "train", global_batch_size=batch_size,
                                  decoder=decoder, training=True, repeat=True,
                                  seed=epoch_seed(seed, epoch), with_keys=with_keys, **common)
        return strategy.distribute_datasets_from_function(fn, input_lib.input_options(decoder))

    def val() -> Iterable:
        if replicas == 1 and workers == 1:
            val_plan = input_lib.epoch_plan(data_dir, "val", batch_size=batch_size, training=False,
                                            decoder=decoder, skip_corrupt=skip_corrupt)
            ds = input_lib.make_dataset(data_dir, "val", batch_size=batch_size, training=False,
                                        decoder=decoder, repeat=decoder == "dali", **common)
            return input_lib.take_epoch(iter(ds), val_plan)
        ds = input_lib.make_dataset(data_dir, "val", batch_size=batch_size, training=False,
                                    decoder="cpu", **common)
        return strategy.experimental_distribute_dataset(ds)

    skipped = (lambda: counter.result()["records"]) if counter else None
    return Data(train=train, val=val, classes=classes, skipped=skipped,
                reproducible=service is None, with_keys=with_keys), steps


def _service_dataset_fn(data_dir: str, service: str, *, global_batch_size: int,
                        **kwargs) -> Callable:
    """`input.dataset_fn`'s twin whose pipelines run on the tf.data service at `service`.

    Each trainer worker sends its own disjoint share of the shard files (the same share it
    would read itself) as its own service job; the dispatcher splits that share's files
    among the service's workers. Trainer workers sharing one job instead would each take
    whatever batch is ready first, and near the end of a job one can move on to the next
    pass while the other still drains the last one - examples seen twice, others missed.
    A SkipCounter cannot travel with the pipeline (it is a variable of this process):
    skipped records are only printed, by the service workers.
    """
    from detrec.train import data_service as service_lib
    from detrec.train import input as input_lib

    def fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        ds = input_lib.make_dataset(data_dir, "train", batch_size=context.get_per_replica_batch_size(global_batch_size),
                                    decoder="cpu", training=True, repeat=False,
                                    num_workers=context.num_input_pipelines,
                                    worker_index=context.input_pipeline_id, **kwargs)
        # Each pass is one service epoch (a new job); repeating tops an epoch up when the
        # service workers' dropped partial batches leave it short of steps_per_epoch. The
        # repeat also makes the stream infinite to tf.distribute: a finite one of unknown
        # length makes every worker all-reduce "do you still have data?" at each step. The
        # price: the next service epoch starts as soon as one ends, so at each epoch's end
        # the service decodes a few batches that are dropped when the trainer moves on.
        return service_lib.distribute(ds, service).repeat()

    return fn


class _JsonState(tf.train.experimental.PythonState):
    """A JSON-able dict saved inside the checkpoint, so it is always consistent with the weights."""

    def __init__(self, **values) -> None:
        self.values = dict(values)

    def serialize(self) -> str:
        return json.dumps(self.values)

    def deserialize(self, string_value) -> None:
        text = string_value.decode("utf-8") if isinstance(string_value, bytes) else string_value
        self.values = json.loads(text)


# tf.summary.scalar lives in the `tensorboard` package, which tensorflow-cpu does not install;
# this is the same event it writes (scalars plugin, scalar data class) through core TF.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR)


def scalar_summary(tag: str, value: float, step: int) -> None:
    """A TensorBoard scalar on the default summary writer, without the tensorboard package."""
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=_SCALAR_METADATA)


def _fresh_state() -> dict:
    # epoch: 0-based index of the epoch in progress; position: its batches already trained.
    # partial: the epoch's running sums so far (loss, correct, count, seconds, input wait).
    return {"epoch": 0, "position": 0, "total_steps": 0, "history": [],
            "partial": [0.0, 0.0, 0.0, 0.0, 0.0]}


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


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes logs, metrics and the real checkpoints (multi-worker runs)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    spec = resolver.cluster_spec().as_dict()
    if "chief" in spec:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def keys_path(model_dir: str, epoch: int, worker_index: int) -> str:
    """Where `--record-keys` lists the examples worker `worker_index` trained on in `epoch`
    (1-based): one sha256 key per line, in training order."""
    return os.path.join(model_dir, KEYS, f"epoch-{epoch:04d}-worker-{worker_index}.txt")


def write_atomic(path: str, text: str) -> None:
    """Write-to-temp then rename, so a reader (or a crash) never sees half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)


def run_config_dict(cfg: TrainConfig, classes: Sequence[ClassInfo]) -> dict:
    return {
        "model": cfg.model.name, "num_classes": cfg.model.num_classes,
        "image_size": cfg.model.image_size, "weights": cfg.model.weights,
        "synsets": [c.synset for c in classes], "preprocess": cfg.preprocess,
        "batch_size": cfg.batch_size, "steps_per_epoch": cfg.steps_per_epoch, "seed": cfg.seed,
        "mixed_precision": cfg.mixed_precision, "epochs": cfg.epochs, "lr": cfg.lr,
    }


def check_resumable(model_dir: str, wanted: dict) -> None:
    """Raises UserError unless `model_dir`'s checkpoints come from a run like `wanted`."""
    path = os.path.join(model_dir, RUN_CONFIG)
    if not tf.io.gfile.exists(path):
        raise UserError(f"{model_dir} holds checkpoints but no {RUN_CONFIG}: not a detrec model "
                        "dir; use an empty --model-dir")
    try:
        stored = json.loads(fs.read_bytes(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    diffs = []
    for key in RESUME_KEYS:
        if stored.get(key) != wanted[key]:
            shown = (f"{len(stored.get(key) or [])} vs {len(wanted[key])} classes"
                     if key == "synsets" else f"{stored.get(key)!r} there, {wanted[key]!r} now")
            diffs.append(f"{key}: {shown}")
    if diffs:
        architecture = {"model", "num_classes", "image_size", "synsets"}
        what = ("another model" if any(d.split(":")[0] in architecture for d in diffs)
                else "a run with other settings")
        raise UserError(f"{model_dir} holds a checkpoint of {what} ({'; '.join(diffs)}); "
                        "use another --model-dir or the same settings")


class _StopRequested:
    """SIGINT sets a flag; the loop finishes its step, saves and stops. A second ^C kills."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "_StopRequested":
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\ninterrupt: saving a checkpoint, then stopping (^C again to abort)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class Trainer:
    """One training run in `config.model_dir`: resumes what is there, trains, exports.

    Args:
      config: the run's settings.
      data: the datasets (see `Data`).
      strategy: a tf.distribute strategy; `default_strategy()` when None.
      out: where progress bars and messages go.
    """

    def __init__(self, config: TrainConfig, data: Data,
                 strategy: tf.distribute.Strategy | None = None, out=None) -> None:
        self.cfg = config
        self.data = data
        self.strategy = strategy or default_strategy()
        self.chief = is_chief(self.strategy)
        self.out = out or sys.stdout
        self.dir = config.model_dir
        self.workers, self.worker_index = worker_position(self.strategy)
        # Every worker of a multi-worker run must save (it is a collective op); only the
        # chief's copy is the real one, the others write to a scratch dir (see `_restore`).
        self.restore_dir = os.path.join(self.dir, CHECKPOINTS)
        self.ckpt_dir = self.restore_dir if self.chief else os.path.join(
            self.dir, f".worker-{self.worker_index}")
        self.state = _JsonState(**_fresh_state())
        self.best = _JsonState(epoch=0, val_top1=-1.0, val_loss=math.inf)
        self._stop = _StopRequested()

    # --- set-up -------------------------------------------------------------------------
    def _log(self, message: str) -> None:
        if self.chief:
            tqdm.write(message, file=self.out)

    def _build(self) -> None:
        cfg = self.cfg
        keras.utils.set_random_seed(cfg.seed)
        with self.strategy.scope():
            self.model = models.build(cfg.model)
            optimizer = keras.optimizers.Adam(cfg.lr)
            if cfg.mixed_precision and keras.mixed_precision.global_policy().name == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            # Built now, not at the first step, so a restore fills the slots instead of
            # deferring and a checkpoint always holds them.
            optimizer.build(self.model.trainable_variables)
            self.optimizer = optimizer
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=optimizer, state=self.state)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.ckpt_dir,
                                                  max_to_keep=cfg.keep_checkpoints)
        self.best_checkpoint = tf.train.Checkpoint(model=self.model, state=self.best)
        self.best_manager = tf.train.CheckpointManager(
            self.best_checkpoint, os.path.join(self.ckpt_dir, BEST), max_to_keep=1)
        self._make_steps()

    def _make_steps(self) -> None:
        model, optimizer, strategy = self.model, self.optimizer, self.strategy
        top_k = min(5, self.cfg.model.num_classes)

        def train_replica(images, labels):
            with tf.GradientTape() as tape:
                logits = tf.cast(model(images, training=True), tf.float32)
                per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
                # Divides by the *global* batch, so summing gradients over replicas is right.
                loss = tf.nn.compute_average_loss(per_example)
                if model.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
                scaled = optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)
            correct = tf.equal(tf.argmax(logits, -1), labels)
            return tf.stack([tf.reduce_sum(tf.cast(per_example, tf.float64)),
                             tf.reduce_sum(tf.cast(correct, tf.float64)),
                             tf.cast(tf.size(labels), tf.float64)])

        def eval_replica(images, labels):
            logits = tf.cast(model(images, training=False), tf.float32)
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
            top1 = tf.equal(tf.argmax(logits, -1), labels)
            topk = tf.math.in_top_k(labels, logits, k=top_k)
            return tf.stack([tf.reduce_sum(tf.cast(per_example, tf.float64)),
                             tf.reduce_sum(tf.cast(top1, tf.float64)),
                             tf.reduce_sum(tf.cast(topk, tf.float64)),
                             tf.cast(tf.size(labels), tf.float64)])

        if self.cfg.jit_compile:  # XLA on the per-replica math, as Keras' own jit_compile does
            train_replica = tf.function(train_replica, jit_compile=True)
            eval_replica = tf.function(eval_replica, jit_compile=True)

        @tf.function(reduce_retracing=True)
        def train_step(batch):
            images, labels = batch
            sums = strategy.run(train_replica, args=(images, labels))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

        @tf.function(reduce_retracing=True)
        def eval_step(batch):
            images, labels = batch
            sums = strategy.run(eval_replica, args=(images, labels))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

        self._train_step, self._eval_step = train_step, eval_step

    def _prepare_dir(self) -> None:
        """Creates the model dir, or checks that what it holds is this run's to resume."""
        wanted = run_config_dict(self.cfg, self.data.classes)
        try:
            tf.io.gfile.makedirs(self.dir)
        except (tf.errors.OpError, OSError) as exc:
            raise UserError(f"{self.dir}: cannot create the model dir ({exc})") from None
        if not tf.io.gfile.isdir(self.dir):
            raise UserError(f"{self.dir}: not a directory")
        if tf.train.latest_checkpoint(os.path.join(self.dir, CHECKPOINTS)):
            check_resumable(self.dir, wanted)
        if self.chief:
            # Leftovers of a run killed mid-write (the real files were never replaced by them).
            for pattern in (f"{self.dir}/*.tmp-*", f"{self.dir}/{EXPORT}/.model-*.keras"):
                for stale in tf.io.gfile.glob(pattern):
                    tf.io.gfile.remove(stale)
            # New, or resumed with the same identity (epochs and lr may change).
            write_atomic(os.path.join(self.dir, RUN_CONFIG), json.dumps(wanted, indent=2) + "\n")

    def _restore(self) -> None:
        """Restores the newest readable checkpoint; falls back to older ones if one is damaged.

        A non-chief worker reads the chief's checkpoints when its model dir shows them (shared
        storage), else its own scratch copies: every save is collective, so they hold the
        same state. All workers then check that they resumed at the same step.
        """
        if not self.chief and tf.train.get_checkpoint_state(self.restore_dir) is None:
            self.restore_dir = self.ckpt_dir
        self._restore_from(self.restore_dir)
        if self.workers > 1:
            self._check_workers_agree()

    def _check_workers_agree(self) -> None:
        """The same UserError on every worker unless all resumed at the same step.

        Each worker contributes (1, x, x*x) for its step count x; with the sums (n, Sx, Sxx),
        identical on every worker, n*Sxx == Sx*Sx holds exactly when all x are equal
        (Cauchy-Schwarz), so every worker reaches the same verdict.
        """
        steps = float(self.state.values["total_steps"])
        mine = tf.constant([1.0, steps, steps * steps], tf.float64)
        strategy = self.strategy

        @tf.function
        def all_sums():
            return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(mine)),
                                   axis=None)

        n, total, squares = (float(v) for v in all_sums().numpy())
        if abs(n * squares - total * total) > 0.5:
            raise UserError(
                f"the {self.workers} workers resumed from different checkpoints (this one at step "
                f"{int(steps)}, mean {total / n:g}): give every worker the same --model-dir on shared "
                "storage, or start them all from empty model dirs")

    def _restore_from(self, directory: str) -> None:
        state = tf.train.get_checkpoint_state(directory)
        paths = list(state.all_model_checkpoint_paths) if state else []
        for path in reversed(paths):
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except (tf.errors.OpError, AssertionError, ValueError) as exc:
                self._log(f"warning: cannot read checkpoint {path} ({type(exc).__name__}); "
                          "trying an older one")
                continue
            s = self.state.values
            where = (f"epoch {s['epoch'] + 1}/{self.cfg.epochs}, step {s['position']}/"
                     f"{self.cfg.steps_per_epoch} of the epoch" if s["epoch"] < self.cfg.epochs
                     else f"{s['epoch']} epochs done")
            self._log(f"resuming from {path}: {where}, {s['total_steps']} steps done")
            break
        else:
            if paths:
                raise UserError(f"no readable checkpoint in {directory}; "
                                "use another --model-dir")
            return
        best = tf.train.latest_checkpoint(os.path.join(directory, BEST))
        if best:  # only the record (epoch, val top-1) of the best model so far
            tf.train.Checkpoint(state=self.best).read(best).expect_partial()
        if not math.isclose(self._lr(), self.cfg.lr, rel_tol=1e-6):
            self._log(f"learning rate {self._lr():g} -> {self.cfg.lr:g}")
            self.optimizer.learning_rate.assign(self.cfg.lr)

    def _lr(self) -> float:
        # A MirroredVariable under MirroredStrategy: float() needs a tensor.
        return float(tf.convert_to_tensor(self.optimizer.learning_rate))

    # --- saving -------------------------------------------------------------------------
    def _save(self) -> str:
        return self.manager.save()

    def _write_metrics(self) -> None:
        if not self.chief:
            return
        s = self.state.values
        doc = {"epochs": s["history"], "total_steps": s["total_steps"]}
        write_atomic(os.path.join(self.dir, METRICS), json.dumps(doc, indent=2) + "\n")

    # --- the loop -----------------------------------------------------------------------
    def run(self) -> int:
        """Trains to `config.epochs` (resuming), exports; 0 when done, 130 when interrupted."""
        policy = keras.mixed_precision.global_policy()
        if self.cfg.mixed_precision:
            gpu = bool(tf.config.list_logical_devices("GPU"))
            keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "mixed_bfloat16")
        try:
            self._prepare_dir()
            self._build()
            self._restore()
            self.writer = (tf.summary.create_file_writer(os.path.join(self.dir, LOGS))
                           if self.chief else tf.summary.create_noop_writer())
            with self._stop, self.writer.as_default():
                done = self._epochs()
            if not done:
                s = self.state.values
                self._log(f"stopped at epoch {s['epoch'] + 1}, step {s['position']} "
                          f"({s['total_steps']} steps done); checkpoint {self.manager.latest_checkpoint}; "
                          "run the same command to resume")
                return 130
            self.export()
            return 0
        finally:
            keras.mixed_precision.set_global_policy(policy)

    def _epochs(self) -> bool:
        cfg, s = self.cfg, self.state.values
        if s["epoch"] >= cfg.epochs:
            self._log(f"{self.dir}: already trained {s['epoch']} epochs (--epochs {cfg.epochs})")
        while s["epoch"] < cfg.epochs:
            epoch = s["epoch"]
            if s["position"] < cfg.steps_per_epoch and not self._train_epoch(epoch):
                self._save()
                return False
            val = self._validate()
            if val is None:  # interrupted during validation: the epoch's training is saved
                self._save()
                return False
            loss_sum, correct, count, seconds, wait = s["partial"]
            record = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / max(count, 1.0),
                "train_accuracy": correct / max(count, 1.0),
                "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
                "images_per_sec": count / max(seconds, 1e-9),
                "steps": cfg.steps_per_epoch,
                "input_wait_fraction": wait / max(seconds, 1e-9),
            }
            s["history"] = [h for h in s["history"] if h["epoch"] <= epoch] + [record]
            s.update(epoch=epoch + 1, position=0, partial=[0.0] * 5)
            # Ties on top-1 (common on small val sets) go to the lower val loss.
            best = self.best.values
            is_best = (record["val_top1"], -record["val_loss"]) > (best["val_top1"], -best["val_loss"])
            if is_best:
                self.best.values = {"epoch": epoch + 1, "val_top1": record["val_top1"],
                                    "val_loss": record["val_loss"]}
                self.best_manager.save()
            self._save()
            self._write_metrics()
            self._epoch_summaries(record)
            self._log(
                f"epoch {epoch + 1}/{cfg.epochs}: train loss {record['train_loss']:.4f} "
                f"acc {record['train_accuracy']:.3f} | val loss {record['val_loss']:.4f} "
                f"top1 {record['val_top1']:.3f} top5 {record['val_top5']:.3f} | "
                f"{record['images_per_sec']:.0f} img/s, input wait "
                f"{100 * record['input_wait_fraction']:.0f}%, {seconds:.1f}s"
                + (" [best]" if is_best else "") + self._skipped_note())
            if self._stop.requested and s["epoch"] < cfg.epochs:
                return False
        self._write_metrics()
        return True

    def _skipped_note(self) -> str:
        skipped = self.data.skipped() if self.data.skipped else 0
        return f" | --skip-corrupt: {skipped} unreadable records skipped so far" if skipped else ""

    def _train_epoch(self, epoch: int) -> bool:
        """Trains the rest of `epoch`; False when interrupted (state is ready to save)."""
        cfg, s = self.cfg, self.state.values
        steps = cfg.steps_per_epoch
        iterator = iter(self.data.train(epoch))
        keys: list[str] | None = [] if self.data.with_keys else None
        if s["position"] and self.data.reproducible:
            # The input position: this epoch's order is fixed by its seed, so dropping the
            # batches the interrupted run trained on leaves exactly the ones it had not.
            self._log(f"skipping the {s['position']} batches of epoch {epoch + 1} already trained")
            for _ in tqdm(range(s["position"]), desc="  skip", unit="batch", file=sys.stderr,
                          disable=not self.chief, leave=False):
                batch = next(iterator)
                if keys is not None:  # the same batches the interrupted run trained on
                    keys += self._local_keys(batch[2])
        elif s["position"]:
            self._log(f"the input order is not reproducible (tf.data service): the remaining "
                      f"{steps - s['position']} steps of epoch {epoch + 1} take their batches from a "
                      "fresh epoch of the input, so this epoch may repeat some examples and miss others")
        pending = tf.zeros([3], tf.float64)  # sums not yet read back from the device
        partial = s["partial"]
        last_shown = 0.0
        bar = tqdm(total=steps, initial=s["position"], desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   unit="step", file=sys.stderr, disable=not self.chief, dynamic_ncols=True,
                   leave=False)

        def sync() -> None:
            nonlocal pending
            for i, value in enumerate(pending.numpy()):
                partial[i] += float(value)
            pending = tf.zeros([3], tf.float64)

        try:
            while s["position"] < steps:
                start = time.perf_counter()
                try:
                    batch = next(iterator)
                except StopIteration:
                    raise UserError("the training input ended early: it yielded no batch "
                                    "(every record unreadable?)") from None
                waited = time.perf_counter() - start
                if keys is not None:
                    keys += self._local_keys(batch[2])
                    batch = batch[:2]
                pending += self._train_step(batch)
                s["position"] += 1
                s["total_steps"] += 1
                bar.update(1)
                partial[3] += time.perf_counter() - start
                partial[4] += waited
                saving = cfg.checkpoint_every and s["total_steps"] % cfg.checkpoint_every == 0
                now = time.perf_counter()
                if saving or self._stop.requested or now - last_shown > 1.0 or s["position"] == steps:
                    sync()
                    last_shown = now
                    self._show(bar, partial)
                if saving and s["position"] < steps:
                    self._save()
                if self._stop.requested:
                    return False
        finally:
            bar.close()
        if keys is not None:
            path = keys_path(self.dir, epoch + 1, self.worker_index)
            tf.io.gfile.makedirs(os.path.dirname(path))
            write_atomic(path, "".join(f"{key}\n" for key in keys))
        return True

    def _local_keys(self, keys) -> list[str]:
        """The keys of this worker's examples in a (possibly distributed) batch, in order."""
        from detrec.train import input as input_lib

        return [key for part in self.strategy.experimental_local_results(keys)
                for key in input_lib.key_strings(part)]

    def _show(self, bar: tqdm, partial: list) -> None:
        loss_sum, correct, count, seconds, _ = partial
        loss, acc, rate = loss_sum / max(count, 1), correct / max(count, 1), count / max(seconds, 1e-9)
        bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}", img_s=f"{rate:.0f}", refresh=False)
        step = self.state.values["total_steps"]
        scalar_summary("train/loss", loss, step=step)
        scalar_summary("train/accuracy", acc, step=step)
        scalar_summary("train/learning_rate", self._lr(), step=step)
        scalar_summary("train/images_per_sec", rate, step=step)

    def _epoch_summaries(self, record: dict) -> None:
        step = self.state.values["total_steps"]
        for key in ("train_loss", "train_accuracy", "val_loss", "val_top1", "val_top5",
                    "images_per_sec", "input_wait_fraction"):
            scalar_summary(f"epoch/{key}", record[key], step=step)
        self.writer.flush()

    def _validate(self) -> dict | None:
        """Loss, top-1 and top-5 over the whole val split; None when interrupted."""
        totals = tf.zeros([4], tf.float64)
        with tqdm(desc="  validate", unit="batch", file=sys.stderr, disable=not self.chief,
                  leave=False, dynamic_ncols=True) as bar:
            for batch in self.data.val():
                totals += self._eval_step(batch)
                bar.update(1)
                if self._stop.requested:
                    return None
        loss, top1, top5, count = (float(v) for v in totals.numpy())
        self.val_examples = int(count)  # each example exactly once, whatever the strategy
        if count == 0:
            raise UserError("the validation split yielded no example")
        return {"loss": loss / count, "top1": top1 / count, "top5": top5 / count}

    # --- export -------------------------------------------------------------------------
    def export(self) -> str:
        """Writes the best model (by val top-1) and its labels to DIR/export; returns the dir."""
        if not self.chief:
            return ""
        best = self.best_manager.latest_checkpoint
        if best:
            self.best_checkpoint.read(best).expect_partial()
        path = export_model(self.model, self.dir, self.cfg, self.data.classes,
                            best_epoch=int(self.best.values["epoch"]),
                            val_top1=float(self.best.values["val_top1"]))
        self._log(f"exported the best model (epoch {self.best.values['epoch']}, val top-1 "
                  f"{self.best.values['val_top1']:.3f}) to {path}")
        return path


def export_model(model: keras.Model, model_dir: str, cfg: TrainConfig,
                 classes: Sequence[ClassInfo], best_epoch: int, val_top1: float) -> str:
    """DIR/export/model.keras + labels.json (classes and the eval preprocessing to apply)."""
    export_dir = os.path.join(model_dir, EXPORT)
    tf.io.gfile.makedirs(export_dir)
    tmp = os.path.join(export_dir, f".model-{os.getpid()}.keras")
    model.save(tmp)
    tf.io.gfile.rename(tmp, os.path.join(export_dir, EXPORT_MODEL), overwrite=True)
    labels = {
        "model": cfg.model.name, "image_size": cfg.model.image_size,
        "preprocess": cfg.preprocess, "epoch": best_epoch, "val_top1": val_top1,
        "classes": [dataclasses.asdict(c) for c in classes],
    }
    write_atomic(os.path.join(export_dir, EXPORT_LABELS), json.dumps(labels, indent=2) + "\n")
    return export_dir


def evaluate(model: keras.Model, dataset: tf.data.Dataset) -> dict:
    """Top-1 of `model` over `dataset` (used by tests and by predict's self-check)."""
    correct = count = 0
    for images, labels in dataset:
        logits = model(images, training=False)
        correct += int(np.sum(np.argmax(logits, -1) == labels.numpy()))
        count += int(labels.shape[0])
    return {"top1": correct / max(count, 1), "count": count}
