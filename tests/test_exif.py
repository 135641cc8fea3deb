"""The EXIF orientation rule (detrec.core.images): applied once, at `prepare`; ignored by every reader.

JPEGs with an Orientation tag are made with Pillow (`exif=`), with a bright block painted in
a known place of the stored pixels, so where that block ends up is the ground truth for
both the pixels and the boxes. Checked: `prepare` turns all eight orientations upright and
moves boxes with them; tf.data, DALI (CPU mode, the graph the GPU mode shares) and predict
decode a tagged record's stored pixels alike; the contact sheet draws the same frame; and the
real preprocess job stores a rotated photo upright with its boxes on the object.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from detrec.core import dataset_info, images, schema, tfrecord
from detrec.train import augment
from detrec.train import input as input_lib
from detrec.train import predict
from detrec.train.input import dali
from tests.conftest import run_preprocess
from tests.test_input import records_by_key

W, H = 160, 120  # stored (landscape) pixels
BLOCK = (100, 10, 150, 30)  # x0, y0, x1, y1 of the bright block in the stored pixels


def painted(width: int = W, height: int = H, block=BLOCK) -> np.ndarray:
    """A dark, smooth, asymmetric background (every flip and turn tells) and the white block."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([20 + 70 * x / width, 20 + 70 * y / height, 20 + 35 * (x + y) / (width + height)], -1)
    pixels = pixels.astype(np.uint8)
    x0, y0, x1, y1 = block
    pixels[y0:y1, x0:x1] = 250
    return pixels


def tagged_jpeg(orientation: int, pixels: np.ndarray | None = None, **save) -> bytes:
    exif = Image.Exif()
    exif[images.ORIENTATION_TAG] = orientation
    buf = io.BytesIO()
    Image.fromarray(painted() if pixels is None else pixels).save(buf, save.pop("format", "JPEG"), quality=95,
                                                                  exif=exif.tobytes(), **save)
    return buf.getvalue()


# What EXIF orientation n asks a viewer to do to the stored pixels (Exif 2.3, tag 0x0112).
UPRIGHT = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, -1)[::-1],
           8: lambda a: np.rot90(a, 1)}


