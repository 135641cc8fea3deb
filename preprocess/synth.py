"""Synthetic ImageNet-DET trees: real JPEGs and real-format XML, generated from a seed.

This is the embedded default dataset for the demo, the tests and the benchmarks (nothing
can be downloaded here). The class of an image is the class of its largest object, and
each class is drawn with its own saturated hue and shape on a grey-ish textured background,
so a small CNN can learn it from pixels: a trained model's accuracy proves that labels flow
correctly from XML to loss. Same seed, same bytes: every image draws from its own RNG
seeded by (seed, split, index), so generation can run in parallel.
"""

from __future__ import annotations

import colorsys
import dataclasses
import io
import multiprocessing
import os
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

# The first ImageNet DET synsets (devkit map_det.txt order), so trees look like the real one.
DET_SYNSETS: tuple[tuple[str, str], ...] = (
    ("n02672831", "accordion"),
    ("n02691156", "airplane"),
    ("n02219486", "ant"),
    ("n02419796", "antelope"),
    ("n07739125", "apple"),
    ("n02454379", "armadillo"),
    ("n07718747", "artichoke"),
    ("n02764044", "axe"),
    ("n02766320", "baby bed"),
    ("n02769748", "backpack"),
    ("n07693725", "bagel"),
    ("n02777292", "balance beam"),
    ("n07753592", "banana"),
    ("n02786058", "band aid"),
    ("n02787622", "banjo"),
    ("n02799071", "baseball"),
    ("n02802426", "basketball"),
    ("n02807133", "bathing cap"),
    ("n02815834", "beaker"),
    ("n02131653", "bear"),
)
TRAIN_DIR = "ILSVRC2013_train"
NEGATIVE_DIR = "ILSVRC2013_train_extra0"
NEGATIVE_FRACTION = 0.04  # images with no object at all (background, label 0)
SHAPES = ("ellipse", "rectangle", "triangle", "diamond")


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    out: str
    train: int = 200
    val: int = 50
    classes: int = 10
    seed: int = 0
    width: int = 500
    height: int = 375
    quality: int = 90
    workers: int = 0  # 0 = one per core


def synsets(num_classes: int) -> list[tuple[str, str]]:
    """(synset, name) for K classes: real DET synsets first, then made-up ones."""
    out = list(DET_SYNSETS[:num_classes])
    for i in range(len(out), num_classes):
        out.append((f"n9{i:07d}", f"synthetic class {i}"))
    return out


def class_color(k: int, num_classes: int) -> tuple[int, int, int]:
    """A saturated hue per class, evenly spaced around the wheel."""
    r, g, b = colorsys.hsv_to_rgb(k / num_classes, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


@dataclasses.dataclass(frozen=True)
class _Object:
    cls: int
    box: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax in pixels
    truncated: int
    difficult: int


def _draw_objects(rng: np.random.Generator, w: int, h: int, num_classes: int) -> list[_Object]:
    if rng.random() < NEGATIVE_FRACTION:
        return []
    main_cls = int(rng.integers(num_classes))
    n = int(rng.integers(1, 4))
    objects = []
    for j in range(n):
        # The first object is the largest by construction (35-65% of each side); the others
        # are at most ~half its side, so the image's class is the first object's.
        frac = rng.uniform(0.45, 0.75) if j == 0 else rng.uniform(0.12, 0.3)
        bw, bh = max(4, int(w * frac * rng.uniform(0.85, 1.0))), max(4, int(h * frac * rng.uniform(0.85, 1.0)))
        x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        cls = main_cls if j == 0 else int(rng.integers(num_classes))
        objects.append(_Object(cls, (x0, y0, x0 + bw - 1, y0 + bh - 1), int(rng.random() < 0.2), int(rng.random() < 0.05)))
    # Document order is shuffled so "largest box" is not simply "first object".
    order = rng.permutation(n)
    return [objects[i] for i in order]


def render_jpeg(rng: np.random.Generator, w: int, h: int, objects: list[_Object], num_classes: int, quality: int) -> bytes:
    """A textured, low-saturation background with each object drawn in its class's hue/shape."""
    grid = rng.integers(60, 200, size=(4, 5, 1)).repeat(3, axis=2) + rng.integers(-20, 21, size=(4, 5, 3))
    base = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
    canvas = np.asarray(base, dtype=np.float32)
    # Big objects are drawn first so small ones stay visible on top.
    for obj in sorted(objects, key=lambda o: -(o.box[2] - o.box[0]) * (o.box[3] - o.box[1])):
        mask = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(mask)
        x0, y0, x1, y1 = obj.box
        shape = SHAPES[obj.cls % len(SHAPES)]
        if shape == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=255)
        elif shape == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=255)
        elif shape == "triangle":
            draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=255)
        else:
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=255)
        m = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
        color = np.array(class_color(obj.cls, num_classes), dtype=np.float32) * rng.uniform(0.8, 1.0)
        canvas = canvas * (1 - m) + color * m
    # Fine-grained sensor-like noise gives JPEG sizes in ImageNet's range (~60-120 KB).
    canvas += rng.normal(0.0, 16.0, size=canvas.shape).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def annotation_xml(folder: str, filename: str, database: str, w: int, h: int, objects: list[_Object], syn: list[tuple[str, str]], rng: np.random.Generator) -> bytes:
    """ILSVRC-format XML, with the variations real files have (child order, extra tags)."""
    lines = ["<annotation>", f"\t<folder>{folder}</folder>", f"\t<filename>{filename}</filename>",
             "\t<source>", f"\t\t<database>{database}</database>", "\t</source>",
             "\t<size>", f"\t\t<width>{w}</width>", f"\t\t<height>{h}</height>", "\t</size>"]
    for obj in objects:
        x0, y0, x1, y1 = obj.box
        coords = {"xmin": x0, "ymin": y0, "xmax": x1, "ymax": y1}
        order = ("xmin", "xmax", "ymin", "ymax") if rng.random() < 0.7 else ("xmin", "ymin", "xmax", "ymax")
        lines += ["\t<object>", f"\t\t<name>{syn[obj.cls][0]}</name>", "\t\t<bndbox>"]
        lines += [f"\t\t\t<{k}>{coords[k]}</{k}>" for k in order]
        lines += ["\t\t</bndbox>", f"\t\t<truncated>{obj.truncated}</truncated>",
                  f"\t\t<difficult>{obj.difficult}</difficult>"]
        if rng.random() < 0.3:
            lines += ["\t\t<trackid>0</trackid>", "\t\t<occluded>0</occluded>", "\t\t<generated>0</generated>"]
        lines.append("\t</object>")
    lines.append("</annotation>")
    return ("\n".join(lines) + "\n").encode("utf-8")


