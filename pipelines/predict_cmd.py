"""`detrec predict --model-dir DIR IMAGE...`: top-k classes of image files.

Loads DIR/export (written by `detrec train`). Any common image format works (JPEG, PNG,
GIF, BMP, TIFF, WebP; CMYK and grey too). Every file that can be answered is answered; each
one that cannot gets one line on stderr. Exit codes: 0 every image predicted, 1 some image
could not be read or prepared (not an image, truncated, too large or a decompression bomb,
larger than 128 MB, a FIFO or device...), 2 a user mistake: no usable model in DIR
(missing, unreadable, or weights not finite), or an IMAGE path that does not exist or is a
folder (2 wins over 1).
"""

from __future__ import annotations

import argparse
import json
import sys

from detrec.core import fs
from detrec.pipelines import argtypes

HELP = "top-k classes of image files with an exported model"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, metavar="DIR", help="a `detrec train` model dir")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--top", type=argtypes.positive, default=5, help="classes per image (default 5)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from detrec.train import gpu, predict

    gpu.enable_memory_growth()  # before the model touches a GPU (train/gpu.py)
    predictor = predict.Predictor(args.model_dir)
    # A path that is not there or is a folder is a mistake in the command line, not a bad image.
    mistaken = any(not fs.exists(path) or fs.isdir(path) for path in args.images)
    results = predictor.predict(args.images, top=args.top)
    for result in results:
        if result.error:
            print(f"detrec predict: {result.path}: {result.error}", file=sys.stderr)
    if args.json:
        doc = [{"file": r.path, "error": r.error} if r.error else
               {"file": r.path, "top": [vars(p) for p in r.top]} for r in results]
        print(json.dumps(doc, indent=2))
    else:
        for result in results:
            if result.error:
                continue
            print(result.path)
            for rank, p in enumerate(result.top, start=1):
                print(f"  {rank}. {p.probability:7.2%}  {p.id:4d}  {p.synset}  {p.name}")
    return 2 if mistaken else 1 if any(r.error for r in results) else 0
