"""`detrec preprocess --shorter-side N`: images stored at the resolution training uses.

A small DET tree (a 640x480 photo, a 200x150 one, an EXIF-rotated photo, a PNG named .JPEG)
is converted twice, by default and with --shorter-side 256. Expected sizes are worked out by
hand (shorter side N, the longer one rounded to the nearest pixel, halves up), and a resized
record must be byte for byte one Pillow encode of the upright source resized once: a second
JPEG generation (turned at quality 95, then resized) would not match.
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import pytest
from PIL import Image, ImageOps, JpegImagePlugin

from detrec.core import dataset_info, image_fit, images
from detrec.pipelines import cli
from detrec.train import input as input_lib
from tests import image_factory
from tests.conftest import run_preprocess
from tests.test_exif import bright_box, painted, tagged_jpeg
from tests.test_input import records_by_key

SIDE = 256
# name -> (file bytes, box in its stored pixels (x0, y0, x1, y1), its record's size with --shorter-side 256)
PHOTO = image_factory.jpeg(640, 480, seed=1)
SMALL = image_factory.jpeg(200, 150, seed=2)
BLOCK = (400, 100, 600, 200)  # the rotated photo's bright block, in its stored (landscape) pixels
ROTATED = tagged_jpeg(6, painted(640, 480, BLOCK))  # stored 640x480, shown 480x640
PNG = image_factory.encode(image_factory.picture(300, 400, seed=3), "PNG")
FILES = {
    "photo": (PHOTO, (64, 48, 320, 240), (341, 256)),  # 640 * 256 / 480 = 341.33
    "small": (SMALL, (20, 15, 100, 75), (200, 150)),  # shorter side 150 <= 256: kept as it is
    "rotated": (ROTATED, BLOCK, (256, 341)),  # upright 480x640 -> 256 x 341.33
    "png": (PNG, (30, 40, 150, 200), (256, 341)),  # 400 * 256 / 300 = 341.33
}


def _xml(name: str, size: tuple[int, int], box: tuple[int, int, int, int]) -> str:
    x0, y0, x1, y1 = box
    return (f"<annotation><folder>train</folder><filename>{name}</filename>"
            f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
            f"<object><name>n01443537</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
            f"<ymax>{y1}</ymax></bndbox></object></annotation>")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("shorter-side")
    for sub in ("Annotations", "Data"):
        (root / sub / "DET" / "train").mkdir(parents=True)
    for name, (data, box, _) in FILES.items():
        (root / "Data" / "DET" / "train" / f"{name}.JPEG").write_bytes(data)
        with Image.open(io.BytesIO(data)) as img:  # the stored size, as ILSVRC's <size> gives it
            (root / "Annotations" / "DET" / "train" / f"{name}.xml").write_text(_xml(name, img.size, box))
    return str(root)


@pytest.fixture(scope="module")
def runs(tree, tmp_path_factory) -> dict[str, str]:
    """The tree converted by default and with --shorter-side 256: name -> output folder."""
    out = {"default": str(tmp_path_factory.mktemp("default")), "resized": str(tmp_path_factory.mktemp("resized"))}
    assert run_preprocess(tree, out["default"], "--splits", "train") == 0
    assert run_preprocess(tree, out["resized"], "--splits", "train", "--shorter-side", str(SIDE)) == 0
    return out


def _records(out: str) -> dict[str, object]:
    return {os.path.basename(r.filename)[: -len(".JPEG")]: r for r in records_by_key(out, "train").values()}


def _once(data: bytes, size: tuple[int, int]) -> bytes:
    """The source turned upright, resized to `size` and encoded once at quality 90, 4:2:0."""
    with Image.open(io.BytesIO(data)) as img:
        upright = ImageOps.exif_transpose(img).convert("RGB")
    buf = io.BytesIO()
    upright.resize(size, Image.Resampling.LANCZOS).save(buf, "JPEG", quality=90, subsampling="4:2:0")
    return buf.getvalue()


def test_larger_images_are_resized_once_and_smaller_ones_keep_their_bytes(runs):
    records = _records(runs["resized"])
    for name, (data, _, size) in FILES.items():
        record = records[name]
        assert (record.width, record.height) == size, name
        with Image.open(io.BytesIO(record.encoded)) as img:
            assert img.size == size and img.format == "JPEG" and img.getexif().get(images.ORIENTATION_TAG) is None
            if name != "small":
                assert JpegImagePlugin.get_sampling(img) == 2  # 4:2:0
        if name == "small":
            assert record.converted_from == ""
            assert hashlib.sha256(record.encoded).hexdigest() == hashlib.sha256(data).hexdigest()
        else:
            assert record.converted_from == ("png-resized" if name == "png" else "jpeg-resized")
            assert record.encoded == _once(data, size), f"{name}: not one encode of the upright source"


def test_the_rotated_photo_is_stored_upright(runs):
    record = _records(runs["resized"])["rotated"]
    pixels = np.asarray(Image.open(io.BytesIO(record.encoded)).convert("RGB"))
    # The block's upright place (orientation 6: stored (x, y) -> (480 - y, x)), scaled by 256/480.
    x0, y0, x1, y1 = BLOCK
    scale = SIDE / 480
    expected = ((480 - y1) * scale, x0 * scale, (480 - y0) * scale, x1 * scale)
    assert np.allclose(bright_box(pixels), expected, atol=2)


def test_boxes_are_those_of_the_unresized_run(runs):
    resized, default = _records(runs["resized"]), _records(runs["default"])
    photo = resized["photo"].objects[0]
    assert (photo.xmin, photo.ymin, photo.xmax, photo.ymax) == pytest.approx((64 / 640, 48 / 480, 320 / 640, 240 / 480))
    for name in FILES:
        assert [(b.xmin, b.ymin, b.xmax, b.ymax, b.label) for b in resized[name].objects] == \
               [(b.xmin, b.ymin, b.xmax, b.ymax, b.label) for b in default[name].objects], name


def test_dataset_info_records_the_setting_and_inspect_verifies(runs, capsys):
    with open(os.path.join(runs["resized"], "dataset_info.json"), encoding="utf-8") as f:
        options = json.load(f)["options"]
    assert options["shorter_side"] == SIDE and options["resize_quality"] == images.RESIZE_QUALITY == 90
    info = dataset_info.load(runs["resized"])
    assert info.shorter_side == SIDE and info.splits["train"].converted_images == 3
    default = dataset_info.load(runs["default"])
    assert "shorter_side" not in default.options and default.shorter_side == 0  # its file is what it was
    assert cli.main(["inspect", runs["resized"], "--verify"]) == 0, capsys.readouterr()


@pytest.mark.parametrize("decoder", ["cpu", pytest.param("dali", marks=pytest.mark.dali)])
def test_both_training_decoders_read_the_records(runs, decoder):
    ds = input_lib.make_dataset(runs["resized"], "train", batch_size=4, image_size=(96, 96), training=False,
                                decoder=decoder)
    batch_images, labels = next(iter(ds))[:2]
    assert batch_images.shape == (4, 96, 96, 3) and labels.shape == (4,)
    assert -1.0 <= float(np.min(batch_images)) and float(np.max(batch_images)) <= 1.0


def test_quality_is_the_flags(tree, tmp_path):
    out = str(tmp_path / "out")
    assert run_preprocess(tree, out, "--splits", "train", "--shorter-side", "300", "--resize-quality", "60") == 0
    photo = _records(out)["photo"]
    assert (photo.width, photo.height) == (400, 300)  # 640 * 300 / 480 = 400 exactly
    reference = io.BytesIO()
    Image.new("RGB", (8, 8)).save(reference, "JPEG", quality=60)
    assert Image.open(io.BytesIO(photo.encoded)).quantization == Image.open(reference).quantization
    assert dataset_info.load(out).options["resize_quality"] == 60


@pytest.mark.parametrize("size, side, expected", [
    ((640, 480), 256, (341, 256)),  # 341.33 down
    ((480, 640), 256, (256, 341)),
    ((500, 375), 128, (171, 128)),  # 170.67 up
    ((5, 2), 1, (3, 1)),  # 2.5: halves up
    ((257, 300), 256, (256, 299)),  # 298.83
    ((256, 256), 256, None),  # not over: kept
    ((300, 300), 256, (256, 256)),
])
def test_shorter_side_rounding(size, side, expected):
    assert image_fit.shorter_side_size(*size, side) == expected


def test_max_pixels_and_shorter_side_the_smaller_wins():
    photo = images.prepare(PHOTO, shorter_side=SIDE, max_pixels=20_000, downscale=True)
    # sqrt(20000 / 307200) = 0.2552: 640 -> 163.3, 480 -> 122.5, floored: 163 x 122 = 19,886 pixels
    assert (photo.width, photo.height, photo.converted_from) == (163, 122, "jpeg-resized")
    assert photo.original_size == (640, 480)
    photo = images.prepare(PHOTO, shorter_side=SIDE, max_pixels=100_000, downscale=True)  # 341x256 = 87,296 fits
    assert (photo.width, photo.height) == (341, 256)
    # Without --downscale, --max-pixels still refuses a larger source (307,200 pixels), as it always did.
    with pytest.raises(images.ImageError, match="--downscale would shrink it"):
        images.prepare(PHOTO, shorter_side=SIDE, max_pixels=300_000)


def test_a_large_jpeg_is_decoded_at_a_dct_scale_and_looks_like_a_full_decode():
    big = image_factory.encode(painted(1600, 1200, (800, 200, 1200, 600)), quality=95)
    out = images.prepare(big, shorter_side=SIDE)
    assert (out.width, out.height) == (341, 256)
    full = np.asarray(Image.open(io.BytesIO(big)).convert("RGB").resize((341, 256), Image.Resampling.LANCZOS),
                      np.float32)
    assert np.abs(np.asarray(Image.open(io.BytesIO(out.data)).convert("RGB"), np.float32) - full).mean() < 2


@pytest.mark.parametrize("flags, message", [
    (["--shorter-side", "0"], "--shorter-side wants a whole number in 1..65,500, got '0'"),
    (["--shorter-side=-3"], "--shorter-side wants a whole number in 1..65,500, got '-3'"),
    (["--shorter-side", "abc"], "--shorter-side wants a whole number in 1..65,500, got 'abc'"),
    (["--shorter-side", "2.5"], "--shorter-side wants a whole number in 1..65,500, got '2.5'"),
    (["--shorter-side", "256", "--resize-quality", "0"], "--resize-quality wants a whole number in 1..100"),
    (["--shorter-side", "256", "--resize-quality", "x"], "--resize-quality wants a whole number in 1..100"),
    (["--resize-quality", "80"], "--resize-quality sets the quality of images --shorter-side resizes"),
])
def test_bad_flag_values_are_one_line(tree, tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    assert run_preprocess(tree, str(out), *flags) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


# --- detrec bench input --data-small: detrec's lines on the resized shards vs the best peer ----
def test_bench_small_rows_are_measured_against_the_best_peer():
    from detrec.pipelines import bench_input

    rows = [{"key": key, "rate": rate, "first_batch_s": 0.5} for key, rate in
            (("tfdata", 100.0), ("tfdata_eval", 80.0), ("keras", 50.0), ("list_files", 40.0),
             ("tfdata_small", 90.0), ("tfdata_eval_small", 60.0))]
    ratios = bench_input._peers_report(rows)["ratios"]
    assert ratios == {"train_vs_best_peer": 2.0, "eval_vs_best_peer": 1.6, "small_train_vs_best_peer": 1.8,
                      "small_eval_vs_best_peer": 1.2}  # best peer: keras, 50 img/s
    assert bench_input.TARGETS["small_train_vs_best_peer"] == bench_input.TARGETS["small_eval_vs_best_peer"] == 1.5


def test_bench_data_small_needs_peers_and_resized_shards(runs, tree, capsys):
    base = ["bench", "input", "--data", runs["default"], "--decoder", "cpu"]
    assert cli.main([*base, "--data-small", runs["resized"]]) == 2
    assert "--data-small is measured against the peers" in capsys.readouterr().err
    assert cli.main([*base, "--source", tree, "--peers", "--data-small", runs["default"]]) == 2
    err = capsys.readouterr().err
    assert "records no --shorter-side" in err and len(err.strip().splitlines()) == 1


def test_a_previous_split_is_kept_only_when_its_pixels_were_stored_alike(tmp_path, capsys):
    """dataset_info's options speak for every split: a split kept from the previous run must
    have been resized as this run resizes."""
    for split in ("train", "val"):
        (tmp_path / "tree" / split / "a").mkdir(parents=True)
        (tmp_path / "tree" / split / "a" / "p.jpg").write_bytes(PHOTO)
    root, out = str(tmp_path / "tree"), str(tmp_path / "out")
    assert run_preprocess(root, out) == 0
    assert run_preprocess(root, out, "--splits", "val", "--shorter-side", "256") == 0
    assert "removed split train of the previous dataset: its images were stored with another --shorter-side" \
        in capsys.readouterr().err
    assert list(dataset_info.load(out).splits) == ["val"] and not any(n.startswith("train-") for n in os.listdir(out))
    assert run_preprocess(root, out, "--splits", "train", "--shorter-side", "256") == 0  # alike: val is kept
    assert sorted(dataset_info.load(out).splits) == ["train", "val"]
