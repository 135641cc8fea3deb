"""Pure Pascal-VOC / ILSVRC annotation parsing: bytes in, Annotation out (no file access).

Parsing is hardened because annotation trees come from the internet: no DTD, no entity
expansion, no network, capped size. A document that declares a DOCTYPE or entities is
rejected: by a byte pattern before lxml sees it when the encoding is ASCII-compatible (fast
and cheap), and in any encoding (UTF-16/32 hide the pattern) by the parser: a parsed document
must have no DTD, and one that fails to parse is parsed again by a target that stops at the
DOCTYPE, to say why (libxml2 itself refuses a billion laughs' amplification). The parser never
expands or fetches an entity either way, so XXE and billion-laughs files fail with bounded
memory and nothing a document references can reach the output.

Every number is checked as well as parsed: a coordinate must be finite, a `<size>` a whole
number in 0..MAX_SIZE (`1e400` is infinity to Python, and int() of it used to stop the whole
job). Error messages name the file and the field, and quote a value only when it looks like a
number: a file's content never reaches errors-<split>.jsonl (annotation paths may be links to
anything).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

from lxml import etree

from detrec.core.errors import InputError
from detrec.core import schema

MAX_XML_BYTES = 1 << 20  # real ILSVRC/VOC files are < 10 KB
# The largest <size> side taken as a frame (a picture is at most 65500 wide: image_fit.MAX_SIDE;
# past that boxes normalised by it would underflow float32 rather than describe a picture).
MAX_SIZE = 1 << 20
# What a quoted number may look like in a message (anything else is not shown).
_NUMBER_LIKE = re.compile(r"[+-]?([0-9.eE+-]{1,40}|inf|infinity|nan)", re.IGNORECASE)
_ID_LIKE = re.compile(r"[\w./-]{1,200}")  # what an image id or synset looks like (n01440764_10026)
_DECLARATION = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
)
_COORDS = ("xmin", "ymin", "xmax", "ymax")


class AnnotationError(InputError):
    """An annotation that cannot become a record."""


@dataclasses.dataclass(frozen=True)
class Object:
    """One annotated object in pixels of the annotated frame, as written in the file."""

    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool = False
    truncated: bool = False
    crowd: bool = False  # a crowd or group of objects (COCO iscrowd, Open Images IsGroupOf)


@dataclasses.dataclass(frozen=True)
class Annotation:
    """A parsed annotation. width/height are 0 when `<size>` is missing or zero."""

    width: int
    height: int
    objects: tuple[Object, ...]
    filename: str = ""


def _children(element) -> dict[str, str]:
    """First text of each child tag. One pass over the children is ~5x cheaper than a
    findtext() per field, which matters at millions of files."""
    out: dict[str, str] = {}
    for child in element:
        tag = child.tag
        if isinstance(tag, str) and tag not in out:
            out[tag] = (child.text or "").strip()
    return out


def shown(text: str) -> str:
    """A value for an error message: quoted when it looks like a number, else only its length
    (the file may be a link to anything; its content must not reach the error report)."""
    return repr(text) if _NUMBER_LIKE.fullmatch(text) else f"({len(text)} characters, not shown)"


def shown_id(text: str) -> str:
    """An image id or synset for a message: quoted when it looks like one, else its length."""
    return repr(text) if _ID_LIKE.fullmatch(text) else f"({len(text)} characters, not shown)"


def is_background_name(name: str) -> bool:
    """Whether a class name is the background class's (id 0), in any case or spacing: such a
    class would be a second 'background' beside id 0, so every source refuses it."""
    return len(name) >= 9 and name.strip().casefold() == schema.BACKGROUND_TEXT  # (casefold may grow a name by one)


def _finite(text: str, tag: str, where: str) -> float:
    """float(text), or AnnotationError `bad_number` when it is not a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise AnnotationError("bad_number", f"{where}: <{tag}> {shown(text)} is not a number") from None
    if value - value != 0.0:  # inf and nan ("1e400" overflows to inf)
        raise AnnotationError("bad_number", f"{where}: <{tag}> {shown(text)} is not a finite number")
    return value


def _number(fields: dict[str, str], tag: str, where: str) -> float:
    text = fields.get(tag, "")
    if not text:
        raise AnnotationError("missing_coordinate", f"{where}: <{tag}> is missing")
    return _finite(text, tag, where)


