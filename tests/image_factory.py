"""Real image bytes of every kind the preprocess job must survive (made with Pillow)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def picture(w: int = 64, h: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def encode(array: np.ndarray, fmt: str = "JPEG", mode: str | None = None, **kwargs) -> bytes:
    img = Image.fromarray(array)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def jpeg(w: int = 64, h: int = 48, seed: int = 0) -> bytes:
    return encode(picture(w, h, seed), quality=90)


def cmyk_jpeg(w: int = 64, h: int = 48) -> bytes:
    return encode(picture(w, h), mode="CMYK", quality=90)


def gray_jpeg(w: int = 64, h: int = 48) -> bytes:
    return encode(picture(w, h), mode="L", quality=90)


def png(w: int = 64, h: int = 48) -> bytes:
    return encode(picture(w, h), "PNG")


def truncated_jpeg(w: int = 64, h: int = 48) -> bytes:
    data = jpeg(w, h)
    return data[: len(data) * 2 // 3]


HTML = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body>gone</body></html>"
