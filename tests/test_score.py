"""`detrec score` on small hand-written solution and submission files: the printed score is the
mean worked out by hand below, and every mistake in either file is one line and exit 2."""

from __future__ import annotations

import json
import os

import pytest

from detrec.pipelines import cli

SOLUTION = """ImageId,PredictionString
val_1,n1 0 0 100 10
val_2,n1 0 0 10 10 n2 50 50 60 60
val_3,n3 0 0 10 10 n3 100 100 120 120
val_4,n4 0 0 10 10
val_5,n1 0 0 100 10
"""
# image: localization error, classification error (worked out by hand)
SUBMISSION = """ImageId,PredictionString
val_2,n1 0 0 10 10 n2 0 0 10 10
val_1,n1 0 0 49 10
val_4,n9 0 0 10 10
val_3,n9 0 0 1 1 n9 0 0 1 1 n9 0 0 1 1 n9 0 0 1 1 n3 100 100 120 120
val_5,n1 0 0 50 10
"""
# val_2: n1 found, n2 named with a box outside its own: 1/2, 0
# val_1: IoU 490 / 1000 = 0.49: 1, 0
# val_4: wrong class: 1, 1
# val_3: the 5th guess on the 2nd n3 box: 0, 0
# val_5: IoU 500 / 1000 = 0.5 exactly: 0, 0
LOC, CLS = (0.5 + 1 + 1 + 0 + 0) / 5, (0 + 0 + 1 + 0 + 0) / 5  # 0.5, 0.2


def _files(tmp_path, solution: str | bytes = SOLUTION, submission: str | bytes = SUBMISSION) -> tuple[str, str]:
    paths = []
    for name, content in (("solution.csv", solution), ("submission.csv", submission)):
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        paths.append(str(path))
    return paths[0], paths[1]


def _score(capsys, solution: str, submission: str, *flags: str) -> tuple[int, str, str]:
    rc = cli.main(["score", "--solution", solution, "--submission", submission, *flags])
    out, err = capsys.readouterr()
    return rc, out, err


def _refused(capsys, solution: str, submission: str) -> str:
    """The one error line of a refused run (exit 2, nothing on stdout)."""
    rc, out, err = _score(capsys, solution, submission)
    assert (rc, out) == (2, ""), (rc, out, err)
    assert err.startswith("detrec score: error: ") and err.count("\n") == 1, err
    return err.strip()


def test_score_is_the_hand_computed_mean(tmp_path, capsys):
    rc, out, err = _score(capsys, *_files(tmp_path))
    assert (rc, err) == (0, "")
    assert out == ("top-5 localization error: 0.5000 (5 images)\n"
                   "top-5 classification error: 0.2000\n")
    assert LOC == 0.5 and CLS == 0.2


def test_json_is_one_document(tmp_path, capsys):
    solution, submission = _files(tmp_path)
    rc, out, _ = _score(capsys, solution, submission, "--json")
    assert rc == 0
    assert json.loads(out) == {"localization_error": pytest.approx(LOC), "classification_error": pytest.approx(CLS),
                               "images": 5, "unscored_images": 0, "solution": solution, "submission": submission}


def test_an_image_without_ground_truth_is_checked_but_not_scored(tmp_path, capsys):
    # val_6 has no object (a background image): any guess for it leaves the score as it was,
    # and its id is still required of the submission
    solution = SOLUTION + "val_6,\n"
    rc, out, _ = _score(capsys, *_files(tmp_path, solution, SUBMISSION + "val_6,n1 0 0 10 10\n"))
    assert rc == 0
    assert out == ("top-5 localization error: 0.5000 (5 images)\n"
                   "top-5 classification error: 0.2000\n"
                   "not scored: 1 image with no ground-truth box\n")
    assert "1 id of the solution missing ('val_6')" in _refused(capsys, *_files(tmp_path, solution, SUBMISSION))


def test_bom_crlf_quotes_and_a_trailing_empty_line_score_the_same(tmp_path, capsys):
    def odd(text: str) -> bytes:
        lines = [",".join(f'"{f}"' for f in line.split(",")) for line in text.splitlines()]
        return b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n\r\n"

    assert odd("a,b c\n") == b'\xef\xbb\xbf"a","b c"\r\n\r\n'
    _, plain, _ = _score(capsys, *_files(tmp_path))
    rc, out, err = _score(capsys, *_files(tmp_path, odd(SOLUTION), odd(SUBMISSION)))
    assert (rc, err) == (0, "") and out == plain


