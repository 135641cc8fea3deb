"""`Problem`: one defect found in the data, as the report and the CLI's stderr show it.

Bad input is data for the inspector, not an exception: each module that finds a defect
(resolve, check, walk) appends a `Problem` and goes on. It lives in a module of its own, below
all of them, so that they can share it without importing the report that collects them.
`access_errors()` says which exceptions mean a file cannot be reached (a Problem), not a bug.
"""

from __future__ import annotations

import dataclasses
import sys

from detrec.core.errors import IOFailure


@dataclasses.dataclass(frozen=True)
class Problem:
    """One defect: the file, the byte offset of the record at fault, its 0-based index in the file.

    Attributes:
      file: the path (or glob pattern) at fault, as given or as found.
      reason: one line saying what is wrong.
      offset: byte offset of the record at fault; None when not about one record.
      record: 0-based index of that record in the file; None when not known.
    """

    file: str
    reason: str
    offset: int | None = None
    record: int | None = None

    def line(self) -> str:
        """`file: offset O, record R: reason`, the parts that are not known left out."""
        where = []
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        if self.record is not None:
            where.append(f"record {self.record}")
        return f"{self.file}: {', '.join(where) + ': ' if where else ''}{self.reason}"


def access_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "this path cannot be reached", to become a `Problem`; anything
    else is a bug and must surface.

    Used as `except access_errors()` (evaluated when an exception arrives): OSError covers local
    files and Beam's BeamIOError; TensorFlow's file errors (tf.io.gfile, for schemes only it
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
