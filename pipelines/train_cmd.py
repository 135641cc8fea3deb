"""`detrec train --data OUT --model-dir DIR`: train a CNN streaming from the shards.

Flags in, `train.loop.Trainer` out. Running the same command again resumes from the latest
checkpoint in DIR. Exit codes: 0 trained (and exported), 130 stopped by ^C after saving,
2 a user error (bad path, incomplete dataset, DIR holding another model, corrupt shard).
"""

from __future__ import annotations

import argparse

HELP = "train a CNN streaming from the shards"
# The same as train.models.MODELS (a test checks), spelled out so `--help` needs no Keras.
MODELS = ("semi_alexnet", "resnet50", "mobilenet_v3_small", "efficientnet_b0")
EPILOG = """\
DIR gets: run_config.json (what must match to resume), checkpoints/ (latest few, plus
checkpoints/best/ by val top-1), logs/ (TensorBoard), metrics.json (per-epoch history) and,
at the end, export/ (model.keras + labels.json, used by `detrec predict`).
"""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"wants a whole number >= 1, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"wants a whole number >= 0, got {text!r}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"wants a positive number, got {text!r}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--data", required=True, help="the OUT folder of `detrec preprocess`")
    parser.add_argument("--model-dir", required=True, metavar="DIR",
                        help="checkpoints, logs, metrics and the export go here; resumes if present")
    parser.add_argument("--model", choices=MODELS, default="semi_alexnet",
                        help="semi_alexnet is the original article's network (default)")
    parser.add_argument("--weights", default=None, metavar="FILE",
                        help="local weights file for the backbone (default: random init, nothing downloaded)")
    parser.add_argument("--epochs", type=_positive, default=10, help="default 10")
    parser.add_argument("--batch-size", type=_positive, default=64,
                        help="global batch, summed over GPUs (default 64)")
    parser.add_argument("--image-size", type=_positive, default=224, help="square input side (default 224)")
    parser.add_argument("--lr", type=_rate, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--decoder", choices=("auto", "cpu", "dali"), default="auto",
                        help="JPEG decode: tf.data on CPU, DALI (GPU), auto = DALI where a GPU is (default)")
    parser.add_argument("--preprocess", choices=("inception", "seed"), default="inception",
                        help="inception: random-resized crops, [-1,1]; seed: the article's transform")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="mixed_float16 on GPU, mixed_bfloat16 on CPU")
    parser.add_argument("--xla", action="store_true", help="compile the train step with XLA (jit_compile)")
    parser.add_argument("--steps-per-epoch", type=_positive, default=None,
                        help="default: train examples // batch size")
    parser.add_argument("--checkpoint-every", type=_count, default=500, metavar="N",
                        help="also checkpoint every N steps, not only at epoch ends (0: epoch ends only; default 500)")
    parser.add_argument("--seed", type=int, default=0,
                        help="initial weights and every epoch's input order (default 0)")
    parser.add_argument("--skip-corrupt", action="store_true",
                        help="skip unreadable records (counted and reported) instead of stopping")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from train import input as input_lib
    from train import loop, models

    strategy = loop.default_strategy()
    data, steps = loop.make_data(strategy, args.data, batch_size=args.batch_size,
                                 image_size=args.image_size, decoder=args.decoder,
                                 preprocess=args.preprocess, seed=args.seed,
                                 skip_corrupt=args.skip_corrupt)
    config = loop.TrainConfig(
        model_dir=args.model_dir,
        model=models.ModelConfig(args.model, len(data.classes), args.image_size, args.weights),
        epochs=args.epochs, batch_size=args.batch_size,
        steps_per_epoch=args.steps_per_epoch or steps, lr=args.lr,
        checkpoint_every=args.checkpoint_every, seed=args.seed, preprocess=args.preprocess,
        mixed_precision=args.mixed_precision, jit_compile=args.xla,
    )
    print(f"training {args.model} on {args.data}: {len(data.classes)} classes, "
          f"{config.steps_per_epoch} steps of {args.batch_size} per epoch, "
          f"{strategy.num_replicas_in_sync} replica(s), decoder "
          f"{input_lib.resolve_decoder(args.decoder)}", flush=True)
    with input_lib.shard_errors():  # a corrupt shard: one line naming the file
        return loop.Trainer(config, data, strategy).run()