def test_an_empty_prediction_string_is_a_full_error(tmp_path, capsys):
    rc, out, _ = _score(capsys, *_files(tmp_path, "ImageId,PredictionString\na,n1 0 0 1 1\nb,n1 0 0 1 1\n",
                                        "ImageId,PredictionString\na,\nb,n1 0 0 1 1\n"))
    assert rc == 0 and out.startswith("top-5 localization error: 0.5000 (2 images)\n")


def test_submission_ids_not_in_the_solution(tmp_path, capsys):
    err = _refused(capsys, *_files(tmp_path, submission=SUBMISSION + "test_9,n1 0 0 1 1\n"))
    assert err.endswith("submission.csv: 1 id not in the solution ('test_9')")


def test_solution_ids_missing_from_the_submission_named_up_to_five(tmp_path, capsys):
    extra = "".join(f"val_{i},n1 0 0 1 1\n" for i in range(6, 13))  # 7 more images
    err = _refused(capsys, *_files(tmp_path, solution=SOLUTION + extra))
    assert err.endswith("submission.csv: 7 ids of the solution missing "
                        "('val_6', 'val_7', 'val_8', 'val_9', 'val_10', and 2 more)")


def test_an_id_twice_in_the_submission(tmp_path, capsys):
    err = _refused(capsys, *_files(tmp_path, submission=SUBMISSION + "val_1,n1 0 0 100 10\n"))
    assert err.endswith("submission.csv: 1 id more than once ('val_1')")


def test_an_id_twice_in_the_solution(tmp_path, capsys):
    err = _refused(capsys, *_files(tmp_path, solution=SOLUTION + "val_4,n4 0 0 10 10\nval_2,n1 0 0 1 1\n"))
    assert err.endswith("solution.csv: 2 ids more than once ('val_4', 'val_2')")


def test_every_id_problem_of_the_submission_in_one_line(tmp_path, capsys):
    submission = "ImageId,PredictionString\nval_1,\nval_1,\nx,\n"
    err = _refused(capsys, *_files(tmp_path, submission=submission))
    assert err.endswith("submission.csv: 1 id more than once ('val_1'); 1 id not in the solution ('x'); "
                        "4 ids of the solution missing ('val_2', 'val_3', 'val_4', 'val_5')")


@pytest.mark.parametrize("line, why", [
    ("val_9,n1 0 0 1", "submission.csv:3: 4 fields, expected `synset xmin ymin xmax ymax` repeated"),
    ("val_9,n1 0 0 1 1,x", "submission.csv:3: not `ImageId,PredictionString` (3 fields)"),
    ("val_9,n1 0 0 1 nan", "submission.csv:3: box 0: ymax not finite"),
    ("val_9,n1 5 0 1 1", "submission.csv:3: box 0: inverted box xmin 5 xmax 1 ymin 0 ymax 1"),
    ("val_9," + " ".join(["n1 0 0 1 1"] * 6), "submission.csv:3: 6 guesses for 'val_9', at most 5 allowed"),
])
def test_a_malformed_submission_line_is_named(tmp_path, capsys, line, why):
    lines = SUBMISSION.splitlines()
    submission = "\n".join(lines[:2] + [line] + lines[2:]) + "\n"
    err = _refused(capsys, *_files(tmp_path, submission=submission))
    assert err.endswith(why) and "submission.csv:3: " in err


def test_a_malformed_solution_line_or_one_without_any_box_is_named(tmp_path, capsys):
    err = _refused(capsys, *_files(tmp_path, solution=SOLUTION + "val_9,n1 0 0 1 x\n"))
    assert err.endswith("solution.csv:7: box 0: ymax not a number (the box is not four numbers)")
    err = _refused(capsys, *_files(tmp_path, solution="ImageId,PredictionString\n"))
    assert err.endswith("solution.csv: no image with a ground-truth box, nothing to score against")
    err = _refused(capsys, *_files(tmp_path, solution="ImageId,PredictionString\nval_1,\n"))
    assert err.endswith("solution.csv: no image with a ground-truth box, nothing to score against")


def test_missing_files_folders_and_fifos_are_one_line(tmp_path, capsys):
    solution, submission = _files(tmp_path)
    fifo = str(tmp_path / "fifo.csv")
    os.mkfifo(fifo)  # opened without a writer: would block a plain open() forever
    assert _refused(capsys, str(tmp_path / "nope.csv"), submission).endswith(f"--solution {tmp_path}/nope.csv: no such file")
    assert _refused(capsys, solution, str(tmp_path)).endswith(f"--submission {tmp_path}: a folder, not a CSV file")
    assert _refused(capsys, solution, fifo).endswith(f"--submission {fifo}: not a regular file (a FIFO, device or socket)")
    assert _refused(capsys, fifo, submission).startswith(f"detrec score: error: --solution {fifo}: not a regular")
