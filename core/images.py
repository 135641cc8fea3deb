"""Pure image checks and fixes: bytes in, a 3-channel-decodable JPEG out (no file access).

Shared by the writer (`detrec preprocess`) and `detrec predict`, so an image reaches a model
along the same road whichever command read it. A good JPEG's bytes are kept untouched (they
are what the trainer decodes, and re-encoding would lose quality). Anything else that is still
a picture - CMYK JPEG, PNG/GIF/BMP/WebP/TIFF named .JPEG, a JPEG TensorFlow refuses - is
converted to an sRGB JPEG with Pillow, its pixels as a colour-managed viewer shows them
(core/colour.py: deep modes scaled, transparency on white, a colour profile applied), and
the record says so. Empty, truncated and non-image files are rejected with a reason.

Bytes after a JPEG's end-of-image marker (a newline, 0xFF padding, a phone's or an editor's
trailer) are no part of the picture: every decoder stops at EOI. A JPEG whose bytes end with
EOI (zero padding allowed) is stored as it is, found with one cheap test; any other is walked
to its first EOI (core/jpeg_segments.py) and stored ending there, its trailer left out.
Without an EOI it is truncated.

The decoder's own verdict (does TensorFlow's JPEG decoder accept these bytes?) is passed in
as `decodes`, so this module needs no TensorFlow: the Beam job passes its scaled-down check
(preprocess/decode_check.py), predict its full decode, `--verify-images header` nothing.

Size: every picture's width and height are read from its header before anything decodes it,
and one past what the training decoders accept (core/image_fit.py: pixels, and a JPEG's
longest side) is rejected, or shrunk with `downscale`. With `shorter_side` N (`detrec
preprocess --shorter-side N`), a picture whose shorter side is over N is stored with its
shorter side N (core/image_fit.py: aspect kept, halves rounded up), re-encoded at
`resize_quality` with 4:2:0 chroma, `converted_from` "<format>-resized"; a smaller one is kept
as it is. Whatever else it needs (orientation, CMYK, another format, a colour profile, a size
over `max_pixels` with `downscale`: the smaller size wins) happens in that same re-encode, never
in two JPEG generations. Only JPEGs of the kinds every decoder here reads (8-bit baseline or
progressive Huffman) are kept as they are. Messages never quote
a file's content: the file may be anything (a link to /etc/passwd named .JPEG).

EXIF orientation: one rule for the whole product
------------------------------------------------
A camera that stores a portrait photo as landscape pixels plus an EXIF Orientation tag
relies on the viewer to turn it. Decoders disagree about that: `tf.io.decode_jpeg` ignores
the tag, DALI's decoders (and `peek_image_shape`) apply it by default, Pillow ignores it
unless asked. So the rule is: **orientation is applied once, here**. A picture whose tag is
not 1 (normal) is re-encoded upright (`ImageOps.exif_transpose`, `converted_from`
"jpeg-exif-rotated" for an otherwise good JPEG) and the record carries no tag; every reader
after this point - both training decoders, the contact sheet - decodes the stored pixels
as they are (DALI is told `adjust_orientation=False`), so even a record written before
this rule decodes identically everywhere. Predict goes through `prepare` too, so a phone
photo reaches the model upright, as the training images did.

Boxes: a record's boxes must be in the frame of its stored pixels. An annotation tool may
have shown the annotator either frame (browsers and LabelImg of the ImageNet era showed the
stored pixels; CVAT and today's browsers turn the photo), so `upright_boxes` decides from
the annotation's `<size>`: when it names the upright size and not the stored one, the
boxes are already upright; otherwise (the stored size, a square image, no `<size>`: the
ILSVRC case) they are in the stored frame and are turned with the pixels.
"""

from __future__ import annotations

import dataclasses
import io
import re
import struct
from typing import Callable

from PIL import Image, ImageOps

from detrec.core import colour, image_fit, jpeg_segments, schema
from detrec.core.errors import InputError

CONVERT_QUALITY = 95  # a conversion at the source's size: close to the source's pixels
RESIZE_QUALITY = 90  # --resize-quality's default (FFCV's): its pixels are already not the source's
# Chroma at half resolution both ways: libjpeg's default, Pillow's and OpenCV's (FFCV writes
# through OpenCV); stated, so a Pillow upgrade cannot change what a record holds.
SUBSAMPLING = "4:2:0"

