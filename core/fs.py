"""Local paths and URLs (gs://...) behind one small facade: the only file layer detrec has.

Local paths go straight to `os` (no import cost: the launcher, `--verify-images header` and
`detrec inspect` on a local folder never load TensorFlow). A URL goes to a remote backend
chosen per scheme when first needed: Beam's `FileSystems` when it knows the scheme and the
process runs Beam (the preprocess workers) or not TensorFlow (the launcher, inspect), else
TensorFlow's `tf.io.gfile` (the trainer; also schemes only TensorFlow knows, such as ram://).
So this module imports neither up front, and each side keeps its own stack.

Every file detrec writes under its final name is first written to a temporary sibling named
by `temp_path` (`.NAME.tmp-<random>`, recognisable by `is_temp`) and renamed when complete.
"""

from __future__ import annotations

import builtins
import contextlib
import glob as _glob
import os
import posixpath
import re
import stat
import sys
import uuid
from typing import IO, Iterator

from detrec.core.errors import IOFailure

TEMP_MARK = ".tmp-"


def is_url(path: str) -> bool:
    return "://" in path


def join(base: str, *names: str) -> str:
    """Joins local paths and URLs alike (URLs always with '/')."""
    return posixpath.join(base, *names) if is_url(base) else os.path.join(base, *names)


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] if is_url(path) else os.path.basename(path.rstrip(os.sep))


def dirname(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) if is_url(path) else (os.path.dirname(path) or ".")


def absolute(path: str) -> str:
    """URLs unchanged, local paths made absolute (Beam workers may run elsewhere)."""
    return path if is_url(path) else os.path.abspath(path)


def temp_path(path: str) -> str:
    """A fresh temporary sibling of `path`: hidden, unique, and marked as detrec's own."""
    return join(dirname(path), f".{basename(path)}{TEMP_MARK}{uuid.uuid4().hex}")


# `.NAME.tmp-<32 hex>`, plus an extension a writer may need to add (shards' `.idx`, Keras'
# `.keras`): strict, so a user's `.draft.tmp-notes` is never taken for detrec's leftover.
_TEMP_NAME = re.compile(r"\..+" + re.escape(TEMP_MARK) + r"[0-9a-f]{32}(\.[a-z]+)?")


def is_temp(name: str) -> bool:
    """Whether a file name is one `temp_path` makes (a leftover of an interrupted write)."""
    return _TEMP_NAME.fullmatch(name) is not None


class _Local:
    exists = staticmethod(os.path.exists)
    isdir = staticmethod(os.path.isdir)
    listdir = staticmethod(os.listdir)
    glob = staticmethod(_glob.glob)
    size = staticmethod(os.path.getsize)
    remove = staticmethod(os.remove)

    @staticmethod
    def open(path: str, mode: str) -> IO:
        return builtins.open(path, mode)

    @staticmethod
    def replace(src: str, dst: str) -> None:
        os.replace(src, dst)

    @staticmethod
    def makedirs(path: str) -> None:
        os.makedirs(path, exist_ok=True)


class _Gfile:
    """TensorFlow's file layer (the trainer's side)."""

    def __init__(self) -> None:
        import tensorflow as tf

        self.g = tf.io.gfile

    def exists(self, path: str) -> bool:
        return self.g.exists(path)

    def isdir(self, path: str) -> bool:
        return self.g.isdir(path)

    def listdir(self, path: str) -> list[str]:
        return [n.rstrip("/") for n in self.g.listdir(path)]

    def glob(self, pattern: str) -> list[str]:
        return self.g.glob(pattern)

    def size(self, path: str) -> int:
        return self.g.stat(path).length

    def remove(self, path: str) -> None:
        self.g.remove(path)

    def open(self, path: str, mode: str) -> IO:
        return self.g.GFile(path, mode)

    def replace(self, src: str, dst: str) -> None:
        self.g.rename(src, dst, overwrite=True)

    def makedirs(self, path: str) -> None:
        self.g.makedirs(path)


