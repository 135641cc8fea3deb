"""Errors the CLI prints as one line, never a traceback: UserError (exit 2) for a mistake the
user can fix (a flag, a path), IOFailure (exit 1) for the machine's own trouble (a full disk,
a read-only file system)."""


class UserError(Exception):
    """A bad flag, path or input that the user must fix; the message says what to do."""


class IOFailure(Exception):
    """Reading or writing failed for a reason outside detrec's inputs (disk full, read-only
    or vanished file system, permissions); the message names the path and the cause."""


class InputError(ValueError):
    """One source file that cannot become a record; `code` is a short reason for counters
    and errors-<split>.jsonl, the message names the file and the problem."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line of at most `limit` characters (TensorFlow's and Beam's run to
    many lines): what reports and error lines quote."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