def _flag(fields: dict[str, str], tag: str) -> bool:
    text = fields.get(tag) or "0"
    try:
        return float(text) != 0
    except ValueError:
        return text.lower() in ("true", "yes")


def _size(root, where: str) -> tuple[int, int]:
    """`<size>` as (width, height); (0, 0) when it is missing, empty or zero (the decoded
    image's size is the frame then). Anything else that is not a whole number in 0..MAX_SIZE
    is `bad_number`: a frame that is wrong would silently misplace every box."""
    size = root.find("size")
    if size is None:
        return 0, 0
    fields = _children(size)
    out = []
    for tag in ("width", "height"):
        text = fields.get(tag) or "0"
        value = _finite(text, tag, f"{where}: <size>")
        if not 0 <= value <= MAX_SIZE:
            raise AnnotationError("bad_number", f"{where}: <size>: <{tag}> {shown(text)} is outside 0..{MAX_SIZE}")
        out.append(int(value))
    w, h = out
    return (w, h) if w > 0 and h > 0 else (0, 0)


def _syntax_error(exc: etree.XMLSyntaxError) -> str:
    """libxml2's verdict without its words: those quote tag and entity names from the file."""
    line, column = exc.position if exc.position else (exc.lineno, 0)
    try:
        kind = etree.ErrorTypes._getName(exc.code, "error")  # e.g. ERR_TAG_NAME_MISMATCH
    except Exception:  # a private helper of lxml's: the message works without it
        kind = "error"
    return f"{kind} at line {line}, column {column}"


def _has_dtd(root) -> bool:
    """Whether the parsed document declared a DTD (internal subset or external reference)."""
    info = root.getroottree().docinfo
    return info.internalDTD is not None or info.externalDTD is not None or bool(info.system_url or info.public_id)


class _DoctypeSpotter:
    """A parser target that builds nothing and stops at a DOCTYPE, noting that it saw one."""

    def __init__(self) -> None:
        self.seen = False

    def doctype(self, *_) -> None:
        self.seen = True
        raise _Doctype

    def start(self, *_) -> None:
        pass

    def end(self, *_) -> None:
        pass

    def data(self, *_) -> None:
        pass

    def close(self) -> None:
        return None


class _Doctype(Exception):
    pass


def _declares_dtd(data: bytes) -> bool:
    """Whether a document that failed to parse declares a DOCTYPE (in any encoding libxml2
    reads): the parser itself says so, and stops there, before the DTD's declarations."""
    spotter = _DoctypeSpotter()
    parser = etree.XMLParser(target=spotter, resolve_entities=False, no_network=True, load_dtd=False,
                             dtd_validation=False, huge_tree=False)
    try:
        etree.fromstring(data, parser=parser)
    except Exception:  # _Doctype, or the syntax error again
        pass
    return spotter.seen


def parse(data: bytes, where: str = "<annotation>") -> Annotation:
    """Parses annotation XML bytes.

    Args:
      data: the file's bytes (BOM, CRLF, any child order and extra tags are fine).
      where: the file's path, used in error messages.

    Raises:
      AnnotationError: malformed or unsafe XML, no `<annotation>` root, an object without
        `<name>`, a missing or non-numeric coordinate, or an inverted box.
    """
    if len(data) > MAX_XML_BYTES:
        raise AnnotationError("xml_too_large", f"{where}: {len(data)} bytes > {MAX_XML_BYTES} allowed")
    if _DECLARATION.search(data):
        raise AnnotationError("xml_dtd_forbidden", f"{where}: DOCTYPE/ENTITY declarations are not allowed")
    try:
        root = etree.fromstring(data, parser=_PARSER)
    except etree.XMLSyntaxError as exc:
        if _declares_dtd(data):
            raise AnnotationError("xml_dtd_forbidden", f"{where}: DOCTYPE/ENTITY declarations are not allowed") from None
        raise AnnotationError("malformed_xml", f"{where}: malformed XML ({_syntax_error(exc)})") from None
    if root is not None and _has_dtd(root):  # a DOCTYPE the byte pattern could not see (UTF-16, UTF-32)
        raise AnnotationError("xml_dtd_forbidden", f"{where}: DOCTYPE/ENTITY declarations are not allowed")
    if root is None or root.tag != "annotation":
        raise AnnotationError("not_an_annotation", f"{where}: root element is not <annotation>")
    width, height = _size(root, where)
    objects = []
    for i, obj in enumerate(root.iter("object")):
        label = f"{where}: object {i}"
        fields = _children(obj)
        name = fields.get("name", "")
        if not name:
            raise AnnotationError("missing_name", f"{label}: <name> is missing or empty")
        box = obj.find("bndbox")
        if box is None:
            raise AnnotationError("missing_bndbox", f"{label} ({name}): <bndbox> is missing")
        coords = _children(box)
        xmin, ymin, xmax, ymax = (_number(coords, tag, f"{label} ({name})") for tag in _COORDS)
        if xmin > xmax or ymin > ymax:
            raise AnnotationError(
                "inverted_box",
                f"{label} ({name}): inverted box xmin {xmin:g} xmax {xmax:g} ymin {ymin:g} ymax {ymax:g}",
            )
        objects.append(Object(name, xmin, ymin, xmax, ymax, _flag(fields, "difficult"), _flag(fields, "truncated")))
    return Annotation(width, height, tuple(objects), (root.findtext("filename") or "").strip())


