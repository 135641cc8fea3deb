"""Pure image checks: sniffing, header parsing, fixes and rejections."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from detrec.core import images
from detrec.core.images import ImageError
from detrec.preprocess import decode_check
from tests import image_factory as f

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERIFY_MODES = decode_check.VERIFY_MODES


def prepare(data: bytes, verify: str = "full") -> images.PreparedImage:
    """core.images.prepare as `detrec preprocess --verify-images VERIFY` calls it."""
    return images.prepare(data, decode_check.checker(verify))


@pytest.mark.parametrize(
    "data, kind",
    [(f.jpeg(), "jpeg"), (f.png(), "png"), (f.encode(f.picture(), "GIF"), "gif"), (f.encode(f.picture(), "BMP"), "bmp"),
     (f.encode(f.picture(), "WEBP"), "webp"), (f.encode(f.picture(), "TIFF"), "tiff"), (f.HTML, None), (b"", None)],
)
def test_sniff_uses_bytes_not_names(data, kind):
    assert images.sniff(data) == kind


def test_jpeg_header():
    header = images.jpeg_header(f.jpeg(70, 30))
    assert (header.width, header.height, header.components, header.progressive) == (70, 30, 3, False)
    assert images.jpeg_header(f.cmyk_jpeg()).components == 4
    assert images.jpeg_header(f.gray_jpeg()).components == 1
    assert images.jpeg_header(f.encode(f.picture(), quality=80, progressive=True)).progressive


@pytest.mark.parametrize("verify", VERIFY_MODES)
def test_good_jpeg_bytes_are_kept_untouched(verify):
    data = f.jpeg(80, 60)
    out = prepare(data, verify)
    assert out.data == data and (out.width, out.height) == (80, 60) and out.converted_from == ""


def test_grayscale_jpeg_is_kept_and_decodes_to_three_channels():
    data = f.gray_jpeg(40, 30)
    out = prepare(data)
    assert out.data == data
    assert tf.io.decode_jpeg(out.data, channels=3).shape == (30, 40, 3)


@pytest.mark.parametrize(
    "data, source",
    [(f.cmyk_jpeg(40, 30), "jpeg-cmyk"), (f.png(40, 30), "png"), (f.encode(f.picture(40, 30), "BMP"), "bmp"),
     (f.encode(f.picture(40, 30), "PNG", mode="RGBA"), "png")],
)
@pytest.mark.parametrize("verify", VERIFY_MODES)
def test_other_pictures_become_rgb_jpeg(data, source, verify):
    out = prepare(data, verify)
    assert out.converted_from == source
    assert images.sniff(out.data) == "jpeg" and images.jpeg_header(out.data).components == 3
    decoded = tf.io.decode_jpeg(out.data, channels=3)
    assert decoded.shape == (30, 40, 3) and (out.width, out.height) == (40, 30)


def test_cmyk_colours_survive_conversion():
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 220
    out = prepare(f.encode(red, mode="CMYK", quality=95))
    pixel = np.asarray(Image.open(io.BytesIO(out.data)).convert("RGB"))[16, 16]
    assert pixel[0] > 180 and pixel[1] < 60 and pixel[2] < 60


@pytest.mark.parametrize(
    "data, code",
    [(b"", "empty_file"), (f.HTML, "not_an_image"), (f.truncated_jpeg(), "truncated_image"),
     (f.jpeg()[:200], "truncated_image"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "undecodable_image")],
)
@pytest.mark.parametrize("verify", VERIFY_MODES)
def test_rejections_have_reasons(data, code, verify):
    with pytest.raises(ImageError) as err:
        prepare(data, verify)
    assert err.value.code == code and str(err.value)


def _undefined_quant_table(data: bytes) -> bytes:
    """A JPEG whose first component points at quantization table 3, which is never defined:
    header (sizes, components) and end marker intact, but no decoder can decode it."""
    sof = data.index(b"\xff\xc0")
    return data[: sof + 12] + b"\x03" + data[sof + 13 :]


def test_full_verification_catches_what_the_header_misses():
    """Header and end marker intact, stream undecodable: `header` trusts it, `full` rejects it."""
    data = _undefined_quant_table(f.jpeg(64, 48))
    assert prepare(data, "header").data == data
    with pytest.raises(ImageError) as err:
        prepare(data, "full")
    assert err.value.code == "undecodable_image"


def test_decode_check_freezes_tensorflow_out_of_the_gc():
    """The first full check imports TensorFlow and freezes its objects (fast GC passes and a
    fast exit for Beam workers); run in a fresh interpreter, where TF is not yet loaded."""
    code = ("import gc, sys; from detrec.preprocess import decode_check; from tests import image_factory as f; "
            "assert 'tensorflow' not in sys.modules; assert decode_check.tf_decodes(f.jpeg()); "
            "tf = sys.modules['tensorflow']; later = [[]]; "
            "print(*(any(x is o for x in gc.get_objects()) for o in (tf.__dict__, later)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["False", "True"]  # TensorFlow's objects frozen, later ones not


def test_a_jpeg_the_training_decoder_refuses_but_pillow_reads_is_converted():
    """The decoder's verdict is the seam (core.images.prepare's `decodes`): when it says no to
    a JPEG Pillow can still read, the record holds Pillow's re-encoding, which TensorFlow decodes."""
    data = f.jpeg(80, 60)
    verdicts = []

    def refuses(candidate: bytes) -> bool:
        verdicts.append(candidate)
        return candidate != data  # refuses the source bytes only

    out = images.prepare(data, refuses)
    assert verdicts and verdicts[0] == data
    assert out.converted_from == "jpeg-undecodable-by-tf" and out.data != data
    assert tf.io.decode_jpeg(out.data, channels=3).shape == (60, 80, 3)


@pytest.mark.parametrize("damage", [b"\xff\xc4\x00\x00", b"\xff\xc0\x00\x11"])  # bogus tables; a second frame
def test_damage_in_the_entropy_coded_data_fails_at_one_eighth_scale_as_at_full_size(damage):
    """`--verify-images full` decodes at 1/8 scale: every coefficient is still entropy-decoded,
    so damage inside the scan fails there exactly when the full-size decode fails."""
    import random

    data = f.jpeg(160, 120)
    sos = data.index(b"\xff\xda")
    start, end = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big"), len(data) - 2
    rng, failed = random.Random(0), 0
    for _ in range(20):
        pos = rng.randrange(start, end - len(damage))
        broken = data[:pos] + damage + data[pos + len(damage):]
        try:
            tf.io.decode_jpeg(broken, channels=3)
            full = True
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError):
            full = False
        assert decode_check.tf_decodes(broken) == full, pos
        failed += not full
    assert failed > 0  # the damage is real for the decoder
