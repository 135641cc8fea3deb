"""Crash safety of training, at moments the tests choose (core/crashpoints.py): the process
dies right after a step or between a checkpoint's files and its index, and the rerun of the
same command ends exactly where an uninterrupted run ends - with the tf.data decoder and
with DALI (CPU mode here), whose order and augmentation are pure functions of (seed, epoch,
position). (The real-SIGKILL test is in test_train.py.)"""

from __future__ import annotations


import pytest

from detrec.core import crashpoints
from detrec.train import rundir
from tests.test_train import STEPS, metrics, spawn

FLAGS = ("--epochs", "2", "--checkpoint-every", "3")
DECODER_FLAGS = {"cpu": (), "dali": ("--decoder", "dali", "--record-keys")}
KEYS = ("train_loss", "train_accuracy", "val_loss", "val_top1")


@pytest.fixture(scope="module")
def references(dataset_dir, tmp_path_factory):
    """decoder -> (model dir, metrics) of an uninterrupted run, made on first use."""
    made: dict[str, tuple[str, dict]] = {}

    def get(decoder: str) -> tuple[str, dict]:
        if decoder not in made:
            model_dir = str(tmp_path_factory.mktemp(f"reference-{decoder}") / "run")
            proc = spawn(dataset_dir, model_dir, model_dir + ".log", *FLAGS, *DECODER_FLAGS[decoder])
            assert proc.wait(timeout=600) == 0, open(model_dir + ".log").read()[-2000:]
            made[decoder] = (model_dir, metrics(model_dir))
        return made[decoder]

    return get


def recorded_keys(model_dir: str, epoch: int) -> list[str]:
    with open(rundir.keys_path(model_dir, epoch, 0)) as f:
        return f.read().split()


@pytest.mark.slow  # two short training runs per point
@pytest.mark.parametrize("decoder, point", [("cpu", "step:2"), ("cpu", "checkpoint-write:1"),
                                            ("cpu", "checkpoint-write:3"), ("dali", "step:5")])
def test_a_crash_at_a_chosen_point_then_rerun_matches_an_uninterrupted_run(dataset_dir, references, tmp_path,
                                                                           decoder, point, monkeypatch):
    """Before any checkpoint, during the first checkpoint (files written, not yet indexed),
    during a later checkpoint (the one before it restores), and mid-epoch after a checkpoint
    with DALI (resumed at step 3 of an epoch: the stream rebuilt, 3 batches skipped). Which
    batches a resume skips, in either epoch, is pinned in the fast loop by
    tests/test_train_resume.py."""
    model_dir, log = str(tmp_path / "run"), str(tmp_path / "run.log")
    flags = (*FLAGS, *DECODER_FLAGS[decoder])
    monkeypatch.setenv(crashpoints.ENV, point)
    proc = spawn(dataset_dir, model_dir, log, *flags)
    assert proc.wait(timeout=600) == crashpoints.CRASH_EXIT, open(log).read()[-2000:]
    monkeypatch.delenv(crashpoints.ENV)
    proc = spawn(dataset_dir, model_dir, log, *flags)
    assert proc.wait(timeout=600) == 0, open(log).read()[-2000:]
    reference_dir, reference = references(decoder)
    got = metrics(model_dir)
    assert got["total_steps"] == reference["total_steps"] == 2 * STEPS
    assert [e["steps"] for e in got["epochs"]] == [STEPS, STEPS]
    for key in KEYS:  # the same examples in the same order after the resume
        assert [e[key] for e in got["epochs"]] == [e[key] for e in reference["epochs"]], key
    if decoder == "dali":  # and the resumed epoch's examples, in order, are the uninterrupted run's
        if point.startswith("step"):  # resumed mid-epoch, 3 batches in
            assert "skipping the 3 batches of epoch" in open(log).read()
        for epoch in (1, 2):
            assert recorded_keys(model_dir, epoch) == recorded_keys(reference_dir, epoch)
