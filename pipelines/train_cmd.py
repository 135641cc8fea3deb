"""`detrec train --data OUT --model-dir DIR`: train a CNN streaming from the shards.

Flags in, `detrec.train.trainer.Trainer` out. Running the same command again resumes from
the latest checkpoint in DIR. Exit codes: 0 trained (and exported), 130 stopped by ^C after
saving, 2 a user error (bad path, incomplete dataset, DIR holding another model or not a
detrec run, corrupt shard), 1 the loss stopped being finite (nothing saved or exported after
it; the message names the epoch and step).

Scaling out (train/distribute.py and train/data.py explain the semantics):

    # every machine, i = 0 (the chief) .. N-1, the same other flags:
    detrec train ... --worker-hosts 10.0.0.1:2222,10.0.0.2:2222 --worker-index i
    # input pipeline on a tf.data service (`detrec data-service dispatcher|worker`):
    detrec train ... --data-service grpc://10.0.0.9:5050
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys

from detrec.core.errors import UserError
from detrec.pipelines import argtypes
from detrec.train import registry  # names only: no TensorFlow for --help

HELP = "train a CNN streaming from the shards"
# The same as train.models.MODELS (a test checks), spelled out so `--help` needs no Keras.
MODELS = ("semi_alexnet", "resnet50", "mobilenet_v3_small", "efficientnet_b0")
# The same as train.input.config's DALI defaults (a test checks), for the same reason.
HW_DECODER_LOAD = 0.65
PREALLOCATE = (0, 0)
# train.input.common.MAX_IMAGE_SIZE, for the same reason.
MAX_IMAGE_SIZE = 1024
EPILOG = """\
DIR gets: run_config.json (what must match to resume), checkpoints/ (latest few, plus
checkpoints/best/ by val top-1), logs/ (TensorBoard), metrics.json (per-epoch history) and,
at the end, export/ (model.keras + labels.json, used by `detrec predict`). DIR must be new,
empty or a detrec run: any other non-empty folder is refused, untouched.

A training or validation loss (or gradient) that stops being finite ends the run with exit 1,
naming the epoch and step; nothing is saved or exported after it. Progress shows as bars on
a terminal and as one whole line every 30 s in a log file.

