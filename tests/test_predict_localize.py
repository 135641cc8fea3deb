"""`detrec predict` with a localize model (issue #24): boxes back in the source's pixels, drawings,
a split's records, a Kaggle submission.

Models with known answers, no training: the class logits and the box (ymin, xmin, ymax, xmax)
normalised to the model's input are Dense biases over zero kernels, whatever the image. Every
expected box below is computed by hand from that box, the transform's window and the image.
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import pytest
from PIL import Image

from detrec.core import images, schema, tfrecord
from detrec.core.dataset_info import ClassInfo, DatasetInfo, ShardInfo, SplitInfo
from detrec.pipelines import cli
from detrec.train import predict

BOX = (0.1, 0.2, 0.5, 0.6)  # ymin, xmin, ymax, xmax of the model's input
# ids by falling logit: 5, 2, 3, 1, 6, 0 (background), 4
LOGITS = [0.0, 1.0, 3.0, 2.0, -1.0, 4.0, 0.5]
RANKED = [5, 2, 3, 1, 6, 0, 4]
SIZE = 64
GREY = 128


def export(out: str, preprocess: str = "inception", size: int = SIZE) -> str:
    """An export, written by train/export.py, of a localize model whose logits are LOGITS and
    whose box is BOX for any image."""
    import keras

    from detrec.train import export as export_lib
    from detrec.train import models
    from detrec.train.config import TrainConfig

    inputs = keras.Input((size, size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    logits = keras.layers.Dense(len(LOGITS), kernel_initializer="zeros", name="logits",
                                bias_initializer=keras.initializers.Constant(LOGITS))(pooled)
    box = keras.layers.Dense(4, kernel_initializer="zeros", name="box",
                             bias_initializer=keras.initializers.Constant(BOX))(pooled)
    classes = [ClassInfo(0, "background", "background")] + [
        ClassInfo(i, f"n0000000{i}", f"class {i}") for i in range(1, len(LOGITS))]
    cfg = TrainConfig(model_dir=out, model=models.ModelConfig("semi_alexnet", len(LOGITS), size, task="localize"),
                      epochs=1, batch_size=1, steps_per_epoch=1, preprocess=preprocess)
    export_lib.export_model(keras.Model(inputs, {"logits": logits, "box": box}), out, cfg, classes,
                            best_epoch=1, val_top1=0.0)
    with open(os.path.join(out, "export", "labels.json")) as fh:
        assert json.load(fh)["task"] == "localize"
    return out


@pytest.fixture(scope="module")
def inception_dir(tmp_path_factory) -> str:
    return export(str(tmp_path_factory.mktemp("loc") / "inception"))


def jpeg(width: int, height: int, orientation: int = 1, fill: int = GREY) -> bytes:
    image = Image.new("RGB", (width, height), (fill, fill, fill))
    exif = Image.Exif()
    if orientation != 1:
        exif[images.ORIENTATION_TAG] = orientation
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def write(path, data: bytes) -> str:
    with open(path, "wb") as fh:
        fh.write(data)
    return str(path)


def box_of(model_dir: str, path: str) -> tuple[float, ...]:
    (result,) = predict.Predictor(model_dir).predict([path])
    assert not result.error, result.error
    return result.box


# --- the box, by hand ------------------------------------------------------------------------
def test_inception_box_is_the_whole_image_scaled(inception_dir, tmp_path):
    # 200 wide, 100 high, window = the whole image: x 0.2*200, 0.6*200; y 0.1*100, 0.5*100
    path = write(tmp_path / "wide.jpg", jpeg(200, 100))
    assert box_of(inception_dir, path) == pytest.approx((40.0, 10.0, 120.0, 50.0))


@pytest.mark.parametrize("size, expected", [
    # crop: window (y 18, x 68, 64, 64) = ((100-64)//2, (200-64)//2): y 18+6.4, 18+32; x 68+12.8, 68+38.4
    (64, (80.8, 24.4, 106.4, 50.0)),
    # crop x, pad y: window (y -14, x 36, 128, 128): y -14+12.8 = -1.2 -> 0 (clipped), -14+64 = 50;
    # x 36+25.6, 36+76.8
    (128, (61.6, 0.0, 112.8, 50.0)),
])
def test_seed_box_follows_the_crop_or_pad_window(tmp_path, size, expected):
    model_dir = export(str(tmp_path / "seed"), preprocess="seed", size=size)
    path = write(tmp_path / "wide.jpg", jpeg(200, 100))
    assert box_of(model_dir, path) == pytest.approx(expected, abs=1e-4)


def test_an_exif_rotated_photo_gets_its_box_in_the_stored_frame(inception_dir, tmp_path):
    # Stored 200x100, tag 6 (shown turned 90 clockwise): the model sees it upright, 100 wide and
    # 200 high, box x 20..60, y 20..100. A stored pixel (xs, ys) is shown at (100 - ys, xs), so
    # xs = y shown: 20..100; ys = 100 - x shown: 40..80.
    path = write(tmp_path / "phone.jpg", jpeg(200, 100, orientation=6))
    assert box_of(inception_dir, path) == pytest.approx((20.0, 40.0, 100.0, 80.0), abs=1e-4)


def test_a_downscaled_rotated_photo_gets_its_box_in_the_source_pixels(inception_dir, tmp_path, monkeypatch):
    # A limit of 20,000 pixels makes prepare decode the stored 400x200 at 1/2 (200x100), then turn
    # it: the model sees 100x200, box x 20..60, y 20..100 -> normalised shown x .2-.6, y .1-.5
    # -> stored x = y shown * 400: 40..200; stored y = (1 - x shown) * 200: 80..160.
    small = lambda data: images.prepare(data, None, max_pixels=20_000, downscale=True)  # noqa: E731
    prepared = small(jpeg(400, 200, orientation=6))
    assert (prepared.width, prepared.height, prepared.converted_from) == (100, 200, "jpeg-downscaled")
    monkeypatch.setattr(predict, "prepare", small)
    path = write(tmp_path / "big.jpg", jpeg(400, 200, orientation=6))
    assert box_of(inception_dir, path) == pytest.approx((40.0, 80.0, 200.0, 160.0), abs=1e-4)


# --- the CLI -----------------------------------------------------------------------------------
def test_text_lists_the_classes_in_falling_order_then_the_box(inception_dir, tmp_path, capsys):
    path = write(tmp_path / "wide.jpg", jpeg(200, 100))
    assert cli.main(["predict", "--model-dir", inception_dir, path, "--top", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == path and len(lines) == 9
    assert [line.split()[2] for line in lines[1:8]] == [str(i) for i in RANKED]
    assert lines[8] == "  box (xmin ymin xmax ymax): 40.0 10.0 120.0 50.0"
    probs = [float(line.split()[1].rstrip("%")) for line in lines[1:8]]
    assert probs == sorted(probs, reverse=True) and probs[0] > probs[1]

    assert cli.main(["predict", "--model-dir", inception_dir, path, "--top", "2", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert [t["id"] for t in entry["top"]] == [5, 2]
    assert entry["box"] == {"xmin": 40.0, "ymin": 10.0, "xmax": 120.0, "ymax": 50.0}


def red(pixel) -> bool:
    r, g, b = pixel
    return r > 200 and g < 70 and b < 70


def test_draw_writes_the_box_and_never_overwrites(inception_dir, tmp_path, capsys):
    path = write(tmp_path / "wide.jpg", jpeg(200, 100))
    folder = tmp_path / "drawn"
    folder.mkdir()
    mine = write(folder / "notes.txt", b"the user's")
    assert cli.main(["predict", "--model-dir", inception_dir, path, "--draw", str(folder)]) == 0
    with Image.open(folder / "wide.jpg") as drawn:
        assert drawn.size == (200, 100)
        pixels = drawn.convert("RGB")
    # the box 40..120 x 10..50: its left and right edges, its bottom edge; inside and outside stay grey
    assert red(pixels.getpixel((40, 30))) and red(pixels.getpixel((119, 30))) and red(pixels.getpixel((80, 49)))
    for xy in ((80, 30), (20, 80), (160, 80)):
        assert all(abs(v - GREY) < 12 for v in pixels.getpixel(xy)), xy
    first = (folder / "wide.jpg").read_bytes()
    assert cli.main(["predict", "--model-dir", inception_dir, path, "--draw", str(folder)]) == 0
    assert sorted(os.listdir(folder)) == ["notes.txt", "wide-2.jpg", "wide.jpg"]
    assert (folder / "wide.jpg").read_bytes() == first and open(mine, "rb").read() == b"the user's"
    capsys.readouterr()


def test_submission_matches_a_hand_written_csv(inception_dir, tmp_path, capsys):
    b = write(tmp_path / "b_img.jpg", jpeg(200, 100))  # box 40 10 120 50
    a = write(tmp_path / "a_img.png", jpeg(100, 50))  # box 20 5 60 25 (a JPEG named .png: any name works)
    out = tmp_path / "sub.csv"
    assert cli.main(["predict", "--model-dir", inception_dir, b, a, "--submission", str(out)]) == 0
    # the top 5 without background (id 0): 5 2 3 1 6, each with the image's box; sorted by ImageId
    assert out.read_text() == (
        "ImageId,PredictionString\n"
        "a_img,n00000005 20 5 60 25 n00000002 20 5 60 25 n00000003 20 5 60 25 n00000001 20 5 60 25 "
        "n00000006 20 5 60 25\n"
        "b_img,n00000005 40 10 120 50 n00000002 40 10 120 50 n00000003 40 10 120 50 n00000001 40 10 120 50 "
        "n00000006 40 10 120 50\n")
    capsys.readouterr()
    # An existing file is refused before anything is predicted, and left as it was.
    assert cli.main(["predict", "--model-dir", inception_dir, a, "--submission", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0] and out.read_text().startswith("ImageId,")


def test_submission_needs_a_localize_model(known_model_dir, tmp_path, capsys):
    path = write(tmp_path / "x.jpg", jpeg(40, 30))
    out = tmp_path / "sub.csv"
    assert cli.main(["predict", "--model-dir", known_model_dir, path, "--submission", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "localize model" in err[0] and not out.exists()


def test_classify_output_is_unchanged(known_model_dir, tmp_path, capsys):
    path = write(tmp_path / "x.jpg", jpeg(40, 30))
    assert cli.main(["predict", "--model-dir", known_model_dir, path, "--top", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3  # the file, two classes, no box
    assert cli.main(["predict", "--model-dir", known_model_dir, path, "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert set(entry) == {"file", "top"}


# --- a split's records ---------------------------------------------------------------------------
def record(source_id: str, width: int, height: int, labelled: bool, converted_from: str = "") -> bytes:
    data = jpeg(width, height)
    label = dict(class_label=0, class_text="background") if labelled else dict(
        class_label=None, class_text="", label_source=schema.LABEL_NONE)
    return schema.encode(schema.Record(encoded=data, height=height, width=width, filename=f"{source_id}.JPEG",
                                       source_id=source_id, objects=(), converted_from=converted_from, **label))


def shard(path: str, payloads: list[bytes], bad_crc: int | None = None) -> ShardInfo:
    with open(path, "wb") as fh:
        for i, payload in enumerate(payloads):
            head, tail = tfrecord.frame(payload)
            fh.write(head + payload + (b"\0\0\0\0" if i == bad_crc else tail))
    data = open(path, "rb").read()
    return ShardInfo(os.path.basename(path), len(payloads), len(data), hashlib.sha256(data).hexdigest())


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory) -> str:
    """Split "test" of 2 shards: img_b (200x100, labelled), img_a (100x50, no class keys), a
    record whose data fails its CRC, then img_c (50x100, resized by preprocess --shorter-side),
    a payload that is no Example."""
    out = str(tmp_path_factory.mktemp("records"))
    first = shard(os.path.join(out, schema.shard_name("test", 0, 2)),
                  [record("img_b", 200, 100, True), record("img_a", 100, 50, False), record("lost", 80, 80, True)],
                  bad_crc=2)
    second = shard(os.path.join(out, schema.shard_name("test", 1, 2)), [record("img_c", 50, 100, False, "jpeg-resized"), b"junk"])
    classes = (ClassInfo(0, "background", "background"),) + tuple(
        ClassInfo(i, f"n0000000{i}", f"class {i}") for i in range(1, len(LOGITS)))
    info = DatasetInfo(num_classes=len(LOGITS), classes=classes,
                       splits={"test": SplitInfo(num_examples=5, shards=(first, second))})
    with open(os.path.join(out, schema.DATASET_INFO), "w") as fh:
        fh.write(info.to_json())
    return out


def test_data_predicts_every_readable_record_of_a_split(inception_dir, records_dir, tmp_path, capsys):
    out = tmp_path / "sub.csv"
    code = cli.main(["predict", "--model-dir", inception_dir, "--data", records_dir, "--split", "test",
                     "--json", "--submission", str(out), "--top", "1"])
    captured = capsys.readouterr()
    assert code == 1  # two records could not be read; the others are answered
    doc = json.loads(captured.out)
    boxes = {e["source_id"]: e["box"] for e in doc if "box" in e}
    # Each record's own stored pixels: 200x100, 100x50, 50x100 (x .2-.6, y .1-.5 of them)
    assert boxes == {"img_b": {"xmin": 40.0, "ymin": 10.0, "xmax": 120.0, "ymax": 50.0},
                     "img_a": {"xmin": 20.0, "ymin": 5.0, "xmax": 60.0, "ymax": 25.0},
                     "img_c": {"xmin": 10.0, "ymin": 10.0, "xmax": 30.0, "ymax": 50.0}}
    assert all(e["top"][0]["id"] == 5 for e in doc if "top" in e)
    shard0 = os.path.join(records_dir, schema.shard_name("test", 0, 2))
    shard1 = os.path.join(records_dir, schema.shard_name("test", 1, 2))
    assert f"{shard0} record 2: corrupt record" in captured.err
    assert f"{shard1} record 1: not a detrec record" in captured.err
    assert "Traceback" not in captured.err
    # img_c's pixels are not its source's (resized): its box cannot be scored against the
    # source's annotations, so it has no row, and says why
    assert "img_c: its record was stored jpeg-resized by preprocess" in captured.err
    guesses = lambda box: " ".join(f"n0000000{i} {box}" for i in (5, 2, 3, 1, 6))  # noqa: E731
    assert out.read_text() == ("ImageId,PredictionString\n"
                               f"img_a,{guesses('20 5 60 25')}\n"
                               f"img_b,{guesses('40 10 120 50')}\n")


def test_data_mistakes_are_one_line(inception_dir, records_dir, tmp_path, capsys):
    image = write(tmp_path / "x.jpg", jpeg(40, 30))
    for argv, words in ((["--data", records_dir], "--data and --split"),
                        (["--data", records_dir, "--split", "test", image], "not both"),
                        (["--data", records_dir, "--split", "train"], "no split 'train'"),
                        ([], "nothing to predict")):
        assert cli.main(["predict", "--model-dir", inception_dir, *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err


def test_the_box_maps_are_inverses_of_prepare(tmp_path):
    """source_box undoes every orientation: a box turned upright as preprocess turns annotation
    boxes (images.upright_boxes) comes back where it was."""
    box = schema.Box(0.1, 0.2, 0.3, 0.7, 1, "x")
    for orientation in range(1, 9):
        prepared = images.prepare(jpeg(60, 40, orientation=orientation))
        (up,) = images.upright_boxes((box,), prepared)
        shown = (up.xmin * prepared.width, up.ymin * prepared.height, up.xmax * prepared.width,
                 up.ymax * prepared.height)
        assert predict.source_box(shown, prepared) == pytest.approx((6.0, 8.0, 18.0, 28.0)), orientation
        assert prepared.source_size == (60, 40)