class _Beam:
    """Beam's file layer (the preprocess workers' side)."""

    def __init__(self) -> None:
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems

        self.fs, self.raw = FileSystems, CompressionTypes.UNCOMPRESSED

    def exists(self, path: str) -> bool:
        return self.fs.exists(path) or self.isdir(path)

    def isdir(self, path: str) -> bool:
        """Object stores (gs://) have no folders, only names with slashes: a path is a folder
        when some object's name starts with it and a slash (a console-made `dir/` marker too)."""
        return bool(self.fs.match([path.rstrip("/") + "/**"], limits=[1])[0].metadata_list)

    def listdir(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        found = self.fs.match([prefix + "*"])[0].metadata_list
        return sorted({m.path[len(prefix):].split("/", 1)[0] for m in found})

    def glob(self, pattern: str) -> list[str]:
        return sorted(m.path for m in self.fs.match([pattern])[0].metadata_list)

    def size(self, path: str) -> int:
        return self.fs.match([path])[0].metadata_list[0].size_in_bytes

    def remove(self, path: str) -> None:
        self.fs.delete([path])

    def open(self, path: str, mode: str) -> IO:
        if "r" in mode:
            return self.fs.open(path, compression_type=self.raw)
        return self.fs.create(path, compression_type=self.raw)

    def replace(self, src: str, dst: str) -> None:
        if self.fs.exists(dst):
            self.fs.delete([dst])
        self.fs.rename([src], [dst])

    def makedirs(self, path: str) -> None:
        pass  # object stores have no directories


_remote: dict[str, object] = {}


def _beam_for(path: str):
    """Beam's backend when Beam is there and knows this scheme, else None."""
    try:
        backend = _Beam()
        backend.fs.get_filesystem(path)
        return backend
    except (ImportError, ValueError):
        return None


def _backend(path: str):
    if not is_url(path):
        return _Local
    scheme = path.split("://", 1)[0]
    if scheme not in _remote:
        beam_first = "apache_beam" in sys.modules or "tensorflow" not in sys.modules
        _remote[scheme] = (beam_first and _beam_for(path)) or _Gfile()
    return _remote[scheme]


def exists(path: str) -> bool:
    return _backend(path).exists(path)


def isdir(path: str) -> bool:
    return _backend(path).isdir(path)


def listdir(path: str) -> list[str]:
    """Names (not paths) in a folder, sorted."""
    return sorted(_backend(path).listdir(path))


def glob(pattern: str) -> list[str]:
    return sorted(_backend(pattern).glob(pattern))


def size(path: str) -> int:
    return _backend(path).size(path)


def remove(path: str) -> None:
    _backend(path).remove(path)


def makedirs(path: str) -> None:
    _backend(path).makedirs(path)


def open(path: str, mode: str = "rb") -> IO:  # noqa: A001 - the facade's name for it
    """A binary (or text) file object, local or remote."""
    return _backend(path).open(path, mode)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    """A UTF-8 text file; UnicodeDecodeError as is (callers say which file)."""
    return read_bytes(path).decode("utf-8")


class NotARegularFile(OSError):
    """A FIFO, device, socket or folder where a file was expected: reading it could block
    forever (a FIFO) or never end (/dev/zero), so it is never read."""


def open_regular(path: str) -> IO[bytes]:
    """A file opened for reading bytes. A local path is opened without blocking and must be a
    regular file (a link to one is fine), so neither a FIFO nor a link to /dev/zero can hang or
    fill the reader (NotARegularFile). Object stores hold only regular files."""
    if is_url(path):
        return open(path, "rb")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotARegularFile(f"{path}: not a regular file (a FIFO, device, socket or folder)")
    return builtins.open(fd, "rb", closefd=True)


def read_capped(path: str, limit: int) -> bytes:
    """At most `limit` + 1 bytes of a file (`open_regular`'s): more than `limit` come back only
    when it is larger. The cap holds however large the file is or grows while being read."""
    if is_url(path):
        with open(path, "rb") as f:
            return f.read(limit + 1)
    with open_regular(path) as f:
        info = os.fstat(f.fileno())
        # Asked for `limit` + 1 bytes, Python allocates them all up front (128 MB for an image,
        # ~35 us an image): ask for the size seen, and read on to the cap only if it grew.
        want = min(info.st_size, limit) + 1
        data = f.read(want)
        if len(data) == want and want <= limit:
            data += f.read(limit + 1 - want)
        return data


def replace(src: str, dst: str) -> None:
    """Renames `src` to `dst`, replacing `dst` if it exists."""
    _backend(src).replace(src, dst)


@contextlib.contextmanager
def atomic_writer(path: str) -> Iterator[IO]:
    """A binary file object whose content appears under `path` only when the block ends
    without an exception; on an exception the temporary file is removed."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            yield f
        replace(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            remove(tmp)
        raise


def write_atomic(path: str, data: bytes | str) -> None:
    """Writes a whole file under its final name only when complete (temp, then rename)."""
    with atomic_writer(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def access_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "this path cannot be reached", to be reported as such (an
    inspector `Problem`, one line); anything else is a bug and must surface.

    Used as `except fs.access_errors()` (evaluated when an exception arrives): OSError covers
    local files and Beam's BeamIOError; TensorFlow's file errors (tf.io.gfile, for schemes only it
    knows) and Google Cloud's API and credential errors count only once their module is
    loaded, since nothing else can raise them, so a local inspection imports neither.
    """
    errors: list[type[BaseException]] = [OSError, IOFailure]
    for loaded, names in ((getattr(sys.modules.get("tensorflow"), "errors", None), _TF_FILE_ERRORS),
                          (sys.modules.get("google.api_core.exceptions"), ("GoogleAPICallError", "RetryError")),
                          (sys.modules.get("google.auth.exceptions"), ("GoogleAuthError",))):
        errors += [e for e in (getattr(loaded, name, None) for name in names) if isinstance(e, type)]
    return tuple(errors)


# What tf.io.gfile raises about a path: missing, forbidden, unreachable, not a file system it
# knows, a malformed URL. Not InternalError, UnknownError and the like: those can be bugs.
_TF_FILE_ERRORS = ("NotFoundError", "PermissionDeniedError", "UnauthenticatedError", "UnavailableError",
                   "DeadlineExceededError", "ResourceExhaustedError", "AbortedError", "DataLossError",
                   "FailedPreconditionError", "UnimplementedError", "InvalidArgumentError")
