"""`detrec bench preprocess ROOT`: detrec preprocess against its baselines, in one run.

Measures on the same tree: the copy floor (`cp -r` of Annotations/ and Data/), a naive
one-process converter in the style of the TF Object Detection API's
create_pascal_tf_record.py (lxml + full decode check + TFRecordWriter), and detrec
preprocess (DirectRunner, multi-processing, all cores) with --verify-images full and header;
each also on the single-process in-memory runner (whose shard writer decodes on two
threads); then the naive converter and detrec full again on a 5,000-image subset, for peak
memory vs tree size and for the time per extra image (fixed start-up costs cancel out).
Every contender runs as its own process, start-up included, and its peak memory is the RSS
of its whole process tree (Beam's worker processes included). Contenders take turns for
--repeat rounds; each time is the fastest of its runs, as timeit does (a slower run was
slowed by something else: this VM's disk at times takes 10x longer to create files), and
each peak memory the median of its runs' peaks.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import os
import shutil
import statistics
import sys
import tempfile

from detrec.core.errors import UserError
from detrec.pipelines import benchutil

HELP = "preprocess throughput vs cp -r and a naive converter; peak memory vs dataset size"
TARGETS = {"full_vs_naive": 1.5, "header_vs_copy": 0.3, "memory_growth_max": 1.3}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="tree holding Annotations/ and Data/ (>= 20,000 images for the targets)")
    parser.add_argument("--split", default="train", help="split to convert (default train)")
    parser.add_argument("--work", help="scratch folder (default: a temp dir, removed afterwards)")
    parser.add_argument("--small", type=int, default=5000, help="subset size for the memory comparison")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of runs; the fastest counts (default 3)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def naive_convert(root: str, split: str, output: str) -> int:
    """The baseline: one process, one file at a time, the OD API's create_pascal_tf_record way."""
    import PIL.Image
    import tensorflow as tf
    from lxml import etree

    ann_root = os.path.join(root, "Annotations", "DET", split)
    img_root = os.path.join(root, "Data", "DET", split)
    xml_paths = sorted(glob.glob(os.path.join(ann_root, "**", "*.xml"), recursive=True))
    synsets = sorted({name.text for p in xml_paths for name in etree.parse(p).iterfind("object/name")})
    label_map = {s: i + 1 for i, s in enumerate(synsets)}
    feature = tf.train.Feature
    count = 0
    with tf.io.TFRecordWriter(os.path.join(output, "naive.tfrecord")) as writer:
        for xml_path in xml_paths:
            data = etree.fromstring(open(xml_path, "rb").read())
            rel = os.path.relpath(xml_path, ann_root)[:-4]
            with tf.io.gfile.GFile(os.path.join(img_root, rel + ".JPEG"), "rb") as fid:
                encoded = fid.read()
            image = PIL.Image.open(io.BytesIO(encoded))
            image.load()  # the full decode check
            if image.format != "JPEG":
                raise ValueError("Image format not JPEG")
            width, height = int(data.findtext("size/width")), int(data.findtext("size/height"))
            xmin, ymin, xmax, ymax, texts, labels = [], [], [], [], [], []
            for obj in data.iter("object"):
                box = obj.find("bndbox")
                xmin.append(float(box.findtext("xmin")) / width)
                ymin.append(float(box.findtext("ymin")) / height)
                xmax.append(float(box.findtext("xmax")) / width)
                ymax.append(float(box.findtext("ymax")) / height)
                texts.append(obj.findtext("name").encode())
                labels.append(label_map[obj.findtext("name")])
            example = tf.train.Example(features=tf.train.Features(feature={
                "image/height": feature(int64_list=tf.train.Int64List(value=[height])),
                "image/width": feature(int64_list=tf.train.Int64List(value=[width])),
                "image/filename": feature(bytes_list=tf.train.BytesList(value=[rel.encode()])),
                "image/source_id": feature(bytes_list=tf.train.BytesList(value=[rel.encode()])),
                "image/key/sha256": feature(bytes_list=tf.train.BytesList(value=[hashlib.sha256(encoded).hexdigest().encode()])),
                "image/encoded": feature(bytes_list=tf.train.BytesList(value=[encoded])),
                "image/format": feature(bytes_list=tf.train.BytesList(value=[b"jpeg"])),
                "image/object/bbox/xmin": feature(float_list=tf.train.FloatList(value=xmin)),
                "image/object/bbox/xmax": feature(float_list=tf.train.FloatList(value=xmax)),
                "image/object/bbox/ymin": feature(float_list=tf.train.FloatList(value=ymin)),
                "image/object/bbox/ymax": feature(float_list=tf.train.FloatList(value=ymax)),
                "image/object/class/text": feature(bytes_list=tf.train.BytesList(value=texts)),
                "image/object/class/label": feature(int64_list=tf.train.Int64List(value=labels)),
            }))
            writer.write(example.SerializeToString())
            count += 1
    return count


