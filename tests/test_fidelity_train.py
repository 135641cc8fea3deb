"""Issue 22 ("Fidelity"), the training side: bounds, bad labels, odd folder names, .idx reads,
messages.

* 10: a dataset (or an export) with more classes than detrec builds a model for, and an
  --image-size past its bound, stop in one line before anything is built;
* 11: a record whose label is outside the classes, or that lacks its label or image, stops
  training with one line naming the shard and the record, on both decoders; --skip-corrupt
  skips and counts it (tf.data);
* 14: a data folder whose name holds spaces or glob characters reads like any other, and a
  corrupt shard in it is still one line naming the right file;
* 16: each .idx is read once per run, however many replicas, plans and validation passes;
* 18: the messages a user sees: a negative count, predict's exit codes, the progress line of
  an epoch shorter than the progress interval.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys

import pytest

from detrec.core import dataset_info, schema
from detrec.core.errors import UserError
from detrec.pipelines import cli
from detrec.train import input as input_lib
from detrec.train import progress
from tests.test_train_hardening import SMALL, VAL0, copy_dataset, replace_payload, spans

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN2 = "train-00002-of-00004.tfrecord"


def error_lines(err: str, prefix: str = "detrec") -> list[str]:
    assert "Traceback" not in err, err[-3000:]
    return [line for line in err.replace("\r", "\n").splitlines() if line.startswith(prefix)]


def one_error(capsys, command: str = "train") -> str:
    lines = error_lines(capsys.readouterr().err, f"detrec {command}")
    assert len(lines) == 1 and lines[0].startswith(f"detrec {command}: error:"), lines
    return lines[0]


def edit_info(data: str, edit) -> None:
    path = os.path.join(data, schema.DATASET_INFO)
    with open(path) as f:
        info = json.load(f)
    edit(info)
    with open(path, "w") as f:
        json.dump(info, f)


def with_label(label: int):
    def make(payload: bytes) -> bytes:
        return schema.encode(dataclasses.replace(schema.decode(payload), class_label=label))
    return make


def without(key: str):
    def make(payload: bytes) -> bytes:
        from detrec.core.example_proto import Example

        example = Example.FromString(payload)
        del example.features.feature[key]
        return example.SerializeToString()
    return make


def read_val(data: str, decoder: str, skip: bool = False, counter=None) -> int:
    """Examples of one epoch of the val split, read as the trainer's CLI reads (shard_errors)."""
    ds = input_lib.make_dataset(data, "val", batch_size=4, image_size=16, training=False, decoder=decoder,
                                repeat=decoder == "dali", skip_corrupt=skip, counter=counter)
    plan = input_lib.epoch_plan(data, "val", batch_size=4, training=False, decoder=decoder, skip_corrupt=skip)
    with input_lib.shard_errors():
        return sum(len(batch[1]) for batch in input_lib.take_epoch(iter(ds), plan))


# --- 10. bounds: classes and image size --------------------------------------------------------
def test_class_limit_is_checked_at_the_bound():
    dataset_info.check_class_count(schema.MAX_CLASSES, "x")
    with pytest.raises(UserError, match=f"x lists {schema.MAX_CLASSES + 1:,} classes; .* at most"):
        dataset_info.check_class_count(schema.MAX_CLASSES + 1, "x")


def _many_classes(info: dict, count: int) -> None:
    info["classes"] = [{"id": i, "synset": f"n{i:08d}", "name": f"c{i}"} for i in range(count)]
    info["num_classes"] = count


@pytest.mark.parametrize("count", [schema.MAX_CLASSES + 1])  # the bound itself (the 1,000,005 of the report is above it)
def test_train_refuses_too_many_classes_in_one_line_before_building(dataset_dir, tmp_path, capsys, monkeypatch,
                                                                    count):
    from detrec.train import models

    data = copy_dataset(dataset_dir, tmp_path)
    edit_info(data, lambda info: _many_classes(info, count))

    def build(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(models, "build", build)
    assert cli.main(["train", "--data", data, "--model-dir", str(tmp_path / "m"), *SMALL]) == 2
    line = one_error(capsys)
    assert f"lists {count:,} classes" in line and f"at most {schema.MAX_CLASSES:,}" in line
    assert not os.path.exists(tmp_path / "m")


def test_predict_refuses_too_many_classes_before_loading_the_model(known_model_dir, tmp_path, capsys,
                                                                   monkeypatch):
    import keras

    from detrec.train import rundir

    model_dir = str(tmp_path / "model")
    shutil.copytree(known_model_dir, model_dir)
    labels = os.path.join(model_dir, rundir.EXPORT, rundir.EXPORT_LABELS)
    with open(labels) as f:
        meta = json.load(f)
    _many_classes(meta, schema.MAX_CLASSES + 1)
    with open(labels, "w") as f:
        json.dump(meta, f)

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(keras.saving, "load_model", load_model)
    image = tmp_path / "a.jpg"
    image.write_bytes(b"whatever")
    assert cli.main(["predict", "--model-dir", model_dir, str(image)]) == 2
    assert f"lists {schema.MAX_CLASSES + 1:,} classes" in one_error(capsys, "predict")


@pytest.mark.parametrize("size", ["1000000", "20000", "1025"])
def test_image_size_has_an_upper_bound(dataset_dir, tmp_path, capsys, monkeypatch, size):
    from detrec.train import models

    def build(*args, **kwargs):  # were the flag taken, no model of gigabytes is built here
        raise AssertionError("a model was built")

    monkeypatch.setattr(models, "build", build)
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--data", dataset_dir, "--model-dir", str(tmp_path / "m"), "--image-size", size])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --image-size: wants a whole number in 1..1,024, got '{size}'" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "m")


