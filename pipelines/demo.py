"""`make demo`: the whole product on the embedded synthetic dataset, through the public CLI.

synth -> preprocess (Beam) -> inspect (verify + contact sheet) -> train (--task localize: the
class and the box of each image's object) -> predict (drawn boxes) -> a Kaggle-format val
submission -> its score, then a short report of what was made and where. Every stage is
idempotent, so running it again reuses the data and resumes (or simply re-reports) the training.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

from detrec.pipelines import cli
from detrec.preprocess import synth


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
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, help="training batch (default: detrec train's)")
    args = parser.parse_args(argv)
    batch = ["--batch-size", str(args.batch_size)] if args.batch_size else []

    out = os.path.abspath(args.out)
    source, data, model_dir = (os.path.join(out, d) for d in ("source", "shards", "model"))
    sheet, drawn = os.path.join(out, "contact_sheet.png"), os.path.join(out, "predictions")
    submission = os.path.join(out, "val_submission.csv")
    solution = os.path.join(source, synth.SOLUTION)
    started = time.perf_counter()

    stage("1/7 synth: a synthetic ImageNet-DET tree (real JPEGs, real-format XML, LOC_val_solution.csv)")
    if os.path.isdir(os.path.join(source, "ILSVRC")):
        print(f"reusing {source}/ILSVRC (same seed, same bytes)")
        if not os.path.exists(solution):  # a tree from before synth wrote it
            synth.write_val_solution(synth.SynthConfig(out=source, train=args.train, val=args.val,
                                                       classes=args.classes, seed=0))
    else:
        check(cli.main(["synth", source, "--train", str(args.train), "--val", str(args.val),
                        "--classes", str(args.classes), "--seed", "0"]), "synth")
    root = os.path.join(source, "ILSVRC")

    stage("2/7 preprocess: Beam (DirectRunner, all cores) -> sharded TFRecords")
    check(cli.main(["preprocess", "--input", root, "--output", data,
                    "--synset-map", os.path.join(root, "devkit", "data", "map_det.txt"),
                    "--num-shards", "train=8,val=2"]), "preprocess")

    stage("3/7 inspect: verify every record, cross-check dataset_info.json, draw a contact sheet")
    check(cli.main(["inspect", data, "--verify", "--contact-sheet", sheet]), "inspect")

    stage(f"4/7 train: semi_alexnet, --task localize (class + box), {args.epochs} epochs at {args.image_size}px")
    check(cli.main(["train", "--data", data, "--model-dir", model_dir, "--model", "semi_alexnet", "--task", "localize",
                    "--epochs", str(args.epochs), "--image-size", str(args.image_size), "--seed", "0", *batch]),
          "train")

    stage("5/7 predict: the exported model on a few val images, boxes drawn")
    images = sorted(glob.glob(os.path.join(root, "Data", "DET", "val", "*.JPEG")))[:4]
    if os.path.isdir(drawn):
        print(f"reusing {drawn}")
    else:
        check(cli.main(["predict", "--model-dir", model_dir, *images, "--top", "3", "--draw", drawn]), "predict")

    stage("6/7 predict the val split's records -> a Kaggle submission")
    if os.path.exists(submission):
        print(f"reusing {submission}")
    else:
        check(cli.main(["predict", "--model-dir", model_dir, "--data", data, "--split", "val",
                        "--submission", submission, "--top", "1"], ), "predict --submission")

    stage("7/7 score it as the competition does, against the tree's LOC_val_solution.csv")
    check(cli.main(["score", "--solution", solution, "--submission", submission]), "score")

    with open(os.path.join(model_dir, "export", "labels.json")) as f:
        exported = json.load(f)["epoch"]  # the best epoch by val top-1: the model predict used
    with open(os.path.join(model_dir, "metrics.json")) as f:
        last = json.load(f)["epochs"][exported - 1]
    print("\n=== report ===")
    print(f"source tree     {root}")
    print(f"shards          {data} (dataset_info.json, labels.txt, errors-*.jsonl, *.idx)")
    print(f"contact sheet   {sheet}")
    print(f"model           {model_dir} (checkpoints/, export/, logs/, metrics.json)")
    print(f"predictions     {drawn} (boxes drawn), {submission}")
    print(f"exported model  epoch {exported}: val top-1 {last['val_top1']:.3f}, top-5 {last['val_top5']:.3f}, "
          f"{last['images_per_sec']:.0f} img/s")
    print(f"localisation    accuracy {last['val_loc_accuracy']:.3f} (top-1 class and IoU >= 0.5), "
          f"mean IoU {last['val_mean_iou']:.3f}, top-5 localisation error {last['val_top5_loc_error']:.4f} "
          "(the trainer's; step 7 scored the submission)")
    print(f"total           {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
