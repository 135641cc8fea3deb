"""`--verify-images full` asks TensorFlow only about JPEGs libjpeg does not decode cleanly:
its verdict must still be TensorFlow's on every file (preprocess/decode_check.py)."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import tensorflow as tf

from detrec.core.images import ImageError
from detrec.preprocess import decode_check
from tests import image_factory as f

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _verdict(check, data: bytes) -> str:
    try:
        return "accepted" if check(data) else "refused"
    except ImageError as exc:
        return exc.code


def _tf_accepts(data: bytes) -> bool:
    try:
        tf.io.decode_jpeg(data, channels=3)
        return True
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError):
        return False


def _damaged(data: bytes, rng: random.Random) -> bytes:
    """One random injury anywhere past the start marker: bytes overwritten, a bit flipped, the
    file cut and given back its end marker, bytes inserted or removed."""
    d, pos = bytearray(data), rng.randrange(2, len(data))
    kind = rng.randrange(5)
    if kind == 0:
        d[pos] = rng.randrange(256)
    elif kind == 1:
        d[pos] ^= 1 << rng.randrange(8)
    elif kind == 2:
        return bytes(d[:pos]) + b"\xff\xd9"
    elif kind == 3:
        d[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:
        del d[pos:pos + rng.randint(1, 400)]
    return bytes(d)


SOURCES = {
    "baseline": f.encode(f.picture(160, 120), quality=90),
    "progressive": f.encode(f.picture(160, 120, seed=1), quality=80, progressive=True),
    "grey": f.encode(f.picture(96, 72, seed=2), mode="L", quality=90),
    "4:4:4": f.encode(f.picture(120, 90, seed=3), quality=70, subsampling=0),
    "tiny": f.encode(f.picture(9, 7, seed=4), quality=90),
}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_the_verdict_is_tensorflows_on_damaged_jpegs(source):
    """Clean libjpeg decodes are taken as TensorFlow's yes; everything else is asked of it:
    on every variant the fast check and TensorFlow's own check agree, and a clean decode is
    never a file TensorFlow refuses. (Taking every strict failure as a no, or every decode
    as a yes, fails here: both kinds of disagreement occur in these variants.)"""
    rng = random.Random(source)
    clean = asked = 0
    for _ in range(120):
        data = _damaged(SOURCES[source], rng)
        assert _verdict(decode_check.decodes, data) == _verdict(decode_check.tf_decodes, data)
        if decode_check.decodes_cleanly(data):
            assert _tf_accepts(data)
            clean += 1
        else:
            asked += 1
    assert clean and asked


def test_strict_failures_tensorflow_accepts_are_accepted():
    """Bytes slipped in before the end marker: libjpeg warns ("extraneous bytes"), TensorFlow
    decodes; so the check asks TensorFlow and keeps the file."""
    data = f.jpeg(64, 48)
    warned = data[:-2] + b"\x12\x34\x56" + data[-2:]
    assert not decode_check.decodes_cleanly(warned)
    assert _tf_accepts(warned) and decode_check.decodes(warned)


def test_tensorflow_is_imported_only_for_a_file_libjpeg_warns_about():
    code = ("import sys; from detrec.preprocess import decode_check; from tests import image_factory as f\n"
            "data = f.jpeg(64, 48); assert decode_check.decodes(data)\n"
            "print('tensorflow' in sys.modules)\n"
            "assert decode_check.decodes(data[:-2] + b'\\x12\\x34\\x56' + data[-2:])\n"
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True"]
