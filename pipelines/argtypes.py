"""argparse types shared by the command modules (one-line messages, never tracebacks)."""

from __future__ import annotations

import argparse
from typing import Callable, TypeVar

from detrec.core.errors import UserError

T = TypeVar("T")


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type accepting whole numbers >= minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"wants a whole number >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


positive = whole_number(1)
count = whole_number(0)


def bounded(kind: type, minimum: float, maximum: float) -> Callable[[str], float]:
    """An argparse type accepting `kind` (int or float) values in minimum..maximum."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not minimum <= value <= maximum:  # nan fails both comparisons
            raise argparse.ArgumentTypeError(f"wants a {'whole ' if kind is int else ''}number in "
                                             f"{minimum:,}..{maximum:,}, got {text!r}")
        return value

    parse.__name__ = f"number in {minimum}..{maximum}"
    return parse


def checked(flag: str, parse: Callable[[str], T], text: str) -> T:
    """`parse(text)` for a flag checked after parsing: its complaint as one UserError line
    (exit 2), where argparse's own error would print the whole usage block first."""
    try:
        return parse(text)
    except argparse.ArgumentTypeError as exc:
        raise UserError(f"{flag} {exc}") from None


def yes_no(text: str) -> bool:
    """An argparse type for a switch that may also be given a value (`--x`, `--x=false`), as
    Dataflow Flex Template parameters are."""
    value = text.strip().lower()
    if value in ("true", "yes", "1"):
        return True
    if value in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"wants true or false, got {text!r}")