Several machines: start the same command on each with --worker-hosts (all workers' HOST:PORT,
the chief first) and its own --worker-index, or with TF_CONFIG set by your scheduler. Give
them one --model-dir on shared storage (gs://...): the chief writes it, the others write
scratch copies to DIR/.worker-<i>. --batch-size stays the global batch (over all workers).
"""
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (math.isfinite(value) and value > 0):  # "inf" parses, and trains to NaN
        raise argparse.ArgumentTypeError(f"wants a positive finite number, got {text!r}")
    return value


def _load(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"wants a share between 0 and 1, got {text!r}")
    return value


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        width = height = -1
    if width < 0 or height < 0:
        raise argparse.ArgumentTypeError(f"wants WIDTHxHEIGHT such as 5980x6430 (0x0: off), got {text!r}")
    return width, height


def add_dali_flags(parser: argparse.ArgumentParser) -> None:
    """DALI's host and hardware-decoder settings (`detrec train` and `detrec bench input`)."""
    group = parser.add_argument_group("DALI (GPU decode)")
    group.add_argument("--dali-threads", type=argtypes.positive, default=None, metavar="N",
                       help="CPU threads per DALI pipeline (default: this process's cores / its GPUs, at most 8)")
    group.add_argument("--dali-hw-load", type=_load, default=HW_DECODER_LOAD, metavar="SHARE",
                       help=f"share of JPEGs for the A100/H100 hardware decoder (default {HW_DECODER_LOAD})")
    group.add_argument("--dali-preallocate", type=_size, default=PREALLOCATE, metavar="WxH",
                       help="largest image the hardware decoder preallocates for (default "
                            f"{PREALLOCATE[0]}x{PREALLOCATE[1]}: no hint; ImageNet's largest is 5980x6430)")


def dali_tuning(args: argparse.Namespace):
    """The DaliTuning the DALI flags ask for."""
    from detrec.train.input.config import DaliTuning

    return DaliTuning(threads=args.dali_threads, hw_decoder_load=args.dali_hw_load,
                      preallocate=args.dali_preallocate)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--data", required=True, help="the OUT folder of `detrec preprocess`")
    parser.add_argument("--model-dir", required=True, metavar="DIR",
                        help="checkpoints, logs, metrics and the export go here; resumes if present")
    parser.add_argument("--model", choices=MODELS, default="semi_alexnet",
                        help="semi_alexnet is the original article's network (default)")
    parser.add_argument("--weights", default=None, metavar="FILE",
                        help="weights file for the backbone, local or gs://... (default: random init, nothing "
                             "downloaded); part of the run: a resume needs the same --weights")
    parser.add_argument("--task", choices=tuple(registry.TASKS), default=registry.DEFAULT_TASK,
                        help=f"what the model learns: {registry.choices_help(registry.TASKS)} "
                             f"(default {registry.DEFAULT_TASK}); part of the run: a resume needs the same")
    parser.add_argument("--epochs", type=argtypes.positive, default=10, help="default 10")
    parser.add_argument("--batch-size", type=argtypes.positive, default=64,
                        help="global batch, summed over GPUs (default 64)")
    parser.add_argument("--image-size", type=argtypes.bounded(int, 1, MAX_IMAGE_SIZE), default=224,
                        help=f"square input side, at most {MAX_IMAGE_SIZE} (default 224)")
    parser.add_argument("--lr", type=_rate, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--decoder", choices=registry.decoder_choices(), default=registry.AUTO,
                        help=f"the input line: {registry.choices_help(registry.INPUT_LINES)}; "
                             f"{registry.AUTO}: {registry.AUTO_HELP} (default)")
    parser.add_argument("--preprocess", choices=tuple(registry.TRANSFORMS), default=registry.DEFAULT_TRANSFORM,
                        help=f"the image transform: {registry.choices_help(registry.TRANSFORMS)} "
                             f"(default {registry.DEFAULT_TRANSFORM})")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="mixed_float16 on GPU, mixed_bfloat16 on CPU")
    parser.add_argument("--xla", action="store_true", help="compile the train step with XLA (jit_compile)")
    parser.add_argument("--steps-per-epoch", type=argtypes.positive, default=None,
                        help="default: train examples // batch size")
    parser.add_argument("--checkpoint-every", type=argtypes.count, default=500, metavar="N",
                        help="also checkpoint every N steps, not only at epoch ends (0: epoch ends only; default 500)")
    parser.add_argument("--seed", type=int, default=0,
                        help="initial weights and every epoch's input order (default 0)")
    parser.add_argument("--skip-corrupt", action="store_true",
                        help="skip unreadable records (counted and reported) instead of stopping")
    scale = parser.add_argument_group("scaling out")
    scale.add_argument("--worker-hosts", metavar="HOST:PORT,...", default=None,
                       help="multi-worker training (MultiWorkerMirroredStrategy): every worker's "
                            "HOST:PORT, the chief first; sets TF_CONFIG (default: TF_CONFIG from the "
                            "environment, if any)")
    scale.add_argument("--worker-index", type=argtypes.count, default=None, metavar="I",
                       help="this process's position in --worker-hosts (0 = the chief)")
    scale.add_argument("--data-service", metavar="grpc://HOST:PORT", default=None,
                       help="run the training input pipeline on this tf.data service dispatcher "
                            "(`detrec data-service`); tf.data decoder only; a mid-epoch resume is "
                            "not example-exact (see train/data.py)")
    scale.add_argument("--record-keys", action="store_true",
                       help="write the key of every training example each worker consumed to "
                            "DIR/keys/epoch-<e>-worker-<i>.txt (audit what an epoch trained on)")
    add_dali_flags(parser)