def normalise(
    ann: Annotation,
    image_width: int,
    image_height: int,
    label_of: Callable[[str], int | None],
    where: str = "<annotation>",
) -> tuple[schema.Box, ...]:
    """Boxes normalised to [0, 1] by the annotated frame, clipped, with class ids.

    The frame is the annotation's `<size>` (what the annotator saw); when that is missing
    or zero, the decoded image size. A box past the border is clipped and kept; one that is
    empty after clipping is an error (never silently background).

    Args:
      ann: the parsed annotation.
      image_width, image_height: the stored image's size (fallback frame).
      label_of: synset -> class id (1..K), or None when the synset is unknown.
      where: the annotation's path, for messages.

    Raises:
      AnnotationError: `unknown_synset`, `reserved_class_name` (an object named as the
        background class is), `empty_box`.
    """
    frame_w, frame_h = frame(ann, image_width, image_height)
    boxes = []
    for i, obj in enumerate(ann.objects):
        if is_background_name(obj.name):
            raise AnnotationError("reserved_class_name", f"{where}: object {i}: <name> {obj.name!r} is the background "
                                                         "class (id 0: no object), not an object class; rename it")
        label = label_of(obj.name)
        if label is None:
            raise AnnotationError("unknown_synset", f"{where}: object {i}: synset {obj.name!r} is not in the vocabulary")
        clip = lambda v, size: min(max(v / size, 0.0), 1.0)  # noqa: E731
        xmin, xmax = clip(obj.xmin, frame_w), clip(obj.xmax, frame_w)
        ymin, ymax = clip(obj.ymin, frame_h), clip(obj.ymax, frame_h)
        if not (xmin < xmax and ymin < ymax):
            raise AnnotationError(
                "empty_box",
                f"{where}: object {i} ({obj.name}): box ({obj.xmin:g},{obj.ymin:g})-({obj.xmax:g},{obj.ymax:g}) "
                f"is empty inside the {frame_w}x{frame_h} frame",
            )
        boxes.append(schema.Box(xmin, ymin, xmax, ymax, label, obj.name, obj.difficult, obj.truncated, obj.crowd))
    return tuple(boxes)


def frame(ann: Annotation, image_width: int, image_height: int) -> tuple[int, int]:
    """The frame the boxes are in: the annotation's `<size>`, or the decoded image's without one."""
    return (ann.width, ann.height) if ann.width and ann.height else (image_width, image_height)


def pixel_areas(ann: Annotation, image_width: int, image_height: int) -> tuple[float, ...]:
    """Each box's area in pixels of its frame, clipped as `normalise` clips it.

    What `schema.largest_box_label` compares: exact for whole-pixel corners, so boxes of equal
    pixel area tie (and go to document order) instead of being split by float rounding after
    normalising.
    """
    frame_w, frame_h = frame(ann, image_width, image_height)
    clip = lambda v, size: min(max(v, 0.0), float(size))  # noqa: E731
    return tuple((clip(o.xmax, frame_w) - clip(o.xmin, frame_w)) * (clip(o.ymax, frame_h) - clip(o.ymin, frame_h))
                 for o in ann.objects)


def synsets(ann: Annotation) -> Sequence[str]:
    return [obj.name for obj in ann.objects]
