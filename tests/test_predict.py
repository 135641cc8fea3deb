"""`detrec predict` (train/predict.py, pipelines/predict_cmd.py) with a model trained here.

The session's `learned` model (conftest: 10 synth classes, trained at 64 px); predictions on
32 of its val split's own JPEG files are checked against their labels and against the model
run through the real input pipeline, file by file. A model with known outputs pins the top-k
order without any training.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from detrec.pipelines import cli
from detrec.train import input as input_lib
from detrec.train import predict
from tests.conftest import KNOWN_LOGITS, LEARN_SIZE

SIZE = LEARN_SIZE


@pytest.fixture(scope="module")
def model_dir(learned) -> str:
    return learned["model"]


@pytest.fixture(scope="module")
def val_files(synth_tree) -> list[str]:
    """Val images of the session's small tree: enough for the tests that need no trained model."""
    files = sorted(glob.glob(os.path.join(synth_tree, "Data", "DET", "val", "*.JPEG")))
    assert len(files) == 32
    return files


@pytest.fixture(scope="module")
def learned_val_files(learned) -> list[str]:
    files = sorted(glob.glob(os.path.join(learned["root"], "Data", "DET", "val", "*.JPEG")))
    assert len(files) == 200
    return files[:32]


@pytest.fixture(scope="module")
def pipeline_view(learned, model_dir) -> dict[str, tuple[int, np.ndarray]]:
    """sha256 of each val JPEG -> (its label, the model's probabilities via the input pipeline)."""
    p = predict.Predictor(model_dir)
    ds = input_lib.make_dataset(learned["data"], "val", batch_size=8, image_size=SIZE, training=False,
                                decoder="cpu", with_keys=True)
    view = {}
    for images, labels, keys in ds:
        probs = p.probabilities(images)
        for key, label, row in zip(input_lib.key_strings(keys), labels.numpy(), probs):
            view[key] = (int(label), row)
    return view


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.slow  # the session's `learned` model trains 5 epochs (~30 s)
def test_predict_returns_the_classes_of_synth_images(model_dir, learned_val_files, pipeline_view):
    results = predict.Predictor(model_dir).predict(learned_val_files, top=3)
    correct = 0
    for path, result in zip(learned_val_files, results):
        assert not result.error and len(result.top) == 3
        label, pipeline_probs = pipeline_view[sha256(path)]
        # Exactly the evaluation the trainer did: same class, same probability.
        assert result.top[0].id == int(np.argmax(pipeline_probs)), path
        assert result.top[0].probability == pytest.approx(float(pipeline_probs.max()), abs=1e-5)
        correct += result.top[0].id == label
    print(f"predict: {correct}/{len(learned_val_files)} val images right")
    assert correct / len(learned_val_files) >= 0.6, f"{correct}/{len(learned_val_files)} right"


@pytest.mark.slow  # the session's `learned` model trains 5 epochs (~30 s)
def test_any_common_format_gives_the_same_answer(model_dir, learned_val_files, tmp_path):
    p = predict.Predictor(model_dir)
    originals = p.predict(learned_val_files)
    # The three images the model is surest about, in other formats (re-encoding moves
    # probabilities a little, so the test keeps away from near-ties).
    chosen = sorted(range(len(learned_val_files)), key=lambda i: -originals[i].top[0].probability)[:3]
    for i in chosen:
        rgb = Image.open(learned_val_files[i]).convert("RGB")
        variants = []
        for fmt, image in (("png", rgb), ("bmp", rgb), ("webp", rgb), ("cmyk.jpg", rgb.convert("CMYK"))):
            path = str(tmp_path / f"{i}.{fmt}")
            buf = io.BytesIO()
            image.save(buf, {"png": "PNG", "bmp": "BMP", "webp": "WEBP", "cmyk.jpg": "JPEG"}[fmt],
                       **({"lossless": True} if fmt == "webp" else {}))
            with open(path, "wb") as f:
                f.write(buf.getvalue())
            variants.append(path)
        for result in p.predict(variants):
            assert not result.error, result
            assert result.top[0].id == originals[i].top[0].id, result.path


@pytest.mark.slow  # the session's `learned` model trains 5 epochs (~30 s)
def test_cli_text_and_json(model_dir, learned_val_files, capsys):
    assert cli.main(["predict", "--model-dir", model_dir, *learned_val_files[:2], "--top", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [d["file"] for d in doc] == learned_val_files[:2]
    for entry in doc:
        top = entry["top"]
        assert len(top) == 3 and set(top[0]) == {"id", "synset", "name", "probability"}
        probs = [t["probability"] for t in top]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
    with open(os.path.join(model_dir, "export", "labels.json")) as f:
        names = {c["id"]: (c["synset"], c["name"]) for c in json.load(f)["classes"]}
    assert all((t["synset"], t["name"]) == names[t["id"]] for e in doc for t in e["top"])

    assert cli.main(["predict", "--model-dir", model_dir, learned_val_files[0], "--top", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == learned_val_files[0] and len(out) == 3
    first = doc[0]["top"][0]
    assert first["synset"] in out[1] and first["name"] in out[1]


@pytest.mark.slow  # the session's `learned` model trains 5 epochs (~30 s)
def test_unreadable_images_are_reported_and_the_rest_predicted(model_dir, learned_val_files, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not a picture\n")
    missing = str(tmp_path / "missing.jpg")
    # 2, not 1: a missing path is a mistake in the command line (the others are still answered)
    assert cli.main(["predict", "--model-dir", model_dir, str(text), learned_val_files[0], missing]) == 2
    out = capsys.readouterr()
    assert f"{text}: not an image" in out.err and f"{missing}: " in out.err
    assert learned_val_files[0] in out.out and "Traceback" not in out.err


def test_model_dir_without_export_is_one_line_exit_2(tmp_path, val_files, capsys):
    assert cli.main(["predict", "--model-dir", str(tmp_path), val_files[0]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no exported model" in err[0]


# --- a model whose answer is known: fast, no training ---------------------------------------
def test_top_k_is_in_falling_probability_with_ties_to_the_lower_id(known_model_dir, tmp_path, capsys):
    image = tmp_path / "any.jpg"
    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(image)
    e = np.exp(np.array(KNOWN_LOGITS) - max(KNOWN_LOGITS))
    softmax = e / e.sum()
    (result,) = predict.Predictor(known_model_dir).predict([str(image)], top=4)
    assert [p.id for p in result.top] == [1, 4, 3, 5]
    np.testing.assert_allclose([p.probability for p in result.top], softmax[[1, 4, 3, 5]], rtol=1e-5)
    assert [(p.synset, p.name) for p in result.top][:2] == [("n00000001", "class 1"), ("n00000004", "class 4")]
    # The CLI keeps that order, and --top larger than the classes lists each class once.
    assert cli.main(["predict", "--model-dir", known_model_dir, str(image), "--top", "10", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert [t["id"] for t in entry["top"]] == [1, 4, 3, 5, 0, 2]
