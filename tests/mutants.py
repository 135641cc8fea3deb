"""`make mutants`: which one-line bugs would the fast loop (`pytest -m "not slow"`) let through?

Each mutant below is a bug a user would feel, written as one exact text replacement in
core/, preprocess/, train/, the inspector or the CLI. For each, a scratch copy of the working tree gets
the mutation, and the fast loop runs there until its first failure (`-x`): first the test
files that name the mutated module, on their own, so that a kill comes early, then the rest.
A mutant whose run passes survived: some behaviour a user relies on has no fast test. Not
part of `make test`: a survivor costs a whole fast loop (~3.5 minutes on 2 cores).

    .venv/bin/python -m tests.mutants [--only M03,M19] [--keep]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutant:
    id: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    what: str


MUTANTS = (
    Mutant("M01", "core/tfrecord.py", "+ 0xA282EAD8)", "+ 0xA282EAD9)", "TFRecord CRC mask constant off by one"),
    Mutant("M02", "core/schema.py", "if best is None or area > areas[best]:", "if best is None or area >= areas[best]:",
           "largest-box ties go to the last box"),
    Mutant("M03", "preprocess/plan.py", 'f"{split}/{source_id}"', 'f"{split}:{source_id}"',
           "shard-hash key split:id instead of split/id"),
    Mutant("M04", "preprocess/plan.py", "ranked[index::count])",
           "ranked[index * -(-len(ranked) // count):(index + 1) * -(-len(ranked) // count)])",
           "contiguous blocks instead of round-robin dealing"),
    Mutant("M05", "preprocess/annotations.py", "clip = lambda v, size: min(max(v / size, 0.0), 1.0)",
           "clip = lambda v, size: max(v / size, 0.0)", "boxes past the border not clipped to 1"),
    Mutant("M06", "preprocess/vocab.py", "ordered = tuple(sorted(set(synsets)))",
           "ordered = tuple(sorted(set(synsets), reverse=True))", "class ids in reverse synset order"),
    Mutant("M07", "train/augment.py", "mirrored = tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1)",
           "mirrored = tf.stack([ymin, xmin, ymax, xmax], axis=-1)", "a flip leaves the boxes unflipped (tf.data)"),
    Mutant("M08", "train/input/dali_feed.py", "out = np.stack([out[:, 0], 1 - out[:, 3], out[:, 2], 1 - out[:, 1]], axis=1)",
           "out = np.stack([out[:, 0], out[:, 1], out[:, 2], out[:, 3]], axis=1)", "a flip leaves the boxes unflipped (DALI)"),
    Mutant("M09", "train/data.py", "return seed * 1_000_003 + epoch", "return seed * 1_000_003",
           "every epoch reads in the same order"),
    Mutant("M10", "train/steps.py", "top_k = min(5, num_classes)", "top_k = min(1, num_classes)",
           "top-5 accuracy computed as top-1"),
    Mutant("M12", "core/image_fit.py", "return width * height <= max_pixels and", "return width * height < max_pixels and",
           "--max-pixels refuses an image of exactly N pixels"),
    Mutant("M13", "train/trainer.py", "for _ in range(s.position):", "for _ in range(s.position - 1):",
           "resume skips one batch too few"),
    Mutant("M16", "preprocess/finalize.py", "converted_images=sum(s.converted for s in mine),",
           "converted_images=sum(1 for s in mine if s.converted),", "converted_images counts shards, not images"),
    Mutant("M19", "train/predict.py", 'best = np.argsort(-row, kind="stable")[:k]', 'best = np.argsort(row, kind="stable")[:k]',
           "predict's top-k in reverse"),
    Mutant("M20", "train/tasks/localize.py", "found = real & guessed & (iou >= IOU_THRESHOLD)",
           "found = real & guessed & (iou > IOU_THRESHOLD)", "an IoU of exactly 0.5 is a miss in the top-5 error"),
    Mutant("M21", "train/tasks/localize.py", "return ce + tf.where(has, box_loss, 0.0)", "return ce + box_loss",
           "images without a box of their class still train a box (toward zeros)"),
    Mutant("M22", "pipelines/predict_cmd.py", "ordered = sorted(rows)", "ordered = list(rows)",
           "submission rows in prediction order, not ImageId order"),
    Mutant("M23", "preprocess/labels.py", "if not labelled:\n        return NO_LABELS", "if False:\n        return NO_LABELS",
           "an unlabelled split's images get a class (background) again"),
)


def tracked_files() -> list[str]:
    """The working tree as a clone would have it: tracked files and untracked ones not ignored."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p and os.path.isfile(os.path.join(ROOT, p))]


