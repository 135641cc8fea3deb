"""`detrec bench preprocess ROOT`: detrec preprocess against its baselines, in one run.

Measures on the same tree: the copy floor (`cp -r` of Annotations/ and Data/), a naive
one-process converter in the style of the TF Object Detection API's
create_pascal_tf_record.py (lxml + full decode check + TFRecordWriter), and detrec
preprocess (DirectRunner, multi-processing, all cores) with --verify-images full and header;
each also on the single-process in-memory runner (whose shard writer decodes on two
threads); TensorFlow Datasets' default single-process build of a minimal DET builder
(pipelines/bench_tfds.py; only where the optional extra `bench-tfds` is installed); then the
naive converter and detrec full again on a 5,000-image subset, for peak memory vs tree size
and for the time per extra image (fixed start-up costs cancel out), and with --scale K on a
K-times tree hard-linked from ROOT's split (K x N images, no image bytes copied), for
throughput at both sizes and detrec's peak memory per extra image.
Every contender runs as its own process, start-up included, and its peak memory is the RSS
of its whole process tree (Beam's worker processes included). Contenders take turns for
--repeat rounds; each time is the fastest of its runs, as timeit does (a slower run was
slowed by something else: this VM's disk at times takes 10x longer to create files), and
each peak memory the median of its runs' peaks.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import importlib.metadata
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

from detrec.core.errors import UserError
from detrec.pipelines import bench_tfds, benchutil

HELP = "preprocess throughput vs cp -r and a naive converter; peak memory vs dataset size"
TARGETS = {"full_vs_naive": 1.5, "header_vs_copy": 0.3, "memory_growth_max": 1.3}
# --scale (issue #15: at 100k images, 5x a 20k tree): detrec full vs the naive converter on the
# K-times tree, and the peak memory (summed over the process tree) each extra image adds, in KB.
SCALE_TARGETS = {"full_vs_naive": 2.5, "kb_per_extra_image": 1.0}
# vs TensorFlow Datasets' default build, while detrec still verifies every image.
TFDS_TARGETS = {"full_vs_tfds": 1.0, "header_vs_tfds": 1.5}
# Issue 27: against the classic thread-pooled converter (pipelines/bench_classic.py), --peers.
PEER_TARGETS = {"full_vs_classic": 1.8, "header_vs_classic": 3.8}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="tree holding Annotations/ and Data/ (>= 20,000 images for the targets)")
    parser.add_argument("--split", default="train", help="split to convert (default train)")
    parser.add_argument("--work", help="scratch folder (default: a temp dir, removed afterwards)")
    parser.add_argument("--small", type=int, default=5000, help="subset size for the memory comparison")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of runs; the fastest counts (default 3)")
    parser.add_argument("--scale", type=int, metavar="K",
                        help="also run the naive converter and detrec full on a K-times tree hard-linked from the "
                             "split (new ids, no image bytes copied): throughput at N and K*N, memory per extra image")
    parser.add_argument("--peers", action="store_true",
                        help="also run the classic thread-pooled converter (build_imagenet_data.py's way: "
                             "threads = cores, a TensorFlow decode per image, the same shard count)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def naive_convert(root: str, split: str, output: str) -> int:
    """The baseline: one process, one file at a time, the OD API's create_pascal_tf_record way."""
    import PIL.Image
    import tensorflow as tf
    from lxml import etree

    ann_root = os.path.join(root, "Annotations", "DET", split)
    img_root = os.path.join(root, "Data", "DET", split)
    xml_paths = benchutil.det_xml_paths(root, split)
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


def _measure(cmd: list[str], what: str, scratch: str) -> tuple[float, int, subprocess.CompletedProcess]:
    """Runs one contender in its own process, then removes its output folder `scratch`;
    (seconds, peak RSS bytes, the finished process). A contender that fails ends the bench."""
    try:
        seconds, peak, proc = _run_measured(cmd)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-2000:]}")
    return seconds, peak, proc


def _naive(root: str, split: str, work: str) -> tuple[float, int]:
    """Runs the naive converter in its own process; (seconds, peak RSS bytes)."""
    out = os.path.join(work, "naive")
    os.makedirs(out)
    code = f"from detrec.pipelines.bench_preprocess import naive_convert; naive_convert({root!r}, {split!r}, {out!r})"
    return _measure([sys.executable, "-c", code], "naive converter", out)[:2]


