"""The competition metric (core/localization.py) and the Kaggle CSV format (core/kaggle_loc.py),
against values worked out by hand in the comments."""

from __future__ import annotations

import io

import numpy as np
import pytest

from detrec.core import csv_rows, kaggle_loc, localization
from detrec.core.errors import UserError
from detrec.core.localization import classification_error, image_error, iou

CAT, DOG = "n02123045", "n02085620"
BOX = (10, 20, 110, 70)  # 100 x 50


# --- IoU --------------------------------------------------------------------------------------
@pytest.mark.parametrize("a, b, expected", [
    ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
    ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),  # inter 5x10, union 100 + 100 - 50
    ((0, 0, 10, 10), (2, 2, 4, 4), 4 / 100),  # nested: inter = the small box
    ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),  # touching edges: no area in common
    ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
    ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),  # empty union: 0, not nan
    ((0.5, 0.5, 2.5, 1.5), (1.5, 0.5, 3.5, 1.5), 1 / 3),  # continuous: no +1 pixel
])
def test_iou_by_hand(a, b, expected):
    assert iou(a, b) == pytest.approx(expected, abs=1e-12)
    assert iou(b, a) == pytest.approx(expected, abs=1e-12)


def test_iou_broadcasts_over_leading_axes():
    guesses = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [100, 100, 101, 101]], float)  # [3, 4]
    truths = np.array([[0, 0, 10, 10], [0, 0, 5, 10]], float)  # [2, 4]
    got = iou(guesses[:, None, :], truths[None, :, :])
    assert got.shape == (3, 2)
    # second guess vs second truth: they only touch at x = 5
    np.testing.assert_allclose(got, [[1.0, 0.5], [1 / 3, 0.0], [0.0, 0.0]])


# --- the image error --------------------------------------------------------------------------
def test_wrong_class_with_a_perfect_box_is_an_error():
    assert image_error([(DOG, BOX)], [(CAT, BOX)]) == 1.0


def test_iou_just_under_the_threshold_misses_and_exactly_at_it_hits():
    truth = [(CAT, (0, 0, 100, 10))]  # area 1000
    assert image_error([(CAT, (0, 0, 49, 10))], truth) == 1.0  # inside: IoU 490 / 1000 = 0.49
    assert image_error([(CAT, (0, 0, 50, 10))], truth) == 0.0  # IoU 500 / 1000 = 0.5 exactly
    # Overlapping, neither inside: inter 60x10 = 600, union 1000 + 200x10 - 600 = 2400: 0.25.
    assert image_error([(CAT, (40, 0, 240, 10))], truth) == 1.0
    # inter 100x10, union 1000 + 1000 = 2000 (the guess twice as tall): exactly 0.5.
    assert image_error([(CAT, (0, 0, 100, 20))], truth) == 0.0


def test_the_fifth_guess_counts_and_a_sixth_is_refused():
    wrong = [(DOG, BOX)] * 4
    assert image_error(wrong + [(CAT, BOX)], [(CAT, BOX)]) == 0.0
    with pytest.raises(ValueError, match="6 guesses"):
        image_error(wrong + [(DOG, BOX), (CAT, BOX)], [(CAT, BOX)])
    with pytest.raises(ValueError, match="6 guesses"):
        classification_error(wrong + [(DOG, BOX), (CAT, BOX)], [(CAT, BOX)])


def test_two_classes_one_found_is_half_an_error():
    truths = [(CAT, (0, 0, 10, 10)), (DOG, (50, 50, 60, 60))]
    assert image_error([(CAT, (0, 0, 10, 10)), (DOG, (0, 0, 10, 10))], truths) == 0.5
    # both named, so classification is right; only the cat's box is right
    assert classification_error([(CAT, (0, 0, 10, 10)), (DOG, (0, 0, 10, 10))], truths) == 0.0


def test_several_boxes_of_a_class_any_one_will_do():
    truths = [(CAT, (0, 0, 10, 10)), (CAT, (100, 100, 120, 120)), (DOG, (0, 0, 10, 10))]
    # matches the second cat box only; two cat boxes are still one class: G = {cat, dog}
    assert image_error([(CAT, (100, 100, 120, 120))], truths) == 0.5
    assert image_error([(CAT, (100, 100, 120, 120)), (DOG, (1, 1, 10, 10))], truths) == 0.0  # dog IoU 81/100


