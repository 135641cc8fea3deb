"""Shared fixtures: a small synthetic ILSVRC tree and the shards preprocess makes of it.

Generated once per session in tmp dirs (nothing downloaded, nothing checked in but the golden
record), the TFDS fake-data way.
"""

from __future__ import annotations

import hashlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from detrec.preprocess import synth  # noqa: E402

# Real-format annotation files (see samples/README.md): inside tests/, so a bare clone passes.
SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")

# Small but real: 500x375-like JPEGs scaled down so the whole suite stays fast on 2 cores.
TINY = dict(train=96, val=32, classes=5, seed=7, width=160, height=120)


@pytest.fixture(scope="session")
def synth_tree(tmp_path_factory) -> str:
    """Path of a synthetic tree's ILSVRC folder (holds Annotations/ and Data/)."""
    out = tmp_path_factory.mktemp("synth")
    result = synth.generate(synth.SynthConfig(out=str(out), **TINY))
    return result["root"]


def file_digest(path: str) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file."""
    with open(path, "rb") as f:
        data = f.read()
    return len(data), hashlib.sha256(data).hexdigest()


def run_preprocess(input_root: str, output: str, *extra: str) -> int:
    """`detrec preprocess` in-process on the fast single-process DirectRunner."""
    from detrec.pipelines import cli

    return cli.main(["preprocess", "--input", input_root, "--output", output,
                     "--direct_num_workers=1", "--direct_running_mode=in_memory", *extra])


@pytest.fixture(scope="session")
def dataset_dir(synth_tree, tmp_path_factory) -> str:
    """A finished dataset made by the real preprocess job from `synth_tree`:
    train (4 shards) and val (2 shards), 5 classes + background, real synset names."""
    out = str(tmp_path_factory.mktemp("dataset"))
    synset_map = os.path.join(synth_tree, "devkit", "data", "map_det.txt")
    assert run_preprocess(synth_tree, out, "--num-shards", "train=4,val=2", "--synset-map", synset_map) == 0
    return out
