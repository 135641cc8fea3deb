"""`detrec bench preprocess|input|dali`: throughput benchmarks, each against baselines measured
in the same run (ratios, not absolute numbers, are the targets); `dali` is DALI's GPU decode
path alone (pipelines/dali_bench.py, which also runs without detrec or TensorFlow installed)."""

from __future__ import annotations

import argparse
import importlib

HELP = "throughput benchmarks"
BENCHES = {
    "preprocess": "detrec.pipelines.bench_preprocess",
    "input": "detrec.pipelines.bench_input",
    "dali": "detrec.pipelines.dali_bench",
}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, module_name in BENCHES.items():
        module = importlib.import_module(module_name)
        module.configure(sub.add_parser(name, help=module.HELP, description=module.HELP, allow_abbrev=False))


def run(args: argparse.Namespace, extra: list[str]) -> int:
    return importlib.import_module(BENCHES[args.bench]).run(args, extra)
