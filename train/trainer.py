"""The training loop: Adam on the task's loss, validation, checkpoints, resume, export.

A custom loop rather than `Model.fit`: every step goes through `strategy.run` and
`strategy.reduce` (train/steps.py), so the same code runs under the default strategy (one
CPU/GPU), `MirroredStrategy` (several GPUs) and `MultiWorkerMirroredStrategy` (Keras 3's
`fit` fails under the latter; train/distribute.py says what each worker does). It also
gives us the exact control over steps that resume needs.

Resume and the input position
-----------------------------
Epoch `e` reads `data.train(e)`, a stream whose order and augmentation are a pure function
of the run's seed and `e`: with the tf.data decoder through `data.epoch_seed` (the input
pipeline seeds its shuffles and per-example augmentation with it and keeps interleave and
map order deterministic - tests/test_train.py checks this); with DALI through
train/input/draws.py, computed in numpy and fed to the pipeline. The checkpoint stores the number of batches already consumed in the current
epoch (train/state.py); a resumed run rebuilds epoch `e`'s stream and drops that many
batches from its iterator, so it sees exactly the batches the interrupted run had not yet
trained on: same epochs, same optimizer steps, and (with deterministic ops) bit-for-bit the
same learning curve as an uninterrupted run. Dropping batches from the iterator rather than
`Dataset.skip` works for every input: distributed datasets and GPU-placed DALI datasets
accept no further tf.data ops. We chose this over checkpointing the tf.data iterator itself:
an iterator checkpoint holds the shuffle and prefetch buffers (megabytes to gigabytes of
records in every checkpoint), cannot capture a DALI pipeline, and ties the checkpoint to the
exact graph of the input pipeline. The price is re-reading (and decoding) the dropped
batches once per resume, at most one epoch's worth; `--checkpoint-every` bounds the work
lost, not this cost. (The tf.data service's order is not reproducible: see train/data.py.)
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from detrec.core import fs
from detrec.core.crashpoints import crashpoint
from detrec.core.errors import UserError
from detrec.train import distribute, models, progress, registry, rundir
from detrec.train import input as input_lib
from detrec.train.config import TrainConfig, run_config_dict
from detrec.train import data as data_lib
from detrec.train.data import Data
from detrec.train.export import export_model
from detrec.train.interrupt import StopRequested
from detrec.train.state import BestRecord, EpochSums, RunState
from detrec.train.steps import make_steps
from detrec.train.summaries import scalar_summary


class TrainingDiverged(Exception):
    """The loss (or the weights) stopped being finite: the run stops, saves and exports nothing.

    The CLI prints the message as one line and exits 1. The checkpoints already written were
    all taken before the loss went bad (every save follows a check), so the same command
    resumes from the last sound one, e.g. with a lower --lr.
    """


class Trainer:
    """One training run in `config.model_dir`: resumes what is there, trains, exports.

    Args:
      config: the run's settings.
      data: the datasets (see `Data`).
      strategy: a tf.distribute strategy; `distribute.default_strategy()` when None.
      out: where progress bars and messages go.
    """

    def __init__(self, config: TrainConfig, data: Data,
                 strategy: tf.distribute.Strategy | None = None, out=None) -> None:
        self.cfg = config
        self.data = data
        self.strategy = strategy or distribute.default_strategy()
        self.chief = distribute.is_chief(self.strategy)
        self.out = out or sys.stdout
        self.dir = config.model_dir
        self.workers, self.worker_index = distribute.worker_position(self.strategy)
        # Every worker of a multi-worker run must save (it is a collective op); only the
        # chief's copy is the real one, the others write to a scratch dir (see `_restore`).
        self.restore_dir = os.path.join(self.dir, rundir.CHECKPOINTS)
        self.ckpt_dir = (self.restore_dir if self.chief
                         else rundir.scratch_dir(self.dir, self.worker_index))
        self.state = RunState()
        self.best = BestRecord()
        self._stop = StopRequested()
        self._any_worker = distribute.any_worker(self.strategy)
        self.task = registry.task(config.model.task)

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
            self.best_checkpoint, os.path.join(self.ckpt_dir, rundir.BEST), max_to_keep=1)
        self._train_step, self._eval_step = make_steps(
            self.model, optimizer, self.strategy, num_classes=cfg.model.num_classes,
            task=cfg.model.task, jit_compile=cfg.jit_compile)

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
            distribute.check_same_step(self.strategy, self.state.total_steps, self.workers)

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
            s = self.state
            where = (f"epoch {s.epoch + 1}/{self.cfg.epochs}, step {s.position}/"
                     f"{self.cfg.steps_per_epoch} of the epoch" if s.epoch < self.cfg.epochs
                     else f"{s.epoch} epochs done")
            self._log(f"resuming from {path}: {where}, {s.total_steps} steps done")
            break
        else:
            if paths:
                raise UserError(f"no readable checkpoint in {directory}; "
                                "use another --model-dir")
            return
        best = tf.train.latest_checkpoint(os.path.join(directory, rundir.BEST))
        if best:  # only the record (epoch, val top-1) of the best model so far
            tf.train.Checkpoint(state=self.best).read(best).expect_partial()
        if not math.isclose(self._lr(), self.cfg.lr, rel_tol=1e-6):
            self._log(f"learning rate {self._lr():g} -> {self.cfg.lr:g}")
            self.optimizer.learning_rate.assign(self.cfg.lr)

    def _lr(self) -> float:
        # A MirroredVariable under MirroredStrategy: float() needs a tensor.
        return float(tf.convert_to_tensor(self.optimizer.learning_rate))

    def _stopping(self) -> bool:
        """Whether to stop now: ^C here or, in a multi-worker run, on any worker. There it is
        a collective vote, asked at the same points on every worker (after each step, each
        validation batch and each epoch), so all stop at the same step and save together."""
        return self._any_worker(self._stop.requested)

    # --- saving -------------------------------------------------------------------------
    def _save(self) -> str:
        # The callback runs once the checkpoint's files are written, before the manager
        # records it in its index: the "checkpoint-write" crash point of the crash tests.
        written = tf.train.CheckpointOptions(experimental_write_callbacks=[lambda _: crashpoint("checkpoint-write")])
        return self.manager.save(options=written)

    def _write_metrics(self) -> None:
        if not self.chief:
            return
        doc = {"epochs": self.state.history, "total_steps": self.state.total_steps}
        fs.write_atomic(os.path.join(self.dir, rundir.METRICS), json.dumps(doc, indent=2) + "\n")

    # --- the loop -----------------------------------------------------------------------
    def run(self) -> int:
        """Trains to `config.epochs` (resuming), exports; 0 when done, 130 when interrupted.

        Raises:
          TrainingDiverged: a non-finite training or validation loss (nothing saved after it).
        """
        policy = keras.mixed_precision.global_policy()
        if self.cfg.mixed_precision:
            gpu = bool(tf.config.list_logical_devices("GPU"))
            keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "mixed_bfloat16")
        try:
            rundir.prepare(self.dir, run_config_dict(self.cfg, self.data.classes), self.chief)
            self._build()
            self._restore()
            self.writer = (tf.summary.create_file_writer(os.path.join(self.dir, rundir.LOGS))
                           if self.chief else tf.summary.create_noop_writer())
            with self._stop, self.writer.as_default():
                done = self._epochs()
            if not done:
                s = self.state
                self._log(f"stopped at epoch {s.epoch + 1}, step {s.position} "
                          f"({s.total_steps} steps done); checkpoint {self.manager.latest_checkpoint}; "
                          "run the same command to resume")
                return 130
            self.export()
            return 0
        finally:
            keras.mixed_precision.set_global_policy(policy)

    def _epochs(self) -> bool:
        cfg, s = self.cfg, self.state
        if s.epoch >= cfg.epochs:
            self._log(f"{self.dir}: already trained {s.epoch} epochs (--epochs {cfg.epochs})")
        while s.epoch < cfg.epochs:
            epoch = s.epoch
            if s.position < cfg.steps_per_epoch and not self._train_epoch(epoch):
                self._save()
                return False
            val = self._validate()
            if val is None:  # interrupted during validation: the epoch's training is saved
                self._save()
                return False
            sums = s.sums
            record = {
                "epoch": epoch + 1,
                "train_loss": sums.mean_loss,
                "train_accuracy": sums.accuracy,
                "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
                **{f"val_{key}": value for key, value in val.items() if key not in ("loss", "top1", "top5")},
                "images_per_sec": sums.images_per_sec,
                "steps": cfg.steps_per_epoch,
                "input_wait_fraction": sums.input_wait_fraction,
            }
            s.history = [h for h in s.history if h["epoch"] <= epoch] + [record]
            s.epoch, s.position, s.sums = epoch + 1, 0, EpochSums()
            is_best = self.best.beaten_by(record["val_top1"], record["val_loss"])
            if is_best:
                self.best.epoch, self.best.val_top1, self.best.val_loss = (
                    epoch + 1, record["val_top1"], record["val_loss"])
                self.best_manager.save()
            self._save()
            self._write_metrics()
            self._epoch_summaries(record)
            self._log(
                f"epoch {epoch + 1}/{cfg.epochs}: train loss {record['train_loss']:.4f} "
                f"acc {record['train_accuracy']:.3f} | val loss {record['val_loss']:.4f} "
                f"top1 {record['val_top1']:.3f} top5 {record['val_top5']:.3f}{self._task_figures(record)} | "
                f"{record['images_per_sec']:.0f} img/s, input wait "
                f"{100 * record['input_wait_fraction']:.0f}%, {sums.seconds:.1f}s"
                + (" [best]" if is_best else "") + self._skipped_note())
            if self._stopping() and s.epoch < cfg.epochs:
                return False
        self._write_metrics()
        return True

    def _diverged(self, what: str) -> TrainingDiverged:
        latest = self.manager.latest_checkpoint
        where = (f"the last checkpoint, {latest}, is from before it: lower --lr and run the same command to "
                 "resume from there" if latest else "no checkpoint was saved: lower --lr and run it again")
        return TrainingDiverged(f"{what}: training stopped, nothing saved or exported after it; {where}")

    def _skipped_note(self) -> str:
        skipped = self.data.skipped() if self.data.skipped else 0
        return f" | --skip-corrupt: {skipped} unreadable records skipped so far" if skipped else ""

    def _train_epoch(self, epoch: int) -> bool:
        """Trains the rest of `epoch`; False when interrupted (state is ready to save)."""
        cfg, s = self.cfg, self.state
        steps = cfg.steps_per_epoch
        iterator = iter(self.data.train(epoch))
        keys: list[str] | None = [] if self.data.with_keys else None
        if s.position:
            self._log(data_lib.resume_note(self.data.resume, epoch, s.position, steps))
        if s.position and self.data.resume != data_lib.RESUME_FRESH:
            # The input position: this epoch's order is fixed by the seed and the epoch, so
            # dropping the batches the interrupted run trained on leaves exactly the ones it had not.
            with progress.bar(total=s.position, desc="  skip", unit="batch", enabled=self.chief) as skip_bar:
                for _ in range(s.position):
                    batch = next(iterator)
                    if keys is not None:  # the same batches the interrupted run trained on
                        keys += self._local_keys(batch[-1])
                    skip_bar.update(1)
        # Each step's sums stay on the device until the next sync reads them all back at once;
        # kept apart (not summed on the device) so that the first step whose loss is not
        # finite can be named, and so the epoch's sums add up the same whenever syncs happen.
        pending: list[tf.Tensor] = []
        pending_from = s.position  # the epoch step of pending[0]
        sums = s.sums
        last_shown = 0.0
        bar = progress.bar(total=steps, initial=s.position, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                           unit="step", enabled=self.chief)

        def sync() -> None:
            nonlocal pending, pending_from
            if pending:
                for i, row in enumerate(tf.stack(pending).numpy()):
                    if not math.isfinite(row[0]) or row[3]:
                        what = ("loss" if not math.isfinite(row[0]) else "gradient")
                        raise self._diverged(
                            f"the training {what} is not finite (mean loss {row[0] / max(row[2], 1.0)}) at epoch "
                            f"{epoch + 1}, step {pending_from + i + 1} of {steps} (learning rate {self._lr():g})")
                    sums.add_step_sums(row[:3])
            pending, pending_from = [], s.position

        try:
            while s.position < steps:
                start = time.perf_counter()
                try:
                    batch = next(iterator)
                except StopIteration:
                    raise UserError("the training input ended early: it yielded no batch "
                                    "(every record unreadable?)") from None
                waited = time.perf_counter() - start
                if keys is not None:  # the keys come last, after what the task reads
                    keys += self._local_keys(batch[-1])
                    batch = batch[:-1]
                pending.append(self._train_step(batch))
                s.position += 1
                s.total_steps += 1
                crashpoint("step")
                bar.update(1)
                sums.seconds += time.perf_counter() - start
                sums.input_wait += waited
                saving = cfg.checkpoint_every and s.total_steps % cfg.checkpoint_every == 0
                stop = self._stopping()
                now = time.perf_counter()
                if saving or stop or now - last_shown > 1.0 or s.position == steps:
                    sync()
                    last_shown = now
                    self._show(bar, sums)
                if saving and s.position < steps:
                    self._save()
                if stop:
                    return False
        finally:
            bar.close()
        if keys is not None:
            path = rundir.keys_path(self.dir, epoch + 1, self.worker_index)
            fs.makedirs(fs.dirname(path))
            fs.write_atomic(path, "".join(f"{key}\n" for key in keys))
        return True

    def _local_keys(self, keys) -> list[str]:
        """The keys of this worker's examples in a (possibly distributed) batch, in order."""
        return [key for part in self.strategy.experimental_local_results(keys)
                for key in input_lib.key_strings(part)]

    def _show(self, bar, sums: EpochSums) -> None:
        loss, acc, rate = sums.mean_loss, sums.accuracy, sums.images_per_sec
        bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}", img_s=f"{rate:.0f}", refresh=False)
        step = self.state.total_steps
        scalar_summary("train/loss", loss, step=step)
        scalar_summary("train/accuracy", acc, step=step)
        scalar_summary("train/learning_rate", self._lr(), step=step)
        scalar_summary("train/images_per_sec", rate, step=step)

    def _task_figures(self, record: dict) -> str:
        """The task's own validation figures for the epoch's line ("" for classify)."""
        extra = [key for key in record if key.startswith("val_") and key not in ("val_loss", "val_top1", "val_top5")]
        return "".join(f" {key[4:]} {record[key]:.3f}" for key in extra)

    def _epoch_summaries(self, record: dict) -> None:
        step = self.state.total_steps
        for key, value in record.items():
            if key not in ("epoch", "steps"):
                scalar_summary(f"epoch/{key}", value, step=step)
        self.writer.flush()

    def _validate(self) -> dict | None:
        """Loss, top-1, top-5 and the task's figures over the whole val split; None when interrupted."""
        totals = tf.zeros([4 + len(self.task.EVAL_SUMS)], tf.float64)
        with progress.bar(desc="  validate", unit="batch", enabled=self.chief) as bar:
            for batch in self.data.val():
                totals += self._eval_step(batch)
                bar.update(1)
                if self._stopping():
                    return None
        loss, top1, top5, count, *extra = (float(v) for v in totals.numpy())
        self.val_examples = int(count)  # each example exactly once, whatever the strategy
        if count == 0:
            raise UserError("the validation split yielded no example")
        if not math.isfinite(loss):
            raise self._diverged(f"the validation loss is not finite ({loss / count}) after epoch "
                                 f"{self.state.epoch + 1}")
        return {"loss": loss / count, "top1": top1 / count, "top5": top5 / count,
                **self.task.eval_record(dict(zip(self.task.EVAL_SUMS, extra)))}

    # --- export -------------------------------------------------------------------------
    def export(self) -> str:
        """Writes the best model (by val top-1) and its labels to DIR/export; returns the dir."""
        if not self.chief:
            return ""
        best = self.best_manager.latest_checkpoint
        if best:
            self.best_checkpoint.read(best).expect_partial()
        if not all(np.isfinite(w).all() for w in self.model.get_weights()):
            raise TrainingDiverged(f"the best model's weights are not finite (NaN or inf): nothing exported "
                                   f"to {os.path.join(self.dir, rundir.EXPORT)}")
        path = export_model(self.model, self.dir, self.cfg, self.data.classes,
                            best_epoch=int(self.best.epoch), val_top1=float(self.best.val_top1))
        self._log(f"exported the best model (epoch {self.best.epoch}, val top-1 "
                  f"{self.best.val_top1:.3f}) to {path}")
        return path
