"""The synthetic tree (synth.py) in the shapes detection users have: COCO and Open Images V7.

Each is made from a generated ImageNet-DET tree: the same JPEGs (hard-linked where the file
system allows, else copied) and the same boxes, written as those datasets write them. So the
three trees describe one set of images, and a test can hold their records to each other.

    coco/         annotations/instances_{train,val}2017.json, train2017/, val2017/
                  (category ids 1, 3, 5...: COCO's ids have gaps)
    open-images/  train/, validation/ (<ImageID>.jpg), {train,validation}-annotations-bbox.csv,
                  oidv7-class-descriptions-boxable.csv (MIDs /m/0s00, /m/0s01...)
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil

from detrec.preprocess import annotations, vocab as vocab_lib

FORMATS = ("det", "coco", "open-images")
OI_SPLITS = {"train": "train", "val": "validation"}
OI_HEADER = ("ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax", "IsOccluded",
             "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")
OI_CLASSES = "oidv7-class-descriptions-boxable.csv"


def _det_images(det_root: str, split: str):
    """(image id, image path, Annotation) of a DET split, sorted by id."""
    ann_dir = os.path.join(det_root, "Annotations", "DET", split)
    img_dir = os.path.join(det_root, "Data", "DET", split)
    for folder, _, names in sorted(os.walk(ann_dir)):
        for name in sorted(n for n in names if n.endswith(".xml")):
            rel = os.path.relpath(os.path.join(folder, name), ann_dir)[:-4]
            with open(os.path.join(folder, name), "rb") as f:
                ann = annotations.parse(f.read(), name)
            yield rel.replace(os.sep, "_"), os.path.join(img_dir, rel + ".JPEG"), ann


def _place(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def to_coco(det_root: str, synset_map: str, out: str, splits=("train", "val"), year: str = "2017") -> str:
    """Writes the COCO tree of a DET tree under `out`; returns `out`."""
    vocab = vocab_lib.read_synset_map(synset_map)
    category = {synset: 2 * i + 1 for i, synset in enumerate(vocab.synsets)}
    categories = [{"id": category[s], "name": n, "supercategory": "synthetic"} for s, n in zip(vocab.synsets, vocab.names)]
    os.makedirs(os.path.join(out, "annotations"), exist_ok=True)
    next_ann = 1
    for split in splits:
        images, anns = [], []
        for image_id, (stem, path, ann) in enumerate(_det_images(det_root, split), start=1):
            name = f"{stem}.jpg"
            _place(path, os.path.join(out, f"{split}{year}", name))
            images.append({"id": image_id, "file_name": name, "width": ann.width, "height": ann.height})
            for obj in ann.objects:
                w, h = obj.xmax - obj.xmin, obj.ymax - obj.ymin
                anns.append({"id": next_ann, "image_id": image_id, "category_id": category[obj.name],
                             "bbox": [obj.xmin, obj.ymin, w, h], "area": w * h, "iscrowd": 0, "segmentation": []})
                next_ann += 1
        doc = {"info": {"description": "detrec synthetic"}, "licenses": [], "images": images, "annotations": anns,
               "categories": categories}
        with open(os.path.join(out, "annotations", f"instances_{split}{year}.json"), "w", encoding="utf-8") as f:
            json.dump(doc, f)
    return out


def to_open_images(det_root: str, synset_map: str, out: str, splits=("train", "val")) -> str:
    """Writes the Open Images V7 tree of a DET tree under `out`; returns `out`. An image without
    objects (a DET negative) gets no box row, as in Open Images."""
    vocab = vocab_lib.read_synset_map(synset_map)
    mid = {synset: f"/m/0s{i:02x}" for i, synset in enumerate(vocab.synsets)}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, OI_CLASSES), "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([("LabelName", "DisplayName"), *((mid[s], n) for s, n in zip(vocab.synsets, vocab.names))])
    for split in splits:
        folder = OI_SPLITS.get(split, split)
        with open(os.path.join(out, f"{folder}-annotations-bbox.csv"), "w", encoding="utf-8", newline="") as f:
            rows = csv.writer(f)
            rows.writerow(OI_HEADER)
            for stem, path, ann in _det_images(det_root, split):
                image_id = hashlib.sha256(stem.encode()).hexdigest()[:16]  # OI's ids: 16 hex digits
                _place(path, os.path.join(out, folder, f"{image_id}.jpg"))
                for obj in ann.objects:
                    rows.writerow((image_id, "xclick", mid[obj.name], 1, obj.xmin / ann.width, obj.xmax / ann.width,
                                   obj.ymin / ann.height, obj.ymax / ann.height, 0, int(obj.truncated), 0, 0, 0))
    return out
