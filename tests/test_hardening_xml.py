"""DTDs and entities are forbidden by the parsed document itself, whatever its encoding (class 6).

The byte pattern that rejects `<!DOCTYPE` before parsing cannot see it in UTF-16 or UTF-32
(a NUL between every letter); the parser's own verdict must, and the memory it takes must stay
bounded even then. Memory is measured where libxml2's allocations count: in a subprocess
under an address-space limit.
"""

from __future__ import annotations

import codecs
import re

import pytest

from detrec.preprocess import annotations
from detrec.preprocess.annotations import AnnotationError
from tests.test_annotations import LAUGHS, XXE, parse_under_address_limit

PLAIN_DOCTYPE = b'<?xml version="1.0"?>\n<!DOCTYPE annotation SYSTEM "annotation.dtd">\n<annotation/>'
GOOD = b"<annotation><size><width>64</width><height>48</height></size><object><name>n1</name><bndbox>" \
       b"<xmin>1</xmin><ymin>2</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object></annotation>"
ENCODINGS = {  # name -> (codec, BOM)
    "utf-8": ("utf-8", b""), "utf-8-bom": ("utf-8", codecs.BOM_UTF8),
    "utf-16-le": ("utf-16-le", codecs.BOM_UTF16_LE), "utf-16-be": ("utf-16-be", codecs.BOM_UTF16_BE),
    "utf-16-le-no-bom": ("utf-16-le", b""),
    "utf-32-le": ("utf-32-le", codecs.BOM_UTF32_LE), "utf-32-be": ("utf-32-be", codecs.BOM_UTF32_BE),
}


def encoded(doc: bytes, name: str) -> bytes:
    codec, bom = ENCODINGS[name]
    text = doc.decode("ascii")
    if codec != "utf-8":
        text = text.replace('<?xml version="1.0"?>', f'<?xml version="1.0" encoding="{codec.upper()}"?>')
    return bom + text.encode(codec)


@pytest.fixture
def no_byte_precheck(monkeypatch):
    """The parser alone: the pre-parse byte pattern matches nothing."""
    monkeypatch.setattr(annotations, "_DECLARATION", re.compile(rb"(?!x)x"))


@pytest.mark.parametrize("doc", [XXE, LAUGHS, PLAIN_DOCTYPE], ids=["xxe", "laughs", "plain"])
@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("precheck", [True, False], ids=["with-precheck", "parser-alone"])
def test_a_dtd_is_forbidden_in_any_encoding(doc, encoding, precheck, request):
    if not precheck:
        request.getfixturevalue("no_byte_precheck")
    with pytest.raises(AnnotationError) as err:
        annotations.parse(encoded(doc, encoding), "evil.xml")
    assert err.value.code == "xml_dtd_forbidden"
    assert "hostname" not in str(err.value)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_annotations_in_any_encoding_still_parse(encoding):
    doc = GOOD.replace(b"<annotation>", b'<?xml version="1.0"?><annotation>', 1)
    ann = annotations.parse(encoded(doc, encoding))
    assert (ann.width, ann.height) == (64, 48) and ann.objects[0].xmax == 30


def test_billion_laughs_in_utf16_and_utf32_stay_within_bounded_memory():
    """The byte pattern sees none of these: libxml2 parses each DTD, and must not expand it."""
    docs = [encoded(LAUGHS, name) for name in ("utf-16-le", "utf-16-be", "utf-32-le")]
    assert [annotations._DECLARATION.search(d) for d in docs] == [None] * 3
    assert parse_under_address_limit(docs) == ["xml_dtd_forbidden"] * 3


def test_the_parser_alone_bounds_memory_on_the_utf8_laughs():
    assert parse_under_address_limit([LAUGHS, XXE], byte_precheck=False) == ["xml_dtd_forbidden"] * 2


def test_syntax_errors_do_not_quote_the_document():
    for doc in (b"<annotation><TOPSECRET></wrong></annotation>", b"<annotation>&TOPSECRET;</annotation>",
                b"TOPSECRET plain text"):
        with pytest.raises(AnnotationError) as err:
            annotations.parse(doc, "x.xml")
        assert err.value.code == "malformed_xml" and "TOPSECRET" not in str(err.value)
        assert "line 1" in str(err.value)