def bright_box(pixels: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the block: the pixels whiter than anything else in the picture."""
    ys, xs = np.nonzero(pixels.astype(np.float32).min(axis=-1) > 200)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# --- prepare: upright pixels, boxes that follow -------------------------------------------
@pytest.mark.parametrize("orientation", range(1, 9))
def test_prepare_turns_every_orientation_upright_and_boxes_follow(orientation):
    data = tagged_jpeg(orientation)
    out = images.prepare(data)
    assert out.orientation == orientation
    turned = orientation in (5, 6, 7, 8)
    assert (out.width, out.height) == ((H, W) if turned else (W, H))
    assert out.source_size == (W, H)
    if orientation == 1:
        assert out.data == data and out.converted_from == ""  # a normal tag: bytes untouched
        return
    assert out.converted_from == "jpeg-exif-rotated"
    assert images.exif_orientation(out.data) == images.NORMAL  # no tag travels on
    # Ground truth: what the tag asks of a viewer, done in numpy, and the block inside it.
    expected = UPRIGHT[orientation](painted())
    got = decoded(out.data)
    assert got.shape == expected.shape
    assert np.abs(got.astype(np.float32) - expected).mean() < 4  # one JPEG re-encode at quality 95
    x0, y0, x1, y1 = BLOCK
    box = schema.Box(x0 / W, y0 / H, x1 / W, y1 / H, 1, "n01")
    (moved,) = images.upright_boxes((box,), out, (W, H))  # annotated on the stored pixels
    assert np.allclose(np.array([moved.xmin * out.width, moved.ymin * out.height, moved.xmax * out.width,
                                 moved.ymax * out.height]), bright_box(got), atol=1.5)
    assert (moved.label, moved.text) == (1, "n01")


def test_boxes_annotated_on_the_upright_photo_stay_put():
    """An annotation whose <size> is the upright size was drawn on the turned photo."""
    out = images.prepare(tagged_jpeg(6))
    box = schema.Box(0.1, 0.2, 0.3, 0.4, 1, "n01")
    assert images.upright_boxes((box,), out, (H, W)) == (box,)  # <size> = upright (120 x 160)
    assert images.upright_boxes((box,), out, (W, H)) != (box,)  # <size> = stored
    assert images.upright_boxes((box,), out, None) != (box,)    # no <size>: the stored frame
    square = images.prepare(tagged_jpeg(6, painted(64, 64, (5, 5, 20, 20))))
    assert images.upright_boxes((box,), square, (64, 64)) != (box,)  # ambiguous: the stored frame


def test_other_formats_and_cmyk_are_turned_too():
    for fmt, source in (("PNG", "png"), ("WEBP", "webp")):
        out = images.prepare(tagged_jpeg(8, format=fmt))
        assert (out.converted_from, out.orientation, out.width, out.height) == (source, 8, H, W)
        assert np.allclose(bright_box(decoded(out.data)), bright_box(UPRIGHT[8](painted())), atol=1.5)
    cmyk = io.BytesIO()
    exif = Image.Exif()
    exif[images.ORIENTATION_TAG] = 6
    Image.fromarray(painted()).convert("CMYK").save(cmyk, "JPEG", quality=95, exif=exif.tobytes())
    out = images.prepare(cmyk.getvalue())
    assert (out.converted_from, out.orientation, out.width, out.height) == ("jpeg-cmyk", 6, H, W)


def test_a_broken_or_meaningless_tag_keeps_the_bytes():
    data = tagged_jpeg(1)
    assert images.prepare(data).data == data
    for bad in (0, 9, 300):
        weird = tagged_jpeg(bad)
        assert images.prepare(weird).data == weird
    # An Exif segment whose TIFF header is garbage: the tag is unreadable, the pixels are fine.
    plain = tagged_jpeg(6)
    at = plain.index(b"Exif\x00\x00") + 6
    garbage = plain[:at] + b"XX\x00\x00" + plain[at + 4:]
    assert images.exif_orientation(garbage) == images.NORMAL
    assert images.prepare(garbage).data == garbage


# --- every reader sees the stored pixels --------------------------------------------------
def test_both_decoders_ignore_the_tag_of_a_record():
    """A record written before the rule (tag still inside) decodes alike on both decoders."""
    from nvidia.dali import fn, pipeline_def

    data = tagged_jpeg(6)
    tf_pixels = tf.io.decode_jpeg(data, channels=3, dct_method=augment.DCT_METHOD).numpy()
    assert tf_pixels.shape == (H, W, 3) and tuple(augment.jpeg_shape(data).numpy()) == (H, W)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        encoded = fn.external_source(source=lambda: [np.frombuffer(data, np.uint8)], batch=True)
        args = dali.decoder_args(gpu=False)
        return (fn.decoders.image(encoded, device="cpu", **args),
                fn.decoders.image_slice(encoded, [0, 0], [H, W], axes=[0, 1], device="cpu", **args),
                fn.peek_image_shape(encoded, adjust_orientation=False))

    p = pipe()
    p.build()
    full, sliced, shape = (np.array(t[0]) for t in p.run())
    assert tuple(shape) == (H, W, 3) and full.shape == sliced.shape == (H, W, 3)
    assert np.abs(full.astype(np.float32) - tf_pixels).max() <= 1  # libjpeg-turbo both, accurate IDCT
    np.testing.assert_array_equal(full, sliced)


def _write_dataset(out: str, records: list[schema.Record]) -> str:
    """A one-split ('val') dataset holding `records` as they are, written with detrec.core."""
    os.makedirs(out, exist_ok=True)
    name = schema.shard_name("val", 0, 1)
    offset, lines = 0, []
    with open(os.path.join(out, name), "wb") as f:
        for record in records:
            payload = schema.encode(record)
            head, tail = tfrecord.frame(payload)
            f.write(head + payload + tail)
            lines.append(tfrecord.index_line(offset, len(payload)))
            offset += tfrecord.record_span(len(payload))
    with open(os.path.join(out, name + schema.INDEX_SUFFIX), "w") as f:
        f.write("".join(lines))
    size = os.path.getsize(os.path.join(out, name))
    info = dataset_info.DatasetInfo(
        num_classes=2, classes=(dataset_info.ClassInfo(0, "background", "background"),
                                dataset_info.ClassInfo(1, "n01", "thing")),
        splits={"val": dataset_info.SplitInfo(len(records), (dataset_info.ShardInfo(name, len(records), size, ""),))})
    with open(os.path.join(out, schema.DATASET_INFO), "w") as f:
        f.write(info.to_json())
    return out


@pytest.mark.dali
def test_both_input_lines_give_a_tagged_record_the_same_frame(tmp_path):
    x0, y0, x1, y1 = BLOCK
    box = schema.Box(x0 / W, y0 / H, x1 / W, y1 / H, 1, "n01")
    records = [schema.Record(encoded=tagged_jpeg(o), height=H, width=W, filename=f"{o}.jpg", source_id=str(o),
                             objects=(box,), class_label=1, class_text="n01") for o in (3, 6, 8)]
    data = _write_dataset(str(tmp_path / "data"), records)
    size = (H, W)  # the stored frame: a turned decode would be squeezed into it
    rows = {}
    for decoder in ("cpu", "dali"):
        ds = input_lib.make_dataset(data, "val", batch_size=3, image_size=size, training=False, decoder=decoder,
                                    with_boxes=True, repeat=True)
        plan = input_lib.epoch_plan(data, "val", batch_size=3, training=False, decoder=decoder)
        (batch,) = list(input_lib.take_epoch(iter(ds), plan))
        rows[decoder] = [t.numpy() for t in batch]
    for decoder, (pixels, _, boxes, _) in rows.items():
        for image, boxes_of in zip(pixels, boxes):
            at = bright_box((image + 1.0) * 127.5)  # [-1, 1] back to grey levels
            assert np.allclose(at, BLOCK, atol=1.5), decoder  # the block where the stored pixels have it
            assert np.allclose(boxes_of[0], [box.ymin, box.xmin, box.ymax, box.xmax], atol=1e-6)
    assert np.abs(rows["cpu"][0] - rows["dali"][0]).max() < 1e-3


def test_predict_sees_the_photo_upright(tmp_path):
    """Predict goes through `prepare`: a tagged photo reaches the model as its upright twin."""
    upright = np.asarray(Image.fromarray(painted()).transpose(Image.Transpose.ROTATE_270))  # orientation 6
    buf = io.BytesIO()
    Image.fromarray(upright).save(buf, "JPEG", quality=95)
    for preprocess in ("inception", "seed"):
        seen = predict.prepare_image(tagged_jpeg(6), 64, preprocess).numpy().astype(np.float32)
        twin = predict.prepare_image(buf.getvalue(), 64, preprocess).numpy().astype(np.float32)
        stored = predict.eval_image(tf.constant(tagged_jpeg(6)), 64, preprocess).numpy().astype(np.float32)
        assert np.abs(seen - twin).mean() < 0.1  # two JPEG encodes of the same upright pixels
        assert np.abs(seen - stored).mean() > 4 * np.abs(seen - twin).mean()


def test_the_contact_sheet_draws_the_stored_frame():
    from detrec.inspector import contact_sheet

    record = schema.Record(encoded=tagged_jpeg(6), height=H, width=W, filename="a.jpg", source_id="a",
                           objects=(), class_label=1, class_text="n01")
    sheet, placed = contact_sheet.contact_sheet([contact_sheet.Sample("s", 0, record)], 1, 1, {1: "thing"}, cell=160)
    (cell,) = placed
    assert cell["scale"] == 1.0 and cell["y"] == (160 - H) // 2  # landscape, as decoded for training
    block = bright_box(np.asarray(sheet))
    assert np.allclose(block, (BLOCK[0], BLOCK[1] + cell["y"], BLOCK[2], BLOCK[3] + cell["y"]), atol=1.5)


# --- the real preprocess job --------------------------------------------------------------
@pytest.fixture(scope="module")
def rotated_dataset(tmp_path_factory):
    """The synth tree with one val photo replaced by its stored-sideways twin (Orientation 6)
    whose XML, like ILSVRC's, gives <size> and boxes in the stored pixels; then preprocess."""
    from lxml import etree

    from detrec.preprocess import synth

    root = synth.generate(synth.SynthConfig(out=str(tmp_path_factory.mktemp("exif")), train=8, val=4, classes=2,
                                            seed=5, width=160, height=120))["root"]
    stem = "ILSVRC2012_val_00000001"
    jpeg = os.path.join(root, "Data", "DET", "val", stem + ".JPEG")
    xml = os.path.join(root, "Annotations", "DET", "val", stem + ".xml")
    upright = np.asarray(Image.open(jpeg).convert("RGB"))
    uh, uw = upright.shape[:2]
    tree = etree.parse(xml)
    truth = []
    for obj in tree.getroot().iter("object"):
        bb = obj.find("bndbox")
        x0, x1, y0, y1 = (float(bb.findtext(k)) for k in ("xmin", "xmax", "ymin", "ymax"))
        truth.append((x0 / uw, y0 / uh, x1 / uw, y1 / uh))
        # Orientation 6 shows the stored pixels turned clockwise; stored (x, y) = (y', W' - x').
        for key, value in (("xmin", y0), ("xmax", y1), ("ymin", uw - x1), ("ymax", uw - x0)):
            bb.find(key).text = str(int(value))
    tree.getroot().find("size/width").text, tree.getroot().find("size/height").text = str(uh), str(uw)
    tree.write(xml)
    stored = np.asarray(Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90))
    with open(jpeg, "wb") as f:
        f.write(tagged_jpeg(6, stored))
    out = str(tmp_path_factory.mktemp("exif-data"))
    assert run_preprocess(root, out, "--num-shards", "train=1,val=1",
                          "--synset-map", os.path.join(root, "devkit", "data", "map_det.txt")) == 0
    record = next(r for r in records_by_key(out, "val").values() if r.filename.endswith(stem + ".JPEG"))
    return out, record, upright, truth


