"""The synthetic ILSVRC tree: real formats, 1:1 pairing, determinism, learnable labels."""

from __future__ import annotations

import glob
import hashlib
import os

import numpy as np
from lxml import etree
from PIL import Image

from detrec.preprocess import annotations, synth
from detrec.pipelines import cli


def tree_digest(root: str) -> dict[str, str]:
    out = {}
    for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_layout_pairs_one_to_one(synth_tree):
    anns = glob.glob(os.path.join(synth_tree, "Annotations", "DET", "*", "**", "*.xml"), recursive=True)
    imgs = glob.glob(os.path.join(synth_tree, "Data", "DET", "*", "**", "*.JPEG"), recursive=True)
    strip = lambda p, kind, ext: os.path.relpath(p, os.path.join(synth_tree, kind, "DET"))[: -len(ext)]  # noqa: E731
    assert sorted(strip(p, "Annotations", ".xml") for p in anns) == sorted(strip(p, "Data", ".JPEG") for p in imgs)
    assert len(anns) == 96 + 32
    train = glob.glob(os.path.join(synth_tree, "Annotations/DET/train/ILSVRC2013_train/n*/n*_*.xml"))
    val = glob.glob(os.path.join(synth_tree, "Annotations/DET/val/ILSVRC2012_val_*.xml"))
    assert len(val) == 32 and len(train) > 80
    assert all(os.path.basename(os.path.dirname(p)) == os.path.basename(p).split("_")[0] for p in train)


def test_xml_is_real_format_and_images_match_it(synth_tree):
    paths = sorted(glob.glob(os.path.join(synth_tree, "Annotations/DET/**/*.xml"), recursive=True))
    negatives = 0
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        root = etree.fromstring(data)
        assert root.tag == "annotation" and root.findtext("filename") == os.path.basename(path)[:-4]
        ann = annotations.parse(data, path)
        image_path = path.replace("/Annotations/", "/Data/")[:-4] + ".JPEG"
        with Image.open(image_path) as img:
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (ann.width, ann.height)
        for obj in ann.objects:
            assert 0 <= obj.xmin < obj.xmax < ann.width and 0 <= obj.ymin < obj.ymax < ann.height
        negatives += not ann.objects
    assert 0 < negatives < len(paths) // 4 or len(paths) < 50


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    kwargs = dict(train=12, val=4, classes=3, width=96, height=64)
    for name, seed, workers in (("a", 5, 1), ("b", 5, 2), ("c", 6, 1)):
        synth.generate(synth.SynthConfig(out=str(tmp_path / name), seed=seed, workers=workers, **kwargs))
    a, b, c = (tree_digest(str(tmp_path / n)) for n in "abc")
    assert a == b
    assert a != c


def test_default_size_jpegs_are_in_imagenet_range(tmp_path):
    synth.generate(synth.SynthConfig(out=str(tmp_path), train=12, val=0, classes=4, seed=1))
    sizes = [os.path.getsize(p) for p in glob.glob(str(tmp_path / "ILSVRC/Data/**/*.JPEG"), recursive=True)]
    assert all(40_000 < s < 160_000 for s in sizes), sizes
    assert 55_000 < np.mean(sizes) < 125_000


def test_class_is_visible_in_the_pixels(synth_tree):
    """The largest box's centre carries its class hue: what makes accuracy a label check."""
    paths = sorted(glob.glob(os.path.join(synth_tree, "Annotations/DET/train/**/*.xml"), recursive=True))
    hits = total = 0
    for path in paths:
        with open(path, "rb") as f:
            ann = annotations.parse(f.read())
        if not ann.objects:
            continue
        big = max(ann.objects, key=lambda o: (o.xmax - o.xmin) * (o.ymax - o.ymin))
        img = np.asarray(Image.open(path.replace("/Annotations/", "/Data/")[:-4] + ".JPEG"), dtype=float)
        # The whole box interior, averaged, must be nearer its class colour than any other's.
        patch = img[int(big.ymin) : int(big.ymax), int(big.xmin) : int(big.xmax)].reshape(-1, 3)
        k = [s for s, _ in synth.synsets(5)].index(big.name)
        dists = [np.linalg.norm(np.median(patch, 0) - synth.class_color(j, 5)) for j in range(5)]
        hits += int(np.argmin(dists) == k)
        total += 1
    assert hits / total > 0.7


def test_cli_writes_tree_and_refuses_to_overwrite(tmp_path, capsys):
    out = str(tmp_path / "t")
    assert cli.main(["synth", out, "--train", "3", "--val", "2", "--classes", "2", "--size", "64x48"]) == 0
    assert "wrote 5 images" in capsys.readouterr().out
    assert cli.main(["synth", out, "--train", "3"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_val_solution_lists_every_val_object_as_its_xml_does(synth_tree):
    """LOC_val_solution.csv beside ILSVRC/ (where Kaggle ships it): one row per val image, in id
    order, each object's synset and pixel box as in the image's XML; none for an empty image."""
    from detrec.core import kaggle_loc

    path = os.path.join(os.path.dirname(synth_tree), synth.SOLUTION)
    with open(path, "rb") as f:
        rows = list(kaggle_loc.read_rows(f, path))
    xmls = sorted(glob.glob(os.path.join(synth_tree, "Annotations", "DET", "val", "*.xml")))
    assert [r.image_id for r in rows] == [os.path.basename(x)[:-4] for x in xmls]
    for row, xml in zip(rows, xmls):
        doc = etree.parse(xml)
        expected = [(o.findtext("name"), *(float(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")))
                    for o in doc.findall("object")]
        assert sorted(row.guesses) == sorted(expected), row.image_id