def test_a_box_of_another_class_does_not_count_for_the_guessed_class():
    truths = [(CAT, (0, 0, 10, 10)), (DOG, (50, 50, 60, 60))]
    assert image_error([(CAT, (50, 50, 60, 60))], truths) == 1.0  # right place for the dog, says cat


def test_no_guesses_is_a_full_error_and_no_truth_cannot_be_scored():
    assert image_error([], [(CAT, BOX)]) == 1.0
    assert classification_error([], [(CAT, BOX), (DOG, BOX)]) == 1.0
    with pytest.raises(ValueError, match="no ground-truth box"):
        image_error([(CAT, BOX)], [])


def test_score_is_the_mean_over_images():
    images = [([(CAT, BOX)], [(CAT, BOX)]),  # 0 / 0
              ([(DOG, BOX)], [(CAT, BOX)]),  # 1 / 1
              ([(CAT, (0, 0, 1, 1))], [(CAT, BOX), (DOG, BOX)])]  # loc 1, cls 1/2
    got = localization.score(iter(images))
    assert got == localization.Score(localization=2 / 3, classification=0.5, images=3)
    with pytest.raises(ValueError, match="no image"):
        localization.score([])


# --- the CSV format ---------------------------------------------------------------------------
def test_format_prediction_writes_integers_as_integers_else_one_decimal():
    assert kaggle_loc.format_prediction([(CAT, 1.0, 2, 300.0, 400)]) == f"{CAT} 1 2 300 400"
    # -0.04 rounds to "-0.0": written 0; 2.25 is exact in binary and rounds half to even
    assert kaggle_loc.format_prediction([(CAT, -0.04, 2.25, 10.96, 2.26), (DOG, 1, 1, 2, 2)]) == \
        f"{CAT} 0 2.2 11 2.3 {DOG} 1 1 2 2"
    assert kaggle_loc.format_prediction([]) == ""


@pytest.mark.parametrize("guess, message", [
    (("", 0, 0, 1, 1), "synset"),
    (("n1 n2", 0, 0, 1, 1), "synset"),
    (("n1,", 0, 0, 1, 1), "synset"),
    (("n1", 0, 0, float("nan"), 1), "finite"),
    (("n1", 0, 0, 1), "four"),
    (("n1", 5, 0, 1, 1), "inverted"),
])
def test_format_prediction_refuses_what_it_could_not_read_back(guess, message):
    with pytest.raises(ValueError, match=message):
        kaggle_loc.format_prediction([guess])


def test_write_submission_streams_rows_in_order_bytes_exact(tmp_path):
    rows = [("ILSVRC2012_test_00000002", [(CAT, 1, 2, 30.25, 40)]),
            ("ILSVRC2012_test_00000001", []),
            ("ILSVRC2012_test_00000003", [(DOG, 0, 0, 5, 5), (CAT, 0.5, 0.5, 9, 9.5)])]
    expected = (b"ImageId,PredictionString\n"
                b"ILSVRC2012_test_00000002,n02123045 1 2 30.2 40\n"  # 30.25 -> 30.2 (half to even)
                b"ILSVRC2012_test_00000001,\n"
                b"ILSVRC2012_test_00000003,n02085620 0 0 5 5 n02123045 0.5 0.5 9 9.5\n")
    path = tmp_path / "submission.csv"
    assert kaggle_loc.write_submission(str(path), iter(rows)) == 3
    assert path.read_bytes() == expected
    text, binary = io.StringIO(), io.BytesIO()
    assert kaggle_loc.write_submission(text, rows) == kaggle_loc.write_submission(binary, rows) == 3
    assert text.getvalue().encode() == binary.getvalue() == expected
    assert kaggle_loc.write_submission(io.StringIO(), []) == 0


