"""Memory stays flat on the annotation files detection datasets ship (#23): a COCO JSON of
1,000,000 annotations and an Open Images CSV of 2,000,000 rows (over hard-linked images), each
converted by `detrec preprocess` as a user runs it (all workers), with the summed RSS of every
process of the run under 1.5 GB (`json.load` of COCO's 448 MB train JSON alone takes several)."""

from __future__ import annotations

import os
import random
import sys

import pytest

from detrec.core import dataset_info
from detrec.pipelines import benchutil
from detrec.preprocess import synth_formats
from tests import image_factory

BOXES_PER_IMAGE = 100
LIMIT = 1.5e9


def _images(folder: str, count: int, name) -> None:
    """`count` images named by `name(i)`, hard links to a few small JPEGs (the bytes need not differ)."""
    os.makedirs(folder)
    originals = []
    for k in range(8):
        path = os.path.join(folder, f".original{k}.jpg")
        with open(path, "wb") as f:
            f.write(image_factory.jpeg(64, 48, seed=k))
        originals.append(path)
    for i in range(count):
        os.link(originals[i % len(originals)], os.path.join(folder, name(i)))
    for path in originals:
        os.remove(path)


def _coco(root: str, images: int) -> None:
    _images(os.path.join(root, "train2017"), images, lambda i: f"{i:012d}.jpg")
    rng = random.Random(0)
    os.makedirs(os.path.join(root, "annotations"))
    with open(os.path.join(root, "annotations", "instances_train2017.json"), "w") as f:  # written as a stream
        f.write('{"info": {}, "images": [')
        f.write(",".join(f'{{"id": {i + 1}, "file_name": "{i:012d}.jpg", "width": 64, "height": 48}}'
                         for i in range(images)))
        f.write('], "annotations": [')
        for i in range(images):
            f.write("," if i else "")
            f.write(",".join(
                f'{{"id": {i * BOXES_PER_IMAGE + b + 1}, "image_id": {i + 1}, "category_id": {2 * rng.randrange(80) + 1}, '
                f'"bbox": [{rng.uniform(0, 30):.2f}, {rng.uniform(0, 20):.2f}, {rng.uniform(1, 30):.2f}, '
                f'{rng.uniform(1, 25):.2f}], "area": 1.0, "iscrowd": 0, "segmentation": [[1, 2, 3, 4]]}}'
                for b in range(BOXES_PER_IMAGE)))
        f.write('], "categories": [' + ",".join(f'{{"id": {2 * c + 1}, "name": "class {c}"}}' for c in range(80)) + "]}")


def _open_images(root: str, images: int) -> None:
    image_id = lambda i: f"{i:016x}"  # noqa: E731
    _images(os.path.join(root, "train"), images, lambda i: f"{image_id(i)}.jpg")
    rng = random.Random(0)
    with open(os.path.join(root, synth_formats.OI_CLASSES), "w") as f:
        f.write("LabelName,DisplayName\n" + "".join(f"/m/0c{c:03d},class {c}\n" for c in range(600)))
    with open(os.path.join(root, "train-annotations-bbox.csv"), "w") as f:
        f.write(",".join(synth_formats.OI_HEADER) + "\n")
        for i in range(images):
            for _ in range(BOXES_PER_IMAGE):
                x0, y0 = rng.uniform(0, 0.5), rng.uniform(0, 0.5)
                f.write(f"{image_id(i)},xclick,/m/0c{rng.randrange(600):03d},1,{x0:.6f},{x0 + rng.uniform(0.01, 0.5):.6f},"
                        f"{y0:.6f},{y0 + rng.uniform(0.01, 0.5):.6f},0,0,{int(rng.random() < 0.05)},0,0\n")


@pytest.mark.slow
@pytest.mark.parametrize("layout, make, images", [("coco", _coco, 10_000), ("open-images", _open_images, 20_000)],
                         ids=["coco-1M-annotations", "open-images-2M-rows"])
def test_a_huge_annotation_file_preprocesses_in_flat_memory(tmp_path, layout, make, images):
    root, out = str(tmp_path / layout), str(tmp_path / "out")
    make(root, images)
    seconds, peak, proc = benchutil.run_measured(
        [os.path.join(os.path.dirname(sys.executable), "detrec"), "preprocess", "--input", root, "--output", out,
         "--splits", "train", "--layout", layout, "--verify-images", "header"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = dataset_info.load(out)
    assert (info.splits["train"].num_examples, info.splits["train"].num_errors) == (images, 0)
    assert peak < LIMIT, f"summed RSS peaked at {peak / 1e9:.2f} GB ({seconds:.0f} s)"
    print(f"{layout}: {images * BOXES_PER_IMAGE:,} boxes, {images:,} images: {seconds:.0f} s, peak {peak / 1e9:.2f} GB")
