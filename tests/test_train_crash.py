"""Crash safety of training, at moments the tests choose (core/crashpoints.py): the process
dies right after a step or between a checkpoint's files and its index, and the rerun of the
same command ends exactly where an uninterrupted run ends. (The real-SIGKILL test is in
test_train.py.)"""

from __future__ import annotations

import pytest

from detrec.core import crashpoints
from tests.test_train import STEPS, metrics, spawn

FLAGS = ("--epochs", "2", "--checkpoint-every", "3")
KEYS = ("train_loss", "train_accuracy", "val_loss", "val_top1")


@pytest.fixture(scope="module")
def reference(dataset_dir, tmp_path_factory) -> dict:
    model_dir = str(tmp_path_factory.mktemp("reference") / "run")
    proc = spawn(dataset_dir, model_dir, model_dir + ".log", *FLAGS)
    assert proc.wait(timeout=600) == 0
    return metrics(model_dir)


@pytest.mark.slow  # two short training runs per point
@pytest.mark.parametrize("point", ["step:2", "checkpoint-write:1", "step:14", "checkpoint-write:3"])
def test_a_crash_at_a_chosen_point_then_rerun_matches_an_uninterrupted_run(dataset_dir, reference, tmp_path,
                                                                           point, monkeypatch):
    """Before any checkpoint, during the first checkpoint (files written, not yet indexed),
    in the second epoch, and during a later checkpoint."""
    model_dir, log = str(tmp_path / "run"), str(tmp_path / "run.log")
    monkeypatch.setenv(crashpoints.ENV, point)
    proc = spawn(dataset_dir, model_dir, log, *FLAGS)
    assert proc.wait(timeout=600) == crashpoints.CRASH_EXIT, open(log).read()[-2000:]
    monkeypatch.delenv(crashpoints.ENV)
    proc = spawn(dataset_dir, model_dir, log, *FLAGS)
    assert proc.wait(timeout=600) == 0, open(log).read()[-2000:]
    got = metrics(model_dir)
    assert got["total_steps"] == reference["total_steps"] == 2 * STEPS
    assert [e["steps"] for e in got["epochs"]] == [STEPS, STEPS]
    for key in KEYS:  # the same examples in the same order after the resume
        assert [e[key] for e in got["epochs"]] == [e[key] for e in reference["epochs"]], key
