"""The model dir of a training run: what lives where, and whether a run may resume in it.

One place names every file and folder `detrec train` writes under DIR (the CLI's `--help`
describes the same layout), so the trainer, the export, `detrec predict` and the tests
cannot disagree on a name, and predict reads the export's names without loading the trainer.

Crash safety of the small files: run_config.json, metrics.json, the export's labels and the
`--record-keys` lists are written with `detrec.core.fs.write_atomic` (a temporary sibling,
then a rename), so a reader, or a run killed mid-write, never sees half a file; `prepare`
removes the temporaries such a kill leaves behind. Checkpoints have their own mechanism
(see train/state.py).

Whose folder it is: detrec never overwrites what it did not write, so `prepare` writes only
into a new folder, an empty one (detrec's own temporaries aside) or a detrec run - one whose
run_config.json is detrec's (`is_run_config`). Any other non-empty folder is refused before
anything is written: a user's metrics.json or export/model.keras must not be replaced.
"""

from __future__ import annotations

import json
import os
import re

import tensorflow as tf

from detrec.core import fs
from detrec.core.errors import UserError
from detrec.train import registry

RUN_CONFIG = "run_config.json"
METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
BEST = "best"  # inside CHECKPOINTS: the best epoch's weights, by val top-1
LOGS = "logs"
EXPORT = "export"
EXPORT_MODEL = "model.keras"
EXPORT_LABELS = "labels.json"
KEYS = "keys"
# Fields of run_config.json that must match to resume: they define the weights' layout and
# meaning (model, classes, size, input scaling, optimizer state layout; `weights` too: a
# pretrained backbone gets its input convention's adapter layer, see train/models.py, and
# a resume must not swap the file the run started from) or the step and input-position
# bookkeeping (batch size, steps per epoch, seed).
RESUME_KEYS = ("model", "num_classes", "image_size", "synsets", "weights", "preprocess", "batch_size",
               "steps_per_epoch", "seed", "mixed_precision", "task")
# What a key absent from an older run_config.json meant when it was written.
RESUME_DEFAULTS = {"task": registry.DEFAULT_TASK}


# The keys every run_config.json detrec has written holds: how a detrec run folder is told
# apart from someone else's folder that happens to hold a file of that name.
RUN_CONFIG_IDENTITY = ("model", "num_classes", "image_size", "synsets")
_SCRATCH = re.compile(r"\.worker-\d+")


def keys_path(model_dir: str, epoch: int, worker_index: int) -> str:
    """Where `--record-keys` lists the examples worker `worker_index` trained on in `epoch`
    (1-based): one sha256 key per line, in training order."""
    return os.path.join(model_dir, KEYS, f"epoch-{epoch:04d}-worker-{worker_index}.txt")


def scratch_dir(model_dir: str, worker_index: int) -> str:
    """Where a non-chief worker of a multi-worker run saves its checkpoints (see train/distribute.py)."""
    return os.path.join(model_dir, f".worker-{worker_index}")


def check_resumable(model_dir: str, wanted: dict) -> None:
    """Raises UserError unless `model_dir`'s checkpoints come from a run like `wanted`.

    Args:
      wanted: this run's run_config.json content (`detrec.train.config.run_config_dict`).
    """
    path = os.path.join(model_dir, RUN_CONFIG)
    if not fs.exists(path):
        raise UserError(f"{model_dir} holds checkpoints but no {RUN_CONFIG}: not a detrec model "
                        "dir; use an empty --model-dir")
    try:
        stored = json.loads(fs.read_bytes(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    diffs = []
    for key in RESUME_KEYS:
        there = stored.get(key, RESUME_DEFAULTS.get(key))
        if there != wanted[key]:
            shown = (f"{len(there or [])} vs {len(wanted[key])} classes"
                     if key == "synsets" else f"{there!r} there, {wanted[key]!r} now")
            diffs.append(f"{key}: {shown}")
    if diffs:
        architecture = {"model", "num_classes", "image_size", "synsets", "task"}
        what = ("another model" if any(d.split(":")[0] in architecture for d in diffs)
                else "a run with other settings")
        raise UserError(f"{model_dir} holds a checkpoint of {what} ({'; '.join(diffs)}); "
                        "use another --model-dir or the same settings")


def is_run_config(doc: object) -> bool:
    """Whether a parsed run_config.json is one detrec wrote."""
    return isinstance(doc, dict) and all(key in doc for key in RUN_CONFIG_IDENTITY)


def check_owned(model_dir: str) -> None:
    """Raises UserError unless `model_dir` (an existing folder) may be written by a run.

    Allowed: an empty folder (detrec's temporaries and the scratch dirs of multi-worker
    runs do not count) or a detrec run, one holding detrec's run_config.json.
    """
    names = [name for name in fs.listdir(model_dir) if not fs.is_temp(name) and not _SCRATCH.fullmatch(name)]
    if not names:
        return
    path = os.path.join(model_dir, RUN_CONFIG)
    if RUN_CONFIG not in names:
        shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
        raise UserError(f"{model_dir} is not empty ({shown}) and is not a detrec run (no {RUN_CONFIG}); "
                        "detrec writes only into a new or empty folder or its own run: use another --model-dir")
    try:
        doc = json.loads(fs.read_bytes(path))
    except (ValueError, UnicodeDecodeError, OSError, tf.errors.OpError):
        doc = None
    if not is_run_config(doc):
        raise UserError(f"{path} was not written by detrec, so {model_dir} is not a detrec run; "
                        "detrec writes only into a new or empty folder or its own run: use another --model-dir")


def remove_leftovers(model_dir: str) -> None:
    """Removes the temporaries of writes a killed run left unfinished (the real files were
    never replaced by them): in DIR, DIR/export and DIR/keys."""
    for folder in (model_dir, os.path.join(model_dir, EXPORT), os.path.join(model_dir, KEYS)):
        if not fs.isdir(folder):
            continue
        for name in fs.listdir(folder):
            if fs.is_temp(name):
                fs.remove(os.path.join(folder, name))


def prepare(model_dir: str, wanted: dict, chief: bool) -> None:
    """Creates the model dir, or checks that it is a detrec run this run may resume.

    The chief then clears leftovers and writes `wanted` as run_config.json (new, or resumed
    with the same identity: epochs and lr may change).

    Raises:
      UserError: the dir cannot be made, is a file, is a non-empty folder that is not a
        detrec run (`check_owned`), or holds another run's checkpoints.
    """
    if fs.exists(model_dir) and not fs.isdir(model_dir):
        raise UserError(f"{model_dir}: not a directory")
    try:
        fs.makedirs(model_dir)
    except (tf.errors.OpError, OSError) as exc:
        raise UserError(f"{model_dir}: cannot create the model dir ({exc})") from None
    check_owned(model_dir)
    if tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINTS)):
        check_resumable(model_dir, wanted)
    if chief:
        remove_leftovers(model_dir)
        fs.write_atomic(os.path.join(model_dir, RUN_CONFIG), json.dumps(wanted, indent=2) + "\n")
