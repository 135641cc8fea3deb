"""An object store for tests: a Beam FileSystem over a dict, scheme `memobj://`.

It has what gs:// has and a laptop folder has not: no folders, only object names with
slashes (and, like the Cloud console, an optional zero-byte `name/` marker for an empty
folder). Defining the class registers it with Beam, so `detrec preprocess --input
memobj://...` runs the real job over it, in-process, on the DirectRunner.
"""

from __future__ import annotations

import io
import os

from apache_beam.io.filesystem import BeamIOError, FileMetadata, FileSystem

SCHEME = "memobj"
OBJECTS: dict[str, bytes] = {}


class _Upload(io.BytesIO):
    """An object being written: stored whole when closed, as GCS does."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def close(self) -> None:
        if not self.closed:
            OBJECTS[self._path] = self.getvalue()
        super().close()


class ObjectStore(FileSystem):
    @classmethod
    def scheme(cls) -> str:
        return SCHEME

    def join(self, basepath: str, *paths: str) -> str:
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path: str) -> tuple[str, str]:
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path: str) -> None:
        pass

    def has_dirs(self) -> bool:
        return False

    def _list(self, dir_or_prefix: str):
        for name in sorted(OBJECTS):
            if name.startswith(dir_or_prefix):
                yield FileMetadata(name, len(OBJECTS[name]), 0.0)

    def create(self, path, mime_type="application/octet-stream", compression_type=None):
        return _Upload(path)

    def open(self, path, mime_type="application/octet-stream", compression_type=None):
        if path not in OBJECTS:
            raise BeamIOError(f"no such object {path}")
        return io.BytesIO(OBJECTS[path])

    def copy(self, source_file_names, destination_file_names) -> None:
        for src, dst in zip(source_file_names, destination_file_names):
            OBJECTS[dst] = OBJECTS[src]

    def rename(self, source_file_names, destination_file_names) -> None:
        for src, dst in zip(source_file_names, destination_file_names):
            OBJECTS[dst] = OBJECTS.pop(src)

    def exists(self, path: str) -> bool:
        return path in OBJECTS  # an object, never a "folder"

    def size(self, path: str) -> int:
        return len(OBJECTS[path])

    def last_updated(self, path: str) -> float:
        return 0.0

    def checksum(self, path: str) -> str:
        return str(len(OBJECTS[path]))

    def metadata(self, path: str) -> FileMetadata:
        return FileMetadata(path, len(OBJECTS[path]), 0.0)

    def delete(self, paths) -> None:
        for path in paths:
            OBJECTS.pop(path, None)


def upload(local: str, url: str) -> str:
    """Copies a local tree to `url` (symlinks and hidden files as they are); an empty folder
    becomes a `name/` marker object. Returns `url`."""
    for folder, dirs, files in os.walk(local):
        rel = os.path.relpath(folder, local).replace(os.sep, "/")
        prefix = url if rel == "." else f"{url}/{rel}"
        if not dirs and not files:
            OBJECTS[prefix + "/"] = b""
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                OBJECTS[f"{prefix}/{name}"] = f.read()
    return url