def tf_config(worker_hosts: str, worker_index: int | None) -> str:
    """TF_CONFIG (JSON) for worker `worker_index` of the cluster `HOST:PORT,HOST:PORT,...`.

    Raises:
      UserError: a malformed or repeated address, or an index outside the list.
    """
    hosts = [h.strip() for h in worker_hosts.split(",")]
    for host in hosts:
        match = _HOST_PORT.match(host)
        if not match or not 0 < int(match[2]) < 65536:
            raise UserError(f"--worker-hosts: {host!r} is not HOST:PORT (e.g. 10.0.0.1:2222)")
    if len(set(hosts)) != len(hosts):
        raise UserError(f"--worker-hosts lists an address twice: {worker_hosts}")
    if worker_index is None:
        raise UserError("--worker-hosts needs --worker-index (this process's position in the list)")
    if worker_index >= len(hosts):
        raise UserError(f"--worker-index {worker_index} outside the {len(hosts)} --worker-hosts")
    return json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": worker_index}})


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from detrec.train import data as data_lib
    from detrec.train import distribute, gpu, models
    from detrec.train import input as input_lib
    from detrec.train.config import TrainConfig
    from detrec.train.trainer import Trainer, TrainingDiverged

    if args.worker_hosts is not None:
        os.environ["TF_CONFIG"] = tf_config(args.worker_hosts, args.worker_index)
    elif args.worker_index is not None:
        raise UserError("--worker-index needs --worker-hosts")
    # Before any TF op (make_data runs some): memory growth and collective ops can only be
    # configured before the runtime starts.
    gpu.enable_memory_growth()
    strategy = distribute.make_strategy()
    address = distribute.server_address(strategy)
    if address:
        print(f"detrec train: warning: multi-worker training serves TensorFlow's gRPC on {address} with no "
              "authentication or encryption, on every network interface (TensorFlow offers no bind address): "
              "anyone who reaches it can run TensorFlow ops on this machine; use it only on a trusted private "
              "network with its ports firewalled", file=sys.stderr, flush=True)
    data, steps = data_lib.make_data(strategy, args.data, batch_size=args.batch_size,
                                     image_size=args.image_size, decoder=args.decoder,
                                     preprocess=args.preprocess, seed=args.seed,
                                     skip_corrupt=args.skip_corrupt, data_service=args.data_service,
                                     with_keys=args.record_keys, dali=dali_tuning(args),
                                     steps_per_epoch=args.steps_per_epoch, task=args.task)
    config = TrainConfig(
        model_dir=args.model_dir,
        model=models.ModelConfig(args.model, len(data.classes), args.image_size, args.weights, args.task),
        epochs=args.epochs, batch_size=args.batch_size,
        steps_per_epoch=args.steps_per_epoch or steps, lr=args.lr,
        checkpoint_every=args.checkpoint_every, seed=args.seed, preprocess=args.preprocess,
        mixed_precision=args.mixed_precision, jit_compile=args.xla,
    )
    decoder = (f"{registry.portable_decoder()} on {args.data_service}" if args.data_service
               else input_lib.resolve_decoder(args.decoder))
    print(f"training {args.model} to {args.task} on {args.data}: {len(data.classes)} classes, "
          f"{config.steps_per_epoch} steps of {args.batch_size} per epoch, "
          f"{strategy.num_replicas_in_sync} replica(s){_where(strategy)}, decoder {decoder}", flush=True)
    try:
        with input_lib.shard_errors():  # a corrupt shard: one line naming the file
            return Trainer(config, data, strategy).run()
    except TrainingDiverged as exc:
        print(f"detrec train: error: {exc}", file=sys.stderr, flush=True)
        return 1


def _where(strategy) -> str:
    from detrec.train import distribute

    workers, index = distribute.worker_position(strategy)
    return f" on {workers} workers (this is worker {index})" if workers > 1 else ""