def test_write_submission_never_overwrites_and_leaves_nothing_on_a_bad_row(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("keep me")
    with pytest.raises(UserError, match="already exists"):
        kaggle_loc.write_submission(str(path), [])
    assert path.read_text() == "keep me"
    fresh = tmp_path / "new.csv"
    with pytest.raises(ValueError, match="6 guesses"):
        kaggle_loc.write_submission(str(fresh), [("a", [(CAT, 0, 0, 1, 1)]), ("b", [(CAT, 0, 0, 1, 1)] * 6)])
    with pytest.raises(ValueError, match="CSV field"):
        kaggle_loc.write_submission(io.StringIO(), [("a,b", [])])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.csv"]


def _read(data: bytes, max_guesses=None):
    return list(kaggle_loc.read_rows(io.BytesIO(data), "f.csv", max_guesses))


def test_reader_takes_bom_crlf_quotes_empty_strings_and_a_trailing_empty_line():
    data = (b"\xef\xbb\xbfImageId,PredictionString\r\n"
            b'"img_1","n1 0 0 10 10 n2 1.5 2 3 4"\r\n'
            b"img_2,\r\n"
            b"\r\n"
            b"img_3,n1 0 0 1 1 \r\n"
            b"\r\n")
    assert _read(data) == [kaggle_loc.Row("f.csv:2", "img_1", (("n1", 0, 0, 10, 10), ("n2", 1.5, 2, 3, 4))),
                           kaggle_loc.Row("f.csv:3", "img_2", ()),
                           kaggle_loc.Row("f.csv:5", "img_3", (("n1", 0, 0, 1, 1),))]


def test_what_the_writer_writes_the_reader_reads_back():
    rows = [("a", [(CAT, 1, 2, 30, 40)]), ("b", []), ("c", [(DOG, 0.5, 0, 5, 5.5)] * 5)]
    out = io.BytesIO()
    kaggle_loc.write_submission(out, rows)
    assert [(r.image_id, list(r.guesses)) for r in _read(out.getvalue(), 5)] == rows


@pytest.mark.parametrize("line, code, why", [
    (b"img,n1 0 0 1 1,extra", "bad_csv_line", "3 fields"),
    (b"img_only", "bad_csv_line", "1 field)"),
    (b",n1 0 0 1 1", "bad_csv_line", "no ImageId"),
    (b"img,n1 0 0 1", "bad_csv_row", "4 fields, expected `synset xmin ymin xmax ymax` repeated"),
    (b"img,n1 0 0 x 1", "bad_csv_row", "box 0: xmax not a number"),
    (b"img,n1 0 0 1 1 n2 0 nan 1 1", "bad_csv_row", "box 1: ymin not finite"),
    (b"img,n1 0 0 1 inf", "bad_csv_row", "ymax not finite"),
    (b"img,n1 5 0 1 1", "inverted_box", "inverted box xmin 5 xmax 1"),
    (b'"img,n1 0 0 1 1', "bad_csv_line", "(1 field)"),  # an unclosed quote runs to the end of the file
    (b"img," + b" ".join([b"n1 0 0 1 1"] * 6), "too_many_guesses", "6 guesses for 'img', at most 5"),
])
def test_reader_names_each_bad_line_and_goes_on(line, code, why):
    got = _read(b"ImageId,PredictionString\nok_1,n1 0 0 1 1\n" + line + b"\nok_2,\n", max_guesses=5)
    bad = [r for r in got if isinstance(r, kaggle_loc.BadLine)]
    assert len(bad) == 1 and bad[0].code == code and bad[0].where == "f.csv:3", bad
    assert bad[0].reason.startswith("f.csv:3: ") and why in bad[0].reason
    if code != "bad_csv_line" or b'"' not in line:  # an unclosed quote swallows the rest
        assert [r.image_id for r in got if isinstance(r, kaggle_loc.Row)] == ["ok_1", "ok_2"]


def test_reader_reports_a_wrong_header_and_a_too_long_line_in_place():
    long = b"img," + b"n1 0 0 1 1 " * (csv_rows.MAX_CSV_LINE // 10)
    got = _read(b"ImageId,Boxes\n" + long + b"\nok,\n")
    assert [(type(r).__name__, r.where) for r in got] == [("BadLine", "f.csv:1"), ("BadLine", "f.csv:2"),
                                                          ("Row", "f.csv:3")]
    assert "expected `ImageId,PredictionString`" in got[0].reason and "longer than" in got[1].reason
