"""Errors a user can fix. The CLI prints them as one line (no traceback) and exits 2."""


class UserError(Exception):
    """A bad flag, path or input that the user must fix; the message says what to do."""
