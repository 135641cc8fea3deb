"""`detrec bench input --data OUT`: the training input pipeline against its baselines, in one run.

Measured in one process on the same images, the pipelines taking turns (img/s):

* ours (tf.data): `train.input.make_dataset(training=True)` - read, count, parse, shuffle,
  random crop decoded with decode_and_crop_jpeg, flip, resize, batch, normalise;
* decode ceiling: the same full decode + resize on JPEG bytes already in memory, batched and
  normalised as the pipeline does, AUTOTUNE-parallel - what the CPU can do when every pixel
  is decoded and nothing is read from disk;
* raw read: TFRecord records read from the shards, no parse, no decode (MB/s too);
* article (with --source ROOT): the original article's pipeline - `from_generator` over
  (xml, jpeg) file pairs, a `py_func` label (lxml: the first <name>), `read_file`,
  `decode_jpeg`, `resize_with_crop_or_pad`, float16, `per_image_standardization`,
  `map` without parallelism as written there, batch 16, prefetch 2;
* ours (DALI): `make_dataset(decoder="dali")`, nvJPEG "mixed" decode on a GPU, DALI's CPU
  decoder elsewhere;
* with --peers (and --source): what users pick instead of converting, on the same JPEG files
  (hard-linked into class folders by the image's class, the largest box's): Keras
  `image_dataset_from_directory(...).prefetch(AUTOTUNE)`, and `list_files` + a parallel
  `read_file`/`decode_jpeg`/resize `map` with AUTOTUNE; and detrec's evaluation line (full
  decode, no shuffle). Every image row yields full float32 batches at --image-size;
* with --data-small (and --peers): detrec's training and evaluation lines again, on shards of
  the same tree made with `detrec preprocess --shorter-side N` (N near the training size:
  fewer pixels to decode per image), against the best peer on the full-size files: what
  storing images at their training resolution buys (goal 1.5x, page cache warm).

Every row also reports its time to the first batch: the dataset built, an iterator made and
its first batch out (the files were read before, so the page cache is warm). With --cold as
well, detrec's two lines and the two peers each read whole epochs after the page cache is
dropped (root only; elsewhere the report says it could not), start-up included: --rounds
epochs each, taking turns, the fastest counting.

Targets (ratios, measured in turns so that other processes' load falls on all alike): ours >= 1.0x the
decode ceiling and >= 2.5x the article at 224x224 on a 2-core CPU; on a GPU machine, DALI
should pass 10,000 img/s on one H100.

The DALI row runs through TensorFlow (DALIDataset), so it measures nvJPEG only where
TensorFlow itself sees the GPU (its GPU build); on a GPU machine with a CPU-only TensorFlow
(or none) pipelines/dali_bench.py measures the DALI pipeline alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import sys
import time

from detrec.pipelines import benchutil
from detrec.pipelines.train_cmd import add_dali_flags, dali_tuning
from detrec.core.errors import UserError
from detrec.train import registry

HELP = "input pipeline img/s vs the decode ceiling, raw reads and the article's pipeline"
TARGETS = {"ours_vs_ceiling": 1.0, "ours_vs_article": 2.5, "dali_gpu_img_s": 10_000,
           # issue 27, --peers: both detrec lines at least as fast as the best file pipeline
           "train_vs_best_peer": 1.0, "eval_vs_best_peer": 1.0, "train_vs_best_peer_cold": 1.0,
           # issue 27, --data-small: both lines on --shorter-side shards vs the best peer on full-size files
           "small_train_vs_best_peer": 1.5, "small_eval_vs_best_peer": 1.5}
FIRST_BATCH_SLACK = 0.2  # seconds detrec's first batch may take beyond the best peer's (issue 27)
CEILING_IMAGES = 1000  # JPEGs held in memory for the decode ceiling (~100 MB at 500x375)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="the OUT folder of `detrec preprocess`")
    parser.add_argument("--source", help="the ILSVRC tree the shards came from (adds the article's pipeline)")
    parser.add_argument("--split", default="train", help="split to read (default train)")
    parser.add_argument("--decoder", choices=registry.decoder_choices(), default=registry.AUTO,
                        help="which pipeline is 'ours' for the targets; auto: DALI on a GPU, else tf.data. "
                             "cpu skips the DALI row")
    parser.add_argument("--image-size", type=int, default=224, help="output side (default 224)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds per row, over all its turns (default 15)")
    parser.add_argument("--warmup", type=float, default=3.0, help="untimed seconds before each turn (default 3)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="turns each row takes, interleaved with the others (default 3)")
    parser.add_argument("--peers", action="store_true",
                        help="with --source: also Keras image_dataset_from_directory and a list_files pipeline "
                             "on the same JPEGs, and detrec's evaluation line")
    parser.add_argument("--cold", action="store_true",
                        help="with --peers: also one whole epoch of each of detrec's lines and each peer, the page "
                             "cache dropped before each (needs root)")
    parser.add_argument("--data-small", metavar="OUT2",
                        help="with --peers: shards of the same tree made with `detrec preprocess --shorter-side N`; "
                             "adds detrec's two lines on them, against the best peer on the full-size files")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_dali_flags(parser)


class Contender:
    """One pipeline under test, measured in several turns, each on a fresh iterator."""

    def __init__(self, key: str, name: str, make, count, unit: str = "img/s", note: str = "", make_epoch=None):
        self.key, self.name, self.unit, self.note = key, name, unit, note
        self.make, self.count = make, count  # make() builds the dataset, on the first turn
        self.make_epoch = make_epoch  # one epoch, not repeated (--cold)
        self.dataset = None
        self.first_batch = 0.0
        self.rates: list[float] = []
        self.items, self.seconds, self.cpu = 0, 0.0, 0.0

    def turn(self, warmup: float, seconds: float) -> None:
        if self.dataset is None:  # the first turn: time to the first batch, building included
            start = time.perf_counter()
            self.dataset = self.make()
            iterator = iter(self.dataset)
            self.count(next(iterator))
            self.first_batch = time.perf_counter() - start
        else:
            iterator = iter(self.dataset)
        warm_until = time.perf_counter() + warmup
        while time.perf_counter() < warm_until:
            self.count(next(iterator))
        n, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds:
            n += self.count(next(iterator))
        wall = time.perf_counter() - start
        self.rates.append(n / wall)
        self.items += n
        self.seconds += wall
        self.cpu += time.process_time() - cpu
        del iterator  # stops its background threads before the next contender runs

    def row(self) -> dict:
        return {"key": self.key, "pipeline": self.name, "unit": self.unit, "note": self.note,
                "rate": statistics.median(self.rates), "rates": [round(r, 1) for r in self.rates],
                "items": self.items, "seconds": round(self.seconds, 3), "first_batch_s": round(self.first_batch, 3),
                "cpu_ms_per_item": 1000 * self.cpu / max(self.items, 1)}


def measure(contenders: list[Contender], seconds: float, warmup: float, rounds: int) -> None:
    """Gives every pipeline `rounds` turns of `seconds / rounds`, in rotation.

    Taking turns spreads the load of other processes over all contenders alike. Each turn
    starts a fresh iterator and runs `warmup` seconds untimed first, so no pipeline is timed
    draining batches it prefetched while another one was measured. A row's rate is the
    median of its turns; its CPU time per item is the process's, during its timed turns.
    """
    for r in range(rounds):
        for c in contenders:
            print(f"round {r + 1}/{rounds}: {c.name} ...", file=sys.stderr, flush=True)
            c.turn(warmup, seconds / rounds)


def _ours(args, decoder: str, training: bool = True, repeat: bool = True, data: str | None = None):
    from detrec.train import input as input_lib

    return input_lib.make_dataset(data or args.data, args.split, batch_size=args.batch_size,
                                  image_size=args.image_size, training=training, decoder=decoder,
                                  repeat=repeat, dtype="float32", dali=dali_tuning(args))


def _cuda_devices() -> int:
    """GPUs CUDA itself shows (through DALI, not TensorFlow); 0 when DALI is not there."""
    try:
        from nvidia.dali import backend
        return int(backend.GetCUDADeviceCount())
    except Exception:  # no DALI, or no CUDA driver
        return 0


def _ceiling(args, files: list[str]):
    import tensorflow as tf

    from detrec.core import schema
    from detrec.train.transforms import inception

    records = []
    for record in tf.data.TFRecordDataset(files).take(CEILING_IMAGES):
        records.append(record.numpy())
    size = (args.image_size, args.image_size)
    spec = schema.parse_spec()
    parsed = tf.io.parse_example(tf.constant(records), {k: spec[k] for k in (schema.ENCODED, schema.CLASS_LABEL)})
    ds = tf.data.Dataset.from_tensor_slices((parsed[schema.ENCODED], parsed[schema.CLASS_LABEL])).repeat()
    # Exactly what the pipeline does to an image, minus the shards and the crop: full decode +
    # resize per image, then batch and normalise per batch.
    ds = ds.map(lambda e, label: (inception.decode_eval(e, size)[0], label),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.batch(args.batch_size).map(lambda images, labels: (inception.normalize_inception(images, tf.float32), labels),
                                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return ds.prefetch(tf.data.AUTOTUNE), len(records)


def _raw(files: list[str]):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(files).repeat().interleave(
        tf.data.TFRecordDataset, cycle_length=min(len(files), 16), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False)
    return ds.batch(256).prefetch(tf.data.AUTOTUNE)


def article_pairs(root: str, split: str) -> list[tuple[str, str]]:
    """(xml, jpeg) pairs of an ILSVRC DET split, the way the article listed them."""
    pairs = [(xml, jpeg) for xml, jpeg in benchutil.det_pairs(root, split) if os.path.exists(jpeg)]
    if not pairs:
        raise UserError(f"{root}: no Annotations/DET/{split}/**.xml with a Data/DET/{split} image")
    return pairs


def class_folders(pairs: list[tuple[str, str]], dest: str) -> str:
    """`dest`/<synset>/<n>.jpg hard-linked (copied across devices) from each pair's JPEG, its
    class the largest box's (background for none): the folder tree the peers read."""
    from detrec.core import schema
    from detrec.preprocess import annotations

    for i, (xml, jpeg) in enumerate(pairs):
        with open(xml, "rb") as f:
            ann = annotations.parse(f.read(), xml)
        best = schema.largest_box(annotations.pixel_areas(ann, ann.width, ann.height))
        label = schema.BACKGROUND_TEXT if best is None else ann.objects[best].name
        os.makedirs(os.path.join(dest, label), exist_ok=True)
        target = os.path.join(dest, label, f"{i:08d}.jpg")
        try:
            os.link(jpeg, target)
        except OSError:
            shutil.copyfile(jpeg, target)
    return dest


