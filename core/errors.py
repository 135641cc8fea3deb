"""Errors a user can fix. The CLI prints them as one line (no traceback) and exits 2."""


class UserError(Exception):
    """A bad flag, path or input that the user must fix; the message says what to do."""


class InputError(ValueError):
    """One source file that cannot become a record; `code` is a short reason for counters
    and errors-<split>.jsonl, the message names the file and the problem."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
