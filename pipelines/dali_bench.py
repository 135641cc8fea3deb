"""DALI's training image path alone, on a GPU: img/s, the best settings, and GPU-vs-CPU parity.

    python pipelines/dali_bench.py --synth 4096 --json         # any machine with DALI (no detrec)
    python pipelines/dali_bench.py --data OUT --sweep --json   # detrec's shards and .idx files
    python -m detrec.pipelines.dali_bench ...                  # the same, installed

It imports DALI, numpy and the standard library only (Pillow for --synth): no TensorFlow, no
detrec. So it runs where `detrec bench input` cannot measure nvJPEG - a GPU machine without
TensorFlow's GPU build (or without TensorFlow) - and it is the figure the first GPU session
records: DALI "mixed" img/s of the training image path, with the goal >= 10,000 img/s on one
H100 (decode must never bound training).

The pipeline is the decode path train/input/dali.py builds for training, minus boxes and
keys, with DALI's own reader and random operators standing in for the training feed (which
reads the records and draws the windows and flips in numpy, train/input/dali_feed.py, and
needs detrec): TFRecord reader (shuffled, epoch-padded) -> peek shape -> random_crop_generator
-> ROI decode (`image_slice`, device "mixed") -> bilinear resize -> flip + [-1, 1] normalisation, float32,
on the GPU. The decoder arguments are `DECODER_ARGS` plus the hardware-decoder settings, the
same as train/input/dali.py's `decoder_args` (tests/test_bench.py holds the two together).

--parity decodes the same JPEGs with "mixed" and "cpu" (libjpeg-turbo, what TensorFlow
decodes with) and checks the tolerance train/input/dali.py states: mean |diff| <= 1.0 grey
level per image, 99.9th percentile <= 4, for full decodes and for ROI decodes.
--sweep measures hardware-decoder shares and thread counts and reports the fastest.
Without a GPU everything runs on DALI's CPU decoder (how CI tests this script).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import sys
import tempfile
import time

import numpy as np

ENCODED, LABEL = "image/encoded", "image/class/label"  # detrec.core.schema's feature keys
DECODER_ARGS = dict(adjust_orientation=False, jpeg_fancy_upsampling=True)  # see train/input/dali.py
HW_DECODER_LOAD, PREALLOCATE, MAX_THREADS = 0.65, (0, 0), 8  # train/input/{config,dali}.py
IMAGENET_PREALLOCATE = (5980, 6430)  # NVIDIA's ResNet-50 example: the largest ImageNet image
AREA, ASPECT, ATTEMPTS, SCALE = (0.08, 1.0), (3 / 4, 4 / 3), 10, 127.5  # train/transforms/inception.py
TARGET_IMG_S = 10_000
TOLERANCE = {"mean_abs": 1.0, "p999_abs": 4.0}  # grey levels, per image


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="the OUT folder of `detrec preprocess` (its dataset_info.json)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--synth", type=int, default=0, metavar="N",
                        help="write N synthetic 500x375 JPEGs as shards in a temp dir and read those")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=15.0, help="timed seconds per setting")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=None, help="default: cores / GPUs, at most 8")
    parser.add_argument("--hw-load", type=float, default=HW_DECODER_LOAD)
    parser.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto")
    parser.add_argument("--sweep", action="store_true", help="also try other hw-load and thread settings")
    parser.add_argument("--parity", action="store_true", help="GPU vs CPU decode of the same JPEGs")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")


def cuda_devices() -> int:
    from nvidia.dali import backend

    try:
        return int(backend.GetCUDADeviceCount())
    except Exception:  # no driver
        return 0


def default_threads(gpus: int) -> int:
    """train/input/dali.py's split: this process's cores over its GPUs, 1..MAX_THREADS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_THREADS, cores // max(1, gpus)))


