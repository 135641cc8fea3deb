"""`make demo`'s driver end to end at a tiny size: every stage through the public CLI, the
report it prints, and a second run that reuses what the first made."""

from __future__ import annotations

import json
import os

import pytest

from detrec.pipelines import demo


@pytest.mark.slow  # ~1 min on 2 cores: a Beam job, a training run, predict and score, twice
def test_the_demo_runs_every_stage_and_reruns(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["--out", str(out), "--train", "24", "--val", "8", "--classes", "3", "--epochs", "1",
            "--image-size", "64", "--batch-size", "8"]
    assert demo.main(args) == 0
    printed = capsys.readouterr().out
    for stage in ("1/7 synth", "2/7 preprocess", "3/7 inspect", "4/7 train", "5/7 predict", "6/7 predict",
                  "7/7 score", "=== report ==="):
        assert stage in printed, stage
    # the trainer's figure and the scorer's, from the CSV files alone, agree
    with open(out / "model" / "export" / "labels.json") as f:
        best = json.load(f)["epoch"]
    with open(out / "model" / "metrics.json") as f:
        trained = json.load(f)["epochs"][best - 1]["val_top5_loc_error"]
    scored = float(printed.split("top-5 localization error: ")[1].split()[0])
    assert scored == pytest.approx(trained, abs=0.01)
    assert len(os.listdir(out / "predictions")) == 4  # four val images, their boxes drawn
    with open(out / "val_submission.csv") as f:
        assert len(f.read().splitlines()) == 1 + 8
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
    assert sorted(os.listdir(out)) == ["contact_sheet.png", "model", "predictions", "shards", "source",
                                       "val_submission.csv"]
