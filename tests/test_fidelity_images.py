"""Issue #22, fidelity of images: a converted image keeps what it means.

1. Bytes after a JPEG's end-of-image marker (newlines, 0xFF padding, trailers) are normal:
   the file is kept, stored ending at its EOI, in preprocess and in predict.
2. Any mode Pillow opens reaches 8 bits as a viewer shows it (scaled, never clipped;
   transparency on white), held to references computed with numpy from the values written.
3. A colour profile is applied when detrec re-encodes (pixels converted to sRGB), held to
   references computed from the profile's own matrix and curves; a JPEG kept as is keeps its
   bytes; dataset_info.json counts the images whose profile is not sRGB, per split.

The files are written by hand (PNG chunks and ICC tags with struct and zlib) or by encoders
other than the code under test, and every stored picture is read back with TensorFlow's
decoder, the trainer's.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
import simplejpeg
import tensorflow as tf
from PIL import Image, ImageCms

from detrec.core import dataset_info, images, jpeg_segments, schema
from detrec.core.images import ImageError
from detrec.preprocess import decode_check, jpeg_scans
from tests import image_factory as f
from tests.conftest import run_preprocess

MODES = decode_check.VERIFY_MODES
W, H = 64, 48
MAX_MEAN_ERROR = 2.0  # grey levels: the bound, JPEG re-encoding included


def prepare(data: bytes, verify: str = "full", **kwargs) -> images.PreparedImage:
    return images.prepare(data, decode_check.checker(verify), **kwargs)


def stored(out: images.PreparedImage) -> np.ndarray:
    """The stored picture as the trainer decodes it (float, H x W x 3)."""
    return tf.io.decode_jpeg(out.data, channels=3).numpy().astype(np.float64)


def mean_error(out: images.PreparedImage, want: np.ndarray) -> float:
    want = np.asarray(want, np.float64)
    if want.ndim == 2:
        want = np.repeat(want[..., None], 3, -1)
    got = stored(out)
    assert got.shape == want.shape
    return float(np.abs(got - want).mean())


def gradient(lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """A smooth H x W ramp from lo (left) to hi (right), float."""
    return np.tile(np.linspace(lo, hi, W), (H, 1))


def ramp_down() -> np.ndarray:
    """A smooth H x W ramp from 1 (top) to 0 (bottom): an alpha that covers every level."""
    return np.tile(np.linspace(1.0, 0.0, H)[:, None], (1, W))


def on_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """8-bit colour (H x W or H x W x 3) composited on white by an alpha in 0..1."""
    if colour.ndim == 3:
        alpha = alpha[..., None]
    return colour * alpha + 255.0 * (1 - alpha)


# -- PNG, written by hand ------------------------------------------------------------------

def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(samples: np.ndarray, colour_type: int, depth: int, *chunks: tuple[bytes, bytes]) -> bytes:
    """A PNG of integer `samples` (H x W [x channels]), chunks (PLTE, tRNS, iCCP) before IDAT."""
    samples = samples.reshape(samples.shape[0], samples.shape[1], -1)
    rows = []
    for row in samples:
        if depth == 16:
            data = row.astype(">u2").tobytes()
        elif depth == 8:
            data = row.astype(np.uint8).tobytes()
        else:  # 1-bit grey
            data = np.packbits(row[:, 0].astype(np.uint8)).tobytes()
        rows.append(b"\x00" + data)
    head = struct.pack(">IIBBBBB", samples.shape[1], samples.shape[0], depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", head) + b"".join(_chunk(k, b) for k, b in chunks)
            + _chunk(b"IDAT", zlib.compress(b"".join(rows))) + _chunk(b"IEND", b""))


def iccp(profile: bytes) -> tuple[bytes, bytes]:
    return b"iCCP", b"test profile\x00\x00" + zlib.compress(profile)


# -- ICC profiles, written by hand ---------------------------------------------------------

D50 = (0.9642, 1.0, 0.8249)
# Colorant matrices (columns: red, green, blue XYZ, adapted to D50) of Adobe RGB (1998) and sRGB.
ADOBE_RGB = np.array([[0.6097559, 0.2052401, 0.1492240], [0.3111145, 0.6256561, 0.0632471],
                      [0.0194702, 0.0608902, 0.7448387]])
SRGB = np.array([[0.4360747, 0.3850649, 0.1430804], [0.2225045, 0.7168786, 0.0606169],
                 [0.0139322, 0.0971045, 0.7141733]])
ADOBE_GAMMA = 563 / 256  # 2.19921875, as its profile stores it (u8Fixed8)


def _s15(*values: float) -> bytes:
    return b"".join(struct.pack(">i", round(v * 65536)) for v in values)


def _xyz(*values: float) -> bytes:
    return b"XYZ \x00\x00\x00\x00" + _s15(*values)


def _curve(gamma: float | None = None, table: np.ndarray | None = None) -> bytes:
    if table is None:
        return b"curv\x00\x00\x00\x00" + struct.pack(">IH", 1, round(gamma * 256)) + b"\x00\x00"
    body = b"curv\x00\x00\x00\x00" + struct.pack(">I", len(table)) + np.round(table * 65535).astype(">u2").tobytes()
    return body + b"\x00" * (-len(body) % 4)


def _desc(text: str) -> bytes:
    ascii_ = text.encode() + b"\x00"
    body = b"desc\x00\x00\x00\x00" + struct.pack(">I", len(ascii_)) + ascii_ + b"\x00" * (4 + 4 + 2 + 1 + 67)
    return body + b"\x00" * (-len(body) % 4)


def icc(space: bytes, tags: dict[bytes, bytes]) -> bytes:
    """An ICC v2 display profile (class mntr, PCS XYZ) holding `tags`."""
    table, blobs, offset = [], b"", 128 + 4 + 12 * len(tags)
    for sig, blob in tags.items():
        table.append(struct.pack(">4sII", sig, offset + len(blobs), len(blob)))
        blobs += blob
    size = offset + len(blobs)
    header = (struct.pack(">I4sI4s4s4s", size, b"\x00" * 4, 0x02100000, b"mntr", space, b"XYZ ") + b"\x00" * 12
              + b"acsp" + b"\x00" * 24 + struct.pack(">I", 0) + _s15(*D50) + b"\x00" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + b"".join(table) + blobs


def rgb_profile(matrix: np.ndarray, curve: bytes, name: str) -> bytes:
    return icc(b"RGB ", {b"desc": _desc(name), b"wtpt": _xyz(*D50), b"rXYZ": _xyz(*matrix[:, 0]),
                         b"gXYZ": _xyz(*matrix[:, 1]), b"bXYZ": _xyz(*matrix[:, 2]),
                         b"rTRC": curve, b"gTRC": curve, b"bTRC": curve})


def grey_profile(curve: bytes, name: str) -> bytes:
    return icc(b"GRAY", {b"desc": _desc(name), b"wtpt": _xyz(*D50), b"kTRC": curve})


ADOBE = rgb_profile(ADOBE_RGB, _curve(ADOBE_GAMMA), "Adobe RGB (1998)")
LINEAR_GREY = grey_profile(_curve(1.0), "Linear grey")


def _srgb_decoded(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _srgb_encoded(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0.0, 1.0)
    return 255.0 * np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)


# sRGB by its numbers under another name: sRGB's matrix and its curve sampled in a table.
SRGB_BY_ANOTHER_NAME = rgb_profile(SRGB, _curve(table=_srgb_decoded(np.linspace(0, 1, 1024))), "Camera RGB")


def adobe_to_srgb(rgb: np.ndarray) -> np.ndarray:
    """What an ICC-aware viewer shows for Adobe RGB pixels: the profile's curve and matrix to
    XYZ (D50), sRGB's inverse matrix, clipped to the gamut (relative colorimetric), sRGB's curve."""
    xyz = ((rgb / 255.0) ** ADOBE_GAMMA) @ ADOBE_RGB.T
    return _srgb_encoded(xyz @ np.linalg.inv(SRGB).T)


def colour_ramps() -> np.ndarray:
    """Smooth, saturated 8-bit colours: red left to right, green top to bottom, some blue."""
    red = gradient(0, 255)
    green = np.tile(np.linspace(0, 255, H)[:, None], (1, W))
    return np.round(np.stack([red, green, np.full((H, W), 60.0)], -1))


# -- 1. bytes after the end-of-image marker ------------------------------------------------

def _photo(progressive: bool = False, grey: bool = False) -> bytes:
    y, x = np.mgrid[0:H, 0:W]
    pixels = np.stack([x * 255 // W, y * 255 // H, (x + y) * 255 // (W + H)], -1).astype(np.uint8)
    return f.encode(pixels, quality=90, progressive=progressive, mode="L" if grey else None)


TRAILERS = {
    "newline": b"\n", "crlf": b"\r\n", "ff_padding": b"\xff" * 32, "ff_then_zeros": b"\xff\x00\x00\x00",
    "zeros_then_text": b"\x00" * 8 + b"x", "text": b"SEFH" + b"\x01\x02 trailer written by a phone " * 20,
    "markers_inside": b"\xff\xd8\xff\xe1\x00\x10 \xff\xd9 more \xff\xc0\x00\x11 end",
    "second_picture_cut": f.jpeg(16, 16)[:-40],
}


@pytest.mark.parametrize("verify", MODES)
@pytest.mark.parametrize("kind", ["baseline", "progressive", "grey"])
@pytest.mark.parametrize("trailer", sorted(TRAILERS))
def test_a_jpeg_with_bytes_after_its_end_marker_is_kept_ending_at_it(trailer, kind, verify):
    data = _photo(progressive=kind == "progressive", grey=kind == "grey")
    out = prepare(data + TRAILERS[trailer], verify)
    assert out.data == data and out.converted_from == "" and (out.width, out.height) == (W, H)


@pytest.mark.parametrize("verify", MODES)
def test_a_trailer_ending_with_an_end_marker_is_stored_as_it_is(verify):
    """A second picture after the first (a phone's preview): decoders stop at the first EOI."""
    data = _photo() + f.jpeg(16, 16)
    out = prepare(data, verify)
    assert out.data == data and stored(out).shape == (H, W, 3)


@pytest.mark.parametrize("verify", MODES)
@pytest.mark.parametrize("trailer", [b"\n", b"\xff\xff", b"SEFT trailer"])
def test_a_cut_jpeg_with_a_trailer_is_still_truncated(trailer, verify):
    """The end marker is found by walking the segments: one inside an APP segment (an EXIF
    thumbnail's) is not the picture's."""
    data = _photo()
    thumbnail = b"\xff\xe1" + struct.pack(">H", 2 + 9) + b"Exif\x00\x00\xff\xd9\x00"
    cut = data[:2] + thumbnail + data[2:len(data) // 2]
    with pytest.raises(ImageError) as err:
        prepare(cut + trailer, verify)
    assert err.value.code == "truncated_image"


def test_a_cut_scan_with_an_end_marker_in_its_trailer_is_still_caught_by_full():
    """A file cut inside its scan, followed by a trailer holding FFD9: the walk takes that for
    the end, and the premature end of the scan is --verify-images full's to find, as for any
    cut file given back an end marker."""
    data = f.encode(np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8), quality=90)
    with pytest.raises(ImageError) as err:
        prepare(data[:len(data) * 2 // 3] + b"trailer\xff\xd9more", "full")
    assert err.value.code == "truncated_image"


def test_end_of_image_walks_segments_and_scans():
    data = _photo(progressive=True)
    assert jpeg_segments.end_of_image(data + b"\r\n\xff\xd9") == len(data)
    assert jpeg_segments.end_of_image(data[:-2]) is None
    markers = [marker for marker, _, _ in jpeg_segments.segments(data)]
    assert markers[-1] == jpeg_segments.EOI and markers.count(jpeg_segments.SOS) == jpeg_scans.walk(data).count > 1


def test_predict_takes_a_jpeg_with_a_trailer():
    from detrec.train import predict

    data = _photo()
    with_trailer = predict.prepare_image(data + TRAILERS["text"], 64, "inception").numpy()
    assert np.array_equal(with_trailer, predict.prepare_image(data, 64, "inception").numpy())


# -- 2. every mode Pillow opens, scaled to 8 bits as a viewer shows it -----------------------

def _tiff(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "TIFF")
    return buf.getvalue()


def _modes() -> dict[str, tuple[bytes, str, np.ndarray]]:
    """mode name -> (file, the mode Pillow opens it as, the 8-bit picture a viewer shows)."""
    ramp16 = np.round(gradient(0, 65535))
    alpha = ramp_down()
    colours16 = np.stack([ramp16, 65535 - ramp16, np.full((H, W), 30000.0)], -1)
    colours8 = np.round(colours16 / 257)
    cmyk = np.stack([gradient(0, 200), gradient(200, 0), np.full((H, W), 50.0), gradient(0, 120)], -1).round()
    cmyk_rgb = (255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255  # no profile: the plain formula
    palette = np.round(np.stack([np.linspace(0, 255, 256), np.linspace(255, 0, 256), np.full(256, 90)], -1))
    index = np.round(gradient(0, 255)).astype(np.uint8)
    palette_alpha = np.round(np.linspace(0, 255, 256))  # entry i is i/255 opaque
    big_endian = Image.frombytes("I;16B", (W, H), ramp16.astype(">u2").tobytes())
    grey_alpha = Image.merge("PA", (Image.fromarray(index, "L").convert("P"), Image.fromarray(
        np.round(alpha * 255).astype(np.uint8))))
    grey_alpha.putpalette(palette.astype(np.uint8).tobytes())
    y, x = np.mgrid[0:H, 0:W]
    bits = (x // 8 + y // 8) % 2
    steps = x // 8  # 8 bands; the first one transparent, where a transparent value is set
    steps16, steps8 = steps * 9362.0, steps * 36.0
    return {
        "I;16 png": (png(ramp16, 0, 16), "I;16", ramp16 / 257),
        "I;16 png, a transparent value": (png(steps16, 0, 16, (b"tRNS", b"\x00\x00")), "I;16",
                                          np.where(steps == 0, 255, steps16 / 257)),
        "I;16B tiff": (_tiff(big_endian), "I;16B", ramp16 / 257),
        "I tiff": (_tiff(Image.fromarray(ramp16.astype(np.int32))), "I", ramp16 / 257),
        "F tiff": (_tiff(Image.fromarray(gradient().astype(np.float32))), "F", gradient(0, 255)),
        "16-bit RGB png": (png(colours16, 2, 16), "RGB", colours8),
        "16-bit RGBA png": (png(np.dstack([colours16, np.round(alpha * 65535)]), 6, 16), "RGBA",
                            on_white(colours8, alpha)),
        "16-bit grey+alpha png": (png(np.dstack([ramp16, np.round(alpha * 65535)]), 4, 16), "RGBA",
                                  on_white(ramp16 / 257, alpha)),
        "LA png": (png(np.dstack([np.round(ramp16 / 257), np.round(alpha * 255)]), 4, 8), "LA",
                   on_white(np.round(ramp16 / 257), np.round(alpha * 255) / 255)),
        "L png, a transparent value": (png(steps8, 0, 8, (b"tRNS", b"\x00\x00")), "L",
                                       np.where(steps == 0, 255, steps8)),
        "P png with alpha": (png(index, 3, 8, (b"PLTE", palette.astype(np.uint8).tobytes()),
                                 (b"tRNS", palette_alpha.astype(np.uint8).tobytes())), "P",
                             on_white(palette[index], palette_alpha[index] / 255)),
        "PA tiff": (_tiff(grey_alpha), "PA", on_white(palette[index], np.round(alpha * 255) / 255)),
        "1-bit png": (png(bits, 0, 1), "1", bits * 255.0),
        "CMYK jpeg": (_cmyk_jpeg(cmyk), "CMYK", cmyk_rgb),
        "CMYK tiff": (_tiff(Image.frombytes("CMYK", (W, H), cmyk.astype(np.uint8).tobytes())), "CMYK", cmyk_rgb),
        # libjpeg-turbo's own encoder writes CMYK as YCCK (Adobe transform 2), inverted as Adobe's are.
        "YCCK jpeg": (simplejpeg.encode_jpeg(np.ascontiguousarray(255 - cmyk.astype(np.uint8)), 98, "CMYK", "444"),
                      "CMYK", cmyk_rgb),
    }


def _cmyk_jpeg(cmyk: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("CMYK", (W, H), cmyk.astype(np.uint8).tobytes()).save(buf, "JPEG", quality=98)
    return buf.getvalue()


MODE_CASES = _modes()


@pytest.mark.parametrize("name", sorted(MODE_CASES))
def test_every_mode_reaches_8_bits_as_a_viewer_shows_it(name):
    data, mode, want = MODE_CASES[name]
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == mode  # the case is the mode it names (Pillow 12 reads 16-bit RGB(A) as 8-bit)
    out = prepare(data)
    assert out.converted_from
    assert mean_error(out, want) <= MAX_MEAN_ERROR, name


def test_a_ycck_jpeg_is_the_kind_it_claims():
    data = MODE_CASES["YCCK jpeg"][0]
    adobe = data.index(b"Adobe")
    assert data[adobe + 11] == 2 and images.jpeg_header(data).components == 4  # transform 2: YCCK


# -- 3. colour profiles --------------------------------------------------------------------

def _encoded(pixels: np.ndarray, fmt: str, profile: bytes | None, **kwargs) -> bytes:
    buf = io.BytesIO()
    if profile is not None:
        kwargs["icc_profile"] = profile
    Image.fromarray(pixels.astype(np.uint8)).save(buf, fmt, **kwargs)
    return buf.getvalue()


def _exif_rotated(pixels: np.ndarray, profile: bytes) -> bytes:
    exif = Image.Exif()
    exif[images.ORIENTATION_TAG] = 3  # turned 180 degrees
    return _encoded(pixels[::-1, ::-1], "JPEG", profile, quality=98, exif=exif.tobytes())


PROFILED = {  # source -> (file of colour_ramps() in Adobe RGB, converted_from)
    "png": (lambda p: png(p, 2, 8, iccp(ADOBE)), "png-to-srgb"),
    "webp": (lambda p: _encoded(p, "WEBP", ADOBE, lossless=True), "webp-to-srgb"),
    "tiff": (lambda p: _encoded(p, "TIFF", ADOBE), "tiff-to-srgb"),
    "jpeg turned by EXIF": (lambda p: _exif_rotated(p, ADOBE), "jpeg-exif-rotated-to-srgb"),
}


@pytest.mark.parametrize("verify", MODES)
@pytest.mark.parametrize("source", sorted(PROFILED))
def test_a_reencoded_image_means_the_colours_of_its_profile(source, verify):
    pixels = colour_ramps()
    make, converted_from = PROFILED[source]
    out = prepare(make(pixels), verify)
    want = adobe_to_srgb(pixels)
    assert out.converted_from == converted_from and out.non_srgb
    assert mean_error(out, want) <= MAX_MEAN_ERROR
    assert np.abs(want - pixels).mean() > 4 * MAX_MEAN_ERROR  # the profile matters for these colours
    # littlecms through ImageCms, called here on the source, agrees with the numbers above
    cms = ImageCms.profileToProfile(Image.fromarray(pixels.astype(np.uint8)), ImageCms.ImageCmsProfile(
        io.BytesIO(ADOBE)), ImageCms.createProfile("sRGB"), outputMode="RGB")
    assert np.abs(np.asarray(cms, np.float64) - want).mean() <= 1.0


def test_a_profile_applies_to_every_mode_of_colour_pixels():
    """Palette, 16-bit and alpha pixels too; transparency is composited after the colours are
    converted, on the page (white) as a browser does."""
    pixels, alpha = colour_ramps(), ramp_down()
    palette = np.round(np.stack([np.linspace(0, 255, 256), np.linspace(255, 0, 256), np.full(256, 90)], -1))
    index = np.round(gradient(0, 255)).astype(np.uint8)
    cases = {
        "palette": (png(index, 3, 8, (b"PLTE", palette.astype(np.uint8).tobytes()), iccp(ADOBE)),
                    adobe_to_srgb(palette[index])),
        "16-bit": (png(pixels * 257, 2, 16, iccp(ADOBE)), adobe_to_srgb(pixels)),
        "alpha": (png(np.dstack([pixels, np.round(alpha * 255)]), 6, 8, iccp(ADOBE)),
                  on_white(adobe_to_srgb(pixels), np.round(alpha * 255) / 255)),
    }
    for name, (data, want) in cases.items():
        out = prepare(data)
        assert out.converted_from == "png-to-srgb" and out.non_srgb, name
        assert mean_error(out, want) <= MAX_MEAN_ERROR, name


def test_downscaling_applies_the_profile_too():
    pixels = np.repeat(np.repeat(colour_ramps(), 2, 0), 2, 1)
    out = prepare(_encoded(pixels, "JPEG", ADOBE, quality=98), max_pixels=W * H, downscale=True)
    assert out.converted_from == "jpeg-downscaled-to-srgb" and (out.width, out.height) == (W, H)
    assert mean_error(out, adobe_to_srgb(colour_ramps())) <= MAX_MEAN_ERROR


def test_a_grey_profile_is_applied_to_grey_pixels():
    grey = np.round(gradient(0, 255))
    out = prepare(png(grey, 0, 8, iccp(LINEAR_GREY)))
    assert out.converted_from == "png-to-srgb" and out.non_srgb
    assert mean_error(out, _srgb_encoded(grey / 255)) <= MAX_MEAN_ERROR


@pytest.mark.parametrize("profile", ["srgb_by_its_numbers", "pillow_srgb", "malformed", "cmyk_pixels"])
def test_profiles_that_change_nothing_leave_the_pixels_alone(profile):
    """sRGB under another name, a profile that cannot be read, a profile for another colour
    space than the pixels': the pixels are shown as they are (browsers do the same)."""
    pixels = colour_ramps()
    icc_bytes = {"srgb_by_its_numbers": SRGB_BY_ANOTHER_NAME, "malformed": b"acsp" * 40, "cmyk_pixels": ADOBE,
                 "pillow_srgb": ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()}[profile]
    data = png(pixels, 2, 8, iccp(icc_bytes))
    want = pixels
    if profile == "cmyk_pixels":
        cmyk = np.round(np.dstack([pixels, np.full((H, W), 40.0)]))
        data, want = _cmyk_tiff(cmyk, icc_bytes), (255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255
    out = prepare(data)
    assert not out.non_srgb and not out.converted_from.endswith("-to-srgb")
    assert mean_error(out, want) <= MAX_MEAN_ERROR


def _cmyk_tiff(cmyk: np.ndarray, profile: bytes) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("CMYK", (W, H), cmyk.astype(np.uint8).tobytes()).save(buf, "TIFF", icc_profile=profile)
    return buf.getvalue()


@pytest.mark.parametrize("verify", MODES)
def test_a_jpeg_kept_as_is_keeps_its_profile_and_is_counted(verify):
    adobe = _encoded(colour_ramps(), "JPEG", ADOBE, quality=95)
    srgb = _encoded(colour_ramps(), "JPEG", SRGB_BY_ANOTHER_NAME, quality=95)
    for data, other in ((adobe, True), (srgb, False), (_photo(), False)):
        out = prepare(data, verify)
        assert out.data == data and out.converted_from == "" and out.non_srgb is other


def _records(out: str, split: str) -> list[schema.Record]:
    names = sorted(n for n in os.listdir(out) if n.startswith(f"{split}-") and n.endswith(".tfrecord"))
    return [schema.decode(raw) for n in names
            for raw in tf.data.TFRecordDataset(os.path.join(out, n)).as_numpy_iterator()]


def test_dataset_info_counts_the_images_whose_profile_is_not_srgb_per_split(tmp_path):
    pixels = colour_ramps()
    files = {
        "train/a/adobe.png": png(pixels, 2, 8, iccp(ADOBE)),
        "train/a/adobe.jpg": _encoded(pixels, "JPEG", ADOBE, quality=95),
        "train/b/srgb.png": png(pixels, 2, 8, iccp(SRGB_BY_ANOTHER_NAME)),
        "train/b/plain.jpg": _photo(),
        "train/b/grey.png": png(np.round(gradient(0, 255)), 0, 8, iccp(LINEAR_GREY)),
        "val/a/adobe.webp": _encoded(pixels, "WEBP", ADOBE, lossless=True),
        "val/b/plain.png": png(pixels, 2, 8),
    }
    for rel, data in files.items():
        (tmp_path / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / rel).write_bytes(data)
    out = str(tmp_path / "out")
    assert run_preprocess(str(tmp_path / "in"), out, "--layout", "folder") == 0
    with open(os.path.join(out, schema.DATASET_INFO), encoding="utf-8") as fh:
        raw = json.load(fh)
    assert {s: raw["splits"][s]["non_srgb_images"] for s in ("train", "val")} == {"train": 3, "val": 1}
    info = dataset_info.load(out)
    assert (info.splits["train"].non_srgb_images, info.splits["val"].non_srgb_images) == (3, 1)
    by_name = {r.filename: r for r in _records(out, "train")}
    assert by_name["a/adobe.jpg"].encoded == files["train/a/adobe.jpg"]  # kept as is, profile and all
    assert by_name["a/adobe.png"].converted_from == "png-to-srgb"
    assert by_name["b/srgb.png"].converted_from == "png"