def decoder_args(gpu: bool, hw_load: float = HW_DECODER_LOAD, preallocate=PREALLOCATE) -> dict:
    args = dict(DECODER_ARGS)
    if gpu:
        args.update(hw_decoder_load=hw_load, preallocate_width_hint=preallocate[0],
                    preallocate_height_hint=preallocate[1])
    return args


# --- shards ---------------------------------------------------------------------------------
def shards_of(data: str, split: str) -> list[tuple[str, str]]:
    """(shard, index) paths of a split, from dataset_info.json (never a glob)."""
    with open(os.path.join(data, "dataset_info.json")) as f:
        info = json.load(f)
    if split not in info["splits"]:
        raise SystemExit(f"dali_bench: {data} has no split {split!r}")
    out = [(os.path.join(data, s["file"]), os.path.join(data, s["file"] + ".idx"))
           for s in info["splits"][split]["shards"] if s["num_examples"] > 0]
    missing = [idx for _, idx in out if not os.path.exists(idx)]
    if not out or missing:
        raise SystemExit(f"dali_bench: {data}: no shards in {split!r}, or no .idx for {missing[:1]}")
    return out


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return _varint(tag << 3 | 2) + _varint(len(payload)) + payload


def example(jpeg: bytes, label: int) -> bytes:
    """A tf.train.Example with the two features read here (bytes_list, int64_list)."""
    def entry(key: str, feature: bytes) -> bytes:
        return _field(1, _field(1, key.encode()) + _field(2, feature))

    image = _field(1, _field(1, jpeg))                 # Feature.bytes_list.value
    number = _field(3, _field(1, _varint(label)))      # Feature.int64_list.value (packed)
    return _field(1, entry(ENCODED, image) + entry(LABEL, number))


def _masked_crc(data: bytes) -> int:
    try:
        import google_crc32c
    except ImportError:  # DALI never checks TFRecord CRCs; these shards are for this bench only
        return 0
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def synth_shards(out: str, count: int, shards: int = 4, seed: int = 0) -> list[tuple[str, str]]:
    """`count` records of 64 distinct photo-like 500x375 JPEGs (quality 90), in TFRecord shards."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    jpegs = []
    for _ in range(64):
        grid = rng.integers(40, 220, size=(6, 8, 3)).astype(np.uint8)
        base = np.asarray(Image.fromarray(grid).resize((500, 375), Image.BICUBIC), np.float32)
        pixels = np.clip(base + rng.normal(0, 14, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=90)
        jpegs.append(buf.getvalue())
    paths = []
    for s in range(shards):
        path = os.path.join(out, f"train-{s:05d}-of-{shards:05d}.tfrecord")
        offset, lines = 0, []
        with open(path, "wb") as f:
            for i in range(s, count, shards):
                payload = example(jpegs[i % len(jpegs)], 1 + i % 5)
                length = struct.pack("<Q", len(payload))
                record = length + struct.pack("<I", _masked_crc(length)) + payload + struct.pack(
                    "<I", _masked_crc(payload))
                f.write(record)
                lines.append(f"{offset} {len(record)}\n")
                offset += len(record)
        with open(path + ".idx", "w") as f:
            f.writelines(lines)
        paths.append((path, path + ".idx"))
    return paths


# --- pipelines ------------------------------------------------------------------------------
def training_pipeline(shards, *, batch_size: int, size: int, gpu: bool, threads: int, hw_load: float,
                      preallocate=PREALLOCATE, seed: int = 0):
    """train/input/dali.py's training image path, built and ready to run."""
    from nvidia.dali import fn, pipeline_def, tfrecord, types

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=0 if gpu else None, seed=seed)
    def pipe():
        record = fn.readers.tfrecord(
            path=[p for p, _ in shards], index_path=[i for _, i in shards],
            features={ENCODED: tfrecord.FixedLenFeature((), tfrecord.string, ""),
                      LABEL: tfrecord.FixedLenFeature([1], tfrecord.int64, -1)},
            random_shuffle=True, initial_fill=2048, shuffle_after_epoch=True, pad_last_batch=True,
            name="reader")
        encoded = record[ENCODED]
        hw = fn.cast(fn.peek_image_shape(encoded, adjust_orientation=False)[0:2], dtype=types.INT32)
        start, window = fn.random_crop_generator(hw, random_area=list(AREA), random_aspect_ratio=list(ASPECT),
                                                 num_attempts=ATTEMPTS)
        images = fn.decoders.image_slice(encoded, start, window, axes=[0, 1], device="mixed" if gpu else "cpu",
                                         output_type=types.RGB, **decoder_args(gpu, hw_load, preallocate))
        images = fn.resize(images, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR,
                           antialias=False, dtype=types.FLOAT)
        images = fn.crop_mirror_normalize(images, mirror=fn.random.coin_flip(probability=0.5), dtype=types.FLOAT,
                                          output_layout="HWC", mean=[SCALE] * 3, std=[SCALE] * 3)
        label = fn.reshape(record[LABEL], shape=[])
        return images, (label.gpu() if gpu else label)

    built = pipe()
    built.build()
    return built


