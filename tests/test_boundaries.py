"""Limits at their exact boundary and counts that must count images, through the CLI.

`--max-pixels N` keeps an image of exactly N pixels and refuses (or, with --downscale, shrinks)
one of N+1; dataset_info's converted_images counts images, not the shards holding them; and
`detrec inspect` counts conversions from the records themselves, so a dataset_info.json that
says otherwise is a problem it reports.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from detrec.pipelines import cli
from tests.conftest import run_preprocess

EXACT, OVER = (34, 36), (35, 35)  # 1,224 and 1,225 pixels
LIMIT = 34 * 36


def _image(size: tuple[int, int], fmt: str, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def _tree(root, files: dict[str, bytes]) -> str:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return str(root)


def _records(out: str, split: str = "train") -> list[tf.train.Example]:
    names = sorted(n for n in os.listdir(out) if n.startswith(f"{split}-") and n.endswith(".tfrecord"))
    return [tf.train.Example.FromString(raw) for n in names
            for raw in tf.data.TFRecordDataset(os.path.join(out, n)).as_numpy_iterator()]


def _feature(example: tf.train.Example, key: str):
    feature = example.features.feature[key]
    return (list(feature.bytes_list.value) or list(feature.int64_list.value) or list(feature.float_list.value))


def _converted_from(example: tf.train.Example) -> bytes:
    """The record's `image/detrec/converted_from` (b"" when stored untouched)."""
    return b"".join(_feature(example, "image/detrec/converted_from"))


def _info(out: str) -> dict:
    with open(os.path.join(out, "dataset_info.json"), encoding="utf-8") as f:
        return json.load(f)


def _errors(out: str, split: str = "train") -> list[dict]:
    with open(os.path.join(out, f"errors-{split}.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def sized_tree(tmp_path_factory) -> str:
    return _tree(tmp_path_factory.mktemp("sized"), {
        "train/a/exact.jpg": _image(EXACT, "JPEG", 1),
        "train/a/over.jpg": _image(OVER, "JPEG", 2),
    })


def test_max_pixels_keeps_exactly_n_pixels_and_refuses_n_plus_one(sized_tree, tmp_path):
    out = str(tmp_path / "out")
    assert run_preprocess(sized_tree, out, "--splits", "train", "--max-pixels", str(LIMIT)) == 0
    kept = _records(out)
    assert [_feature(r, "image/filename")[0] for r in kept] == [b"a/exact.jpg"]
    assert (_feature(kept[0], "image/width"), _feature(kept[0], "image/height")) == ([EXACT[0]], [EXACT[1]])
    (error,) = _errors(out)
    assert error["code"] == "image_too_large" and error["image"].endswith("over.jpg")
    assert "1,225 pixels" in error["reason"] and f"{LIMIT:,}" in error["reason"]


def test_max_pixels_with_downscale_shrinks_n_plus_one_to_fit_and_leaves_n_untouched(sized_tree, tmp_path):
    out = str(tmp_path / "out")
    assert run_preprocess(sized_tree, out, "--splits", "train", "--max-pixels", str(LIMIT), "--downscale") == 0
    by_name = {_feature(r, "image/filename")[0]: r for r in _records(out)}
    exact, over = by_name[b"a/exact.jpg"], by_name[b"a/over.jpg"]
    with open(os.path.join(sized_tree, "train/a/exact.jpg"), "rb") as f:
        assert _feature(exact, "image/encoded")[0] == f.read()  # stored untouched
    assert _converted_from(exact) == b"" and _converted_from(over) != b""
    w, h = _feature(over, "image/width")[0], _feature(over, "image/height")[0]
    assert w * h <= LIMIT and (w, h) != OVER
    assert tf.io.decode_jpeg(_feature(over, "image/encoded")[0]).shape[:2] == (h, w)
    assert _info(out)["splits"]["train"]["converted_images"] == 1


@pytest.fixture(scope="module")
def converted_out(tmp_path_factory) -> str:
    """Three PNGs and a JPEG in one shard: three converted images in one shard."""
    root = _tree(tmp_path_factory.mktemp("converted"), {
        "train/a/p1.png": _image((40, 30), "PNG", 3),
        "train/a/p2.png": _image((40, 30), "PNG", 4),
        "train/b/p3.png": _image((40, 30), "PNG", 5),
        "train/b/j.jpg": _image((40, 30), "JPEG", 6),
    })
    out = str(tmp_path_factory.mktemp("converted_out"))
    assert run_preprocess(root, out, "--splits", "train", "--num-shards", "train=1") == 0
    return out


def test_converted_images_counts_images_not_shards(converted_out):
    records = _records(converted_out)
    assert len(records) == 4
    assert sorted(_converted_from(r) for r in records) == [b"", b"png", b"png", b"png"]
    split = _info(converted_out)["splits"]["train"]
    assert len(split["shards"]) == 1 and split["converted_images"] == 3


def _inspect(capsys, *args: str) -> tuple[int, dict]:
    rc = cli.main(["inspect", *args, "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_inspect_counts_conversions_from_the_records_and_flags_a_dataset_info_that_differs(
        converted_out, tmp_path, capsys):
    rc, report = _inspect(capsys, converted_out)
    assert rc == 0 and report["ok"], report["problems"]
    assert report["splits"]["train"]["converted_counted"] == {"png": 3}
    # The same shards with dataset_info.json saying 1: the records' own count wins, as a problem.
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for name in os.listdir(converted_out):
        os.link(os.path.join(converted_out, name), tampered / name)
    info = _info(converted_out)
    info["splits"]["train"]["converted_images"] = 1
    os.unlink(tampered / "dataset_info.json")
    (tampered / "dataset_info.json").write_text(json.dumps(info))
    rc, report = _inspect(capsys, str(tampered))
    assert rc == 1
    (problem,) = report["problems"]
    assert problem["file"].endswith("dataset_info.json")
    assert "3 records hold a re-encoded image" in problem["reason"] and "counts 1 converted" in problem["reason"]