def _detrec(root: str, split: str, work: str, verify: str, runner: str) -> tuple[float, int]:
    """detrec preprocess in its own process, its output then removed; (seconds, peak RSS bytes)."""
    out = os.path.join(work, f"detrec-{verify}")
    cmd = [sys.executable, "-m", "detrec.pipelines.cli", "preprocess", "--input", root, "--output", out,
           "--splits", split, "--verify-images", verify, *RUNNERS[runner]]
    return _measure(cmd, "detrec preprocess", out)[:2]


def _copy(root: str, work: str) -> tuple[float, int]:
    """The copy floor: `cp -r` of Annotations/ and Data/; (seconds, peak RSS bytes)."""
    copy_dir = os.path.join(work, "copy")
    os.makedirs(copy_dir)
    return _measure(["cp", "-r", os.path.join(root, "Annotations"), os.path.join(root, "Data"), copy_dir],
                    "cp -r", copy_dir)[:2]


def _tfds(root: str, split: str, work: str, n: int) -> tuple[float, int]:
    """TFDS's default build (pipelines/bench_tfds.py) in its own process; it must have written
    exactly n examples (the count read back from its dataset_info.json)."""
    data_dir = os.path.join(work, "tfds")
    code = f"from detrec.pipelines.bench_tfds import build; print('EXAMPLES', build({root!r}, {split!r}, {data_dir!r}))"
    seconds, peak, proc = _measure([sys.executable, "-c", code], "TFDS build", data_dir)
    counts = [int(c) for c in re.findall(r"^EXAMPLES (\d+)$", proc.stdout, re.M)]
    if counts != [n]:
        raise RuntimeError(f"TFDS build wrote {counts or 'an unknown number of'} examples, expected {n}")
    return seconds, peak


def _threads() -> int:
    """The classic converter's --num_threads: the machine's cores, as the report's machine line counts them."""
    return os.cpu_count() or 1


def _classic(root: str, split: str, work: str, n: int) -> tuple[float, int]:
    """The classic converter in its own process, as many threads as cores and as many shards
    as detrec writes by default; it must have written exactly n examples."""
    from detrec.preprocess import plan

    out = os.path.join(work, "classic")
    os.makedirs(out)
    total = sum(os.path.getsize(image) for _, image in benchutil.det_pairs(root, split))
    shards = plan.plan_shards(n, total, None, int(plan.DEFAULT_TARGET_SHARD_MB * 1e6))
    code = (f"from detrec.pipelines.bench_classic import classic_convert; "
            f"print('EXAMPLES', classic_convert({root!r}, {split!r}, {out!r}, {_threads()}, {shards}))")
    seconds, peak, proc = _measure([sys.executable, "-c", code], "classic converter", out)
    counts = [int(c) for c in re.findall(r"^EXAMPLES (\d+)$", proc.stdout, re.M)]
    if counts != [n]:
        raise RuntimeError(f"the classic converter wrote {counts or 'an unknown number of'} examples, expected {n}")
    return seconds, peak


def link_tree(root: str, split: str, dest: str, first: int | None = None, copies: int = 1) -> str:
    """A tree hard-linked from ROOT's split, no image bytes copied: its first `first` annotated
    images once, or all of them `copies` times over. Copy i of x.xml + x.JPEG is x_s{i}.xml +
    x_s{i}.JPEG, a new source id: every contender keys an image by its path (the <filename>
    inside the XML, which none of them reads, still names x)."""
    ann_root = os.path.join(root, "Annotations", "DET", split)
    made = set()
    for xml_path in benchutil.det_xml_paths(root, split)[:first]:
        rel = os.path.relpath(xml_path, ann_root)[:-4]
        for i in range(copies):
            for kind, ext in (("Annotations", ".xml"), ("Data", ".JPEG")):
                dst = os.path.join(dest, kind, "DET", split, rel + (f"_s{i}" if copies > 1 else "") + ext)
                if os.path.dirname(dst) not in made:
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    made.add(os.path.dirname(dst))
                try:
                    os.link(os.path.join(root, kind, "DET", split, rel + ext), dst)
                except OSError as exc:
                    if exc.errno == errno.EXDEV:
                        raise UserError(f"{dest} is on another filesystem than {root}: the bench hard-links its "
                                        "trees (pass --work on ROOT's filesystem)") from None
                    raise
    return dest