_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)
# EXIF tag 0x0112: 1 normal; 2-8 mirrored and/or turned (TIFF 6.0 / Exif 2.3 numbering).
ORIENTATION_TAG = 0x0112
NORMAL = 1
_TRANSPOSING = (5, 6, 7, 8)  # the orientations that swap width and height
_EXIF_APP1 = b"Exif\x00\x00"
_ICC_APP2 = b"ICC_PROFILE\x00"
# Huffman-coded baseline, extended and progressive frames: what every decoder here reads.
_DECODED_AS_IS = {0xC0, 0xC1, 0xC2}


class ImageError(InputError):
    """An image that cannot become a record."""


@dataclasses.dataclass(frozen=True)
class JpegHeader:
    width: int
    height: int
    components: int  # 1 grey, 3 YCbCr/RGB, 4 CMYK/YCCK
    progressive: bool
    exif: bool = False  # an APP1 Exif segment precedes the frame (it may hold an orientation)
    sof: int = 0xC0  # the frame's marker: C0 baseline, C1 extended, C2 progressive, others rare
    precision: int = 8  # bits per sample; TensorFlow's and DALI's libjpeg decode 8 only
    icc: bool = False  # an APP2 ICC profile segment precedes the frame


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    """What goes into a record: JPEG bytes, their size, and what they were converted from."""

    data: bytes
    width: int  # of the stored (upright) pixels
    height: int
    converted_from: str = ""  # "" when the source's picture is kept as it is
    orientation: int = NORMAL  # the source's EXIF orientation, applied to `data` (1: none)
    original_size: tuple[int, int] = (0, 0)  # the source's own (width, height) when downscaled
    # The source's colour profile is not sRGB: its colours were converted to sRGB
    # (`converted_from` ends "-to-srgb"), or they stay in the JPEG kept as is, profile and all.
    non_srgb: bool = False

    @property
    def source_size(self) -> tuple[int, int]:
        """(width, height) of the source's own pixels, before the orientation was applied (and
        before any downscale: the frame of boxes annotated on the source)."""
        if self.original_size[0]:
            return self.original_size
        if self.orientation in _TRANSPOSING:
            return self.height, self.width
        return self.width, self.height

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) of the upright picture at the source's resolution."""
        width, height = self.source_size
        return (height, width) if self.orientation in _TRANSPOSING else (width, height)


