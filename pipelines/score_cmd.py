"""`detrec score --solution LOC_val_solution.csv --submission FILE.csv [--json]`: the Kaggle
ImageNet Object Localization Challenge's score of a submission (core/localization.py), and its
top-5 classification error beside it.

The solution is held as a dict (val: 50,000 rows, a few MB); the submission is streamed and
each image scored as its row arrives. A solution row with no box (an image without objects,
e.g. a background image of `detrec synth`'s val split) has no defined error (0/0): its id is
checked like any other, it is not scored, and the output says how many there were. A score over part of the images would mislead, so every
problem is a user mistake (one line, exit 2): a malformed line (`file:line: why`, reading stops
there), an id twice in either file, submission ids the solution lacks, solution ids the
submission lacks (each naming up to five ids and the count), a path that is missing, a
folder, or no regular file (a FIFO is never opened for reading, so it cannot hang the command).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from typing import IO, Iterator, Mapping, Sequence

from detrec.core import fs, kaggle_loc, localization
from detrec.core.errors import IOFailure, UserError

HELP = "the competition's top-5 localization error of a Kaggle submission CSV"
SHOWN_IDS = 5

Truths = tuple[localization.Labelled, ...]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--solution", required=True, metavar="CSV",
                        help="ground truth, `ImageId,PredictionString` (LOC_val_solution.csv)")
    parser.add_argument("--submission", required=True, metavar="CSV",
                        help="up to 5 guesses an image, the same format (LOC_sample_submission.csv's)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    truths = read_solution(args.solution)
    result = localization.score(scored_images(args.submission, truths))
    unscored = sum(1 for boxes in truths.values() if not boxes)
    if args.json:
        print(json.dumps({"localization_error": result.localization, "classification_error": result.classification,
                          "images": result.images, "unscored_images": unscored, "solution": args.solution,
                          "submission": args.submission}, indent=2))
    else:
        print(f"top-5 localization error: {result.localization:.4f} "
              f"({result.images} image{'s' if result.images != 1 else ''})")
        print(f"top-5 classification error: {result.classification:.4f}")
        if unscored:
            print(f"not scored: {unscored} image{'s' if unscored != 1 else ''} with no ground-truth box")
    return 0


def read_solution(path: str) -> dict[str, Truths]:
    """Image id -> its ground-truth boxes (none for an image without objects); UserError for a
    bad line, an id twice, or no box in the whole file."""
    truths: dict[str, Truths] = {}
    twice = _Ids()
    with _opened(path, "--solution") as raw:
        for row in kaggle_loc.read_rows(raw, path):
            if isinstance(row, kaggle_loc.BadLine):
                raise UserError(row.reason)
            if row.image_id in truths:
                twice.add(row.image_id)
                continue
            truths[row.image_id] = _labelled(row.guesses)
    if twice:
        raise UserError(f"{path}: {twice.said('more than once')}")
    if not any(truths.values()):
        raise UserError(f"{path}: no image with a ground-truth box, nothing to score against")
    return truths


def scored_images(path: str, truths: Mapping[str, Truths]) -> Iterator[tuple[Truths, Truths]]:
    """(guesses, truths) of each submission row in file order; once the file is read, UserError
    when ids repeat, are unknown to the solution, or are missing from the submission."""
    seen: set[str] = set()
    twice, unknown = _Ids(), _Ids()
    with _opened(path, "--submission") as raw:
        for row in kaggle_loc.read_rows(raw, path, max_guesses=localization.MAX_GUESSES):
            if isinstance(row, kaggle_loc.BadLine):
                raise UserError(row.reason)
            if row.image_id in seen:
                twice.add(row.image_id)
            elif row.image_id not in truths:
                unknown.add(row.image_id)
            seen.add(row.image_id)
            if not twice and not unknown and truths[row.image_id]:  # once the score is void, only ids are checked
                yield _labelled(row.guesses), truths[row.image_id]
    missing = _Ids()
    for image_id in truths:
        if image_id not in seen:
            missing.add(image_id)
    problems = [ids.said(what) for ids, what in ((twice, "more than once"), (unknown, "not in the solution"),
                                                 (missing, "of the solution missing")) if ids]
    if problems:
        raise UserError(f"{path}: {'; '.join(problems)}")


def _labelled(guesses: Sequence[kaggle_loc.Guess]) -> Truths:
    return tuple((synset, box) for synset, *box in guesses)


class _Ids:
    """A count of ids and the first SHOWN_IDS of them (memory flat however many)."""

    def __init__(self) -> None:
        self.count, self.first = 0, []

    def __bool__(self) -> bool:
        return self.count > 0

    def add(self, image_id: str) -> None:
        if self.count < SHOWN_IDS:
            self.first.append(image_id)
        self.count += 1

    def said(self, what: str) -> str:
        more = f", and {self.count - len(self.first)} more" if self.count > len(self.first) else ""
        return (f"{self.count} id{'s' if self.count != 1 else ''} {what} "
                f"({', '.join(_shown(i) for i in self.first)}{more})")


def _shown(image_id: str) -> str:
    return repr(image_id if len(image_id) <= 64 else image_id[:61] + "...")


@contextlib.contextmanager
def _opened(path: str, flag: str) -> Iterator[IO[bytes]]:
    """The file for reading, or one UserError line: missing, a folder, no regular file (a local
    FIFO is opened without blocking and refused), unreadable."""
    if fs.is_url(path):
        if not fs.exists(path) or fs.isdir(path):
            raise UserError(f"{flag} {path}: no such file")
        with fs.open(path, "rb") as f:
            yield f
        return
    try:
        f = fs.open_regular(path)
    except FileNotFoundError:
        raise UserError(f"{flag} {path}: no such file") from None
    except fs.NotARegularFile:
        raise UserError(f"{flag} {path}: a folder, not a CSV file" if os.path.isdir(path) else
                        f"{flag} {path}: not a regular file (a FIFO, device or socket)") from None
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot be read ({exc.strerror or exc})") from None
    with f:
        try:
            yield f
        except OSError as exc:  # the disk's trouble while reading, not the user's
            raise IOFailure(f"{flag} {path}: read failed ({exc.strerror or exc})") from None
