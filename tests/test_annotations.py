"""Pure XML parsing: real-format samples, the variations real files have, and hostile input."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest

from detrec.preprocess import annotations

from detrec.core import schema
from detrec.preprocess.annotations import AnnotationError
from tests.conftest import SAMPLES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sample(name: str) -> bytes:
    with open(os.path.join(SAMPLES, name), "rb") as f:
        return f.read()


def test_ilsvrc_sample():
    ann = annotations.parse(sample("ILSVRC2012_val_00000001.xml"))
    assert (ann.width, ann.height) == (500, 375)
    assert ann.objects == (annotations.Object("n01751748", 111, 108, 441, 193),)


def test_voc_sample_and_flags():
    ann = annotations.parse(sample("voc_two_objects.xml"))
    assert (ann.width, ann.height) == (11, 14)
    assert [o.name for o in ann.objects] == ["tvmonitor", "train"]
    assert ann.objects[0].truncated and not ann.objects[1].truncated
    assert annotations.parse(sample("VOC2007_000002.xml")).objects[0].name == "train"


DET = b"""\xef\xbb\xbf<annotation>\r
\t<folder>n02672831</folder>\r
\t<size><width>200</width><height>100</height></size>\r
\t<object><name> n1 </name><trackid>0</trackid><occluded>1</occluded><generated>0</generated>
\t\t<bndbox><xmax> 150.0 </xmax><ymin>10</ymin><xmin>050</xmin><ymax>90.5</ymax></bndbox>
\t\t<subcategory>x</subcategory><pose>Left</pose><difficult>1</difficult></object>\r
</annotation>\r
"""


def test_real_world_variations():
    """BOM, CRLF, any <bndbox> child order, padded/float numbers, extra tags, no <depth>."""
    ann = annotations.parse(DET)
    assert ann.objects == (annotations.Object("n1", 50.0, 10.0, 150.0, 90.5, difficult=True),)


def test_normalise_clips_and_labels():
    ann = annotations.Annotation(200, 100, (annotations.Object("n1", -5, 10, 250, 50), annotations.Object("n2", 0, 0, 20, 20)))
    boxes = annotations.normalise(ann, 999, 999, {"n1": 1, "n2": 2}.get)
    assert boxes[0] == schema.Box(0.0, 0.1, 1.0, 0.5, 1, "n1")
    assert boxes[1] == schema.Box(0.0, 0.0, 0.1, 0.2, 2, "n2")
    assert schema.largest_box_label(boxes) == (1, "n1")


def test_normalise_falls_back_to_image_size():
    ann = annotations.Annotation(0, 0, (annotations.Object("n1", 10, 20, 30, 40),))
    (box,) = annotations.normalise(ann, 100, 200, {"n1": 1}.get)
    assert (box.xmin, box.ymin, box.xmax, box.ymax) == pytest.approx((0.1, 0.1, 0.3, 0.2))


@pytest.mark.parametrize(
    "xml, code",
    [
        (b"<annotation><object>", "malformed_xml"),
        (b"<notes/>", "not_an_annotation"),
        (b"<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>", "missing_name"),
        (b"<annotation><object><name>n</name><bndbox><xmin>9</xmin><ymin>1</ymin><xmax>2</xmax><ymax>5</ymax></bndbox></object></annotation>", "inverted_box"),
        (b"<annotation><object><name>n</name><bndbox><xmin>a</xmin><ymin>1</ymin><xmax>2</xmax><ymax>5</ymax></bndbox></object></annotation>", "bad_number"),
        (b"<annotation><object><name>n</name></object></annotation>", "missing_bndbox"),
    ],
)
def test_bad_annotations_name_the_problem(xml, code):
    with pytest.raises(AnnotationError) as err:
        annotations.parse(xml, "dir/x.xml")
    assert err.value.code == code
    assert "dir/x.xml" in str(err.value)


def test_empty_box_after_clipping_is_an_error():
    ann = annotations.Annotation(100, 100, (annotations.Object("n1", 120, 10, 150, 50),))
    with pytest.raises(AnnotationError) as err:
        annotations.normalise(ann, 100, 100, {"n1": 1}.get, "a.xml")
    assert err.value.code == "empty_box"


def test_unknown_synset_is_an_error_not_background():
    ann = annotations.Annotation(100, 100, (annotations.Object("n9", 1, 1, 50, 50),))
    with pytest.raises(AnnotationError) as err:
        annotations.normalise(ann, 100, 100, {"n1": 1}.get)
    assert err.value.code == "unknown_synset"


XXE = b"""<?xml version="1.0"?>
<!DOCTYPE annotation [<!ENTITY secret SYSTEM "file:///etc/hostname">]>
<annotation><object><name>&secret;</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>"""

LAUGHS = b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">' + b"".join(
    b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10) for i in range(1, 10)
) + b"]>\n<annotation><object><name>&lol9;</name></object></annotation>"


# Headroom over the address space a fresh interpreter has after importing the parser: ample
# for any real annotation, a fraction of what an expanded billion laughs needs (~3 GB).
ADDRESS_HEADROOM = 256 << 20
_UNDER_LIMIT = """
import pickle, re, resource, sys
from detrec.preprocess import annotations

def address_space():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))

docs, byte_precheck, headroom = pickle.load(sys.stdin.buffer)
if not byte_precheck:
    annotations._DECLARATION = re.compile(rb"(?!x)x")
limit = address_space() + headroom
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    bytearray(2 * headroom)
    sys.exit("the address-space limit does not bite")
except MemoryError:
    pass
for doc in docs:
    try:
        annotations.parse(doc, "evil.xml")
        print("parsed")
    except annotations.AnnotationError as exc:
        print(exc.code)
"""


def parse_under_address_limit(docs: list[bytes], byte_precheck: bool = True) -> list[str]:
    """Each document's outcome (an error code, or "parsed"), parsed in a fresh interpreter whose
    address space is capped at what it had after import plus ADDRESS_HEADROOM: libxml2's own
    allocations count (tracemalloc sees only Python's), so blowing up memory fails the run."""
    proc = subprocess.run([sys.executable, "-c", _UNDER_LIMIT], input=pickle.dumps((docs, byte_precheck,
                          ADDRESS_HEADROOM)), cwd=REPO, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return proc.stdout.decode().split()


@pytest.mark.parametrize("byte_precheck", [True, False])
def test_hostile_xml_is_rejected_with_bounded_memory(byte_precheck):
    docs = [XXE, LAUGHS, XXE.replace(b"DOCTYPE", b"doctype")]
    outcomes = parse_under_address_limit(docs, byte_precheck)
    # (the lower-case doctype is no DOCTYPE to the parser: malformed; the byte pattern rejects it first)
    assert outcomes == ["xml_dtd_forbidden", "xml_dtd_forbidden",
                        "xml_dtd_forbidden" if byte_precheck else "malformed_xml"]


def test_parser_itself_never_resolves_entities():
    """Even without the DOCTYPE pre-check, lxml is configured not to expand or fetch."""
    from lxml import etree

    root = etree.fromstring(XXE, parser=annotations._PARSER)
    with open("/etc/hostname") as f:
        secret = f.read().strip()
    assert secret not in etree.tostring(root).decode()


def test_size_cap():
    with pytest.raises(AnnotationError) as err:
        annotations.parse(b"<annotation>" + b" " * (annotations.MAX_XML_BYTES + 1) + b"</annotation>")
    assert err.value.code == "xml_too_large"
