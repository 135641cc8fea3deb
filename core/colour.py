"""Any picture Pillow opens, as the 8-bit sRGB pixels a colour-managed viewer shows: what
core.images re-encodes (another format, CMYK, an EXIF rotation, --downscale). Pillow only.

`convert("RGB")` alone gets three things wrong, each fixed here:

* Depth. Pillow clips deep grey pixels to 0..255 when it converts them, so a 16-bit PNG came
  out solid white. They are scaled instead: `I;16*` from 0..65535; `I` (32-bit) and `F`
  (float) carry no range of their own, so the first of 0..1 (floats only), 0..255 and
  0..65535 that holds the picture's values is taken, else its own min..max. Pillow itself
  reads 16-bit RGB, RGBA and grey+alpha PNGs into 8-bit modes, keeping each sample's high
  byte (at most one level under round(v / 257)), so those arrive scaled already.
* Transparency (an alpha channel, a palette's transparent entries, a PNG's transparent
  colour) is composited on white, after the colours are converted (as a browser puts a
  picture on its page); dropping it shows whatever colour transparent pixels hold.
* Colour profiles. TensorFlow's and DALI's decoders ignore ICC profiles and take every pixel
  as sRGB, so carrying a profile over would keep the colours only for the rare reader that
  applies it: pixels are converted to sRGB instead (littlecms, the profile's own rendering
  intent), and the re-encoded JPEG carries no profile, meaning sRGB to every reader. A profile
  through which no colour moves by more than `_SAME` levels is sRGB under another name and
  changes nothing; one that cannot be read, or is for another colour space than the pixels',
  is ignored, as browsers do.
"""

from __future__ import annotations

import functools
import io

import numpy as np
from PIL import Image, ImageCms

_DEEP = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_BAND = 512  # rows of a deep picture scaled at a time: memory stays near the 8-bit result's
_WHITE = 255
# Pillow's mode -> the ICC colour space a profile for its pixels names.
_SPACES = {"RGB": "RGB ", "L": "GRAY", "CMYK": "CMYK", "LAB": "Lab "}
_SAME = 2  # levels: a profile that moves no colour further than this is sRGB
_SRGB = ImageCms.createProfile("sRGB")


def to_rgb(img: Image.Image) -> tuple[Image.Image, bool]:
    """`img`'s pixels in 8-bit sRGB, on white where transparent, and whether its colour
    profile (one that is not sRGB) was applied."""
    icc = img.info.get("icc_profile")
    colours, alpha = _split(_eight_bit(img))
    transform = _to_srgb(icc, colours.mode) if icc else None
    rgb = colours.convert("RGB") if transform is None else ImageCms.applyTransform(colours, transform)
    if alpha is not None:  # composited in sRGB, as a browser puts a picture on its page
        flat = Image.new("RGB", rgb.size, (_WHITE,) * 3)
        flat.paste(rgb, mask=alpha)
        rgb = flat
    return rgb, transform is not None


def other_than_srgb(icc: bytes | None, mode: str) -> bool:
    """Whether a profile, attached to pixels of `mode`, gives them colours other than sRGB's."""
    return bool(icc) and _to_srgb(icc, _base_mode(mode)) is not None


def _eight_bit(img: Image.Image) -> Image.Image:
    """A deep (16-bit, 32-bit, float) grey picture scaled to L (LA when it has a transparent value)."""
    if img.mode not in _DEEP:
        return img
    lo, hi = (0.0, 65535.0) if img.mode.startswith("I;16") else _range(img)
    width, height = img.size
    grey = np.empty((height, width), np.uint8)
    transparent = img.info.get("transparency")
    alpha = np.full((height, width), _WHITE, np.uint8) if isinstance(transparent, (int, float)) else None
    for top, band in _bands(img):
        grey[top:top + len(band)] = np.rint((np.nan_to_num(band, nan=lo) - lo) * (_WHITE / (hi - lo))).clip(0, _WHITE)
        if alpha is not None:
            alpha[top:top + len(band)][band == transparent] = 0
    out = Image.fromarray(grey)
    return out if alpha is None else Image.merge("LA", (out, Image.fromarray(alpha)))


def _bands(img: Image.Image):
    """(first row, rows as a float array) over a deep picture, _BAND rows at a time."""
    width, height = img.size
    for top in range(0, height, _BAND):
        yield top, np.asarray(img.crop((0, top, width, min(height, top + _BAND)))).astype(np.float64)


def _range(img: Image.Image) -> tuple[float, float]:
    """The values an `I` or `F` picture's darkest and brightest pixels stand for (module docstring)."""
    lo, hi = np.inf, -np.inf
    for _, band in _bands(img):
        finite = band[np.isfinite(band)]
        if finite.size:
            lo, hi = min(lo, finite.min()), max(hi, finite.max())
    if lo > hi:  # no finite value at all
        return 0.0, 1.0
    if lo >= 0:
        for top in ((1.0,) if img.mode == "F" else ()) + (255.0, 65535.0):
            if hi <= top:
                return 0.0, top
    return lo, max(hi, lo + 1)


def _split(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """The colours (in L, RGB, CMYK or LAB: what a profile describes) and the opacity (None
    when there is no transparency: an alpha channel, a palette's or a PNG's transparent value)."""
    if not img.has_transparency_data:
        return (img if img.mode in _SPACES else img.convert(_base_mode(img.mode))), None
    grey = img.mode in ("1", "L", "LA", "La")
    layered = img.convert("LA" if grey else "RGBA")
    return layered.convert("L" if grey else "RGB"), layered.getchannel("A")


def _base_mode(mode: str) -> str:
    """The mode a picture's colours are in once opaque: what its profile must describe."""
    if mode in _SPACES:
        return mode
    return "L" if mode in ("1", "LA", "La") or mode in _DEEP else "RGB"


@functools.lru_cache(maxsize=16)  # a few profiles serve most pictures; bounded, so memory stays flat
def _to_srgb(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """The transform from a profile to sRGB for `mode` pixels; None when it would change
    nothing: the profile is sRGB, unreadable, or for another colour space."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if profile.profile.xcolor_space != _SPACES.get(mode):
            return None
        # NOCACHE: the transform is shared by a shard writer's threads, and littlecms's
        # one-pixel cache is per transform.
        transform = ImageCms.buildTransform(profile, _SRGB, mode, "RGB", ImageCms.getDefaultIntent(profile),
                                            flags=ImageCms.Flags.NOCACHE)
        probe = _probe(mode)
        moved = np.abs(np.asarray(ImageCms.applyTransform(probe, transform), np.int16)
                       - np.asarray(probe.convert("RGB"), np.int16))
    except Exception:  # littlecms and Pillow reject a malformed profile with several types: it costs the profile only
        return None
    return transform if moved.max() > _SAME else None


@functools.cache
def _probe(mode: str) -> Image.Image:
    """Colours spread over a mode's whole range (a grid of 8 steps per channel)."""
    steps = np.linspace(0, 255, 8).round().astype(np.uint8)
    channels = len(mode) if mode != "LAB" else 3
    grid = np.stack(np.meshgrid(*[steps] * channels, indexing="ij"), -1).reshape(1, -1, channels)
    return Image.fromarray(grid[..., 0]) if mode == "L" else Image.frombytes(mode, (grid.shape[1], 1), grid.tobytes())