def make_scratch(scratch: str) -> None:
    """A copy of the tree whose `detrec` package holds its own folders (as package-dir maps them),
    so imports resolve inside the copy, never to the editable install of the real tree."""
    for rel in tracked_files():
        dst = os.path.join(scratch, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), dst)
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        package_dir = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    for name, folder in package_dir.items():
        if name != "detrec":
            os.symlink(os.path.join("..", folder), os.path.join(scratch, "detrec", name.split(".", 1)[1]))


def ordered_tests(scratch: str, mutant: Mutant) -> tuple[list[str], list[str]]:
    """(the test files that name the mutated module, every other test file)."""
    module = os.path.splitext(os.path.basename(mutant.path))[0]
    tests = sorted(f for f in os.listdir(os.path.join(scratch, "tests")) if f.startswith("test_") and f.endswith(".py"))

    def names_it(name: str) -> bool:
        with open(os.path.join(scratch, "tests", name), encoding="utf-8") as f:
            return module in f.read()

    first = [os.path.join("tests", t) for t in tests if names_it(t)]
    return first, [os.path.join("tests", t) for t in tests if os.path.join("tests", t) not in first]


# Checks where the package is installed (the editable install points at the real tree, not at
# the scratch copy), not what the code does.
NOT_IN_A_COPY = ("tests/test_architecture.py::test_only_detrec_is_importable_from_outside_the_repo_editable",)


def run_fast_loop(scratch: str, tests: list[str]) -> tuple[bool, str]:
    """(passed, the first failing test or the summary line)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    deselect = [arg for test in NOT_IN_A_COPY for arg in ("--deselect", test)]
    # --dist load: both workers start at the head of the list (worksteal would hand the second
    # worker the list's second half), so the likeliest killers run first; -x stops at the first.
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "not slow", "-x", "-q", "-p", "no:cacheprovider",
                           "--dist", "load", "--no-header", "-rf", *deselect, *tests], cwd=scratch, env=env,
                          capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    return proc.returncode == 0, (failed[0] if failed else (lines[-1] if lines else proc.stderr[-300:]))


def check_isolation(scratch: str) -> None:
    """The scratch copy imports its own code: else every mutant would look like a survivor."""
    probe = subprocess.run([sys.executable, "-c", "import detrec.core.schema as m; print(m.__file__)"],
                           cwd=scratch, capture_output=True, text=True, check=True).stdout.strip()
    if not os.path.realpath(probe).startswith(os.path.realpath(scratch)):
        raise SystemExit(f"mutants: the scratch copy imports {probe}, not its own code")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated mutant ids (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the unmutated run that shows the fast loop passes in a scratch copy")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.id in args.only.split(",")]
    for m in chosen:  # a mutation that no longer applies is a stale list, not a killed mutant
        with open(os.path.join(ROOT, m.path), encoding="utf-8") as f:
            found = f.read().count(m.old)
        if found != 1:
            raise SystemExit(f"mutants: {m.id}: {m.path} holds {m.old!r} {found} times (must be once): update the list")
    survivors = []
    start = time.monotonic()
    # The unmutated copy must pass, or a "kill" could be a failure that has nothing to do with it.
    baseline = [] if args.no_baseline else [Mutant("base", "core/schema.py", "", "", "no mutation (must pass)")]
    for m in baseline + chosen:
        scratch = tempfile.mkdtemp(prefix=f"detrec-{m.id}-")
        try:
            make_scratch(scratch)
            check_isolation(scratch)
            path = os.path.join(scratch, m.path)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            with open(path, "w", encoding="utf-8") as f:
                f.write(text.replace(m.old, m.new))
            t0 = time.monotonic()
            # The files that name the module first, on their own: a kill there costs seconds;
            # only a mutant they let through pays for the rest of the fast loop.
            first, rest = ordered_tests(scratch, m)
            if m.id == "base":
                first, rest = [], first + rest
            passed, detail = run_fast_loop(scratch, first) if first else (True, "")
            if passed:
                passed, detail = run_fast_loop(scratch, rest)
            verdict = ("passed" if passed else "FAILED") if m.id == "base" else ("SURVIVED" if passed else "killed")
            print(f"{m.id:<4}  {verdict:<8}  {time.monotonic() - t0:5.0f}s  {m.what}  [{detail}]", flush=True)
            if m.id == "base" and not passed:
                raise SystemExit("mutants: the fast loop fails without any mutation; fix that first")
            if passed and m.id != "base":
                survivors.append(m.id)
        finally:
            if not args.keep:
                shutil.rmtree(scratch, ignore_errors=True)
    print(f"{len(chosen) - len(survivors)} killed, {len(survivors)} survived"
          + (f" ({', '.join(survivors)})" if survivors else "") + f" in {time.monotonic() - start:.0f}s")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