def measure(pipe, batch_size: int, seconds: float, warmup: float) -> dict:
    """img/s over `seconds` after `warmup`; the last batch is copied to the host so that the
    GPU work of every timed batch has finished before the clock stops."""
    until = time.perf_counter() + warmup
    while time.perf_counter() < until:
        pipe.run()
    batches, start, cpu = 0, time.perf_counter(), time.process_time()
    while True:
        images, _ = pipe.run()
        batches += 1
        if time.perf_counter() - start >= seconds:
            break
    if hasattr(images, "as_cpu"):
        images = images.as_cpu()
    _ = np.asarray(images.as_tensor())[0, 0, 0]
    wall = time.perf_counter() - start
    return {"img_s": batches * batch_size / wall, "batches": batches, "seconds": wall,
            "cpu_cores_busy": (time.process_time() - cpu) / wall}


def parity(shards, gpu: bool, count: int = 64) -> dict:
    """Mixed vs CPU decode of the first `count` records: full images and a fixed ROI."""
    from nvidia.dali import fn, pipeline_def, tfrecord, types

    @pipeline_def(batch_size=count, num_threads=2, device_id=0 if gpu else None)
    def pipe():
        record = fn.readers.tfrecord(path=[p for p, _ in shards], index_path=[i for _, i in shards],
                                     features={ENCODED: tfrecord.FixedLenFeature((), tfrecord.string, "")})
        encoded = record[ENCODED]
        out = []
        for device in ("mixed" if gpu else "cpu", "cpu"):
            out.append(fn.decoders.image(encoded, device=device, output_type=types.RGB,
                                         **decoder_args(device == "mixed")))
            out.append(fn.decoders.image_slice(encoded, [0.1, 0.2], [0.5, 0.6], axes=[0, 1], device=device,
                                               output_type=types.RGB, **decoder_args(device == "mixed")))
        return tuple(out)

    built = pipe()
    built.build()
    full_gpu, roi_gpu, full_cpu, roi_cpu = built.run()
    report = {}
    for name, a, b in (("full", full_gpu, full_cpu), ("roi", roi_gpu, roi_cpu)):
        a = a.as_cpu() if hasattr(a, "as_cpu") else a
        means, p999, worst = [], [], 0.0
        for i in range(count):
            diff = np.abs(np.asarray(a[i], np.float32) - np.asarray(b[i], np.float32))
            means.append(float(diff.mean()))
            p999.append(float(np.quantile(diff, 0.999)))
            worst = max(worst, float(diff.max()))
        report[name] = {"mean_abs_max": max(means), "p999_abs_max": max(p999), "max_abs": worst,
                        "ok": max(means) <= TOLERANCE["mean_abs"] and max(p999) <= TOLERANCE["p999_abs"]}
    report["tolerance"] = TOLERANCE
    report["ok"] = report["full"]["ok"] and report["roi"]["ok"]
    return report


