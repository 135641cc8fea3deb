"""Golden output: a fixed tree in the DET, folder and VOC layouts (tests/golden_tree.py) must
convert to exactly the files, record order, labels, errors and dataset_info checked into
tests/golden/trees/. Every other shard comparison in the suite compares two runs of one build;
this one catches a change to hashing, dealing, encoding or metadata that both runs would share.

A deliberate format change regenerates the files in the same commit, with a line in the README's
changelog:  DETREC_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py
"""

from __future__ import annotations

import json
import os

import pytest

from tests import golden_tree
from tests.conftest import run_preprocess

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "trees")
UPDATE = os.environ.get("DETREC_UPDATE_GOLDEN") == "1"


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, str]:
    return golden_tree.build(str(tmp_path_factory.mktemp("golden")))


def diff(got: dict, want: dict, where: str = "") -> list[str]:
    """The paths at which two fingerprints differ (the first few), to say what changed."""
    if isinstance(got, dict) and isinstance(want, dict):
        return [d for key in sorted(set(got) | set(want), key=str)
                for d in diff(got.get(key), want.get(key), f"{where}/{key}")]
    return [] if got == want else [f"{where}: {json.dumps(got)[:160]} != golden {json.dumps(want)[:160]}"]


@pytest.mark.parametrize("layout", golden_tree.LAYOUTS)
def test_the_golden_tree_converts_to_the_golden_output(layout, trees, tmp_path):
    out = str(tmp_path / "out")
    assert run_preprocess(trees[layout], out, "--layout", layout, "--num-shards", golden_tree.SHARDS) == 0
    got = golden_tree.fingerprint(out, trees[layout])
    path = os.path.join(GOLDEN, f"{layout}.json")
    if UPDATE:
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(got, f, indent=1, sort_keys=True)
            f.write("\n")
    with open(path, encoding="utf-8") as f:
        want = json.load(f)
    assert got == want, "output differs from tests/golden/trees:\n" + "\n".join(diff(got, want)[:12])


def test_the_golden_trees_hold_the_quirks_they_are_for():
    """The golden files themselves cover what they are meant to: several shards per split, both
    splits, converted images, rejected inputs of several kinds, a background image."""
    for layout in golden_tree.LAYOUTS:
        with open(os.path.join(GOLDEN, f"{layout}.json"), encoding="utf-8") as f:
            golden = json.load(f)
        splits = golden["dataset_info"]["splits"]
        assert len(splits["train"]["shards"]) == 3 and len(splits["val"]["shards"]) == 2, layout
        assert splits["train"]["converted_images"] >= 1, layout
        assert len({e["code"] for e in golden["errors"]["errors-train.jsonl"]}) >= 2, layout
        records = [source_id for rs in golden["records"].values() for source_id, _ in rs]
        assert len(records) == len(set(records)) == sum(s["num_examples"] for s in splits.values()), layout
    with open(os.path.join(GOLDEN, "det.json"), encoding="utf-8") as f:
        det = json.load(f)
    assert any(label == 0 for rs in det["records"].values() for _, label in rs)  # a background image
