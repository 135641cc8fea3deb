"""Records of the new sources (COCO, Open Images: crowd boxes, the `json` label source) go where
every record goes (#23): both input lines read every one, with its label and boxes (DALI's
CPU mode here), and `detrec inspect --verify` and its contact sheet take them."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from detrec.pipelines import cli
from tests.conftest import run_preprocess
from tests.test_input import epoch, records_by_key
from tests.test_source_coco import coco_tree  # noqa: F401 - the fixture
from tests.test_source_open_images import oi_tree  # noqa: F401 - the fixture


@pytest.fixture(scope="module", params=["coco", "open-images"])
def converted(request, tmp_path_factory) -> str:
    root, _ = request.getfixturevalue("coco_tree" if request.param == "coco" else "oi_tree")
    out = str(tmp_path_factory.mktemp(request.param) / "out")
    assert run_preprocess(root, out, "--splits", "train") == 0
    return out


@pytest.mark.parametrize("decoder", ["cpu", pytest.param("dali", marks=pytest.mark.dali)])
def test_both_input_lines_read_every_record_with_its_label_and_boxes(converted, decoder):
    expected = records_by_key(converted, "train")
    assert any(b.is_crowd for r in expected.values() for b in r.objects)  # the case at hand
    rows = epoch(converted, "train", decoder=decoder, with_boxes=True)
    got = {row[-1]: row for row in rows}
    assert sorted(got) == sorted(expected)  # every record once
    for key, (_, label, boxes, box_labels, _) in got.items():
        record, n = expected[key], len(expected[key].objects)
        assert label == record.class_label
        assert list(box_labels[:n]) == [b.label for b in record.objects] and not box_labels[n:].any()
        want = np.array([(b.ymin, b.xmin, b.ymax, b.xmax) for b in record.objects]).reshape(n, 4)
        assert np.allclose(boxes[:n], want, atol=1e-6)


def test_inspect_verifies_them_and_draws_their_boxes(converted, tmp_path, capsys):
    sheet = str(tmp_path / "sheet.png")
    assert cli.main(["inspect", converted, "--verify", "--json", "--contact-sheet", sheet]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["problems"] == [] and os.path.getsize(sheet) > 0