def test_image_size_bound_is_the_input_packages(tmp_path):
    from detrec.pipelines import train_cmd

    assert train_cmd.MAX_IMAGE_SIZE == input_lib.MAX_IMAGE_SIZE
    input_lib.InputConfig(batch_size=1, image_size=input_lib.MAX_IMAGE_SIZE, training=False)
    with pytest.raises(ValueError, match="image_size"):
        input_lib.InputConfig(batch_size=1, image_size=(16, input_lib.MAX_IMAGE_SIZE + 1), training=False)


def test_predict_refuses_an_export_with_an_unbounded_image_size(known_model_dir, tmp_path, capsys):
    from detrec.train import rundir

    model_dir = str(tmp_path / "model")
    shutil.copytree(known_model_dir, model_dir)
    labels = os.path.join(model_dir, rundir.EXPORT, rundir.EXPORT_LABELS)
    with open(labels) as f:
        meta = json.load(f)
    meta["image_size"] = 1_000_000
    with open(labels, "w") as f:
        json.dump(meta, f)
    image = tmp_path / "a.jpg"
    image.write_bytes(b"whatever")
    assert cli.main(["predict", "--model-dir", model_dir, str(image)]) == 2
    assert "not a detrec labels file" in one_error(capsys, "predict")


# --- 11 and 18. a record's label: out of range, or missing ------------------------------------------
BAD_RECORDS = [
    pytest.param(with_label(5000), "label 5000 is outside 0..5 (dataset_info.json lists 6 classes)", id="5000"),
    pytest.param(with_label(-1), "label -1 is outside 0..5", id="minus-1"),
    pytest.param(with_label(6), "label 6 is outside 0..5", id="num-classes"),
    pytest.param(without(schema.CLASS_LABEL), f"it has no `{schema.CLASS_LABEL}`", id="no-label"),
    pytest.param(without(schema.ENCODED), f"it has no `{schema.ENCODED}`", id="no-image"),
]


@pytest.mark.parametrize("decoder", ["cpu", pytest.param("dali", marks=pytest.mark.dali)])
@pytest.mark.parametrize("make, why", BAD_RECORDS)
def test_a_bad_record_is_named_by_shard_and_record(dataset_dir, tmp_path, make, why, decoder):
    data = copy_dataset(dataset_dir, tmp_path)
    path = os.path.join(data, VAL0)
    replace_payload(path, 3, make)
    with pytest.raises(input_lib.CorruptShardError) as info:
        read_val(data, decoder)
    assert info.value.path == path
    # DALI reads by the .idx, so it also names the record's byte offset.
    where = f"offset {spans(path)[3][0]}, record 3" if decoder == "dali" else "record 3"
    assert f"{where}: {why}" in info.value.detail
    assert "--skip-corrupt" in info.value.detail  # tf.data skips with it; DALI's message says to use it
    assert "only" not in info.value.detail  # not "only 0 of its 16 records are readable"


@pytest.mark.parametrize("make", [with_label(5000), with_label(-1), without(schema.CLASS_LABEL)])
def test_skip_corrupt_skips_and_counts_a_bad_record(dataset_dir, tmp_path, capfd, make):
    data = copy_dataset(dataset_dir, tmp_path)
    for index in (3, 10):
        replace_payload(os.path.join(data, VAL0), index, make)
    counter = input_lib.SkipCounter()
    assert read_val(data, "cpu", skip=True, counter=counter) == 30
    assert counter.result() == {"records": 2, "shards": 1}
    err = capfd.readouterr().err
    assert "detrec: skipping record 3: " in err and "record 10: " in err and VAL0 in err


def _val_labels(data: str, decoder: str, **kwargs) -> list[int]:
    ds = input_lib.make_dataset(data, "val", batch_size=4, image_size=16, training=False, decoder=decoder,
                                repeat=decoder == "dali", **kwargs)
    plan = input_lib.epoch_plan(data, "val", batch_size=4, training=False, decoder=decoder,
                                skip_corrupt=kwargs.get("skip_corrupt", False))
    with input_lib.shard_errors():
        return [int(v) for _, labels in input_lib.take_epoch(iter(ds), plan) for v in labels.numpy()]