def _run_measured(cmd: list[str]):
    """benchutil.run_measured after a sync: the gigabytes the previous contender wrote are
    flushed on its own time, not on the next one's."""
    os.sync()
    return benchutil.run_measured(cmd)


def _naive(root: str, split: str, work: str) -> tuple[float, int]:
    """Runs the naive converter in its own process; (seconds, peak RSS bytes)."""
    out = os.path.join(work, "naive")
    os.makedirs(out)
    code = f"from detrec.pipelines.bench_preprocess import naive_convert; naive_convert({root!r}, {split!r}, {out!r})"
    seconds, peak, proc = _run_measured([sys.executable, "-c", code])
    shutil.rmtree(out)
    if proc.returncode != 0:
        raise RuntimeError(f"naive converter failed:\n{proc.stderr[-2000:]}")
    return seconds, peak


def _subset(root: str, split: str, n: int, dest: str) -> str:
    """A tree of the first n annotated images, hard-linked (no copying)."""
    ann_root = os.path.join(root, "Annotations", "DET", split)
    for xml_path in sorted(glob.glob(os.path.join(ann_root, "**", "*.xml"), recursive=True))[:n]:
        rel = os.path.relpath(xml_path, ann_root)
        for kind, src_rel in (("Annotations", rel), ("Data", rel[:-4] + ".JPEG")):
            src = os.path.join(root, kind, "DET", split, src_rel)
            dst = os.path.join(dest, kind, "DET", split, src_rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.link(src, dst)
    return dest


def _count(root: str, split: str) -> int:
    return len(glob.glob(os.path.join(root, "Annotations", "DET", split, "**", "*.xml"), recursive=True))


RUNNERS = {
    "multi-processing": ["--direct_num_workers=0", "--direct_running_mode=multi_processing"],
    "in-memory": ["--direct_num_workers=1", "--direct_running_mode=in_memory"],
}


def _detrec(root: str, split: str, work: str, verify: str, runner: str) -> tuple[float, int]:
    """detrec preprocess in its own process, its output then removed; (seconds, peak RSS bytes)."""
    out = os.path.join(work, f"detrec-{verify}")
    cmd = [sys.executable, "-m", "detrec.pipelines.cli", "preprocess", "--input", root, "--output", out,
           "--splits", split, "--verify-images", verify, *RUNNERS[runner]]
    try:
        seconds, peak, proc = _run_measured(cmd)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"detrec preprocess failed:\n{proc.stderr[-2000:]}")
    return seconds, peak


def _copy(root: str, work: str) -> tuple[float, int]:
    """The copy floor: `cp -r` of Annotations/ and Data/; (seconds, peak RSS bytes)."""
    copy_dir = os.path.join(work, "copy")
    os.makedirs(copy_dir)
    seconds, peak, proc = _run_measured(["cp", "-r", os.path.join(root, "Annotations"), os.path.join(root, "Data"), copy_dir])
    shutil.rmtree(copy_dir)
    if proc.returncode != 0:
        raise RuntimeError(f"cp -r failed:\n{proc.stderr[-2000:]}")
    return seconds, peak


def _contenders(root: str, small_root: str, split: str, work: str, n: int, small_n: int):
    """(name, images, measure) for every row of the report; measure() -> (seconds, peak bytes)."""
    rows = [("copy floor (cp -r)", n, lambda: _copy(root, work)),
            ("naive converter (1 process)", n, lambda: _naive(root, split, work))]
    for verify in ("full", "header"):
        for runner in RUNNERS:
            name = f"detrec preprocess --verify-images {verify}" + ("" if runner == "multi-processing" else f" ({runner})")
            rows.append((name, n, lambda v=verify, r=runner: _detrec(root, split, work, v, r)))
    rows += [(f"naive, {small_n}-image subset", small_n, lambda: _naive(small_root, split, work)),
             (f"detrec full, {small_n}-image subset", small_n,
              lambda: _detrec(small_root, split, work, "full", "multi-processing"))]
    return rows