def sniff(data: bytes) -> str | None:
    """The real format from the magic bytes (never the file name), or None."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def jpeg_header(data: bytes) -> JpegHeader:
    """Frame size and components from the SOF segment; raises ImageError when malformed."""
    exif = icc = False
    for marker, pos, _ in jpeg_segments.segments(data):
        if marker == jpeg_segments.JUNK:
            raise ImageError("corrupt_jpeg", f"corrupt JPEG header: no marker at byte {pos}")
        if marker in jpeg_segments.SOF:
            if pos + 10 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return JpegHeader(width, height, data[pos + 9], marker in jpeg_segments.PROGRESSIVE, exif, marker,
                              data[pos + 4], icc)
        if marker == jpeg_segments.SOS:  # start of scan before any frame header
            raise ImageError("corrupt_jpeg", "corrupt JPEG: scan data before a frame header")
        if marker == jpeg_segments.APP1 and data.startswith(_EXIF_APP1, pos + 4):
            exif = True
        elif marker == jpeg_segments.APP2 and data.startswith(_ICC_APP2, pos + 4):
            icc = True
    raise ImageError("truncated_image", f"truncated JPEG: no frame header in {len(data)} bytes")


def has_end_marker(data: bytes) -> bool:
    """True when the JPEG's bytes end with EOI (after zero padding, as some cameras write):
    the cheap test that every usual file passes; `jpeg_end` looks further."""
    return data.rstrip(b"\x00").endswith(b"\xff\xd9")


def jpeg_end(data: bytes) -> bytes:
    """The JPEG up to its end-of-image marker: bytes after it (a phone's or an editor's
    trailer, a newline, 0xFF padding) are no part of the picture, and every decoder stops
    at EOI. A file ending with EOI is returned as it is (module docstring).

    Raises:
      ImageError: `truncated_image` when the picture has no end-of-image marker.
    """
    if has_end_marker(data):
        return data
    end = jpeg_segments.end_of_image(data)
    if end is None:
        raise ImageError("truncated_image", f"truncated JPEG: no end-of-image marker ({len(data)} bytes)")
    return data[:end]


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of an image's bytes; 1 when there is none or it is unreadable.

    A malformed EXIF block costs its tag only: the pixels are still good, and every decoder
    downstream ignores the tag anyway.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            value = img.getexif().get(ORIENTATION_TAG, NORMAL)
    except Exception:  # Pillow raises many types on malformed EXIF/TIFF data
        return NORMAL
    return value if isinstance(value, int) and 1 <= value <= 8 else NORMAL


def _to_rgb_jpeg(data: bytes, source: str, shrink_to: int | None = None, resize_to: tuple[int, int] | None = None,
                 quality: int = CONVERT_QUALITY) -> PreparedImage:
    """Re-encodes any picture Pillow reads as an upright sRGB JPEG without EXIF, its pixels as
    a viewer shows them (core/colour.py: scaled, on white, its profile applied); with
    `shrink_to`, decoded into at most that many pixels (image_fit.shrink); with `resize_to`
    ((width, height) in the source's frame), resized to exactly that size, last: in 8-bit
    sRGB, upright, on white (Pillow resizes a palette by nearest neighbour, and colours
    bleed from under transparency)."""
    kind = source.split("-", 1)[0]  # "png", "jpeg-cmyk", "jpeg-downscaled"...: the format first
    original = (0, 0)
    try:
        # Sizes past Pillow's own bomb check were checked against ours already (_fit).
        with image_fit.open_lazily(data, kind, unchecked=bool(shrink_to or resize_to)) as img:
            if shrink_to is not None:
                original = img.size
                img = image_fit.shrink(img, shrink_to)
            else:
                if resize_to is not None:
                    original = img.size
                    img.draft(img.mode, resize_to)  # a JPEG: the coarsest DCT scale still >= resize_to
                img.load()
            orientation = img.getexif().get(ORIENTATION_TAG, NORMAL)
            orientation = orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else NORMAL
            if orientation != NORMAL:
                img = ImageOps.exif_transpose(img)
            rgb, profiled = colour.to_rgb(img)
            if resize_to is not None:
                rgb = rgb.resize(resize_to[::-1] if orientation in _TRANSPOSING else resize_to,
                                 Image.Resampling.LANCZOS)
    except Image.DecompressionBombError:
        raise ImageError("image_too_large", f"{source} image: more than {image_fit.MAX_PIXELS:,} pixels") from None
    except Exception as exc:  # Pillow raises many types on malformed data; one file's problem
        raise ImageError("undecodable_image", f"{source} image does not decode: {_pillow_reason(exc)}") from None
    buf = io.BytesIO()
    try:
        rgb.save(buf, "JPEG", quality=quality, subsampling=SUBSAMPLING)  # no exif=: the tag must not travel on
    except Exception as exc:  # an encoder error is this picture's problem too
        raise ImageError("undecodable_image", f"{source} image does not encode: {_pillow_reason(exc)}") from None
    return PreparedImage(buf.getvalue(), rgb.width, rgb.height, f"{source}-to-srgb" if profiled else source,
                         orientation, original, profiled)


def _picture_size(data: bytes, kind: str) -> tuple[int, int]:
    """(width, height) from a non-JPEG picture's header, nothing decoded yet."""
    try:
        with image_fit.open_lazily(data, kind, unchecked=True) as img:
            return img.size
    except Image.DecompressionBombError as exc:  # a format read without its plugin class
        raise ImageError("image_too_large", f"{kind} image too large: {_pillow_reason(exc)}") from None
    except Exception as exc:  # Pillow raises many types on malformed headers
        raise ImageError("undecodable_image", f"{kind} image does not decode: {_pillow_reason(exc)}") from None


def _shrink_to(size: tuple[int, int], max_pixels: int, downscale: bool, kind: str) -> int | None:
    """None when a picture of `size` fits; else the pixel count to shrink it to, or (without
    `downscale`, or too large to decode even for that) ImageError `image_too_large`."""
    if image_fit.fits(*size, max_pixels):
        return None
    if not downscale:
        raise ImageError("image_too_large", f"image too large: {image_fit.excess(*size, max_pixels)}; "
                                            "--downscale would shrink it")
    if not image_fit.shrinkable(*size, kind):
        raise ImageError("image_too_large", f"image too large: {size[0]}x{size[1]} {kind}, over the "
                                            f"{image_fit.DECODE_LIMIT:,} pixels decoded to downscale")
    return max_pixels


def _fit(data: bytes, kind: str, size: tuple[int, int], max_pixels: int, downscale: bool, shorter_side: int,
         quality: int) -> Callable[[], PreparedImage] | None:
    """How a picture of `size` is made smaller, decided from its header alone: None when it is
    kept at its size, else the one re-encode that shrinks it (called after any decode check).
    Over --shorter-side: "<kind>-resized", to the shorter side or, when `max_pixels` allows
    fewer pixels still (with `downscale`), to those; over `max_pixels` alone: "<kind>-downscaled".

    Raises:
      ImageError: `image_too_large` (_shrink_to), before anything is decoded.
    """
    shrink_to = _shrink_to(size, max_pixels, downscale, kind)
    resize_to = image_fit.shorter_side_size(*size, shorter_side) if shorter_side else None
    if resize_to is not None:
        if shrink_to is not None and resize_to[0] * resize_to[1] > shrink_to:  # the smaller limit wins
            resize_to = image_fit.target_size(*size, shrink_to)
        return lambda: _to_rgb_jpeg(data, f"{kind}-resized", resize_to=resize_to, quality=quality)
    if shrink_to is not None:
        return lambda: _to_rgb_jpeg(data, f"{kind}-downscaled", shrink_to)
    return None


def _pillow_reason(exc: Exception) -> str:
    """Pillow's message when it is plain words and numbers, else the exception's type: some
    messages quote bytes of the file (`broken PNG file (chunk b'...')`), and no content of an
    input may reach an error line."""
    text = str(exc)
    return text if _PLAIN.fullmatch(text) else type(exc).__name__


_PLAIN = re.compile(r"[A-Za-z0-9 ,.;:()/_-]{1,120}")


def upright_point(x: float, y: float, orientation: int) -> tuple[float, float]:
    """A point (normalised to the source's own pixels) in the upright image's frame."""
    return {
        1: (x, y),
        2: (1.0 - x, y),            # mirrored left-right
        3: (1.0 - x, 1.0 - y),      # turned 180
        4: (x, 1.0 - y),            # mirrored top-bottom
        5: (y, x),                  # transposed
        6: (1.0 - y, x),            # shown turned 90 clockwise
        7: (1.0 - y, 1.0 - x),      # transversed
        8: (y, 1.0 - x),            # shown turned 90 counter-clockwise
    }[orientation]


def boxes_are_upright(image: PreparedImage, annotated_size: tuple[int, int] | None) -> bool:
    """Whether boxes annotated on a `annotated_size` (width, height) frame are already upright.

    Only an annotation whose `<size>` names the upright size and not the source's says so;
    anything else (the source's size, a square image, no size) means the stored frame.
    """
    if image.orientation == NORMAL:
        return True
    if not annotated_size or not all(annotated_size):
        return False
    upright = image.upright_size
    return tuple(annotated_size) == upright and upright != image.source_size


def upright_boxes(boxes: tuple[schema.Box, ...], image: PreparedImage,
                  annotated_size: tuple[int, int] | None = None) -> tuple[schema.Box, ...]:
    """`boxes` (normalised) moved with the pixels `prepare` turned upright; see the module docstring.

    Args:
      boxes: normalised to the annotated frame, as the annotation parser made them.
      image: what `prepare` returned for the box's image.
      annotated_size: the annotation's `<size>` (width, height), None or zeros when absent.
    """
    if boxes_are_upright(image, annotated_size):
        return tuple(boxes)
    out = []
    for box in boxes:
        (x0, y0), (x1, y1) = (upright_point(box.xmin, box.ymin, image.orientation),
                              upright_point(box.xmax, box.ymax, image.orientation))
        out.append(dataclasses.replace(box, xmin=min(x0, x1), ymin=min(y0, y1), xmax=max(x0, x1),
                                       ymax=max(y0, y1)))
    return tuple(out)


def reframed(converted_from: str) -> bool:
    """Whether a record's pixels are in another frame than its source file's (turned upright,
    downscaled or resized), so that a box on them is not one on the source: what `converted_from`
    names. (A CMYK or non-JPEG source turned upright is not named so: its record says only that
    it was converted.)"""
    return any(kind in converted_from for kind in ("-exif-rotated", "-downscaled", "-resized"))


def prepare(data: bytes, decodes: Callable[[bytes], bool] | None = None, max_pixels: int = image_fit.MAX_PIXELS,
            downscale: bool = False, shorter_side: int = 0, resize_quality: int = RESIZE_QUALITY) -> PreparedImage:
    """Checks an image and returns the JPEG bytes to store.

    A picture with an EXIF orientation other than 1 comes back re-encoded upright (see the
    module docstring); `orientation` says which one was applied, so its boxes can follow.
    Its size is read from the header before any decode: past `max_pixels` (or a JPEG's
    longest side) it is rejected, or with `downscale` decoded smaller and re-encoded
    (`converted_from` "<format>-downscaled", `original_size` the source's size). With
    `shorter_side`, a larger picture is resized (module docstring; "<format>-resized").

    Args:
      data: the source file's bytes.
      decodes: whether the training decoder accepts a well-formed JPEG (called on every
        standard 1- or 3-channel JPEG); it may raise ImageError to reject the file outright
        (preprocess's check does, for a premature end of JPEG data). None trusts a
        well-formed header plus end marker.
      max_pixels: the most pixels a stored picture may have (image_fit.MAX_PIXELS: what
        the training decoders accept).
      downscale: shrink a larger picture to fit instead of rejecting it.
      shorter_side: store a picture whose shorter side is longer with that shorter side (0: never).
      resize_quality: the JPEG quality of a picture resized to `shorter_side`.

    Raises:
      ImageError: empty, truncated, undecodable, too large or not an image at all.
    """
    if not data:
        raise ImageError("empty_file", "empty file (0 bytes)")
    kind = sniff(data)
    if kind is None:
        # The content itself never goes into the message: the file may be anything.
        raise ImageError("not_an_image", "not an image (no JPEG, PNG, GIF, BMP, TIFF or WebP signature)")
    if kind != "jpeg":
        smaller = _fit(data, kind, _picture_size(data, kind), max_pixels, downscale, shorter_side, resize_quality)
        return smaller() if smaller else _to_rgb_jpeg(data, kind)
    header = jpeg_header(data)
    data = jpeg_end(data)
    smaller = _fit(data, kind, (header.width, header.height), max_pixels, downscale, shorter_side, resize_quality)
    standard = header.sof in _DECODED_AS_IS and header.precision == 8 and header.components in (1, 3)
    decoded = decodes is None or not standard or decodes(data)  # before any conversion: it may reject
    if smaller:
        return smaller()
    if header.components == 4:
        return _to_rgb_jpeg(data, "jpeg-cmyk")
    if header.components not in (1, 3) or header.width == 0 or header.height == 0:
        return _to_rgb_jpeg(data, f"jpeg-{header.components}ch")
    if not standard:
        # Lossless, hierarchical, arithmetic-coded or 12-bit: the training decoders may not
        # read it even when a header check passes, so Pillow re-encodes it (or rejects it).
        return _to_rgb_jpeg(data, f"jpeg-sof{header.sof - 0xC0}-{header.precision}bit")
    if header.exif and exif_orientation(data) != NORMAL:
        return _to_rgb_jpeg(data, "jpeg-exif-rotated")
    if not decoded:
        # Pillow is more lenient than TensorFlow (e.g. some corrupt-but-complete streams);
        # whatever it can still decode is re-encoded, the rest is rejected.
        return _to_rgb_jpeg(data, "jpeg-undecodable-by-tf")
    return PreparedImage(data, header.width, header.height, non_srgb=header.icc and _other_profile(data))


def _other_profile(data: bytes) -> bool:
    """Whether a JPEG kept as is carries a colour profile other than sRGB (for the count in
    dataset_info.json; the bytes stay as they are, profile and all)."""
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as img:
            return colour.other_than_srgb(img.info.get("icc_profile"), img.mode)
    except Exception:  # a header Pillow cannot read: the profile is unreadable, as decoders find it
        return False
