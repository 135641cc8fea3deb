"""`detrec synth OUT [--format det|coco|open-images]`: write a synthetic ImageNet-DET tree (see
preprocess/synth.py), and the same images as a COCO or Open Images tree (synth_formats.py)."""

from __future__ import annotations

import argparse
import os
import time

from tqdm import tqdm

from detrec.preprocess import synth, synth_formats
from detrec.core.errors import UserError

HELP = "generate a synthetic ImageNet-DET tree under OUT/ILSVRC/"


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size wants WIDTHxHEIGHT such as 500x375, got {text!r}")
    return w, h


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder; the tree is written under OUT/ILSVRC/")
    parser.add_argument("--train", type=int, default=200, help="train images (default 200)")
    parser.add_argument("--val", type=int, default=50, help="val images (default 50)")
    parser.add_argument("--classes", type=int, default=10, help="object classes K (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    parser.add_argument("--size", type=parse_size, default=(500, 375), metavar="WxH",
                        help="nominal image size; each image is 80-100%% of it (default 500x375)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    parser.add_argument("--format", choices=synth_formats.FORMATS, default="det",
                        help="det: the ImageNet-DET tree only (default); coco, open-images: also the same images "
                        "and boxes as that dataset ships them, under OUT/coco or OUT/open-images (hard links)")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    for name in ("ILSVRC", args.format if args.format != "det" else "ILSVRC"):
        if os.path.exists(os.path.join(args.out, name)):
            raise UserError(f"{args.out}/{name} already exists; choose a new OUT or remove it")
    cfg = synth.SynthConfig(out=args.out, train=args.train, val=args.val, classes=args.classes,
                            seed=args.seed, width=args.size[0], height=args.size[1],
                            quality=args.quality)
    start = time.perf_counter()
    try:
        with tqdm(total=cfg.train + cfg.val, unit="img", desc="synth") as bar:
            result = synth.generate(cfg, progress=bar.update)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    seconds = time.perf_counter() - start
    n = cfg.train + cfg.val
    print(f"wrote {n} images ({cfg.train} train, {cfg.val} val, {cfg.classes} classes) "
          f"under {result['root']} in {seconds:.1f}s ({n / max(seconds, 1e-9):.0f} img/s)")
    print(f"synset map: {result['synset_map']}")
    if args.format != "det":
        write = synth_formats.to_coco if args.format == "coco" else synth_formats.to_open_images
        print(f"{args.format} tree: {write(result['root'], result['synset_map'], os.path.join(args.out, args.format))}")
    return 0