def _count(root: str, split: str) -> int:
    return len(benchutil.det_xml_paths(root, split))


RUNNERS = {
    "multi-processing": ["--direct_num_workers=0", "--direct_running_mode=multi_processing"],
    "in-memory": ["--direct_num_workers=1", "--direct_running_mode=in_memory"],
}
COPY, NAIVE, TFDS = "copy floor (cp -r)", "naive converter (1 process)", "TFDS default build"
CLASSIC = "classic threaded converter"
FULL, HEADER = "detrec preprocess --verify-images full", "detrec preprocess --verify-images header"
TFDS_MISSING = f"tensorflow_datasets is not installed: no TFDS row (pip install 'detrec[{bench_tfds.EXTRA}]')"


def _contenders(root: str, trees: list[tuple[str, str, int]], split: str, work: str, n: int, with_tfds: bool,
                peers: bool = False):
    """(name, images, measure) for every row of the report; measure() -> (seconds, peak bytes).
    trees: (label, root, images) of each other tree the naive converter and detrec full run on."""
    rows = [(COPY, n, lambda: _copy(root, work)), (NAIVE, n, lambda: _naive(root, split, work))]
    for verify in ("full", "header"):
        for runner in RUNNERS:
            name = f"detrec preprocess --verify-images {verify}" + ("" if runner == "multi-processing" else f" ({runner})")
            rows.append((name, n, lambda v=verify, r=runner: _detrec(root, split, work, v, r)))
    if with_tfds:
        rows.append((TFDS, n, lambda: _tfds(root, split, work, n)))
    if peers:
        rows.append((CLASSIC, n, lambda: _classic(root, split, work, n)))
    for label, tree, images in trees:
        rows += [(f"naive, {label}", images, lambda t=tree: _naive(t, split, work)),
                 (f"detrec full, {label}", images, lambda t=tree: _detrec(t, split, work, "full", "multi-processing"))]
    return rows


def _scale_report(by: dict[str, dict], n: int, k: int) -> dict:
    """The naive converter and detrec full at N and K*N images, and the peak memory each adds
    per extra image: (peak at K*N - peak at N) / ((K-1) * N), in KB (1,000 bytes)."""
    sizes = [{"size": size, "images": images, "naive_img_per_s": by[naive]["img_per_s"],
              "full_img_per_s": by[full]["img_per_s"], "full_vs_naive": by[full]["img_per_s"] / by[naive]["img_per_s"],
              "naive_peak_mb": by[naive]["peak_mb"], "full_peak_mb": by[full]["peak_mb"]}
             for size, images, naive, full in (("N", n, NAIVE, FULL),
                                               (f"{k}N", k * n, f"naive, {k}x tree", f"detrec full, {k}x tree"))]
    extra = (k - 1) * n
    kb = (sizes[1]["full_peak_mb"] - sizes[0]["full_peak_mb"]) * 1000 / extra
    return {"k": k, "base_images": n, "images": k * n, "sizes": sizes, "kb_per_extra_image": kb,
            "naive_kb_per_extra_image": (sizes[1]["naive_peak_mb"] - sizes[0]["naive_peak_mb"]) * 1000 / extra,
            "targets": SCALE_TARGETS, "met": {"full_vs_naive": sizes[1]["full_vs_naive"] >= SCALE_TARGETS["full_vs_naive"],
                                              "kb_per_extra_image": kb <= SCALE_TARGETS["kb_per_extra_image"]}}


def _tfds_report(by: dict[str, dict]) -> dict:
    if TFDS not in by:
        return {"skipped": TFDS_MISSING}
    tfds = by[TFDS]["img_per_s"]
    ratios = {"full_vs_tfds": by[FULL]["img_per_s"] / tfds, "header_vs_tfds": by[HEADER]["img_per_s"] / tfds}
    return {"version": importlib.metadata.version("tensorflow-datasets"), **ratios, "targets": TFDS_TARGETS,
            "met": {key: ratio >= TFDS_TARGETS[key] for key, ratio in ratios.items()}}


