"""The trainer's view of a dataset (`Data`), wired from detrec.train.input for a strategy.

`make_data` reads dataset_info.json once, checks everything the trainer would otherwise
trip over later (the splits, the batch against the replicas and each worker's share), and
returns the training stream and a validation pass already shaped for the strategy.

tf.data (`--decoder cpu`): epoch `e` reads a pipeline built for it and seeded by
`epoch_seed(seed, e)`: the same batches every time it is rebuilt, which is what exact resume
relies on (see train/trainer.py). Building a tf.data pipeline costs milliseconds.

DALI: one pipeline per local replica, built when training starts (and again only after a
resume) and read one epoch after the other (detrec.train.input.streams says why, and why
that works under MultiWorkerMirroredStrategy too); validation on one replica keeps one DALI
pipeline for the whole run as well. The stream is built at epoch e0 with the run's seed,
and its epoch e (e >= e0) reads, in the order and with the crops and flips of
train/input/draws.py: pure functions of (seed, e, record), fed to DALI in numpy
(train/input/dali_feed.py). So a run resumed at epoch e, step s builds the stream where its epoch e
starts (stream epoch e, or with --steps-per-epoch S other than the data's D steps, stream
epoch e*S // D after dropping e*S % D batches: the run reads one stream across its epochs)
and drops s batches, as tf.data does, and trains on exactly the batches the interrupted run
would have trained on (`Data.resume == "exact"` for both decoders).

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
from typing import Callable, Iterable, Sequence

import tensorflow as tf

from detrec.core import dataset_info
from detrec.core.dataset_info import ClassInfo
from detrec.core.errors import UserError
from detrec.train import data_service as service_lib
from detrec.train import input as input_lib
from detrec.train import registry
from detrec.train.distribute import worker_position
from detrec.train.input import streams

# How a run resumed mid-epoch gets the rest of that epoch (`Data.resume`).
RESUME_EXACT = "exact"  # the epoch's stream is rebuilt as it was: skip the trained batches
RESUME_FRESH = "fresh"  # no order to skip in (tf.data service): take the remaining count


@dataclasses.dataclass(frozen=True)
class Data:
    """The loop's view of a dataset, already shaped for the trainer's strategy.

    Attributes:
      train: epoch -> an endless iterable of batches ((images, labels), distributed for the
        strategy); see the module docstring for what its order depends on.
      val: () -> one pass over the validation split, every example exactly once.
      classes: the K+1 classes by id, background first.
      skipped: () -> records dropped so far by --skip-corrupt (None when not counting).
      resume: how a mid-epoch resume continues the epoch (RESUME_*).
      with_keys: train batches carry a third element, the examples' keys ([B, 64] uint8),
        which the trainer records (`rundir.keys_path`).
    """

    train: Callable[[int], Iterable]
    val: Callable[[], Iterable]
    classes: Sequence[ClassInfo]
    skipped: Callable[[], int] | None = None
    resume: str = RESUME_EXACT
    with_keys: bool = False


def resume_note(resume: str, epoch: int, position: int, steps: int) -> str:
    """The line a run resumed `position` batches into `epoch` (from 0) of `steps` prints."""
    if resume == RESUME_EXACT:
        return f"skipping the {position} batches of epoch {epoch + 1} already trained"
    return (f"the input order is not reproducible (tf.data service): the remaining {steps - position} steps "
            f"of epoch {epoch + 1} take their batches from a fresh epoch of the input, so this epoch may "
            "repeat some examples and miss others")


def epoch_seed(seed: int, epoch: int) -> int:
    """The input seed of one epoch: a new order every epoch, the same order on every resume."""
    return seed * 1_000_003 + epoch


def make_data(strategy: tf.distribute.Strategy, data_dir: str, *, batch_size: int,
              image_size: int, decoder: str, preprocess: str, seed: int,
              skip_corrupt: bool = False, data_service: str | None = None,
              with_keys: bool = False, dali: input_lib.DaliTuning = input_lib.DaliTuning(),
              steps_per_epoch: int | None = None, task: str = registry.DEFAULT_TASK) -> tuple[Data, int]:
    """`Data` from a detrec dataset through detrec.train.input, and the train steps per epoch.

    tf.data training goes through `strategy.distribute_datasets_from_function` (each input
    pipeline reads its own disjoint part); DALI training through `streams.replica_stream`
    (one pipeline per replica on its GPU, each its own part). Validation on one replica walks
    exactly one epoch (DALI: of one pipeline kept for the run, its padded last batch trimmed);
    on several replicas or workers it uses the tf.data decoder, whose last batch is simply
    short, through `experimental_distribute_dataset`, which splits it across replicas (and,
    under MultiWorkerMirroredStrategy, the val files across workers).

    Args:
      data_service: `grpc://HOST:PORT` of a tf.data service dispatcher: the training
        pipeline runs there (see the module docstring); validation stays local.
      with_keys: also deliver each training example's key (see `Data.with_keys`).
      dali: DALI's threads and hardware-decoder settings (ignored by tf.data).
      steps_per_epoch: the trainer's steps per epoch (`--steps-per-epoch`; default: the
        data's, the returned count). DALI needs it: its stream runs on across epochs.
      task: what the batches must carry besides images and labels (detrec.train.tasks:
        "localize" adds every example's boxes, and its training crops keep its object).

    Raises:
      UserError: a bad dataset or split, a batch that does not divide over the replicas or
        is larger than a worker's share, or DALI combined with the data service.
    """
    service = None
    if data_service is not None:
        service = service_lib.parse_address(data_service)
        portable = registry.portable_decoder()
        if decoder != registry.AUTO and not registry.input_line(decoder).PORTABLE:
            raise UserError(f"--decoder {decoder} cannot go through --data-service: the service runs tf.data "
                            f"graphs on CPU workers, {decoder} decodes on this machine; use --decoder {portable}")
        decoder = portable  # "auto" included: only a portable line can be serialised
    info = dataset_info.load(data_dir)
    # Before anything is built: the model's last layer grows with the classes.
    dataset_info.check_class_count(max(info.num_classes, len(info.classes)), dataset_info.path_in(data_dir))
    decoder = input_lib.resolve_decoder(decoder)
    line = registry.input_line(decoder)
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise UserError(f"--batch-size {batch_size} is not a multiple of the {replicas} replicas")
    workers, _ = worker_position(strategy)
    for name in ("train", "val"):  # records without a class (CLS-LOC test) train nothing
        dataset_info.check_labelled(info, name, data_dir, "--data")
    train_split = input_lib.split_shards(info, data_dir, "train")
    # Who reads a disjoint part: each pipeline of a per-replica line (DALI), else each worker.
    readers, who = (replicas, "replica") if line.PER_REPLICA else (workers, "worker")
    # Every reader must run the same number of steps (each step is a collective), so the
    # smallest share decides; with even shards nothing is left out.
    plans = [input_lib.epoch_plan(train_split, batch_size=batch_size // readers, training=True,
                                  decoder=decoder, num_workers=readers, worker_index=i,
                                  skip_corrupt=skip_corrupt) for i in range(readers)]
    steps = min(plan.steps for plan in plans)
    if steps < 1:
        smallest = min(plans, key=lambda plan: plan.steps)
        share = f"{who} {plans.index(smallest)}'s share of " if readers > 1 else ""
        raise UserError(f"{share}the train split of {data_dir} has {smallest.num_examples} examples, "
                        f"fewer than one batch of {smallest.batch_size}")
    val_split = input_lib.split_shards(info, data_dir, "val")  # UserError now, not after the first epoch
    if not skip_corrupt:  # every worker stops on a bad shard now, not only the one that reads it
        for split in (train_split, val_split):
            input_lib.check_framing(split)
    counter = input_lib.SkipCounter() if skip_corrupt else None
    what = registry.task(task)
    # batch_size is global here: dataset_fn / replica_stream give each pipeline its share.
    train_config = input_lib.InputConfig(batch_size=batch_size, image_size=image_size, training=True,
                                         decoder=decoder, preprocess=preprocess, repeat=True,
                                         skip_corrupt=skip_corrupt, counter=counter, with_keys=with_keys,
                                         dali=dali, with_boxes=what.WITH_BOXES,
                                         min_object_covered=what.MIN_OBJECT_COVERED)
    val_config = input_lib.InputConfig(batch_size=batch_size, image_size=image_size, training=False,
                                       decoder=decoder, preprocess=preprocess, skip_corrupt=skip_corrupt,
                                       counter=counter, dali=dali, with_boxes=what.WITH_BOXES)
    # Kept across epochs: the DALI streams, the validation dataset, the batch due next.
    live: dict[str, object] = {}
    run_steps = steps_per_epoch or steps

    def stream_train(epoch: int) -> Iterable:
        # The run reads one stream, `run_steps` batches per trainer epoch: trainer epoch
        # `epoch` starts `start` batches in, at batch `offset` of stream epoch `stream_epoch`
        # (the same as `epoch` only when --steps-per-epoch is the data's).
        start = epoch * run_steps
        if live.get("next_start") != start:  # the first epoch of this run, or a jump
            if "train" in live:
                live.pop("train").close()
            stream_epoch, offset = divmod(start, steps)
            # The run's seed and the first epoch: each epoch's draws depend on those only.
            live["train"] = streams.replica_stream(
                train_split, train_config.replace(seed=seed, epoch=stream_epoch), strategy, plans[0], steps)
            batches = live["train"].batches()
            for _ in range(offset):  # read by the trainer epochs before this one
                next(batches)
        live["next_start"] = start + run_steps
        return live["train"].batches()

    def train(epoch: int) -> Iterable:
        if line.PER_REPLICA:
            return stream_train(epoch)
        config = train_config.replace(seed=epoch_seed(seed, epoch))
        if service:
            # A SkipCounter cannot travel with the pipeline (it is a variable of this
            # process): skipped records are only printed, by the service workers.
            config = config.replace(repeat=False, counter=None)
            return strategy.distribute_datasets_from_function(_service_dataset_fn(train_split, config, service))
        fn = input_lib.dataset_fn(train_split, config=config)
        return strategy.distribute_datasets_from_function(fn, input_lib.input_options(decoder))

    def val() -> Iterable:
        if replicas == 1 and workers == 1:
            val_plan = input_lib.epoch_plan(val_split, batch_size=batch_size, training=False,
                                            decoder=decoder, skip_corrupt=skip_corrupt)
            if line.PER_REPLICA:
                if "val" not in live:
                    live["val"] = streams.local_stream(val_split, val_config.replace(repeat=True), val_plan)
                return live["val"].epoch(val_plan.rows)
            if "val" not in live:  # built once: every epoch's pass is the same
                live["val"] = input_lib.make_dataset(val_split, config=val_config)
            return input_lib.take_epoch(iter(live["val"]), val_plan)
        if "val" not in live:
            live["val"] = strategy.experimental_distribute_dataset(
                input_lib.make_dataset(val_split, config=val_config.replace(decoder=registry.portable_decoder())))
        return live["val"]

    skipped = (lambda: counter.result()["records"]) if counter else None
    resume = RESUME_FRESH if service else RESUME_EXACT
    return Data(train=train, val=val, classes=list(info.classes), skipped=skipped, resume=resume,
                with_keys=with_keys), steps


def _service_dataset_fn(split: input_lib.SplitShards, config: input_lib.InputConfig,
                        service: str) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """`input.dataset_fn`'s twin whose pipelines run on the tf.data service at `service`.

    Each trainer worker sends its own disjoint share of the shard files (the same share it
    would read itself) as its own service job; the dispatcher splits that share's files
    among the service's workers. Trainer workers sharing one job instead would each take
    whatever batch is ready first, and near the end of a job one can move on to the next
    pass while the other still drains the last one - examples seen twice, others missed.
    """
    local = input_lib.dataset_fn(split, config=config)

    def fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        # Each pass is one service epoch (a new job); repeating tops an epoch up when the
        # service workers' dropped partial batches leave it short of steps_per_epoch. The
        # repeat also makes the stream infinite to tf.distribute: a finite one of unknown
        # length makes every worker all-reduce "do you still have data?" at each step. The
        # price: the next service epoch starts as soon as one ends, so at each epoch's end
        # the service decodes a few batches that are dropped when the trainer moves on.
        return service_lib.distribute(local(context), service).repeat()

    return fn
