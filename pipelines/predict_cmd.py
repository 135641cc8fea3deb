"""`detrec predict --model-dir DIR (IMAGE... | --data OUT --split S)`: top-k classes, and a
localize model's box, of image files or of a split's records.

Loads DIR/export (written by `detrec train`). Any common image format works (JPEG, PNG,
GIF, BMP, TIFF, WebP; CMYK and grey too). Every image that can be answered is answered; each
one that cannot gets one line on stderr. Exit codes: 0 every image predicted, 1 some image
(or record) could not be read or prepared (not an image, truncated, a decompression bomb,
larger than 128 MB, a FIFO or device, a corrupt record...), or its drawing or submission row
could not be written (an ImageId twice, one the CSV cannot hold);
2 a user mistake: no usable model in DIR (missing, unreadable, or weights not finite), an
IMAGE path that does not exist or is a folder (2 wins over 1), a bad flag, --submission
with a model that has no boxes, or a --submission file that already exists.

Files this command writes, never over anything else (detrec never overwrites a file it did
not write): --draw creates only new names (a taken name gets -2, -3...: two runs into one
folder keep both sets); --submission refuses an existing file before any image is predicted
(even an earlier submission: it may be the one a user sent), and appears whole or not at all.
With --submission the CSV is the answer: no line per image on stdout (--json still gives them),
one line on stderr saying how many rows were written.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import re
import sys
from typing import TYPE_CHECKING

from detrec.core import fs
from detrec.core.errors import UserError
from detrec.pipelines import argtypes

if TYPE_CHECKING:
    import numpy as np

HELP = "top-k classes (and boxes) of image files or a split's records with an exported model"
BOX_COLOUR = (255, 0, 0)
DRAWN = ".jpg"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, metavar="DIR", help="a `detrec train` model dir")
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image files (or --data and --split)")
    parser.add_argument("--data", metavar="OUT", help="predict the records of a `detrec preprocess` output "
                        "folder instead of image files (with --split); names are their image/source_id")
    parser.add_argument("--split", metavar="S", help="the split of --data to predict (e.g. val, test)")
    parser.add_argument("--top", type=argtypes.positive, default=5, help="classes per image (default 5)")
    parser.add_argument("--json", action="store_true",
                        help='one JSON document on stdout; a localize model adds "box": {xmin, ymin, xmax, ymax}')
    parser.add_argument("--draw", metavar="DIR", help="write each image with its top-1 box and label drawn "
                        "(JPEG, upright as the model saw it) into local folder DIR; never overwrites: a name "
                        "already taken gets -2, -3...")
    parser.add_argument("--submission", metavar="FILE.csv",
                        help="write a Kaggle localization submission (ImageId,PredictionString: the top-5 "
                        "classes, background left out, each with the box, integer pixels; rows sorted by "
                        "ImageId, the file's name without extension or the record's source_id). Needs a "
                        "localize model; FILE must not exist (it is never overwritten). Prints no line per image")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from detrec.core import dataset_info, kaggle_loc, localization
    from detrec.train import gpu, predict, progress
    from detrec.train import input as input_lib

    _check_flags(args)
    if args.submission:
        _check_new_file(args.submission)
    if args.draw:
        _check_draw_folder(args.draw)
    split = input_lib.split_shards(dataset_info.load(args.data), args.data, args.split) if args.data else None
    gpu.enable_memory_growth()  # before the model touches a GPU (train/gpu.py)
    predictor = predict.Predictor(args.model_dir)
    if args.submission and not predictor.localize:
        raise UserError(f"--submission needs a localize model (`detrec train --task localize`); "
                        f"{args.model_dir} answers classes only")
    # The submission takes five classes that are not background, so one more may be needed.
    top = max(args.top, localization.MAX_GUESSES + 1) if args.submission else args.top
    rows: dict[str, np.ndarray] = {}  # ImageId -> top-5 class ids, then the box: ~300 bytes an image
    if split is not None:
        with progress.bar(desc="predict", unit="img", total=sum(s.num_examples for s in split.shards)) as bar:
            failed = _report(predictor.predict_records(split, top, bool(args.draw)), args, predictor, rows, bar)
        mistaken = False
    else:
        # A path that is not there or is a folder is a mistake in the command line, not a bad image.
        mistaken = any(not fs.exists(path) or fs.isdir(path) for path in args.images)
        failed = _report(predictor.predict_files(args.images, top, bool(args.draw)), args, predictor, rows, None)
    if args.submission:
        ordered = sorted(rows)  # LOC_sample_submission.csv's order
        written = kaggle_loc.write_submission(args.submission,
                                              ((i, _guesses(rows[i], predictor.classes)) for i in ordered))
        print(f"detrec predict: wrote {written} rows to {args.submission}", file=sys.stderr)  # stdout: --json's
    return 2 if mistaken else 1 if failed else 0


def _report(results, args: argparse.Namespace, predictor, rows: dict, bar) -> bool:
    """Prints each result as it comes (text or streamed JSON), draws it, keeps its submission
    row; returns whether any image went unanswered."""
    failed = False
    key = "source_id" if args.data else "file"
    if args.json:
        print("[")
    for n, result in enumerate(results):
        if bar is not None:
            bar.update(1)
        problems = [result.error] if result.error else [
            (_add_row(rows, result, bool(args.data), predictor.classes) if args.submission else ""),
            (_draw_or_why(result, args.draw) if args.draw else "")]
        for problem in filter(None, problems):
            failed = True
            _say(f"{result.path}: {problem}", bar)
        if args.json:
            entry = {key: result.path, "error": result.error} if result.error else \
                {key: result.path, "top": [vars(p) for p in result.top[:args.top]], **_box_json(result)}
            print(("," if n else "") + json.dumps(entry, indent=2))
        elif not result.error and not args.submission:  # the CSV is the answer: 100,000 images print nothing
            _print_text(result, args.top)
    if args.json:
        print("]")
    return failed


def _check_flags(args: argparse.Namespace) -> None:
    if args.data and args.images:
        raise UserError("give IMAGE files or --data OUT --split S, not both")
    if not args.data and not args.images:
        raise UserError("nothing to predict: give IMAGE files, or --data OUT --split S")
    if bool(args.data) != bool(args.split):
        raise UserError("--data and --split go together (the records of split S of folder OUT)")


def _check_new_file(path: str) -> None:
    """The submission is refused before anything is predicted, not after an hour's run."""
    if fs.exists(path):
        raise UserError(f"--submission {path} already exists; choose a new name or remove it")
    if not fs.is_url(path) and not os.path.isdir(fs.dirname(path)):
        raise UserError(f"--submission {path}: no folder {fs.dirname(path)}")