def _peers_report(by: dict[str, dict]) -> dict | None:
    if CLASSIC not in by:
        return None
    classic = by[CLASSIC]["img_per_s"]
    ratios = {"full_vs_classic": by[FULL]["img_per_s"] / classic, "header_vs_classic": by[HEADER]["img_per_s"] / classic}
    return {"threads": _threads(), **ratios, "targets": PEER_TARGETS,
            "met": {key: ratio >= PEER_TARGETS[key] for key, ratio in ratios.items()}}


def build_report(contenders: list, runs: dict[str, list[tuple[float, int]]], n: int, small_n: int,
                 scale: int | None) -> dict:
    """The report of finished runs: a row per contender, the targets' ratios and the rest."""
    rows = [{"name": name, "images": images, "seconds": min(s for s, _ in runs[name]),
             "runs": [round(s, 2) for s, _ in runs[name]],
             "peak_mb": statistics.median(p for _, p in runs[name]) / 1e6,
             "peaks_mb": [round(p / 1e6) for _, p in runs[name]]}
            for name, images, _ in contenders]
    for row in rows:
        row["img_per_s"] = row["images"] / row["seconds"]
    by = {r["name"]: r for r in rows}
    small_naive, small_full = by[f"naive, {small_n}-image subset"], by[f"detrec full, {small_n}-image subset"]
    naive, copy, full, header = (by[name]["img_per_s"] for name in (NAIVE, COPY, FULL, HEADER))
    for row in rows:
        row["vs_naive"], row["vs_copy"] = row["img_per_s"] / naive, row["img_per_s"] / copy
    ratios = {"full_vs_naive": full / naive, "header_vs_copy": header / copy,
              "memory_growth_max": by[FULL]["peak_mb"] / small_full["peak_mb"]}
    # Time per extra image (whole tree minus subset): start-up, TensorFlow imports and
    # shutdown cancel out, so this is the ratio a bigger tree tends to.
    extra_naive = by[NAIVE]["seconds"] - small_naive["seconds"]
    extra_full = by[FULL]["seconds"] - small_full["seconds"]
    marginal = {"full_vs_naive_per_extra_image": extra_naive / extra_full if n > small_n and extra_full > 0 else None,
                "subset_images": small_n}
    in_memory = {  # the same targets on the single-process runner, for comparison
        "full_vs_naive": by[f"{FULL} (in-memory)"]["img_per_s"] / naive,
        "header_vs_copy": by[f"{HEADER} (in-memory)"]["img_per_s"] / copy,
    }
    return {"machine": benchutil.machine(), "images": n, "rows": rows, "ratios": ratios,
            "ratios_in_memory_runner": in_memory, "ratios_marginal": marginal, "targets": TARGETS,
            "met": {k: (v <= TARGETS[k] if k == "memory_growth_max" else v >= TARGETS[k]) for k, v in ratios.items()},
            "scale": _scale_report(by, n, scale) if scale else None, "tfds": _tfds_report(by),
            "peers": _peers_report(by)}


def run(args: argparse.Namespace, extra: list[str]) -> int:
    root = os.path.abspath(args.root)
    if not os.path.isdir(os.path.join(root, "Annotations", "DET", args.split)):
        raise UserError(f"{root}: no Annotations/DET/{args.split} (pass a DET tree, e.g. from `detrec synth`)")
    if args.repeat < 1:
        raise UserError("--repeat must be at least 1")
    if args.scale is not None and args.scale < 2:
        raise UserError("--scale must be at least 2")
    n = _count(root, args.split)
    small_n = min(args.small, n)
    with_tfds = bench_tfds.available()
    if not with_tfds:
        print(TFDS_MISSING, file=sys.stderr)
    work = args.work or tempfile.mkdtemp(prefix="detrec-bench-")
    os.makedirs(work, exist_ok=True)
    subset, scaled = os.path.join(work, "subset"), os.path.join(work, "scaled")
    try:
        trees = [(f"{small_n}-image subset", link_tree(root, args.split, subset, first=small_n), small_n)]
        if args.scale:
            trees.append((f"{args.scale}x tree", link_tree(root, args.split, scaled, copies=args.scale), args.scale * n))
        contenders = _contenders(root, trees, args.split, work, n, with_tfds, args.peers)
        runs: dict[str, list[tuple[float, int]]] = {name: [] for name, _, _ in contenders}
        # Round after round, every contender once per round: a slow spell of the machine
        # touches all contenders alike, not one of them.
        for _ in range(args.repeat):
            for name, _, measure in contenders:
                runs[name].append(measure())
    finally:
        for folder in ([work] if not args.work else [subset, scaled]):
            shutil.rmtree(folder, ignore_errors=True)
    report = build_report(contenders, runs, n, small_n, args.scale)
    if args.json:
        print(benchutil.dump_json(report))
    else:
        _print(report, args.split)
    return 0