@dataclasses.dataclass(frozen=True)
class _Job:
    split: str
    index: int
    cfg: SynthConfig


_SPLIT_CODE = {"train": 1, "val": 2}


def _layout(job: _Job) -> tuple[np.random.Generator, int, int, list[_Object]]:
    """An image's generator, size and objects: a pure function of (seed, split, index)."""
    cfg = job.cfg
    rng = np.random.default_rng([cfg.seed, _SPLIT_CODE[job.split], job.index])
    w = int(round(cfg.width * rng.uniform(0.8, 1.0)))
    h = int(round(cfg.height * rng.uniform(0.8, 1.0)))
    return rng, w, h, _draw_objects(rng, w, h, cfg.classes)


def _val_stem(index: int) -> str:
    return f"ILSVRC2012_val_{index + 1:08d}"


def _make_one(job: _Job) -> tuple[str, str]:
    cfg = job.cfg
    rng, w, h, objects = _layout(job)
    syn = synsets(cfg.classes)
    if job.split == "train":
        if objects:
            main = max(objects, key=lambda o: (o.box[2] - o.box[0]) * (o.box[3] - o.box[1]))
            folder = syn[main.cls][0]
            rel, stem = f"{TRAIN_DIR}/{folder}", f"{folder}_{job.index:05d}"
        else:
            folder = NEGATIVE_DIR
            rel, stem = NEGATIVE_DIR, f"ILSVRC2014_train_{job.index:08d}"
        database = "ILSVRC_2013"
    else:
        folder, rel, stem, database = "ILSVRC2013_val", "", _val_stem(job.index), "ILSVRC_2013"
    root = os.path.join(cfg.out, "ILSVRC")
    xml_path = os.path.join(root, "Annotations", "DET", job.split, rel, stem + ".xml")
    jpg_path = os.path.join(root, "Data", "DET", job.split, rel, stem + ".JPEG")
    xml = annotation_xml(folder, stem, database, w, h, objects, syn, rng)
    jpeg = render_jpeg(rng, w, h, objects, cfg.classes, cfg.quality)
    for path, data in ((xml_path, xml), (jpg_path, jpeg)):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return xml_path, jpg_path


def _jobs(cfg: SynthConfig) -> Iterator[_Job]:
    for i in range(cfg.train):
        yield _Job("train", i, cfg)
    for i in range(cfg.val):
        yield _Job("val", i, cfg)


def write_synset_map(cfg: SynthConfig) -> str:
    """The devkit's `map_det.txt` (synset, id, name) for the generated classes."""
    path = os.path.join(cfg.out, "ILSVRC", "devkit", "data", "map_det.txt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, (synset, name) in enumerate(synsets(cfg.classes), start=1):
            f.write(f"{synset} {i} {name}\n")
    return path


SOLUTION = "LOC_val_solution.csv"


def write_val_solution(cfg: SynthConfig) -> str:
    """The val split's ground truth as Kaggle's LOC_val_solution.csv, beside ILSVRC/ (where the
    Kaggle download has it): every object's synset and pixel box (the XML's), for `detrec
    score`. An image without objects has an empty PredictionString (no ground truth)."""
    from detrec.core import kaggle_loc

    syn = synsets(cfg.classes)
    path = os.path.join(cfg.out, SOLUTION)
    rows = ((_val_stem(i), [(syn[o.cls][0], *o.box) for o in _layout(_Job("val", i, cfg))[3]])
            for i in range(cfg.val))
    with open(path, "w", encoding="utf-8", newline="") as f:
        kaggle_loc.write_submission(f, rows)
    return path


def generate(cfg: SynthConfig, progress=None) -> dict:
    """Writes the tree under `cfg.out/ILSVRC/`; returns counts. Deterministic for a seed."""
    if cfg.classes < 1 or cfg.train < 0 or cfg.val < 0:
        raise ValueError("need --classes >= 1 and non-negative --train/--val")
    if cfg.width < 32 or cfg.height < 32:
        raise ValueError("--size must be at least 32x32")
    jobs = list(_jobs(cfg))
    workers = cfg.workers or os.cpu_count() or 1
    if workers > 1 and len(jobs) > 50:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for _ in pool.imap_unordered(_make_one, jobs, chunksize=16):
                if progress:
                    progress(1)
    else:
        for job in jobs:
            _make_one(job)
            if progress:
                progress(1)
    map_path = write_synset_map(cfg)
    return {"root": os.path.join(cfg.out, "ILSVRC"), "train": cfg.train, "val": cfg.val,
            "classes": cfg.classes, "synset_map": map_path, "solution": write_val_solution(cfg)}