def _keras_peer(args, folder: str, repeat: bool = True):
    """Keras' file pipeline as its guide shows it: resized float32 batches, prefetched."""
    import keras
    import tensorflow as tf

    ds = keras.utils.image_dataset_from_directory(folder, image_size=(args.image_size, args.image_size),
                                                  batch_size=args.batch_size, shuffle=True, seed=0, verbose=False)
    return (ds.repeat() if repeat else ds).prefetch(tf.data.AUTOTUNE)


def _list_files_peer(args, folder: str, repeat: bool = True):
    """The tf.data guide's file pipeline: list_files, then read, decode, resize in a parallel map."""
    import tensorflow as tf

    classes = sorted(os.listdir(folder))
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(classes), tf.range(len(classes), dtype=tf.int64)), default_value=-1)
    size = (args.image_size, args.image_size)

    def load(path):
        label = table.lookup(tf.strings.split(path, os.sep)[-2])
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return tf.image.resize(image, size), label

    ds = tf.data.Dataset.list_files(os.path.join(folder, "*", "*.jpg"), shuffle=True, seed=0)
    ds = ds.repeat() if repeat else ds
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(args.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _article(args, pairs: list[tuple[str, str]]):
    """The article's input pipeline, reproduced step for step (its flaws are the baseline)."""
    import numpy as np
    import tensorflow as tf
    from lxml import etree

    names = sorted({etree.parse(x).findtext(".//name") for x, _ in pairs} - {None})
    index = {name: i for i, name in enumerate(names)}
    background = len(names)  # the article's background slot was the last index

    def label_of(xml_path) -> np.int64:
        name = etree.parse(xml_path.numpy().decode()).findtext(".//name")
        return np.int64(index.get(name, background))

    def generator():
        while True:  # endless, like the other rows (the timing loop decides when to stop)
            yield from pairs

    ds = tf.data.Dataset.from_generator(generator, output_signature=(
        tf.TensorSpec((), tf.string), tf.TensorSpec((), tf.string)))

    def load(xml_path, jpeg_path):
        label = tf.py_function(label_of, [xml_path], tf.int64)
        image = tf.io.decode_jpeg(tf.io.read_file(jpeg_path), channels=3)
        image = tf.image.resize_with_crop_or_pad(image, args.image_size, args.image_size)
        image = tf.image.per_image_standardization(tf.cast(image, tf.float16))
        return image, label

    return ds.map(load).batch(16).prefetch(2)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise UserError(f"unknown arguments: {' '.join(extra)}")
    from detrec.core import dataset_info
    from detrec.train import gpu
    from detrec.train import input as input_lib

    gpu.enable_memory_growth()  # before any TensorFlow op touches a GPU (train/gpu.py)
    files = dataset_info.shard_files(dataset_info.load(args.data), args.data, args.split)
    ours = input_lib.resolve_decoder(args.decoder)
    dali_device = None
    note = ""
    if input_lib.dali_available() and (args.decoder != "cpu"):
        dali_device = "gpu (mixed: nvJPEG)" if input_lib.gpu_visible() else "cpu (DALI CPU decoder)"
        if not input_lib.gpu_visible() and _cuda_devices():
            note = ("CUDA shows a GPU but TensorFlow does not (a CPU-only build?): the DALI row ran DALI's CPU "
                    "decoder; pipelines/dali_bench.py measures nvJPEG without TensorFlow")
            print(f"detrec bench input: note: {note}", file=sys.stderr)
    count_images = lambda batch: int(batch[1].shape[0])  # noqa: E731  (labels: [B])
    contenders = []
    if args.peers and not args.source:
        raise UserError("--peers reads the JPEG files themselves: give --source, the tree the shards came from")
    if args.cold and not args.peers:
        raise UserError("--cold compares detrec with its peers: give --peers (and --source) too")
    small = _small_data(args)
    if args.decoder != "dali":
        contenders.append(Contender("tfdata", "ours: tf.data (crop-decode)", lambda: _ours(args, "cpu"), count_images,
                                    make_epoch=lambda: _ours(args, "cpu", repeat=False)))
        if args.peers:
            contenders.append(Contender("tfdata_eval", "ours: tf.data evaluation line (full decode)",
                                        lambda: _ours(args, "cpu", training=False), count_images,
                                        make_epoch=lambda: _ours(args, "cpu", training=False, repeat=False)))
        if small:
            contenders.append(Contender("tfdata_small", f"ours: tf.data (crop-decode), --data-small ({small})",
                                        lambda: _ours(args, "cpu", data=args.data_small), count_images))
            contenders.append(Contender("tfdata_eval_small", f"ours: evaluation line, --data-small ({small})",
                                        lambda: _ours(args, "cpu", training=False, data=args.data_small),
                                        count_images))
    ceiling, held = _ceiling(args, files)
    contenders.append(Contender("ceiling", "decode ceiling (full decode, in memory)", lambda: ceiling, count_images,
                                note=f"{held} JPEGs held in memory"))
    read = {"bytes": 0, "records": 0}

    def count_records(batch):
        read["bytes"] += int(sum(len(r) for r in batch.numpy()))
        read["records"] += int(batch.shape[0])
        return int(batch.shape[0])

    raw = Contender("raw", "raw TFRecord read (no decode)", lambda: _raw(files), count_records, unit="rec/s")
    contenders.append(raw)
    folder = None
    if args.source:
        pairs = article_pairs(args.source, args.split)
        contenders.append(Contender("article", "article (from_generator + py_func)", lambda: _article(args, pairs),
                                    count_images, note=f"{len(pairs)} file pairs"))
        if args.peers:
            folder = class_folders(pairs, tempfile.mkdtemp(prefix="detrec-bench-folders-"))
            contenders.append(Contender("keras", "peer: Keras image_dataset_from_directory",
                                        lambda: _keras_peer(args, folder), count_images,
                                        make_epoch=lambda: _keras_peer(args, folder, repeat=False)))
            contenders.append(Contender("list_files", "peer: list_files + parallel map",
                                        lambda: _list_files_peer(args, folder), count_images,
                                        make_epoch=lambda: _list_files_peer(args, folder, repeat=False)))
    if dali_device:
        contenders.append(Contender("dali", f"ours: DALI on {dali_device}", lambda: _ours(args, "dali"), count_images))
    warm = files + (dataset_info.shard_files(dataset_info.load(args.data_small), args.data_small, args.split)
                    if small else [])
    if folder:
        warm += [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]
    benchutil.read_once(warm)  # every shard and peer file: each row then starts with a warm page cache
    try:
        measure(contenders, args.seconds, args.warmup, args.rounds)
        cold = cold_epochs(contenders, args.rounds) if args.cold else None
    finally:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
    rows = [c.row() for c in contenders]
    raw_row = rows[contenders.index(raw)]
    mean_record = read["bytes"] / max(1, read["records"])
    raw_row["note"] = f"{raw_row['rate'] * mean_record / 1e6:.0f} MB/s"

    rate = {r["key"]: r["rate"] for r in rows}
    ours_key = "dali" if ours == "dali" and "dali" in rate else "tfdata"
    ratios = {}
    if "dali" in rate and input_lib.gpu_visible():
        ratios["dali_gpu_img_s"] = rate["dali"]
    if ours_key in rate:
        ratios["ours_vs_ceiling"] = rate[ours_key] / rate["ceiling"]
        if "article" in rate:
            ratios["ours_vs_article"] = rate[ours_key] / rate["article"]
    peers = _peers_report(rows)
    if peers:
        ratios.update(peers.pop("ratios"))
    if cold:
        by = {row["key"]: row for row in cold["rows"]}
        best = max(by["keras"]["img_per_s"], by["list_files"]["img_per_s"])
        ratios["train_vs_best_peer_cold"] = by["tfdata"]["img_per_s"] / best
    report = {
        "machine": benchutil.machine(),
        "gpu": input_lib.gpu_visible(),
        "data": args.data,
        "split": args.split,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "ours": ours_key,
        "dali": {"threads": args.dali_threads, "hw_decoder_load": args.dali_hw_load,
                 "preallocate": list(args.dali_preallocate), "note": note} if dali_device else None,
        "rows": rows,
        "ratios": ratios,
        "targets": {k: v for k, v in TARGETS.items() if k in ratios},
        "peers": peers,
        "cold": cold,
    }
    if args.json:
        print(benchutil.dump_json(report))
        return 0
    print(f"\n{report['machine']}; {args.image_size}x{args.image_size}, batch {args.batch_size}, "
          f"split {args.split}; {args.seconds:g} s per row in {args.rounds} turns after {args.warmup:g} s "
          "warm-ups; median of the turns")
    print(benchutil.table(rows, [("pipeline", "pipeline", ""), ("rate", "rate", ">9.0f"), ("unit", "unit", ""),
                                 ("cpu_ms_per_item", "CPU ms/item", ">11.3f"),
                                 ("first_batch_s", "first batch s", ">13.2f"), ("note", "note", "")]))
    for key, value in ratios.items():
        verdict = "meets" if value >= TARGETS[key] else "MISSES"
        shown = f"{value:.0f} img/s" if key == "dali_gpu_img_s" else f"{value:.2f}x"
        print(f"{key}: {shown} ({verdict} the {TARGETS[key]:g} target)")
    if cold:
        print(f"\nwhole epochs, the page cache dropped before each ({cold['note'] or 'dropped'}):")
        print(benchutil.table(cold["rows"], [("pipeline", "pipeline", ""), ("images", "images", ">7d"),
                                             ("seconds", "best s", ">8.2f"), ("img_per_s", "img/s", ">7.0f"),
                                             ("runs", "runs (s)", "")]))
    if peers:
        print(f"first batch: ours {peers['first_batch_s']['ours']:.2f} s, best peer "
              f"{peers['first_batch_s']['best_peer']:.2f} s (target: at most {FIRST_BATCH_SLACK} s more) "
              f"{'OK' if peers['first_batch_met'] else 'MISSED'}")
    return 0


def drop_page_cache() -> str | None:
    """Writes dirty pages out, then drops the page cache; None, or why it could not."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as exc:
        return f"the page cache could not be dropped ({exc.strerror}; it needs root on Linux): these epochs read it warm"
    return None


def cold_epochs(contenders: list[Contender], rounds: int) -> dict:
    """Whole epochs of each contender that has one, the page cache dropped before each:
    start-up, listing and every read included, as a user's first epoch after a reboot. In
    `rounds` rounds, each contender once a round; a row's time is its fastest epoch (on this
    VM a single epoch now and then took twice its usual time, whichever pipeline it was)."""
    runs: dict[str, list[tuple[int, float]]] = {}
    notes = set()
    for r in range(rounds):
        for c in contenders:
            if c.make_epoch is None:
                continue
            print(f"cold epoch, round {r + 1}/{rounds}: {c.name} ...", file=sys.stderr, flush=True)
            problem = drop_page_cache()
            if problem:
                notes.add(problem)
            start = time.perf_counter()
            images = sum(c.count(batch) for batch in c.make_epoch())
            runs.setdefault(c.key, []).append((images, time.perf_counter() - start))
    rows = []
    for c in contenders:
        if c.key in runs:
            images, seconds = min(runs[c.key], key=lambda run: run[1])
            rows.append({"key": c.key, "pipeline": c.name, "images": images, "seconds": round(seconds, 3),
                         "runs": [round(s, 2) for _, s in runs[c.key]], "img_per_s": images / seconds})
    return {"rows": rows, "note": "; ".join(sorted(notes)) or None}


def _small_data(args) -> str:
    """What --data-small's shards were resized to ("shorter side N"), "" without it; UserError
    when it is given without --peers or was not made with --shorter-side."""
    if not args.data_small:
        return ""
    if not args.peers:
        raise UserError("--data-small is measured against the peers on the full-size files: give --peers "
                        "(and --source) too")
    from detrec.core import dataset_info

    side = dataset_info.load(args.data_small).shorter_side
    if not side:
        raise UserError(f"--data-small {args.data_small}: its dataset_info.json records no --shorter-side; "
                        "make it with `detrec preprocess --shorter-side N`")
    return f"shorter side {side}"


def _peers_report(rows: list[dict]) -> dict | None:
    """detrec's two lines against the best peer (issue 27's goals), or None without --peers."""
    by = {row["key"]: row for row in rows}
    if not {"tfdata", "tfdata_eval", "keras", "list_files"} <= set(by):
        return None
    best = max(("keras", "list_files"), key=lambda key: by[key]["rate"])
    ours_first = max(by["tfdata"]["first_batch_s"], by["tfdata_eval"]["first_batch_s"])
    best_first = min(by["keras"]["first_batch_s"], by["list_files"]["first_batch_s"])
    ours = {"train": "tfdata", "eval": "tfdata_eval", "small_train": "tfdata_small", "small_eval": "tfdata_eval_small"}
    return {"best_peer": best,
            "ratios": {f"{line}_vs_best_peer": by[key]["rate"] / by[best]["rate"]
                       for line, key in ours.items() if key in by},
            "first_batch_s": {"ours": ours_first, "best_peer": best_first},
            "first_batch_met": ours_first <= best_first + FIRST_BATCH_SLACK}