def run(args: argparse.Namespace, extra: list[str] | None = None) -> int:
    if extra:
        raise SystemExit(f"dali_bench: unknown arguments: {' '.join(extra)}")
    import nvidia.dali as dali
    from nvidia.dali import backend

    gpus = cuda_devices()
    gpu = args.device == "gpu" or (args.device == "auto" and gpus > 0)
    if gpu and not gpus:
        raise SystemExit("dali_bench: --device gpu, but CUDA shows no GPU")
    with tempfile.TemporaryDirectory(prefix="dali-bench-") as tmp:
        if args.data:
            shards = shards_of(args.data, args.split)
        elif args.synth > 0:
            shards = synth_shards(tmp, args.synth)
        else:
            raise SystemExit("dali_bench: give --data OUT or --synth N")
        threads = args.threads or default_threads(gpus if gpu else 1)
        rows = []

        def time_setting(n: int, load: float, preallocate=PREALLOCATE) -> dict:
            pipe = training_pipeline(shards, batch_size=args.batch_size, size=args.image_size, gpu=gpu,
                                     threads=n, hw_load=load, preallocate=preallocate)
            row = {"threads": n, "hw_decoder_load": load, "preallocate": list(preallocate),
                   **measure(pipe, args.batch_size, args.seconds, args.warmup)}
            del pipe  # frees its GPU buffers before the next setting builds its own
            print(f"dali_bench: {n} threads, hw load {load}, preallocate {preallocate}: "
                  f"{row['img_s']:.0f} img/s", file=sys.stderr, flush=True)
            rows.append(row)
            return row

        time_setting(threads, args.hw_load)
        if args.sweep and gpu:  # hardware-decoder shares, then threads and preallocation at the best
            for load in (0.0, 0.5, 0.8, 1.0):
                if load != args.hw_load:
                    time_setting(threads, load)
            load = max(rows, key=lambda r: r["img_s"])["hw_decoder_load"]
            for n in sorted({2, 4, 8, 16} - {threads}):
                time_setting(n, load)
            time_setting(max(rows, key=lambda r: r["img_s"])["threads"], load, IMAGENET_PREALLOCATE)
        report = {
            "dali_version": dali.__version__, "cuda_devices": gpus, "device": "mixed" if gpu else "cpu",
            "nvjpeg_version": backend.GetNvjpegVersion() if gpu else None,
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "batch_size": args.batch_size, "image_size": args.image_size,
            "records": "synthetic 500x375 q90" if not args.data else f"{args.data} {args.split}",
            "rows": rows, "best": max(rows, key=lambda r: r["img_s"]),
        }
        report["dali_mixed_img_s"] = rows[0]["img_s"] if gpu else None
        report["target_img_s"] = TARGET_IMG_S
        report["meets_target"] = bool(gpu and report["best"]["img_s"] >= TARGET_IMG_S)
        if args.parity:
            report["parity"] = parity(shards, gpu)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        best = report["best"]
        print(f"DALI {report['device']}: {rows[0]['img_s']:.0f} img/s at {rows[0]['threads']} threads, hw load "
              f"{rows[0]['hw_decoder_load']}; best {best['img_s']:.0f} img/s ({best['threads']} threads, "
              f"hw load {best['hw_decoder_load']}, preallocate {best['preallocate']}); "
              f"target {TARGET_IMG_S} img/s on one H100"
              + ("" if gpu else " (no GPU: DALI's CPU decoder, no verdict)"))
        if "parity" in report:
            print(f"parity mixed vs cpu: {json.dumps(report['parity'])}")
    return 0 if not args.parity or report["parity"]["ok"] else 1


HELP = "DALI's training image path alone (no TensorFlow): img/s, best settings, GPU/CPU parity"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dali_bench", description=HELP, allow_abbrev=False)
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
