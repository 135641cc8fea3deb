"""The trainer's view of a dataset (`Data`), wired from detrec.train.input for a strategy.

`make_data` reads dataset_info.json once, checks everything the trainer would otherwise
trip over later (the splits, the batch against the replicas and each worker's share), and
returns per-epoch training streams and a validation pass already shaped for the strategy.
Epoch `e` reads a stream seeded by `epoch_seed(seed, e)`: the same batches every time it is
rebuilt, which is what a resumed run relies on (see train/trainer.py).

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
from detrec.train.distribute import worker_position


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
        which the trainer records (`rundir.keys_path`).
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
    """`Data` from a detrec dataset through detrec.train.input, and the train steps per epoch.

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
    service = None
    if data_service is not None:
        service = service_lib.parse_address(data_service)
        if decoder == "dali":
            raise UserError("--decoder dali cannot go through --data-service: the service runs tf.data "
                            "graphs on CPU workers, DALI decodes on this machine's GPU; use --decoder cpu")
        decoder = "cpu"  # "auto" included: only the tf.data decoder can be serialised
    info = dataset_info.load(data_dir)
    decoder = input_lib.resolve_decoder(decoder)
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise UserError(f"--batch-size {batch_size} is not a multiple of the {replicas} replicas")
    workers, _ = worker_position(strategy)
    train_split = input_lib.split_shards(info, data_dir, "train")
    # Every worker must run the same number of steps (each step is a collective), so the
    # smallest share decides; with even shards nothing is left out.
    plans = [input_lib.plan_epoch(train_split, batch_size=batch_size // workers, training=True,
                                  decoder=decoder, num_workers=workers, worker_index=i,
                                  skip_corrupt=skip_corrupt) for i in range(workers)]
    steps = min(plan.steps for plan in plans)
    if steps < 1:
        smallest = min(plans, key=lambda plan: plan.steps)
        share = f"worker {plans.index(smallest)}'s share of " if workers > 1 else ""
        raise UserError(f"{share}the train split of {data_dir} has {smallest.num_examples} examples, "
                        f"fewer than one batch of {smallest.batch_size}")
    val_split = input_lib.split_shards(info, data_dir, "val")  # UserError now, not after the first epoch
    counter = input_lib.SkipCounter() if skip_corrupt else None
    # batch_size is global here: build_dataset_fn gives each input pipeline its share.
    train_config = input_lib.InputConfig(batch_size=batch_size, image_size=image_size, training=True,
                                         decoder=decoder, preprocess=preprocess, repeat=True,
                                         skip_corrupt=skip_corrupt, counter=counter, with_keys=with_keys)
    val_config = input_lib.InputConfig(batch_size=batch_size, image_size=image_size, training=False,
                                       decoder=decoder, preprocess=preprocess, skip_corrupt=skip_corrupt,
                                       counter=counter)

    def train(epoch: int) -> Iterable:
        config = train_config.replace(seed=epoch_seed(seed, epoch))
        if service:
            # A SkipCounter cannot travel with the pipeline (it is a variable of this
            # process): skipped records are only printed, by the service workers.
            config = config.replace(repeat=False, counter=None)
            return strategy.distribute_datasets_from_function(_service_dataset_fn(train_split, config, service))
        fn = input_lib.build_dataset_fn(train_split, config)
        return strategy.distribute_datasets_from_function(fn, input_lib.input_options(decoder))

    def val() -> Iterable:
        if replicas == 1 and workers == 1:
            val_plan = input_lib.plan_epoch(val_split, batch_size=batch_size, training=False,
                                            decoder=decoder, skip_corrupt=skip_corrupt)
            ds = input_lib.build_dataset(val_split, val_config.replace(repeat=decoder == "dali"))
            return input_lib.take_epoch(iter(ds), val_plan)
        ds = input_lib.build_dataset(val_split, val_config.replace(decoder="cpu"))
        return strategy.experimental_distribute_dataset(ds)

    skipped = (lambda: counter.result()["records"]) if counter else None
    return Data(train=train, val=val, classes=list(info.classes), skipped=skipped,
                reproducible=service is None, with_keys=with_keys), steps


def _service_dataset_fn(split: input_lib.SplitShards, config: input_lib.InputConfig,
                        service: str) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """`input.build_dataset_fn`'s twin whose pipelines run on the tf.data service at `service`.

    Each trainer worker sends its own disjoint share of the shard files (the same share it
    would read itself) as its own service job; the dispatcher splits that share's files
    among the service's workers. Trainer workers sharing one job instead would each take
    whatever batch is ready first, and near the end of a job one can move on to the next
    pass while the other still drains the last one - examples seen twice, others missed.
    """
    local = input_lib.build_dataset_fn(split, config)

    def fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        # Each pass is one service epoch (a new job); repeating tops an epoch up when the
        # service workers' dropped partial batches leave it short of steps_per_epoch. The
        # repeat also makes the stream infinite to tf.distribute: a finite one of unknown
        # length makes every worker all-reduce "do you still have data?" at each step. The
        # price: the next service epoch starts as soon as one ends, so at each epoch's end
        # the service decodes a few batches that are dropped when the trainer moves on.
        return service_lib.distribute(local(context), service).repeat()

    return fn
