"""The training side of the hardening issue: one bad input costs that input only, a user
mistake is one line and exit 2, detrec writes only into folders it owns.

Classes of defect, each with several variants:
* a crafted record (a length field with a valid CRC that runs past the end of the file, a
  payload that is no tf.Example, an image that does not decode) never crashes training:
  one line naming the file (and offset), or with --skip-corrupt it costs that shard or record;
* numbers that are not finite: --lr is checked, a loss that stops being finite stops the run
  (exit 1, epoch and step named) and nothing is saved or exported after it;
* the model dir: a non-empty folder that is not a detrec run is refused, untouched;
* predict: every bad file gets its own error line, the good ones are answered, exit 1;
* the tf.data service warns that it is unauthenticated and admits only listed workers;
* logs: no carriage-return bars where the output is not a terminal.

Anything that makes TensorFlow or DALI read a crafted shard runs in a child process, so a
regression shows as a failed test, not as a crashed test session.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf

from detrec.core import schema, tfrecord
from detrec.core.errors import UserError
from detrec.pipelines import cli
from detrec.train import input as input_lib
from detrec.train import progress, rundir
from tests import image_factory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAL0, VAL1 = "val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"
TRAIN1 = "train-00001-of-00004.tfrecord"
SMALL = ["--image-size", "64", "--batch-size", "8", "--seed", "0", "--decoder", "cpu"]


# --- helpers ---------------------------------------------------------------------------------
def copy_dataset(dataset_dir: str, tmp_path) -> str:
    out = str(tmp_path / "data")
    shutil.copytree(dataset_dir, out)
    return out


def spans(path: str) -> list[tuple[int, int]]:
    with open(path + schema.INDEX_SUFFIX) as f:
        return tfrecord.parse_index(f.read())


def craft_length(path: str, index: int, length: int) -> int:
    """Writes `length` with a *valid* length CRC into record `index`'s header (the .idx, the
    size and every other byte stay as they were); returns the record's offset."""
    offset = spans(path)[index][0]
    header = tfrecord.HEADER.pack(length, tfrecord.masked_crc32c(struct.pack("<Q", length)))
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(header)
    return offset


def replace_payload(path: str, index: int, make) -> None:
    """Re-frames record `index` with `make(old payload)` (sound CRCs), fixing the .idx and
    dataset_info.json's byte count: a record only its content gives away."""
    data = open(path, "rb").read()
    out, lines = bytearray(), []
    for i, (offset, span) in enumerate(spans(path)):
        payload = data[offset + tfrecord.HEADER.size:offset + span - tfrecord.FOOTER.size]
        if i == index:
            payload = make(payload)
        head, tail = tfrecord.frame(payload)
        lines.append(tfrecord.index_line(len(out), len(payload)))
        out += head + payload + tail
    with open(path, "wb") as f:
        f.write(out)
    with open(path + schema.INDEX_SUFFIX, "w") as f:
        f.write("".join(lines))
    info_path = os.path.join(os.path.dirname(path), schema.DATASET_INFO)
    with open(info_path) as f:
        info = json.load(f)
    for split in info["splits"].values():
        for shard in split["shards"]:
            if shard["file"] == os.path.basename(path):
                shard["num_bytes"] = len(out)
    with open(info_path, "w") as f:
        json.dump(info, f)


def not_an_example(payload: bytes) -> bytes:
    return b"\xff" * len(payload)


def broken_jpeg(payload: bytes) -> bytes:
    import dataclasses

    record = schema.decode(payload)
    return schema.encode(dataclasses.replace(record, encoded=b"\xff\xd8\xff\xe0" + b"\x00" * 4000 + b"\xff\xd9"))


READ_VAL = """
import json, sys
from detrec.core.errors import UserError
from detrec.train import input as input_lib
data, decoder, skip = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
counter = input_lib.SkipCounter()
# repeat=False for tf.data: its plan cannot know what skip_corrupt will drop (see epoch_plan).
ds = input_lib.make_dataset(data, "val", batch_size=4, image_size=16, training=False, decoder=decoder,
                            repeat=decoder == "dali", skip_corrupt=skip, counter=counter)
plan = input_lib.epoch_plan(data, "val", batch_size=4, training=False, decoder=decoder, skip_corrupt=skip)
try:
    with input_lib.shard_errors():
        n = sum(len(batch[1]) for batch in input_lib.take_epoch(iter(ds), plan))
except UserError as exc:  # what the CLI does with it
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
print(json.dumps({"examples": n, **counter.result()}))
"""