@pytest.mark.dali
@pytest.mark.parametrize("bad", [(3, 10), (4, 5, 6, 7)], ids=["two-rows", "a-whole-batch"])
def test_dali_skip_corrupt_names_counts_and_stands_in_for_a_bad_record(dataset_dir, tmp_path, capfd, bad):
    data = copy_dataset(dataset_dir, tmp_path)
    clean = _val_labels(data, "dali")
    for index in bad:
        replace_payload(os.path.join(data, VAL0), index, with_label(5000))
    counter = input_lib.SkipCounter()
    labels = _val_labels(data, "dali", skip_corrupt=True, counter=counter)
    # Counted per pass, as tf.data counts; the endless stream may already have read into the next pass.
    result = counter.result()
    assert result["records"] % len(bad) == 0 and result["records"] // len(bad) == result["shards"] >= 1
    err = capfd.readouterr().err
    for index in bad:
        offset = spans(os.path.join(data, VAL0))[index][0]
        assert f"detrec: skipping offset {offset}, record {index}: label 5000 is outside 0..5" in err
    assert VAL0 in err
    # Each bad row holds another record: the batch's first good one, or for a batch of bad rows
    # only, the first good record after it; every other row is as before.
    expected = list(clean)
    for index in bad:
        batch = index // 4
        good = [i for i in range(4 * batch, 4 * batch + 4) if i not in bad]
        expected[index] = clean[good[0] if good else max(bad) + 1]
    assert labels == expected


@pytest.mark.slow  # ~15 s: two training runs
def test_train_names_a_record_with_a_bad_label_and_skip_corrupt_goes_on(dataset_dir, tmp_path, capfd):
    data = copy_dataset(dataset_dir, tmp_path)
    path = os.path.join(data, TRAIN2)
    replace_payload(path, 7, with_label(5000))
    base = ["train", "--data", data, *SMALL, "--epochs", "1"]
    assert cli.main([*base, "--model-dir", str(tmp_path / "a")]) == 2
    line = one_error(capfd)
    assert f"corrupt shard {path}: record 7: label 5000 is outside 0..5" in line
    assert cli.main([*base, "--model-dir", str(tmp_path / "b"), "--skip-corrupt"]) == 0
    out = capfd.readouterr()
    # Each pass over the shard skips it again (the epoch's 12 steps read into a second pass).
    passes = out.err.count(f"detrec: skipping record 7: label 5000 is outside 0..5 (dataset_info.json lists 6 "
                           f"classes) of shard {path}")
    assert passes >= 1 and f"--skip-corrupt: {passes} unreadable records skipped" in out.out


# --- 14. a data folder with spaces and glob characters ---------------------------------------------
ODD_NAMES = ["my data", "data [1]", "run *2?", "back\\slash: x"]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_a_data_folder_with_odd_characters_reads_whole(dataset_dir, tmp_path, name):
    data = str(tmp_path / name / "out")
    shutil.copytree(dataset_dir, data)
    assert read_val(data, "cpu") == 32
    counter = input_lib.SkipCounter()
    assert read_val(data, "cpu", skip=True, counter=counter) == 32 and counter.result()["records"] == 0


@pytest.mark.parametrize("name", ODD_NAMES)
def test_a_corrupt_shard_in_an_odd_folder_is_one_line_naming_it(dataset_dir, tmp_path, name):
    data = str(tmp_path / name / "out")
    shutil.copytree(dataset_dir, data)
    path = os.path.join(data, VAL0)
    with open(path, "r+b") as f:  # cut at a record boundary: only the dataset_info count sees it
        f.truncate(spans(path)[10][0])
    with pytest.raises(input_lib.CorruptShardError) as info:
        read_val(data, "cpu")
    assert info.value.path == path and "only 10 of its 16 records are readable" in info.value.detail


@pytest.mark.dali
def test_a_bad_record_in_an_odd_folder_is_named_by_dali(dataset_dir, tmp_path):
    data = str(tmp_path / "my [data] *?" / "out")
    shutil.copytree(dataset_dir, data)
    path = os.path.join(data, VAL0)
    replace_payload(path, 5, lambda payload: b"\xff" * len(payload))
    with pytest.raises(input_lib.CorruptShardError) as info:
        read_val(data, "dali")
    assert info.value.path == path and "record 5: it is not a tf.Example" in info.value.detail


