"""`detrec`: the one console script. Subcommands live in their own modules, imported lazily
so that `detrec --help` answers without loading TensorFlow or Beam.

Each command module defines `HELP` (one line), `configure(parser)` and
`run(args, extra_argv) -> int`. Only `preprocess` accepts extra (Beam) arguments.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Quiet TensorFlow's C++ start-up chatter; users can still set their own level.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from detrec.preprocess import longlived
from detrec.core.errors import IOFailure, UserError

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("detrec.pipelines.synth_cmd", "generate a synthetic ImageNet-DET tree (the embedded default data)"),
    "preprocess": ("detrec.pipelines.preprocess_cmd", "Beam job: ILSVRC/VOC/image-folder tree -> verified, sharded TFRecords"),
    "inspect": ("detrec.pipelines.inspect_cmd", "look inside shards: counts, integrity, labels, pictures"),
    "train": ("detrec.pipelines.train_cmd", "train a CNN streaming from the shards"),
    "predict": ("detrec.pipelines.predict_cmd", "top-k classes (and boxes) of image files or a split's records; a Kaggle submission"),
    "score": ("detrec.pipelines.score_cmd", "the Kaggle localization score of a submission CSV against a solution CSV"),
    "bench": ("detrec.pipelines.bench", "throughput benchmarks: `bench preprocess`, `bench input`"),
    "data-service": ("detrec.pipelines.data_service", "run a tf.data service dispatcher or worker"),
    "beam-service": ("detrec.pipelines.beam_service", "run Beam's Job API servers for --runner PortableRunner"),
}
# Commands whose unknown flags are passed on (to Beam's PipelineOptions).
PASS_THROUGH = {"preprocess", "bench"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detrec",
        description="Large labelled image datasets into TensorFlow training, fast.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    name = argv[0]
    if name not in COMMANDS:
        parser.print_usage(sys.stderr)
        print(f"detrec: error: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module_name, help_text = COMMANDS[name]
    if module_name in sys.modules:
        module = sys.modules[module_name]
    else:
        with longlived.importing():  # Beam's or TensorFlow's objects: no GC passes, a fast exit
            module = importlib.import_module(module_name)
    # No abbreviations: a Beam option must never be taken for a prefix of one of detrec's flags.
    cmd_parser = argparse.ArgumentParser(prog=f"detrec {name}", description=help_text, allow_abbrev=False)
    module.configure(cmd_parser)
    if name in PASS_THROUGH:
        args, extra = cmd_parser.parse_known_args(argv[1:])
    else:
        args, extra = cmd_parser.parse_args(argv[1:]), []
    try:
        return int(module.run(args, extra) or 0)
    except UserError as exc:
        print(f"detrec {name}: error: {exc}", file=sys.stderr)
        return 2
    except IOFailure as exc:
        print(f"detrec {name}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"detrec {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
