"""Reading the arrays of a JSON object one element at a time, in memory that does not grow with
the file (COCO's instances_train2017.json is 448 MB; `json.load` of it takes several GB).

    for key, element in top_level_elements(stream, {"images", "annotations"}):
        ...

The file must be one JSON object; for each of its keys named in `keys` whose value is an array,
each element is decoded (by the json module, in C) and yielded with its key, in file order;
every other value is passed over without being kept. Only one element (and a read block) is in
memory at a time. A document that is not such an object, or an element larger than
MAX_ELEMENT_BYTES, raises JsonStreamError naming the byte offset.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import IO, Iterator

BLOCK = 1 << 20
MAX_ELEMENT_BYTES = 64 << 20  # a COCO element is < 1 MB (a crowd's RLE mask at most)
_WHITESPACE = " \t\n\r"
_SEPARATOR = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class JsonStreamError(ValueError):
    """The file is not a JSON object of arrays as expected, at a byte offset near `where`."""


class _Reader:
    """Text from a binary stream, decoded incrementally, with a window the scanner works in."""

    def __init__(self, raw: IO[bytes]):
        self._raw = raw
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.text = ""
        self.pos = 0
        self.consumed = 0  # characters dropped from the front of `text`
        self.eof = False
        self._more()
        if self.text.startswith("\ufeff"):
            self.pos = 1

    def _more(self) -> bool:
        if self.eof:
            return False
        block = self._raw.read(BLOCK)
        try:
            self.text = self.text[self.pos:] + self._decoder.decode(block, final=not block)
        except UnicodeDecodeError as exc:
            raise JsonStreamError(f"not UTF-8 text near character {self.consumed + self.pos}: {exc.reason}") from None
        self.consumed += self.pos
        self.pos = 0
        self.eof = not block
        return True

    def peek(self) -> str:
        """The next character that is not whitespace ("" at the end), not consumed."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self._more():
                return ""

    def separator(self) -> str:
        """The next non-whitespace character, consumed with the whitespace after it (one
        regex match between elements: the common case, in C)."""
        found = _SEPARATOR.match(self.text, self.pos)
        if found and found.end() < len(self.text):
            self.pos = found.end()
            return found.group(1)
        following = self.peek()
        self.pos += 1
        return following

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise self.error(f"expected {char!r}")
        self.pos += 1

    def value(self):
        """The next JSON value, decoded whole: where the window ends inside it (a parse error or
        a number that may go on before the end of the file), the window grows and it is read again."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
                if end < len(self.text) or self.eof:
                    self.pos = end
                    return value
            except json.JSONDecodeError as exc:
                if self.eof:
                    raise self.error(exc.msg) from None
            if len(self.text) - self.pos > MAX_ELEMENT_BYTES:
                raise self.error(f"a value longer than {MAX_ELEMENT_BYTES >> 20} MB")
            self._more()

    def error(self, what: str) -> JsonStreamError:
        return JsonStreamError(f"{what} at character {self.consumed + self.pos}")


def top_level_elements(raw: IO[bytes], keys: set[str]) -> Iterator[tuple[str, object]]:
    """(key, element) for every element of the arrays under `keys` of the file's top-level
    object, in file order; other values are decoded one element at a time and dropped."""
    reader = _Reader(raw)
    reader.expect("{")
    if reader.peek() == "}":
        return
    while True:
        key = reader.value()
        if not isinstance(key, str):
            raise reader.error("expected a key")
        reader.expect(":")
        if reader.peek() == "[":
            reader.pos += 1
            if reader.peek() == "]":
                reader.pos += 1
            else:
                while True:
                    element = reader.value()
                    if key in keys:
                        yield key, element
                    following = reader.separator()
                    if following == "]":
                        break
                    if following != ",":
                        raise reader.error("expected ',' or ']' in an array")
        else:
            reader.value()
        following = reader.peek()
        reader.pos += 1
        if following == "}":
            break
        if following != ",":
            raise reader.error("expected ',' or '}'")
    if reader.peek() != "":
        raise reader.error("data after the top-level object")