def read_val(data: str, decoder: str, skip: bool) -> subprocess.CompletedProcess:
    """One epoch of the val split read in a child process (a segfault there is a failed test)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-c", READ_VAL, data, decoder, "1" if skip else "0"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def one_error_line(err: str, prefix: str) -> str:
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


# --- 7. crafted record lengths, and records only their content gives away -------------------------
LENGTHS = [  # (shard, record, length): each with a valid length CRC
    pytest.param(VAL0, 3, 1 << 40, id="2^40-mid-shard"),
    pytest.param(VAL1, 0, (1 << 64) - 1, id="2^64-1-first-record"),
    pytest.param(VAL1, 15, None, id="one-byte-past-eof-last-record"),
]


@pytest.mark.parametrize("decoder", ["cpu", "dali"])
@pytest.mark.parametrize("shard, index, length", LENGTHS)
def test_crafted_length_is_named_with_its_offset_before_anything_reads(dataset_dir, tmp_path, decoder, shard,
                                                                       index, length):
    data = copy_dataset(dataset_dir, tmp_path)
    path = os.path.join(data, shard)
    if length is None:  # runs exactly one byte past the end of the file
        offset, span = spans(path)[index]
        length = os.path.getsize(path) - offset - tfrecord.OVERHEAD + 1
    offset = craft_length(path, index, length)
    # Refused while the pipeline is built: TensorFlow and DALI never see the header.
    with pytest.raises(input_lib.CorruptShardError) as info:
        input_lib.make_dataset(data, "val", batch_size=4, image_size=16, training=False, decoder=decoder)
    assert info.value.path == path
    assert f"offset {offset}, record {index}:" in str(info.value) and "--skip-corrupt" in str(info.value)


@pytest.mark.parametrize("decoder, kept", [("cpu", "prefix"), ("dali", "none")])
@pytest.mark.parametrize("shard, index, length", LENGTHS[:2])
def test_skip_corrupt_goes_on_without_the_crafted_records_and_counts_them(dataset_dir, tmp_path, decoder, kept,
                                                                          shard, index, length):
    """tf.data reads the sound records before the crafted header (never the header itself);
    DALI, which cannot stop inside a shard, leaves the whole shard out. Both count it."""
    data = copy_dataset(dataset_dir, tmp_path)
    craft_length(os.path.join(data, shard), index, length)
    done = read_val(data, decoder, skip=True)
    assert done.returncode == 0, done.stderr[-3000:]
    lost = 16 - index if kept == "prefix" else 16
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"examples": 32 - lost, "records": lost,
                                                                "shards": 1}
    assert f"corrupt shard {os.path.join(data, shard)}: offset" in done.stderr


@pytest.mark.slow  # ~10 s: two training processes
def test_train_cli_with_a_crafted_length(dataset_dir, tmp_path):
    """The reported case end to end (it used to die with SIGSEGV, rc 139, without a word)."""
    data = copy_dataset(dataset_dir, tmp_path)
    path = os.path.join(data, TRAIN1)
    offset = craft_length(path, 3, 1 << 40)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    base = [sys.executable, "-m", "detrec.pipelines.cli", "train", "--data", data, *SMALL, "--epochs", "1",
            "--steps-per-epoch", "2"]
    done = subprocess.run([*base, "--model-dir", str(tmp_path / "a")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    line = one_error_line(done.stderr, "detrec train: error:")
    assert f"corrupt shard {path}: offset {offset}, record 3:" in line
    done = subprocess.run([*base, "--model-dir", str(tmp_path / "b"), "--skip-corrupt"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert os.path.exists(os.path.join(tmp_path / "b", rundir.EXPORT, rundir.EXPORT_MODEL))


@pytest.mark.parametrize("make, cpu_error", [(not_an_example, "only 0 of its 16 records are readable"),
                                             (broken_jpeg, "the image of a record does not decode")])
@pytest.mark.slow  # ~7 s: two reader processes
def test_a_record_only_its_content_gives_away_is_one_line_for_both_decoders(dataset_dir, tmp_path, make,
                                                                            cpu_error):
    data = copy_dataset(dataset_dir, tmp_path)
    replace_payload(os.path.join(data, VAL0), 3, make)
    done = read_val(data, "cpu", skip=False)
    assert done.returncode == 2, done.stderr[-3000:]
    assert cpu_error in one_error_line(done.stderr, "error:")
    done = read_val(data, "dali", skip=False)  # DALI cannot skip inside a pipeline: one line, no traceback
    assert done.returncode == 2, done.stderr[-3000:]
    line = one_error_line(done.stderr, "error:")
    assert (f"{os.path.join(data, VAL0)}: offset" in line and "not a tf.Example" in line
            if make is not_an_example else "DALI could not decode the image of a record" in line)


@pytest.mark.parametrize("make, examples", [(not_an_example, 16), (broken_jpeg, 31)])
def test_skip_corrupt_costs_the_bad_record_not_the_run(dataset_dir, tmp_path, make, examples):
    """tf.data: a record that is no tf.Example costs its parse batch (here the whole 16-record
    shard, counted); an image that does not decode costs that example only (not counted:
    TensorFlow gives no count of what it drops there)."""
    data = copy_dataset(dataset_dir, tmp_path)
    replace_payload(os.path.join(data, VAL0), 3, make)
    done = read_val(data, "cpu", skip=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["examples"] == examples


def test_framing_walk_is_cached_per_file_version(dataset_dir, tmp_path):
    from detrec.train.input import common

    data = copy_dataset(dataset_dir, tmp_path)
    path = os.path.join(data, VAL0)
    first = common.shard_framing(path)
    assert first.problem == "" and first.records == 16
    assert first.spans_digest == common.spans_digest(spans(path))
    assert common.shard_framing(path) is first  # unchanged file: no second walk
    craft_length(path, 5, 1 << 40)  # the same size, rewritten in place
    assert "record 5:" in common.shard_framing(path).problem


# --- 8. numbers that are not finite ----------------------------------------------------------
@pytest.mark.parametrize("lr", ["inf", "-inf", "nan", "1e999", "0", "-0.1", "fast"])
def test_lr_must_be_positive_and_finite(dataset_dir, tmp_path, capsys, lr):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--data", dataset_dir, "--model-dir", str(tmp_path / "m"), f"--lr={lr}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --lr: wants a positive finite number, got '{lr}'" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "m")


def test_train_config_refuses_a_non_finite_lr(tmp_path):
    from detrec.train import models
    from detrec.train.config import TrainConfig

    for lr in (float("inf"), float("nan"), 0.0):
        with pytest.raises(ValueError, match="lr must be a positive finite number"):
            TrainConfig(model_dir=str(tmp_path), model=models.ModelConfig("semi_alexnet", 3, 64), epochs=1,
                        batch_size=4, steps_per_epoch=1, lr=lr)


def _batches(steps: int, bad_step: int | None, value: float, whole: bool = False, size: int = 64,
             batch: int = 4):
    """Random batches; at `bad_step` one pixel (or, `whole`, all of the first image) is `value`.

    A single NaN pixel leaves the logits finite (a max-pool drops it) but not the gradient."""
    rng = np.random.default_rng(0)
    for step in range(1, steps + 1):
        images = rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
        if step == bad_step:
            if whole:
                images[0] = value
            else:
                images[0, 0, 0, 0] = value
        yield tf.constant(images), tf.constant(rng.integers(0, 3, batch), tf.int64)


def _trainer(tmp_path, *, bad_train: tuple[int, int, float, bool] | None = None, epochs: int = 1,
             steps: int = 4):
    """A Trainer on generated batches: (epoch, step, value, whole) puts `value` into one image."""
    from detrec.core.dataset_info import ClassInfo
    from detrec.train import models
    from detrec.train.config import TrainConfig
    from detrec.train.data import Data
    from detrec.train.trainer import Trainer

    def train(epoch):
        bad = bad_train[1] if bad_train and bad_train[0] == epoch + 1 else None
        return _batches(steps, bad, bad_train[2] if bad_train else 0.0, bad_train[3] if bad_train else False)

    def val():
        return _batches(2, None, 0.0)

    classes = [ClassInfo(0, "background", "background"), ClassInfo(1, "n01", "one"), ClassInfo(2, "n02", "two")]
    cfg = TrainConfig(model_dir=str(tmp_path / "m"), model=models.ModelConfig("semi_alexnet", 3, 64),
                      epochs=epochs, batch_size=4, steps_per_epoch=steps, checkpoint_every=2)
    return Trainer(cfg, Data(train=train, val=val, classes=classes), out=io.StringIO())


def _saved_position(model_dir: str) -> dict | None:
    path = tf.train.latest_checkpoint(os.path.join(model_dir, rundir.CHECKPOINTS))
    if path is None:
        return None
    reader = tf.train.load_checkpoint(path)
    values = [np.asarray(reader.get_tensor(k)) for k in reader.get_variable_to_shape_map()
              if k.startswith("optimizer/_") and "VARIABLE_VALUE" in k]
    assert len(values) > 16 and all(np.isfinite(v).all() for v in values)  # the weights and their Adam slots
    state = next(k for k in reader.get_variable_to_shape_map() if k.startswith("state/"))
    return json.loads(reader.get_tensor(state))


@pytest.mark.parametrize("bad", [
    (1, 3, float("nan"), False),  # one pixel: the loss still looks finite, the gradient is not
    (2, 1, float("inf"), True),  # the first step of the second epoch
    (1, 4, float("nan"), True),  # the epoch's last step, synced with the epoch's end
])
def test_a_non_finite_loss_stops_the_run_names_epoch_and_step_and_exports_nothing(tmp_path, bad):
    """(oneDNN's fused conv + ReLU turns a NaN input into 0 in the forward pass, so here the
    backward pass is where it shows: the gradient check catches what the loss hides.)"""
    from detrec.train.trainer import TrainingDiverged

    trainer = _trainer(tmp_path, bad_train=bad, epochs=2)
    with pytest.raises(TrainingDiverged, match=r"the training (loss|gradient) is not finite") as info:
        trainer.run()
    assert f"at epoch {bad[0]}, step {bad[1]} of 4" in str(info.value)
    assert "nothing saved or exported after it" in str(info.value)
    model_dir = str(tmp_path / "m")
    assert not os.path.exists(os.path.join(model_dir, rundir.EXPORT))
    state = _saved_position(model_dir)  # every checkpoint there predates the bad step
    epoch, step = bad[0] - 1, bad[1]
    assert state["epoch"] * 4 + state["position"] < epoch * 4 + step
    assert "the last checkpoint" in str(info.value)


def test_a_non_finite_validation_loss_stops_the_run(tmp_path, monkeypatch):
    """Pixels cannot force it (oneDNN's fused conv + ReLU turns NaN into 0 in the graph), so
    the evaluation step itself is made to report one."""
    from detrec.train import trainer as trainer_lib
    from detrec.train.trainer import TrainingDiverged

    real = trainer_lib.make_steps

    def steps_with_a_bad_eval(*args, **kwargs):
        train_step, _ = real(*args, **kwargs)
        return train_step, lambda batch: tf.constant([np.nan, 0.0, 0.0, 4.0], tf.float64)

    monkeypatch.setattr(trainer_lib, "make_steps", steps_with_a_bad_eval)
    trainer = _trainer(tmp_path)
    with pytest.raises(TrainingDiverged, match="the validation loss is not finite .* after epoch 1"):
        trainer.run()
    model_dir = str(tmp_path / "m")
    assert not os.path.exists(os.path.join(model_dir, rundir.EXPORT))
    assert _saved_position(model_dir)["epoch"] == 0  # the epoch's end was not saved
    assert not os.path.exists(os.path.join(model_dir, rundir.METRICS))


def test_train_cli_stops_a_diverging_run_with_exit_1(dataset_dir, tmp_path, capsys):
    """A huge but finite --lr: the weights blow up within a few steps."""
    model_dir = str(tmp_path / "m")
    assert cli.main(["train", "--data", dataset_dir, "--model-dir", model_dir, *SMALL, "--epochs", "2",
                     "--lr", "1e30", "--checkpoint-every", "0"]) == 1
    line = one_error_line(capsys.readouterr().err, "detrec train: error:")
    assert "the training loss is not finite" in line or "the training gradient is not finite" in line
    assert "at epoch 1, step" in line
    assert "no checkpoint was saved" in line
    assert not os.path.exists(os.path.join(model_dir, rundir.EXPORT))


# --- predict: an export to answer with (untrained: answers need not be right) ---------------------
@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> str:
    from detrec.core.dataset_info import ClassInfo
    from detrec.train import models
    from detrec.train.config import TrainConfig
    from detrec.train.export import export_model

    model_dir = str(tmp_path_factory.mktemp("export") / "m")
    cfg = TrainConfig(model_dir=model_dir, model=models.ModelConfig("semi_alexnet", 3, 64), epochs=1,
                      batch_size=4, steps_per_epoch=1)
    classes = [ClassInfo(0, "background", "background"), ClassInfo(1, "n01", "one"), ClassInfo(2, "n02", "two")]
    export_model(models.build(cfg.model), model_dir, cfg, classes, best_epoch=1, val_top1=0.5)
    return model_dir


def test_predict_refuses_a_model_with_non_finite_weights(export_dir, tmp_path, capsys):
    import keras

    from detrec.train import models  # noqa: F401  (registers detrec's layers for loading)

    bad_dir = str(tmp_path / "nan")
    shutil.copytree(export_dir, bad_dir)
    path = os.path.join(bad_dir, rundir.EXPORT, rundir.EXPORT_MODEL)
    model = keras.saving.load_model(path)
    weights = model.get_weights()
    weights[0][...] = np.nan
    model.set_weights(weights)
    model.save(path)
    good = str(tmp_path / "good.jpg")
    with open(good, "wb") as f:
        f.write(image_factory.jpeg(80, 60))
    assert cli.main(["predict", "--model-dir", bad_dir, good]) == 2
    line = one_error_line(capsys.readouterr().err, "detrec predict:")
    assert "weights are not finite" in line


# --- 9. the model dir -----------------------------------------------------------------------
def _user_folder(tmp_path) -> tuple[str, dict[str, bytes]]:
    folder = tmp_path / "mine"
    files = {rundir.METRICS: b'{"mine": true}\n', os.path.join(rundir.EXPORT, rundir.EXPORT_MODEL): b"my model"}
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return str(folder), files


def _unchanged(folder: str, files: dict[str, bytes]) -> bool:
    present = sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs_ in os.walk(folder) for f in fs_)
    return present == sorted(files) and all(open(os.path.join(folder, n), "rb").read() == c
                                            for n, c in files.items())


WANTED = {"model": "semi_alexnet", "num_classes": 6, "image_size": 64, "synsets": ["a"] * 6}


@pytest.mark.parametrize("extra, message", [
    ({}, "is not empty (export, metrics.json) and is not a detrec run"),
    ({rundir.RUN_CONFIG: b'{"lr": 0.1, "optimizer": "sgd"}'}, "run_config.json was not written by detrec"),
    ({rundir.RUN_CONFIG: b"\xff\xfe not json"}, "run_config.json was not written by detrec"),
    ({rundir.RUN_CONFIG: b"[1, 2, 3]"}, "run_config.json was not written by detrec"),
])
def test_a_non_empty_folder_that_is_not_a_detrec_run_is_refused_untouched(tmp_path, extra, message):
    folder, files = _user_folder(tmp_path)
    for name, content in extra.items():
        (tmp_path / "mine" / name).write_bytes(content)
    files.update(extra)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rundir.prepare(folder, WANTED, chief=True)
    assert _unchanged(folder, files)


@pytest.mark.parametrize("setup", ["new", "empty", "temporaries-only", "detrec-run"])
def test_new_empty_and_detrec_folders_are_fine(tmp_path, setup):
    from detrec.core import fs

    folder = tmp_path / "m"
    if setup != "new":
        folder.mkdir()
    if setup == "temporaries-only":  # a first run killed while writing run_config.json
        (folder / os.path.basename(fs.temp_path(str(folder / rundir.RUN_CONFIG)))).write_text("{")
    if setup == "detrec-run":
        (folder / rundir.RUN_CONFIG).write_text(json.dumps(dict(WANTED, epochs=3, lr=0.001)))
        (folder / rundir.METRICS).write_text("{}")
    rundir.prepare(str(folder), WANTED, chief=True)
    assert json.loads((folder / rundir.RUN_CONFIG).read_text()) == WANTED


def test_train_cli_refuses_a_users_folder_and_leaves_it_alone(dataset_dir, tmp_path, capsys):
    folder, files = _user_folder(tmp_path)
    assert cli.main(["train", "--data", dataset_dir, "--model-dir", folder, *SMALL, "--epochs", "1"]) == 2
    line = one_error_line(capsys.readouterr().err, "detrec train: error:")
    assert "is not a detrec run" in line and "use another --model-dir" in line
    assert _unchanged(folder, files)


# --- 10. predict: one bad file costs that file only --------------------------------------------
def png_claiming(width: int, height: int) -> bytes:
    """A PNG header claiming width x height, a few bytes of data: a decompression bomb."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header claims width x height."""
    data = bytearray(image_factory.jpeg(64, 48))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(image_factory.encode(image_factory.picture(8, 8), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


BAD_FILES = {
    "bomb.png": (png_claiming(30000, 30000), "too large"),
    "huge-claim.jpg": (jpeg_claiming(60000, 60000), "too large"),
    "wide.gif": (gif_claiming(65535, 65535), ""),
    "truncated.jpg": (image_factory.truncated_jpeg(64, 48), "truncated"),
    "notes.jpg": (b"just some text\n", "not an image"),
}


def test_predict_answers_the_good_files_and_names_each_bad_one(export_dir, tmp_path, capsys):
    good = []
    for i in range(2):
        path = str(tmp_path / f"good{i}.jpg")
        with open(path, "wb") as f:
            f.write(image_factory.jpeg(120, 90, seed=i))
        good.append(path)
    bad = {}
    for name, (content, reason) in BAD_FILES.items():
        bad[str(tmp_path / name)] = reason
        (tmp_path / name).write_bytes(content)
    big = str(tmp_path / "big.jpg")  # sparse: larger than predict reads, nothing written
    with open(big, "wb") as f:
        f.truncate((129 << 20))
    bad[big] = "larger than 128 MB"
    fifo = str(tmp_path / "fifo.jpg")  # would block a plain open() forever
    os.mkfifo(fifo)
    bad[fifo] = "not a regular file"
    bad[str(tmp_path / "missing.jpg")] = "No such file"
    paths = [good[0], *bad, good[1]]
    # 2, not 1: a missing path is a mistake in the command line (the others are still answered)
    assert cli.main(["predict", "--model-dir", export_dir, *paths, "--json"]) == 2
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    doc = json.loads(out.out)
    assert [d["file"] for d in doc] == paths
    assert all("top" in d and len(d["top"]) == 3 for d in doc if d["file"] in good)
    for path, reason in bad.items():
        lines = [line for line in out.err.splitlines() if line.startswith(f"detrec predict: {path}: ")]
        assert len(lines) == 1 and reason in lines[0], (path, out.err)


@pytest.mark.parametrize("raised", [MemoryError(), tf.errors.InvalidArgumentError(None, None, "Invalid JPEG data"),
                                    ValueError("odd"), OSError(5, "Input/output error")])
def test_predict_survives_whatever_one_file_raises(export_dir, tmp_path, monkeypatch, raised):
    from detrec.train import predict

    paths = []
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(image_factory.jpeg(80, 60))
        paths.append(str(tmp_path / name))
    real = predict.prepare  # what predict does to each file's bytes first

    def flaky(data, *args):
        if data == open(paths[1], "rb").read():
            raise raised
        return real(data, *args)

    (tmp_path / "b.jpg").write_bytes(image_factory.jpeg(80, 60, seed=3))
    monkeypatch.setattr(predict, "prepare", flaky)
    results = predict.Predictor(export_dir).predict(paths)
    assert results[1].error and not results[1].top
    assert results[0].top and results[2].top and not results[0].error and not results[2].error


# --- 11. the tf.data service --------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_servers_warn_that_they_are_unauthenticated_and_listed_workers_only(capfd):
    from detrec.train import data_service

    allowed = free_port()
    dispatcher = data_service.start_dispatcher(port=0, workers=[f"localhost:{allowed}"])
    address = data_service.dispatcher_address(dispatcher)
    servers = [dispatcher]
    try:
        servers.append(data_service.start_worker(address, port=allowed, worker_address=f"localhost:{allowed}"))
        stranger = free_port()
        with pytest.raises(RuntimeError, match="Failed to assign an index"):
            servers.append(data_service.start_worker(address, port=stranger,
                                                     worker_address=f"localhost:{stranger}"))
        assert dispatcher._num_workers() == 1
        values = sorted(int(v) for b in data_service.distribute(tf.data.Dataset.range(12).batch(4), address)
                        for v in b.numpy())
        assert values == list(range(12))
    finally:
        for server in reversed(servers):
            server.stop()
    warnings = [line for line in capfd.readouterr().err.splitlines() if "no authentication" in line]
    assert len(warnings) == 2  # the dispatcher and the admitted worker (the refused one never served)
    assert warnings[0].startswith("detrec data-service: warning: the tf.data dispatcher listens on port")
    assert f"the tf.data worker listens on port {allowed} " in warnings[1]
    assert all("trusted private network" in line for line in warnings)


@pytest.mark.parametrize("workers", ["bad host!", "10.0.0.1:99999", "a:b"])
def test_bad_worker_list_is_one_line(capsys, workers):
    assert cli.main(["data-service", "dispatcher", "--port", "0", "--workers", workers]) == 2
    err = capsys.readouterr().err
    assert err.startswith("detrec data-service: error: worker") and err.count("\n") == 1


def test_cli_server_prints_the_warning_once(tmp_path):
    log = tmp_path / "err.txt"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "detrec.pipelines.cli", "data-service", "dispatcher",
                                 "--port", "0", "--host", "localhost"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=err, text=True)
        try:
            assert "ready" in proc.stdout.readline()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
    lines = [line for line in log.read_text().splitlines() if line.startswith("detrec data-service: warning:")]
    assert len(lines) == 1 and "every network interface" in lines[0]


# --- 12. logs outside a terminal -------------------------------------------------------------
class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_whole_lines_outside_a_terminal_and_a_bar_on_one():
    from tqdm import tqdm

    out = io.StringIO()
    bar = progress.bar(total=5, desc="epoch 1/2", unit="step", file=out, every=0)
    assert isinstance(bar, progress.LineProgress)
    for _ in range(5):
        bar.update(1)
        bar.set_postfix(loss="0.5000", refresh=False)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 5
    assert lines[-1].startswith("epoch 1/2: 5/5 step, ") and lines[-1].endswith("loss=0.5000")
    quiet = io.StringIO()
    slow = progress.bar(total=5, desc="x", unit="step", file=quiet, every=3600)
    slow.update(5)
    assert quiet.getvalue() == ""  # at most one line per interval
    assert isinstance(progress.bar(total=5, desc="x", unit="step", file=_Tty()), tqdm)
    assert isinstance(progress.bar(total=5, desc="x", unit="step", file=out, enabled=False), tqdm)


def test_training_log_in_a_file_has_no_carriage_returns(dataset_dir, tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(progress, "LINE_EVERY", 0.0)
    model_dir = str(tmp_path / "m")
    assert cli.main(["train", "--data", dataset_dir, "--model-dir", model_dir, *SMALL, "--epochs", "1",
                     "--steps-per-epoch", "3", "--checkpoint-every", "2"]) == 0
    err = capfd.readouterr().err
    assert "\r" not in err
    assert [line for line in err.splitlines() if line.startswith("epoch 1/1: ")][-1].startswith("epoch 1/1: 3/3 step")
    assert any(line.startswith("validate: ") for line in err.splitlines())