def test_preprocess_stores_a_rotated_photo_upright(rotated_dataset):
    _, record, upright, _ = rotated_dataset
    assert (record.width, record.height) == (upright.shape[1], upright.shape[0])
    assert record.converted_from == "jpeg-exif-rotated"
    assert np.abs(decoded(record.encoded).astype(np.float32) - upright).mean() < 4


def test_preprocess_turns_the_boxes_with_the_photo(rotated_dataset):
    _, record, _, truth = rotated_dataset
    got = [(b.xmin, b.ymin, b.xmax, b.ymax) for b in record.objects]
    assert np.allclose(got, truth, atol=1e-3)


@pytest.mark.dali
def test_a_rotated_record_decodes_alike_on_both_decoders(rotated_dataset):
    data, record, upright, _ = rotated_dataset
    pixels = {}
    for decoder in ("cpu", "dali"):
        ds = input_lib.make_dataset(data, "val", batch_size=4, image_size=upright.shape[:2], training=False,
                                    decoder=decoder, with_keys=True)
        images_, _, keys = next(iter(ds))
        pixels[decoder] = dict(zip(input_lib.key_strings(keys), images_.numpy()))[record.sha256]
    assert np.abs(pixels["cpu"] - pixels["dali"]).max() < 1e-3
    assert np.abs((pixels["cpu"] + 1.0) * 127.5 - upright).mean() < 4