def _check_draw_folder(folder: str) -> None:
    if fs.is_url(folder):
        raise UserError(f"--draw {folder}: drawings go to a local folder")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"--draw {folder}: not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--draw {folder}: cannot create it ({exc.strerror})") from None


def _say(line: str, bar) -> None:
    if bar is not None and hasattr(bar, "write"):  # a tqdm bar: print above it
        bar.write(f"detrec predict: {line}", file=sys.stderr)
    else:
        print(f"detrec predict: {line}", file=sys.stderr)


def _box_json(result) -> dict:
    if result.box is None:
        return {}
    return {"box": dict(zip(("xmin", "ymin", "xmax", "ymax"), (round(v, 2) for v in result.box)))}


def _print_text(result, top: int) -> None:
    print(result.path)
    for rank, p in enumerate(result.top[:top], start=1):
        print(f"  {rank}. {p.probability:7.2%}  {p.id:4d}  {p.synset}  {p.name}")
    if result.box is not None:
        print("  box (xmin ymin xmax ymax): " + " ".join(f"{v:.1f}" for v in result.box))


# --- the submission -----------------------------------------------------------------------
def _image_id(result, from_records: bool) -> str:
    return result.path if from_records else os.path.splitext(os.path.basename(result.path))[0]


def _add_row(rows: dict[str, np.ndarray], result, from_records: bool, classes: dict) -> str:
    """Keeps an image's submission row (its top-5 real classes, then its box in integer
    pixels); returns why it cannot have one ("" when it can)."""
    import numpy as np

    from detrec.core import kaggle_loc, localization, schema

    image_id = _image_id(result, from_records)
    if result.reframed:  # Kaggle scores boxes in the source's pixels, which the record no longer has
        return (f"its record was stored {result.reframed} by preprocess, so its box is in the record's pixels, "
                "not the source's; left out of the submission (predict the source file for it)")
    if image_id in rows:
        return f"ImageId {image_id!r} is already in the submission (another image of that name); left out"
    ids = [p.id for p in result.top if p.id != schema.BACKGROUND_ID][:localization.MAX_GUESSES]
    row = np.array([*ids, *(round(v) for v in result.box)], np.int32)
    try:  # the CSV's own rules (an ImageId with a comma, a synset with a space...): this row only
        kaggle_loc.write_submission(io.StringIO(), [(image_id, _guesses(row, classes))])
    except ValueError as exc:
        return f"cannot be a submission row ({exc})"
    rows[image_id] = row
    return ""


def _guesses(row: np.ndarray, classes: dict) -> list[tuple[str, int, int, int, int]]:
    box = tuple(int(v) for v in row[-4:])
    return [(classes[int(c)]["synset"], *box) for c in row[:-4]]


# --- drawings -----------------------------------------------------------------------------
def _draw_or_why(result, folder: str) -> str:
    """Draws `result` into `folder`; returns why it could not ("" when written)."""
    try:
        _write_new(folder, _UNSAFE.sub("_", os.path.splitext(os.path.basename(result.path))[0])[:200] or "image",
                   drawing(result))
    except OSError as exc:
        return f"cannot write its drawing into {folder} ({exc.strerror or type(exc).__name__})"
    return ""


def drawing(result) -> bytes:
    """The picture the model saw with its top-1 box (if any) and label (synset, name,
    probability) drawn, as JPEG bytes."""
    from PIL import Image, ImageDraw, ImageFont

    with Image.open(io.BytesIO(result.picture)) as source:
        image = source.convert("RGB")
    canvas = ImageDraw.Draw(image)
    best = result.top[0]
    label = f"{best.synset} {best.name} {best.probability:.1%}"
    font = ImageFont.load_default()
    x, y = 0, 0
    if result.picture_box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in result.picture_box)
        line = max(2, round(min(image.size) / 150))
        canvas.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=BOX_COLOUR, width=line)
        left, top, right, bottom = canvas.textbbox((0, 0), label, font=font)
        x, y = x0, max(0, y0 - (bottom - top) - 2)  # above the box where there is room
    left, top, right, bottom = canvas.textbbox((x, y), label, font=font)
    canvas.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=BOX_COLOUR)
    canvas.text((x, y), label, fill=(255, 255, 255), font=font)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92)
    return out.getvalue()


def _write_new(folder: str, stem: str, data: bytes) -> str:
    """Writes `data` under the first free name `stem.jpg`, `stem-2.jpg`...: whole (a temporary
    sibling, then a hard link, which fails on a taken name instead of replacing it)."""
    tmp = fs.temp_path(os.path.join(folder, stem + DRAWN))
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        for n in itertools.count(1):
            path = os.path.join(folder, f"{stem}{DRAWN}" if n == 1 else f"{stem}-{n}{DRAWN}")
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                continue
    finally:
        os.remove(tmp)
