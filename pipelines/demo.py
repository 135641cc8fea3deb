"""`make demo`: the whole product on the embedded synthetic dataset, through the public CLI.

synth -> preprocess (Beam) -> inspect (verify + contact sheet) -> train -> predict, then a
short report of what was made and where. Every stage is idempotent, so running it again
reuses the data and resumes (or simply re-reports) the training.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

from detrec.pipelines import cli


def stage(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def check(code: int, what: str) -> None:
    if code != 0:
        print(f"demo: {what} failed (exit {code})", file=sys.stderr)
        sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detrec.pipelines.demo", description=__doc__)
    parser.add_argument("--out", default="demo_out", help="where everything is written (default demo_out)")
    parser.add_argument("--train", type=int, default=2000, help="synthetic train images")
    parser.add_argument("--val", type=int, default=400, help="synthetic val images")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, help="training batch (default: detrec train's)")
    args = parser.parse_args(argv)
    batch = ["--batch-size", str(args.batch_size)] if args.batch_size else []

    out = os.path.abspath(args.out)
    source, data, model_dir = (os.path.join(out, d) for d in ("source", "shards", "model"))
    sheet = os.path.join(out, "contact_sheet.png")
    started = time.perf_counter()

    stage("1/5 synth: a synthetic ImageNet-DET tree (real JPEGs, real-format XML)")
    if os.path.isdir(os.path.join(source, "ILSVRC")):
        print(f"reusing {source}/ILSVRC (same seed, same bytes)")
    else:
        check(cli.main(["synth", source, "--train", str(args.train), "--val", str(args.val),
                        "--classes", str(args.classes), "--seed", "0"]), "synth")
    root = os.path.join(source, "ILSVRC")

    stage("2/5 preprocess: Beam (DirectRunner, all cores) -> sharded TFRecords")
    check(cli.main(["preprocess", "--input", root, "--output", data,
                    "--synset-map", os.path.join(root, "devkit", "data", "map_det.txt"),
                    "--num-shards", "train=8,val=2"]), "preprocess")

    stage("3/5 inspect: verify every record, cross-check dataset_info.json, draw a contact sheet")
    check(cli.main(["inspect", data, "--verify", "--contact-sheet", sheet]), "inspect")

    stage(f"4/5 train: semi_alexnet, {args.epochs} epochs at {args.image_size}px, validation every epoch")
    check(cli.main(["train", "--data", data, "--model-dir", model_dir, "--model", "semi_alexnet",
                    "--epochs", str(args.epochs), "--image-size", str(args.image_size), "--seed", "0", *batch]),
          "train")

    stage("5/5 predict: the exported model on a few val images")
    images = sorted(glob.glob(os.path.join(root, "Data", "DET", "val", "*.JPEG")))[:4]
    check(cli.main(["predict", "--model-dir", model_dir, *images, "--top", "3"]), "predict")

    with open(os.path.join(model_dir, "metrics.json")) as f:
        last = json.load(f)["epochs"][-1]
    print("\n=== report ===")
    print(f"source tree     {root}")
    print(f"shards          {data} (dataset_info.json, labels.txt, errors-*.jsonl, *.idx)")
    print(f"contact sheet   {sheet}")
    print(f"model           {model_dir} (checkpoints/, export/, logs/, metrics.json)")
    print(f"final epoch     val top-1 {last['val_top1']:.3f}, top-5 {last['val_top5']:.3f}, "
          f"{last['images_per_sec']:.0f} img/s")
    print(f"total           {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