# --- 16. each .idx read once per run -----------------------------------------------------------
COUNT_IDX_READS = """
import collections, json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import builtins
from detrec.train.data import make_data
reads = collections.Counter()
def count(path):
    if str(path).endswith(".idx"):
        reads[str(path).rsplit("/", 1)[-1]] += 1
real_open, real_gfile = builtins.open, tf.io.gfile.GFile
def counting_open(path, *args, **kwargs):  # local files, whichever way they are opened
    count(path)
    return real_open(path, *args, **kwargs)
class CountingGFile(real_gfile):  # TensorFlow's file API (gs://, and local files through it)
    def __init__(self, name, mode="r"):
        count(name)
        super().__init__(name, mode)
builtins.open, tf.io.gfile.GFile = counting_open, CountingGFile
out = {}
for replicas in (2, 1):
    reads.clear()
    strategy = (tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)]) if replicas > 1
                else tf.distribute.get_strategy())
    data, steps = make_data(strategy, sys.argv[1], batch_size=8, image_size=16, decoder="dali",
                            preprocess="inception", seed=0)
    for epoch in range(2):
        next(iter(data.train(epoch)))
        if replicas == 1:
            sum(1 for _ in data.val())
    out[replicas] = dict(reads)
print(json.dumps(out))
"""


@pytest.mark.dali
@pytest.mark.slow  # ~20 s: DALI pipelines on two replicas, then on one with validation
def test_each_index_is_read_once_per_run(dataset_dir, tmp_path):
    script = tmp_path / "count.py"
    script.write_text(COUNT_IDX_READS)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, str(script), dataset_dir], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reads = json.loads(done.stdout.strip().splitlines()[-1])
    train = {f"train-0000{i}-of-00004.tfrecord.idx": 1 for i in range(4)}
    val = {f"val-0000{i}-of-00002.tfrecord.idx": 1 for i in range(2)}
    assert reads["2"] == train  # two replicas' plans and pipelines (validation there is tf.data's)
    assert reads["1"] == {**train, **val}  # a pipeline, its plan and two validation passes


# --- 18. messages ----------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["num_examples", "num_bytes"])
def test_a_negative_count_is_named_not_an_empty_split(dataset_dir, tmp_path, capsys, key):
    data = copy_dataset(dataset_dir, tmp_path)

    def edit(info):
        for shard in info["splits"]["train"]["shards"]:
            shard[key] = -5

    edit_info(data, edit)
    assert cli.main(["train", "--data", data, "--model-dir", str(tmp_path / "m"), *SMALL]) == 2
    line = one_error(capsys)
    assert f"`{key}` is negative (-5)" in line and "has no examples" not in line


def test_predict_exit_codes_a_missing_path_or_a_folder_is_2(known_model_dir, tmp_path, capsys):
    from tests import image_factory

    good = tmp_path / "good.jpg"
    good.write_bytes(image_factory.jpeg(64, 48))
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    missing = tmp_path / "missing.jpg"
    assert cli.main(["predict", "--model-dir", known_model_dir, str(good)]) == 0
    assert cli.main(["predict", "--model-dir", known_model_dir, str(good), str(text)]) == 1
    for wrong in (missing, folder):
        capsys.readouterr()
        assert cli.main(["predict", "--model-dir", known_model_dir, str(good), str(text), str(wrong)]) == 2
        out = capsys.readouterr()
        assert str(good) in out.out  # the others are still answered
        assert len(error_lines(out.err, f"detrec predict: {wrong}: ")) == 1


def test_a_short_epoch_still_leaves_its_line_in_a_log():
    out = io.StringIO()
    bar = progress.bar(total=5, desc="epoch 1/2", unit="step", file=out, every=3600)
    for _ in range(5):
        bar.update(1)
    bar.set_postfix(loss="0.5000", refresh=False)
    bar.close()
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("epoch 1/2: 5/5 step, ") and lines[0].endswith("loss=0.5000")
    shown = io.StringIO()  # a line just printed for the last step: no second one at close
    bar = progress.bar(total=2, desc="x", unit="step", file=shown, every=0)
    bar.update(2)
    bar.close()
    assert len(shown.getvalue().splitlines()) == 1
    idle = io.StringIO()  # nothing happened: nothing to say
    progress.bar(total=2, desc="x", unit="step", file=idle, every=3600).close()
    assert idle.getvalue() == ""


def test_training_in_a_log_prints_every_epoch_and_validation(tmp_path, capsys):
    """An epoch and a validation pass far shorter than the 30 s interval, off a terminal."""
    from tests.test_train_hardening import _trainer

    assert progress.LINE_EVERY == 30.0
    assert _trainer(tmp_path, epochs=2).run() == 0
    err = capsys.readouterr().err
    for epoch in (1, 2):
        assert len([line for line in err.splitlines() if line.startswith(f"epoch {epoch}/2: 4/4 step, ")]) == 1
    assert len([line for line in err.splitlines() if line.startswith("validate: 2 batch, ")]) == 2
