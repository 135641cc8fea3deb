"""Images that passed every check used to stop training and predict (class 3): too many pixels,
a header claiming more than the data holds, a scan cut short with its end marker put back.

Unit cases hold core.images.prepare (and --verify-images full's check) to the rule; the end
to end case writes a tree full of such images with the real job, with and without
--downscale, and decodes every record written with tf.data, DALI (CPU) and predict.
"""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from detrec.core import dataset_info, image_fit, images, schema
from detrec.core.images import ImageError
from detrec.preprocess import decode_check, jpeg_scans
from tests import image_factory as f
from tests.conftest import run_preprocess
from tests.test_hardening_inputs import DetTree, errors_of, jpeg_claiming, png_header, xml
from tests.test_input import epoch

MODES = decode_check.VERIFY_MODES


def prepare(data: bytes, verify: str = "full", **kwargs) -> images.PreparedImage:
    return images.prepare(data, decode_check.checker(verify), **kwargs)


def photo(w: int = 320, h: int = 240, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise: a picture whose last block is not mid-grey."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1)
    noise = np.random.default_rng(seed).integers(-20, 20, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def cut_keep_end(data: bytes, fraction: float) -> bytes:
    """The JPEG cut at `fraction` of its scan data, its end marker put back."""
    sos = data.index(b"\xff\xda")
    return data[:sos + int((len(data) - sos) * fraction)] + b"\xff\xd9"


def middle_removed(data: bytes) -> bytes:
    """Bytes taken out of the middle of the scan, start and end (with FFD9) intact."""
    sos = data.index(b"\xff\xda")
    span = len(data) - sos
    return data[:sos + span // 3] + data[sos + 2 * span // 3:]


@pytest.fixture(scope="module")
def too_many_pixels() -> bytes:
    """A real RGB JPEG just past the pixel limit (TensorFlow refuses to decode it at full size)."""
    w, h = 13400, 13380
    assert w * h > image_fit.MAX_PIXELS
    previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        picture = Image.linear_gradient("L").resize((w, h)).convert("RGB")
        buf = io.BytesIO()
        picture.save(buf, "JPEG", quality=75)
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    return buf.getvalue()


def test_the_default_limit_is_tensorflows(too_many_pixels):
    """13377^2 RGB decodes, 13378^2 does not: MAX_PIXELS sits between them."""
    assert 13377 * 13377 <= image_fit.MAX_PIXELS < 13378 * 13378
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_jpeg(too_many_pixels, channels=3)
    assert tf.io.decode_jpeg(too_many_pixels, channels=3, ratio=8).shape[0] > 0  # what used to pass


@pytest.mark.parametrize("verify", MODES)
def test_too_many_pixels_is_rejected_or_downscaled(too_many_pixels, verify):
    with pytest.raises(ImageError) as err:
        prepare(too_many_pixels, verify)
    assert err.value.code == "image_too_large" and "13400x13380" in str(err.value)
    out = prepare(too_many_pixels, verify, downscale=True)
    assert out.converted_from == "jpeg-downscaled" and out.original_size == (13400, 13380)
    assert out.width * out.height <= image_fit.MAX_PIXELS and out.source_size == (13400, 13380)
    assert tf.io.decode_jpeg(out.data, channels=3).shape == (out.height, out.width, 3)


@pytest.mark.parametrize("data, size", [
    (jpeg_claiming(65500, 65500), (65500, 65500)), (png_header(60000, 60000), (60000, 60000)),
    (png_header(70000, 8), (70000, 8)), (f.encode(f.picture(64, 48), "TIFF"), None),
])
@pytest.mark.parametrize("verify", MODES)
def test_dimension_headers_are_read_before_any_decode(data, size, verify):
    if size is None:  # a small picture: within the limit, converted as before
        assert prepare(data, verify).converted_from == "tiff"
        return
    with pytest.raises(ImageError) as err:
        prepare(data, verify)
    assert err.value.code == "image_too_large"


def test_a_header_claiming_more_than_the_data_holds_is_truncated_even_downscaled():
    claim = jpeg_claiming(65500, 65500)
    with pytest.raises(ImageError) as err:
        prepare(claim, "full", downscale=True)
    assert err.value.code == "truncated_image"
    claim = jpeg_claiming(4000, 3000)  # within the limit: the 1/8 decode "succeeds" on grey
    assert tf.io.decode_jpeg(claim, channels=3, ratio=8).shape == (375, 500, 3)
    with pytest.raises(ImageError) as err:
        prepare(claim, "full")
    assert err.value.code == "truncated_image"


@pytest.mark.parametrize("header", [png_header(20000, 20000), png_header(60000, 60000)])
def test_downscale_decodes_no_other_format_past_its_decode_limit(header):
    """A non-JPEG is decoded whole to be shrunk: past DECODE_LIMIT it stays too large (and is
    never allocated); a JPEG of any size is shrunk at a DCT scale instead."""
    with pytest.raises(ImageError) as err:
        prepare(header, "full", downscale=True)
    assert err.value.code == "image_too_large" and "decoded to downscale" in str(err.value)


def test_a_wide_picture_is_shrunk_to_the_longest_side_a_jpeg_can_have():
    wide = f.encode(np.zeros((2, 70000, 3), np.uint8), "PNG")
    out = prepare(wide, "header", downscale=True)
    assert (out.width, out.height) == (65500, 1) and out.converted_from == "png-downscaled"


def test_a_small_max_pixels_keeps_the_aspect():
    out = prepare(f.encode(photo(640, 480), "PNG"), "full", max_pixels=10_000, downscale=True)
    assert out.width * out.height <= 10_000 and abs(out.width / out.height - 4 / 3) < 0.05
    jpeg = prepare(f.encode(photo(640, 480), quality=90), "full", max_pixels=10_000, downscale=True)
    assert jpeg.width * jpeg.height <= 10_000 and jpeg.converted_from == "jpeg-downscaled"


def _encodings() -> dict[str, bytes]:
    pic = photo()
    return {"baseline": f.encode(pic, quality=90), "progressive": f.encode(pic, quality=90, progressive=True),
            "grey": f.encode(pic[..., 0], quality=90), "444": f.encode(pic, quality=90, subsampling=0),
            "optimized": f.encode(pic, quality=90, optimize=True)}


@pytest.mark.parametrize("kind", sorted(_encodings()))
@pytest.mark.parametrize("damage", ["cut_early", "cut_middle", "cut_late", "middle_removed"])
def test_full_treats_a_premature_end_of_jpeg_data_as_corrupt(kind, damage):
    data = _encodings()[kind]
    bad = {"cut_early": lambda d: cut_keep_end(d, 0.1), "cut_middle": lambda d: cut_keep_end(d, 0.5),
           "cut_late": lambda d: cut_keep_end(d, 0.97), "middle_removed": middle_removed}[damage](data)
    tf.io.decode_jpeg(bad, channels=3)  # every decoder takes it without an error...
    with pytest.raises(ImageError) as err:  # ...but full does not
        prepare(bad, "full")
    assert err.value.code == "truncated_image"
    assert prepare(data, "full").data == data  # the whole file is kept untouched


@pytest.mark.parametrize("picture", ["grey128", "grey128_bottom", "black", "white"])
def test_flat_pictures_are_not_taken_for_cut_ones(picture):
    """The grey-tail trigger fires on an honest mid-grey picture; the padding test clears it."""
    pixels = np.full((96, 128, 3), 128 if picture.startswith("grey") else (0 if picture == "black" else 255), np.uint8)
    if picture == "grey128_bottom":
        pixels[:48] = photo(128, 48)
    for data in (f.encode(pixels, quality=90), f.encode(pixels, quality=90, progressive=True)):
        assert prepare(data, "full").data == data


def test_scan_script_coverage():
    pic = photo()
    whole = jpeg_scans.walk(f.encode(pic, quality=90, progressive=True))
    assert whole.missing == "" and whole.progressive and whole.count > 1
    cut = jpeg_scans.walk(cut_keep_end(f.encode(pic, quality=90, progressive=True), 0.4))
    assert "precision" in cut.missing and 0 < cut.count < whole.count
    assert jpeg_scans.walk(f.encode(pic, quality=90)) == ("", 1, False)  # one interleaved sequential scan
    assert jpeg_scans.walk(b"\xff\xd8\xff\xd9").missing == ""  # no frame: left to the header check


def _sof(data: bytes, marker: int, precision: int = 8) -> bytes:
    sof = data.index(b"\xff\xc0")
    return data[:sof + 1] + bytes([marker, data[sof + 2], data[sof + 3], precision]) + data[sof + 5:]


@pytest.mark.parametrize("verify", MODES)
@pytest.mark.parametrize("marker, precision", [(0xC3, 8), (0xC0, 12), (0xC5, 8)])
def test_jpegs_the_training_decoders_may_not_read_are_never_kept_as_is(verify, marker, precision):
    data = _sof(f.jpeg(64, 48), marker, precision)
    try:
        out = prepare(data, verify)
    except ImageError as err:
        assert err.code == "undecodable_image"
        return
    assert out.converted_from.startswith("jpeg-sof") and out.data != data


def test_error_messages_quote_no_content():
    secret = b"GIF89a" + b"TOPSECRET" * 4
    with pytest.raises(ImageError) as err:
        prepare(secret)
    assert "TOPSECRET" not in str(err.value)
    with pytest.raises(ImageError) as err:
        prepare(b"TOPSECRET" * 4)
    assert err.value.code == "not_an_image" and "TOPSECRET" not in str(err.value)


# --- the invariant: every record written decodes in training (both decoders) and in predict ----
def nasty_images(too_many_pixels: bytes) -> dict[str, bytes]:
    pic = photo()
    rgba = np.dstack([photo(80, 60), np.full((60, 80), 128, np.uint8)])
    return {
        "ok_plain": f.jpeg(64, 48), "ok_grey128": f.encode(np.full((48, 64, 3), 128, np.uint8), quality=90),
        "ok_1x1": f.jpeg(1, 1), "ok_wide": f.jpeg(65500, 2), "ok_tall": f.jpeg(3, 4000),
        "ok_cmyk": f.cmyk_jpeg(64, 48), "ok_grey": f.gray_jpeg(64, 48),
        "ok_progressive": f.encode(pic, quality=90, progressive=True),
        "ok_png_rgba": f.encode(rgba, "PNG"), "ok_png16": _png16(), "ok_gif": f.encode(pic, "GIF"),
        "ok_webp": f.encode(pic, "WEBP"), "ok_tiff": f.encode(pic, "TIFF"),
        "big_pixels": too_many_pixels, "big_wide_png": f.encode(np.zeros((2, 70000, 3), np.uint8), "PNG"),
        "big_claim": jpeg_claiming(65500, 65500), "bad_claim_small": jpeg_claiming(4000, 3000),
        "bad_cut": cut_keep_end(f.encode(pic, quality=90), 0.5),
        "bad_cut_progressive": cut_keep_end(f.encode(pic, quality=90, progressive=True), 0.3),
        "bad_lossless": _sof(f.jpeg(64, 48), 0xC3), "bad_bomb": png_header(60000, 60000),
    }


def _png16() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module", params=["full", "full+downscale", "header+downscale"])
def nasty_run(request, too_many_pixels, tmp_path_factory):
    verify, _, downscale = request.param.partition("+")
    root = str(tmp_path_factory.mktemp("nasty") / "tree")
    tree = DetTree(root)
    for stem, data in nasty_images(too_many_pixels).items():
        tree.add(stem, xml(box=(0, 0, 1, 1), size=None), data)
    out = str(tmp_path_factory.mktemp("nasty_out"))
    flags = ["--splits", "train", "--num-shards", "train=2", "--synset-map", tree.synset_map, "--verify-images", verify]
    assert run_preprocess(root, out, *flags, *(["--downscale"] if downscale else [])) == 0
    return request.param, out


def test_every_bad_image_is_one_line_and_every_other_one_a_record(nasty_run):
    mode, out = nasty_run
    codes = {os.path.splitext(os.path.basename(e["image"]))[0]: e["code"] for e in errors_of(out)}
    expected = {"bad_claim_small": "truncated_image", "bad_cut": "truncated_image",
                "bad_cut_progressive": "truncated_image", "bad_lossless": "undecodable_image",
                "bad_bomb": "image_too_large", "big_pixels": "image_too_large", "big_wide_png": "image_too_large",
                "big_claim": "image_too_large"}
    if "downscale" in mode:
        for stem in ("big_pixels", "big_wide_png", "big_claim"):
            del expected[stem]
        expected["big_claim"] = "truncated_image"
    if mode.startswith("header"):  # header trusts a well-formed header and end marker
        for stem in ("bad_claim_small", "bad_cut", "bad_cut_progressive", "big_claim"):
            del expected[stem]
    assert codes == expected
    info = dataset_info.load(out)
    assert info.splits["train"].num_examples == len(nasty_images(b"")) - len(expected)


def _records(out: str) -> list[schema.Record]:
    info = dataset_info.load(out)
    files = [os.path.join(out, s.file) for s in info.splits["train"].shards]
    return [schema.decode(r.numpy()) for r in tf.data.TFRecordDataset(files)]


@pytest.mark.parametrize("decoder", ["cpu", "dali"])
@pytest.mark.parametrize("training", [False, True])
def test_every_record_decodes_in_both_training_decoders(nasty_run, decoder, training):
    """One epoch of every record, through evaluation's full decode and training's crop decode."""
    _, out = nasty_run
    keys = {hashlib.sha256(r.encoded).hexdigest() for r in _records(out)}
    # batch 1 in training, so that no record is left in a dropped remainder
    rows = epoch(out, "train", batch_size=1 if training else 4, decoder=decoder, training=training)
    assert {row[-1] for row in rows} == keys and len(rows) == len(keys)
    assert all(np.isfinite(row[0].astype(np.float32)).all() for row in rows)
    for r in _records(out):  # the stored size is the stored pixels'
        assert tf.io.decode_jpeg(r.encoded, channels=3).shape == (r.height, r.width, 3)


def test_every_record_decodes_in_predict(nasty_run, known_model_dir, tmp_path):
    """predict reads, decodes and resizes every record's image (a model of known outputs: what is
    checked is the image path, not what a model learned)."""
    from detrec.train import predict

    _, out = nasty_run
    paths = []
    for i, record in enumerate(_records(out)):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(record.encoded)
        paths.append(str(path))
    results = predict.Predictor(known_model_dir).predict(paths, top=1)
    assert [r.error for r in results] == [""] * len(paths) and all(r.top for r in results)
