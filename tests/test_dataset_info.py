"""dataset_info.json's label-origin fields: typed, validated, and absent from older files."""

from __future__ import annotations

import json

import pytest

from detrec.core import dataset_info
from detrec.core.dataset_info import ClassInfo, DatasetInfo, ShardInfo, SplitInfo
from detrec.core.errors import UserError


def _info() -> DatasetInfo:
    split = SplitInfo(num_examples=3, shards=(ShardInfo("train-00000-of-00001.tfrecord", 3, 10, "ab"),),
                      label_sources={"folder": 3}, box_sources={"none": 2, "xml": 1}, label_mismatches=1)
    return DatasetInfo(num_classes=2, classes=(ClassInfo(0, "background", "background"), ClassInfo(1, "cat", "cat")),
                       splits={"train": split}, layout="folder", classes_from="class folders of /t/train")


def test_round_trip_keeps_label_origins():
    info = _info()
    assert DatasetInfo.from_json(info.to_json()) == info


def test_a_file_written_before_label_origins_loads_with_them_empty():
    raw = json.loads(_info().to_json())
    del raw["classes_from"]
    for key in ("label_sources", "box_sources", "label_mismatches"):
        del raw["splits"]["train"][key]
    info = DatasetInfo.from_json(json.dumps(raw))
    split = info.splits["train"]
    assert (dict(split.label_sources), dict(split.box_sources), split.label_mismatches) == ({}, {}, 0)
    assert info.classes_from == ""


@pytest.mark.parametrize("key, value, message", [
    ("label_sources", {"folder": -1}, "`label_sources`: `folder` is negative"),
    ("label_sources", {"folder": "3"}, "`folder` is not a number"),
    ("box_sources", [1], "`box_sources` is not an object"),
    ("label_mismatches", True, "`label_mismatches` is not a number"),
])
def test_malformed_label_origins_are_named(key, value, message):
    raw = json.loads(_info().to_json())
    raw["splits"]["train"][key] = value
    with pytest.raises(UserError, match=message):
        DatasetInfo.from_json(json.dumps(raw), "x/dataset_info.json")


def test_load_reads_them_from_a_folder(tmp_path):
    (tmp_path / "dataset_info.json").write_text(_info().to_json())
    assert dataset_info.load(str(tmp_path)).splits["train"].box_sources == {"none": 2, "xml": 1}


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a":' * 100_000])
def test_json_nested_too_deep_is_one_line(text):
    """json.loads recurses per level: a hostile file must not escape as RecursionError."""
    with pytest.raises(UserError, match=r"^x/dataset_info.json: not valid JSON \(maximum recursion depth"):
        DatasetInfo.from_json(text, "x/dataset_info.json")
