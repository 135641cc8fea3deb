"""Shared fixtures: a small synthetic ILSVRC tree and the shards preprocess makes of it.

Generated once per session in tmp dirs (nothing downloaded, nothing checked in but the golden
record), the TFDS fake-data way.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from preprocess import synth  # noqa: E402

SHARED_SAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "samples")

# Small but real: 500x375-like JPEGs scaled down so the whole suite stays fast on 2 cores.
TINY = dict(train=96, val=32, classes=5, seed=7, width=160, height=120)


@pytest.fixture(scope="session")
def synth_tree(tmp_path_factory) -> str:
    """Path of a synthetic tree's ILSVRC folder (holds Annotations/ and Data/)."""
    out = tmp_path_factory.mktemp("synth")
    result = synth.generate(synth.SynthConfig(out=str(out), **TINY))
    return result["root"]