def _print(report: dict, split: str) -> None:
    print(f"machine: {report['machine']}; tree: {report['images']} images ({split})")
    shown = [{**row, "runs": " ".join(f"{s:.1f}" for s in row["runs"])} for row in report["rows"]]
    print(benchutil.table(shown, [("name", "contender", ""), ("images", "images", "d"), ("seconds", "best s", ".1f"),
                                  ("runs", "runs (s)", ""), ("img_per_s", "img/s", ".0f"), ("vs_naive", "x naive", ".2f"),
                                  ("vs_copy", "x copy", ".2f"), ("peak_mb", "peak MB", ".0f")]))
    for key, value in report["ratios"].items():
        sign = "<=" if key == "memory_growth_max" else ">="
        print(f"{key}: {value:.2f} (target {sign} {TARGETS[key]}) {_verdict(report['met'][key])}")
    for key, value in report["ratios_in_memory_runner"].items():
        print(f"{key} on the in-memory runner: {value:.2f}")
    per_image = report["ratios_marginal"]["full_vs_naive_per_extra_image"]
    if per_image is not None:
        print(f"full_vs_naive per extra image ({report['ratios_marginal']['subset_images']} -> {report['images']} "
              "images, fixed costs cancel out): "
              f"{per_image:.2f}")
    scale = report["scale"]
    if scale:
        print(f"\nscale: N = {scale['base_images']} images vs {scale['k']}N = {scale['images']} (hard-linked copies)")
        print(benchutil.table(scale["sizes"], [
            ("size", "size", ""), ("images", "images", "d"), ("naive_img_per_s", "naive img/s", ".0f"),
            ("full_img_per_s", "detrec full img/s", ".0f"), ("full_vs_naive", "x naive", ".2f"),
            ("naive_peak_mb", "naive peak MB", ".0f"), ("full_peak_mb", "detrec full peak MB", ".0f")]))
        print(f"detrec full vs naive at {scale['k']}N: {scale['sizes'][1]['full_vs_naive']:.2f} "
              f"(target >= {SCALE_TARGETS['full_vs_naive']}) {_verdict(scale['met']['full_vs_naive'])}")
        print(f"peak memory per extra image: detrec full {scale['kb_per_extra_image']:.2f} KB "
              f"(target <= {SCALE_TARGETS['kb_per_extra_image']}) {_verdict(scale['met']['kb_per_extra_image'])}, "
              f"naive {scale['naive_kb_per_extra_image']:.2f} KB")
    peers = report["peers"]
    if peers:
        print(f"vs the classic threaded converter ({peers['threads']} threads): "
              + ", ".join(f"detrec {key.split('_')[0]} x{peers[key]:.2f} (target >= {target}) "
                          f"{_verdict(peers['met'][key])}" for key, target in PEER_TARGETS.items()))
    tfds = report["tfds"]
    if "skipped" in tfds:
        print(tfds["skipped"])
    else:
        print(f"vs TFDS {tfds['version']} default build: "
              + ", ".join(f"detrec {key.split('_')[0]} x{tfds[key]:.2f} (target >= {target}) {_verdict(tfds['met'][key])}"
                          for key, target in TFDS_TARGETS.items()))


def _verdict(met: bool) -> str:
    return "OK" if met else "MISSED"
