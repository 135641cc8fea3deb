"""`--output`: detrec writes only into a new or empty folder, one of its own datasets, or
what an interrupted run of its own left; it deletes and replaces only files it wrote; a rerun
of some splits leaves one whole dataset; the machine's I/O failures are one line, exit 1."""

from __future__ import annotations

import errno
import os
import shutil

import pytest

from detrec.core import dataset_info, fs, schema
from detrec.pipelines import cli
from tests.conftest import run_preprocess


def _snapshot(folder: str) -> dict[str, bytes]:
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def _map(synth_tree: str) -> str:
    return os.path.join(synth_tree, "devkit", "data", "map_det.txt")


@pytest.mark.parametrize("files", [
    {"report.tmp-draft.docx": b"my thesis", "labels.txt": b"mine", schema.DATASET_INFO: b"{}"},
    {"labels.txt": b"my labels"},  # only a name detrec also uses: still not detrec's folder
    {"notes.txt": b"x", "train-00000-of-00001.tfrecord": b"looks like a shard"},
    {".draft.tmp-notes": b"not detrec's temporary name"},
])
def test_a_folder_that_is_not_detrecs_is_refused_untouched(synth_tree, tmp_path, capsys, files):
    out = tmp_path / "out"
    out.mkdir()
    for name, data in files.items():
        (out / name).write_bytes(data)
    before = _snapshot(str(out))
    assert run_preprocess(synth_tree, str(out), "--verify-images", "header") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a detrec dataset" in err[0] and str(out) in err[0], err
    assert _snapshot(str(out)) == before


def test_a_dataset_is_rewritten_and_nothing_else_is_touched(synth_tree, dataset_dir, tmp_path):
    out = str(tmp_path / "again")
    shutil.copytree(dataset_dir, out)
    with open(os.path.join(out, "notes.txt"), "w") as f:
        f.write("the user's own file, beside the dataset")
    leftover = ".train-00001-of-00004.tfrecord.tmp-" + "e" * 32  # an interrupted write of detrec's
    open(os.path.join(out, leftover), "wb").close()
    assert run_preprocess(synth_tree, out, "--num-shards", "train=4,val=2", "--synset-map", _map(synth_tree)) == 0
    after = _snapshot(out)
    assert after.pop("notes.txt") == b"the user's own file, beside the dataset"
    assert leftover not in after
    assert after == _snapshot(dataset_dir)


def test_an_interrupted_run_of_detrec_is_taken_up(synth_tree, dataset_dir, tmp_path):
    out = tmp_path / "interrupted"
    out.mkdir()
    (out / "train-00002-of-00004.tfrecord").write_bytes(b"partial")
    (out / (".val-00000-of-00002.tfrecord.tmp-" + "a" * 32 + ".idx")).write_bytes(b"0 1\n")
    assert run_preprocess(synth_tree, str(out), "--num-shards", "train=4,val=2", "--synset-map", _map(synth_tree)) == 0
    assert _snapshot(str(out)) == _snapshot(dataset_dir)


def _inspect_ok(folder: str, capsys) -> bool:
    rc = cli.main(["inspect", folder, "--quick"])
    capsys.readouterr()
    return rc == 0


def test_rerunning_one_split_keeps_the_others_when_the_classes_agree(synth_tree, dataset_dir, tmp_path, capsys):
    out = str(tmp_path / "one_split")
    shutil.copytree(dataset_dir, out)
    assert run_preprocess(synth_tree, out, "--splits", "train", "--num-shards", "train=2",
                          "--synset-map", _map(synth_tree)) == 0
    info, before = dataset_info.load(out), dataset_info.load(dataset_dir)
    assert info.splits["val"] == before.splits["val"]  # kept, and listed again
    assert [s.file for s in info.splits["train"].shards] == [schema.shard_name("train", i, 2) for i in range(2)]
    assert not any(n.startswith("train-") and n.endswith("-of-00004.tfrecord") for n in os.listdir(out))
    assert _inspect_ok(out, capsys)


def test_rerunning_one_split_with_other_classes_removes_the_splits_it_cannot_keep(synth_tree, dataset_dir,
                                                                                   tmp_path, capsys):
    out = str(tmp_path / "other_classes")
    shutil.copytree(dataset_dir, out)
    bigger = tmp_path / "map.txt"
    lines = open(_map(synth_tree)).read().splitlines()  # `synset id name` lines: the next id
    bigger.write_text("\n".join(lines) + f"\nn99999999 {len(lines) + 1} an_extra_class\n")
    assert run_preprocess(synth_tree, out, "--splits", "train", "--num-shards", "train=4",
                          "--synset-map", str(bigger)) == 0
    info = dataset_info.load(out)
    assert list(info.splits) == ["train"]
    assert not any(n.startswith("val-") or n == schema.errors_name("val") for n in os.listdir(out))
    assert _inspect_ok(out, capsys)


@pytest.mark.parametrize("failing, code", [("makedirs", errno.EROFS), ("open", errno.ENOSPC), ("open", errno.EACCES)])
def test_io_failures_are_one_line_exit_1_and_leave_no_temporary_files(synth_tree, tmp_path, capsys, monkeypatch,
                                                                       failing, code):
    """A read-only file system at the start, a full disk or lost permissions while shards are
    written (the in-memory runner writes in this process, where the failure is injected)."""
    out = str(tmp_path / "out")
    real_open, real_makedirs = fs._Local.open, fs._Local.makedirs

    class Failing:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 10_000:
                raise OSError(code, os.strerror(code), self.f.name)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def open_(path, mode):
        f = real_open(path, mode)
        return Failing(f) if "w" in mode and schema.SHARD_SUFFIX in path else f

    def makedirs(path):
        if path == out:
            raise OSError(code, os.strerror(code), path)
        real_makedirs(path)

    monkeypatch.setattr(fs._Local, failing, staticmethod(open_ if failing == "open" else makedirs))
    assert run_preprocess(synth_tree, out, "--verify-images", "header") == 1
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert os.strerror(code) in line and out in line and "Traceback" not in err
    assert not any(fs.is_temp(n) for n in (os.listdir(out) if os.path.isdir(out) else []))
    assert not os.path.exists(os.path.join(out, schema.DATASET_INFO))


@pytest.mark.parametrize("flags", [["--num-shards", "train=²"], ["--num-shards", "train=٣"],
                                   ["--target-shard-mb", "nan"], ["--target-shard-mb", "inf"],
                                   ["--target-shard-mb", "-1"], ["--layout", "voc"]])
def test_flag_mistakes_are_one_line_exit_2(synth_tree, tmp_path, capsys, flags):
    assert run_preprocess(synth_tree, str(tmp_path / "out"), *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("detrec preprocess: error: ") and flags[0] in err[0]


def test_paths_that_are_not_text_or_not_files_are_one_line(synth_tree, tmp_path, capsys):
    """A non-UTF-8 --input and a FIFO as --synset-map: one line, exit 2, nothing read."""
    bad = os.fsdecode(bytes(tmp_path) + b"/in\xff")
    os.makedirs(bad)
    fifo = str(tmp_path / "map.fifo")
    os.mkfifo(fifo)
    for args in (["--input", bad, "--output", str(tmp_path / "o1")],
                 ["--input", synth_tree, "--output", str(tmp_path / "o2"), "--synset-map", fifo]):
        assert cli.main(["preprocess", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ("not valid UTF-8" in err[0] or "not a regular file" in err[0]), err