def run(args: argparse.Namespace, extra: list[str]) -> int:
    root = os.path.abspath(args.root)
    if not os.path.isdir(os.path.join(root, "Annotations", "DET", args.split)):
        raise UserError(f"{root}: no Annotations/DET/{args.split} (pass a DET tree, e.g. from `detrec synth`)")
    if args.repeat < 1:
        raise UserError("--repeat must be at least 1")
    n = _count(root, args.split)
    small_n = min(args.small, n)
    work = args.work or tempfile.mkdtemp(prefix="detrec-bench-")
    os.makedirs(work, exist_ok=True)
    try:
        small_root = _subset(root, args.split, small_n, os.path.join(work, "subset"))
        contenders = _contenders(root, small_root, args.split, work, n, small_n)
        runs: dict[str, list[tuple[float, int]]] = {name: [] for name, _, _ in contenders}
        # Round after round, every contender once per round: a slow spell of the machine
        # touches all contenders alike, not one of them.
        for _ in range(args.repeat):
            for name, _, measure in contenders:
                runs[name].append(measure())
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(os.path.join(work, "subset"), ignore_errors=True)
    rows = [{"name": name, "images": images, "seconds": min(s for s, _ in runs[name]),
             "runs": [round(s, 2) for s, _ in runs[name]],
             "peak_mb": statistics.median(p for _, p in runs[name]) / 1e6,
             "peaks_mb": [round(p / 1e6) for _, p in runs[name]]}
            for name, images, _ in contenders]
    small_naive, small_full = rows[-2], rows[-1]
    for row in rows:
        row["img_per_s"] = row["images"] / row["seconds"]
    by = {r["name"]: r for r in rows}
    naive = by["naive converter (1 process)"]["img_per_s"]
    copy = by["copy floor (cp -r)"]["img_per_s"]
    full = by["detrec preprocess --verify-images full"]
    header = by["detrec preprocess --verify-images header"]
    for row in rows:
        row["vs_naive"], row["vs_copy"] = row["img_per_s"] / naive, row["img_per_s"] / copy
    ratios = {
        "full_vs_naive": full["img_per_s"] / naive,
        "header_vs_copy": header["img_per_s"] / copy,
        "memory_growth_max": full["peak_mb"] / small_full["peak_mb"],
    }
    # Time per extra image (whole tree minus subset): start-up, TensorFlow imports and
    # shutdown cancel out, so this is the ratio a bigger tree tends to.
    extra_naive = by["naive converter (1 process)"]["seconds"] - small_naive["seconds"]
    extra_full = full["seconds"] - small_full["seconds"]
    marginal = {"full_vs_naive_per_extra_image": extra_naive / extra_full if n > small_full["images"] and extra_full > 0 else None}
    in_memory = {  # the same targets on the single-process runner, for comparison
        "full_vs_naive": by["detrec preprocess --verify-images full (in-memory)"]["img_per_s"] / naive,
        "header_vs_copy": by["detrec preprocess --verify-images header (in-memory)"]["img_per_s"] / copy,
    }
    report = {"machine": benchutil.machine(), "images": n, "rows": rows, "ratios": ratios,
              "ratios_in_memory_runner": in_memory, "ratios_marginal": marginal, "targets": TARGETS,
              "met": {k: (v <= TARGETS[k] if k == "memory_growth_max" else v >= TARGETS[k]) for k, v in ratios.items()}}
    if args.json:
        print(benchutil.dump_json(report))
        return 0
    print(f"machine: {report['machine']}; tree: {n} images ({args.split})")
    shown = [{**row, "runs": " ".join(f"{s:.1f}" for s in row["runs"])} for row in rows]
    print(benchutil.table(shown, [("name", "contender", ""), ("images", "images", "d"), ("seconds", "best s", ".1f"),
                                  ("runs", "runs (s)", ""), ("img_per_s", "img/s", ".0f"), ("vs_naive", "x naive", ".2f"),
                                  ("vs_copy", "x copy", ".2f"), ("peak_mb", "peak MB", ".0f")]))
    for key, value in ratios.items():
        sign = "<=" if key == "memory_growth_max" else ">="
        print(f"{key}: {value:.2f} (target {sign} {TARGETS[key]}) {'OK' if report['met'][key] else 'MISSED'}")
    for key, value in in_memory.items():
        print(f"{key} on the in-memory runner: {value:.2f}")
    if marginal["full_vs_naive_per_extra_image"] is not None:
        print(f"full_vs_naive per extra image ({small_full['images']} -> {n} images, fixed costs cancel out): "
              f"{marginal['full_vs_naive_per_extra_image']:.2f}")
    return 0
