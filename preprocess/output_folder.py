"""What is already in `--output`, and what a run may delete or replace there.

detrec never deletes or overwrites a file it did not write. A folder is writable when it is
empty or new, when it holds a detrec dataset (a dataset_info.json that detrec can read), or
when it holds only what an interrupted detrec run leaves (shards, their .idx, labels.txt,
errors-<split>.jsonl and detrec's own temporary files, with at least one shard or temporary
file among them). Anything else is refused before the job starts, with one line that names
a file that is not detrec's. The cleanup at the end (finalize) then only ever touches files
of those detrec names.

One run at a time: a run holds the folder with `lock` (an advisory flock on LOCK_FILE, which
the kernel lets go of when the process ends however it ends, so a crash leaves no stale lock;
a file left by a killed run is detrec's own and is taken over). Object stores (gs://) have no
such lock: there nothing stops a second run, and the last run to finish wins each file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
from typing import Iterator

from detrec.core import dataset_info, fs, schema
from detrec.core.dataset_info import DatasetInfo
from detrec.core.errors import UserError

# Held (flock) by the run writing the folder, holding its pid; removed when the run ends.
LOCK_FILE = ".detrec-preprocess.lock"


def is_shard_file(name: str) -> bool:
    """A shard or its DALI index, by detrec's naming."""
    base = name[: -len(schema.INDEX_SUFFIX)] if name.endswith(schema.INDEX_SUFFIX) else name
    return schema.parse_shard_name(base) is not None


def is_detrec_name(name: str) -> bool:
    """A name detrec preprocess writes in its output folder."""
    return (is_shard_file(name) or _is_leftover(name)
            or name in (schema.DATASET_INFO, schema.LABELS_FILE)
            or (name.startswith(schema.ERRORS_PREFIX) and name.endswith(schema.ERRORS_SUFFIX)))


def _is_leftover(name: str) -> bool:
    """A name only a detrec run leaves behind when it is stopped: a temporary file or the lock."""
    return fs.is_temp(name) or name == LOCK_FILE


@dataclasses.dataclass(frozen=True)
class OutputFolder:
    """The state of an output folder before a run: its previous dataset, if it holds one."""

    path: str
    previous: DatasetInfo | None = None


def check(path: str) -> OutputFolder:
    """Raises UserError unless a run may write into `path` (see the module docstring)."""
    if not fs.exists(path):
        return OutputFolder(path)
    if not fs.isdir(path):
        raise UserError(f"--output {path} is a file; pass a folder")
    names = fs.listdir(path)
    if not names:
        return OutputFolder(path)
    if schema.DATASET_INFO in names:
        try:
            previous = dataset_info.load(path)
        except UserError as exc:
            raise UserError(f"--output {path} holds a {schema.DATASET_INFO} detrec cannot read ({exc}); "
                            "it is not a detrec dataset: pass a new or empty folder") from None
        return OutputFolder(path, previous)
    foreign = [n for n in names if not is_detrec_name(n)]
    if foreign or not any(is_shard_file(n) or _is_leftover(n) for n in names):
        example = (foreign or names)[0]
        raise UserError(f"--output {path} is not empty and not a detrec dataset (it holds {example!r}); "
                        "detrec writes only into a new or empty folder or one of its own datasets")
    return OutputFolder(path)


def remove_temporaries(path: str) -> None:
    """Deletes detrec's temporary files in `path` (a stopped or failed run's partial writes)."""
    for name in fs.listdir(path):
        if fs.is_temp(name):
            fs.remove(fs.join(path, name))


@contextlib.contextmanager
def lock(path: str) -> Iterator[None]:
    """Holds the local folder `path` for this run; a UserError naming the holder's pid when
    another run holds it (nothing is written then). Does nothing for object stores."""
    if fs.is_url(path):
        yield
        return
    lock_path = os.path.join(path, LOCK_FILE)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            holder = holder if holder.isdigit() else "unknown"  # not yet written
            raise UserError(f"--output {path} is being written by another detrec preprocess run (pid {holder}); "
                            "wait for it to end or pass another folder") from None
        # The run that held it may have removed the file between our open and our flock:
        # then this lock guards nothing, so open the file now at that path again.
        if _same_file(fd, lock_path):
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)  # before letting go, so no one locks a file about to vanish
        os.close(fd)


def _same_file(fd: int, path: str) -> bool:
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)
