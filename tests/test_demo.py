"""`make demo`'s driver end to end at a tiny size: every stage through the public CLI, the
report it prints, and a second run that reuses what the first made."""

from __future__ import annotations

import json
import os

import pytest

from detrec.pipelines import demo


@pytest.mark.slow  # ~1 min on 2 cores: a Beam job, a training run and predict, twice
def test_the_demo_runs_every_stage_and_reruns(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["--out", str(out), "--train", "24", "--val", "8", "--classes", "3", "--epochs", "1",
            "--image-size", "64", "--batch-size", "8"]
    assert demo.main(args) == 0
    printed = capsys.readouterr().out
    for stage in ("1/5 synth", "2/5 preprocess", "3/5 inspect", "4/5 train", "5/5 predict", "=== report ==="):
        assert stage in printed, stage
    assert (out / "contact_sheet.png").stat().st_size > 0
    assert (out / "model" / "export" / "model.keras").is_file()
    with open(out / "shards" / "dataset_info.json") as f:
        info = json.load(f)
    assert {s: e["num_examples"] for s, e in info["splits"].items()} == {"train": 24, "val": 8}
    with open(out / "model" / "metrics.json") as f:
        assert len(json.load(f)["epochs"]) == 1

    assert demo.main(args) == 0  # idempotent: the tree is reused, the dataset rewritten in place
    again = capsys.readouterr().out
    assert "reusing" in again and "=== report ===" in again
    assert sorted(os.listdir(out)) == ["contact_sheet.png", "model", "shards", "source"]
