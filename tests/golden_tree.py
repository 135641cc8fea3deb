"""The golden trees: one small fixed tree in each of the DET, folder and VOC layouts, made by
`synth` with a fixed seed plus a few quirks, and the fingerprint of what preprocess makes of it.

tests/test_golden.py converts each and compares the fingerprint with tests/golden/trees/, so any
change to hashing, dealing, encoding, image conversion, labelling or metadata fails there.
Everything here is built from fixed bytes (the seed, and Pillow's encoders at the locked
version), so the same commit gives the same files on every machine.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import shutil

import numpy as np
from PIL import Image

from detrec.preprocess import synth

CONFIG = dict(train=20, val=6, classes=3, seed=26, width=80, height=60, workers=1)
LAYOUTS = ("det", "folder", "voc")
SHARDS = "train=3,val=2"


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _png(seed: int, mode: str = "RGB") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, "PNG")
    return buf.getvalue()


def _cmyk_jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert("CMYK").save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _det_tree(out: str) -> tuple[str, list[str]]:
    """The synth DET tree with its quirks; its root and the train images in sorted order."""
    root = synth.generate(synth.SynthConfig(out=out, **CONFIG))["root"]
    images = sorted(glob.glob(os.path.join(root, "Data", "DET", "train", "**", "*.JPEG"), recursive=True))
    with open(images[1], "wb") as f:  # a PNG under a .JPEG name: converted
        f.write(_png(1))
    with open(images[4], "wb") as f:  # a CMYK JPEG: converted
        f.write(_cmyk_jpeg(4))
    with open(images[7], "r+b") as f:  # cut short: rejected as truncated
        f.truncate(os.path.getsize(images[7]) // 2)
    with open(images[9], "ab") as f:  # zero padding after the end marker: kept as is
        f.write(b"\0" * 16)
    train_ann = os.path.join(root, "Annotations", "DET", "train")
    xml = images[11].replace(os.path.join("Data", "DET"), os.path.join("Annotations", "DET"))[:-len(".JPEG")] + ".xml"
    with open(xml, "rb") as f:
        text = f.read()
    with open(xml, "wb") as f:  # xmin past xmax: rejected
        f.write(text.replace(b"<xmin>", b"<xmin>9", 1))
    background = images[15].replace(os.path.join("Data", "DET"), os.path.join("Annotations", "DET"))[:-5] + ".xml"
    with open(background, "rb") as f:
        kept = f.read()
    with open(background, "wb") as f:  # no object at all: a background image, class 0
        f.write(re.sub(rb"\s*<object>.*?</object>", b"", kept, flags=re.S))
    os.remove(images[13].replace(os.path.join("Data", "DET"), os.path.join("Annotations", "DET"))[:-5] + ".xml")
    _write(os.path.join(train_ann, "orphan.xml"), text)  # an annotation without its image
    return root, images


def _folder_tree(det_root: str, out: str) -> str:
    """train/<synset>/ from DET's class folders, val/<synset>/ by each val XML's first object."""
    root = os.path.join(out, "folder")
    for path in sorted(glob.glob(os.path.join(det_root, "Data", "DET", "train", synth.TRAIN_DIR, "*", "*.JPEG"))):
        synset = os.path.basename(os.path.dirname(path))
        shutil.copyfile(path, _mkparent(os.path.join(root, "train", synset, os.path.basename(path))))
    for path in sorted(glob.glob(os.path.join(det_root, "Data", "DET", "val", "*.JPEG"))):
        xml = path.replace(os.path.join("Data", "DET"), os.path.join("Annotations", "DET"))[:-5] + ".xml"
        with open(xml, "rb") as f:
            text = f.read()
        if b"<name>" not in text:
            continue  # no object: no class folder for it
        synset = text.split(b"<name>", 1)[1].split(b"</name>", 1)[0].decode()
        shutil.copyfile(path, _mkparent(os.path.join(root, "val", synset, os.path.basename(path))))
    first = sorted(os.listdir(os.path.join(root, "train")))[0]
    _write(os.path.join(root, "train", first, "nested", "grey.png"), _png(2, "L"))  # nested, greyscale PNG
    _write(os.path.join(root, "train", first, "empty.jpg"), b"")  # rejected: empty
    return root


def _voc_tree(det_root: str, out: str) -> str:
    """Every DET XML and image of both splits flat in VOC's folders, listed in ImageSets/Main."""
    root = os.path.join(out, "voc")
    for split in ("train", "val"):
        ids = []
        for xml in sorted(glob.glob(os.path.join(det_root, "Annotations", "DET", split, "**", "*.xml"), recursive=True)):
            stem = os.path.basename(xml)[:-4]
            image = xml.replace(os.path.join("Annotations", "DET"), os.path.join("Data", "DET"))[:-4] + ".JPEG"
            if not os.path.exists(image):
                continue
            ids.append(stem)
            shutil.copyfile(xml, _mkparent(os.path.join(root, "Annotations", stem + ".xml")))
            shutil.copyfile(image, _mkparent(os.path.join(root, "JPEGImages", stem + ".jpg")))
        ids.append("listed_but_missing")
        _write(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "".join(i + "\n" for i in ids).encode())
    return root


def _mkparent(path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def build(out: str) -> dict[str, str]:
    """The three golden trees under `out`: layout -> the root to pass to preprocess."""
    det_root, _ = _det_tree(os.path.join(out, "det"))
    return {"det": det_root, "folder": _folder_tree(det_root, out), "voc": _voc_tree(det_root, out)}


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _records(shard: str) -> list[tuple[str, int]]:
    """Each record's (source id, class label) in file order, read with TensorFlow's own reader
    and parser."""
    import tensorflow as tf

    out = []
    for raw in tf.data.TFRecordDataset(shard).as_numpy_iterator():
        feature = tf.train.Example.FromString(raw).features.feature
        out.append((feature["image/source_id"].bytes_list.value[0].decode(),
                    feature["image/class/label"].int64_list.value[0]))
    return out


def fingerprint(out: str, tree_root: str) -> dict:
    """What a golden file holds of a preprocess output: every file's sha256, each shard's records
    in order (source id, class), dataset_info.json, labels.txt and the error lines (the tree's own path, which
    varies by machine, replaced by <tree>)."""
    def local(text: str) -> str:
        return text.replace(tree_root, "<tree>")

    with open(os.path.join(out, "dataset_info.json"), encoding="utf-8") as f:
        info = json.loads(local(f.read()))
    files = sorted(os.listdir(out))
    errors = {}
    for name in files:
        if name.startswith("errors-"):
            with open(os.path.join(out, name), encoding="utf-8") as f:
                errors[name] = [json.loads(local(line)) for line in f]
    with open(os.path.join(out, "labels.txt"), encoding="utf-8") as f:
        labels = f.read().splitlines()
    return {
        "files": {name: _sha256(os.path.join(out, name)) for name in files if not name.startswith("errors-")
                  and name != "dataset_info.json"},
        "records": {name: [list(r) for r in _records(os.path.join(out, name))] for name in files if name.endswith(".tfrecord")},
        "labels": labels,
        "errors": errors,
        "dataset_info": info,
    }
