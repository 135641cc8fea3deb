"""One bad input costs that input only: numbers, headers and names (class 1), and files that
are no files or never end (class 2), each through a real preprocess run on the DirectRunner.

Every case is a file in one small DET tree (plus a folder-layout and a CLS-LOC tree for class
folders and solution CSVs); each run must finish with rc 0, keep every good file, give each
bad one exactly one error line with its code, and copy no byte of any file into a message.
"""

from __future__ import annotations

import json
import os
import struct
import zlib

import pytest

from detrec.core import dataset_info, fs
from detrec.preprocess import sources, walk
from tests import image_factory as f
from tests.conftest import run_preprocess

SYN = ("n01000001", "n01000002")
SECRET = b"root:x:0:0:TOPSECRET-CONTENT:/root:/bin/bash\n"  # stands for /etc/passwd


def xml(box=(4, 4, 40, 30), size: tuple[str, str] | None = ("64", "48"), name: str = SYN[0]) -> bytes:
    """A DET annotation; `size` and `box` are text, so any number can be written."""
    size_xml = f"<size><width>{size[0]}</width><height>{size[1]}</height></size>" if size else ""
    x0, y0, x1, y1 = box
    return (f"<annotation>{size_xml}<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>").encode()


def write(path: bytes | str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def png_header(width: int, height: int) -> bytes:
    """A complete, tiny PNG whose header claims width x height (a decompression bomb's shape)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def gif_header(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b"\x2c" + b"\x00" * 4 + \
        struct.pack("<HH", width, height) + b"\x00\x02\x02\x44\x01\x00\x3b"


def bmp_header(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 12, 0, 0, 14 + len(info)) + info + b"\x00" * 12


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header claims width x height (its data far too short)."""
    data = f.jpeg(64, 48)
    sof = data.index(b"\xff\xc0")
    return data[:sof + 5] + struct.pack(">HH", height, width) + data[sof + 9:]


class DetTree:
    """Annotations/DET/train + Data/DET/train under `root`, names as str or bytes."""

    def __init__(self, root: str):
        self.root = root
        self.ann = os.path.join(root, "Annotations", "DET", "train")
        self.img = os.path.join(root, "Data", "DET", "train")
        self.synset_map = os.path.join(root, "map_det.txt")
        write(self.synset_map, "".join(f"{s} {i} class{i}\n" for i, s in enumerate(SYN, 1)).encode())

    def path(self, kind: str, rel: str | bytes, ext: str) -> str | bytes:
        base = self.ann if kind == "ann" else self.img
        if isinstance(rel, bytes):
            return os.fsencode(base) + b"/" + rel + ext.encode()
        return os.path.join(base, rel + ext)

    def add(self, rel: str | bytes, annotation: bytes | None = None, image: bytes | None = None) -> None:
        if annotation is not None:
            write(self.path("ann", rel, ".xml"), annotation)
        if image is not None:
            write(self.path("img", rel, ".JPEG"), image)

    def good(self, *stems: str) -> None:
        for i, stem in enumerate(stems):
            self.add(stem, xml(), f.jpeg(64, 48, seed=i))


def errors_of(out: str, split: str = "train") -> list[dict]:
    with open(os.path.join(out, f"errors-{split}.jsonl"), encoding="utf-8") as fh:  # must be valid UTF-8
        return [json.loads(line) for line in fh]


def by_name(errors: list[dict]) -> dict[str, list[str]]:
    """File name (folder names included for the listing's lines) -> its error codes."""
    out: dict[str, list[str]] = {}
    for e in errors:
        for path in {e["annotation"], e["image"]} - {""}:
            out.setdefault(os.path.basename(path.split(":")[0]), []).append(e["code"])
    return out


def kept_ids(out: str, split: str = "train") -> set[str]:
    import tensorflow as tf

    from detrec.core import schema

    info = dataset_info.load(out)
    files = [fs.join(out, s.file) for s in info.splits[split].shards]
    return {schema.decode(r.numpy()).source_id for r in tf.data.TFRecordDataset(files)}


def no_leftovers_and_no_leaks(out: str) -> None:
    for name in os.listdir(out):
        assert not fs.is_temp(name) and ".tmp-" not in name, name
        with open(os.path.join(out, name), "rb") as fh:
            data = fh.read()
        assert b"TOPSECRET" not in data and b"root:x:" not in data, name


# --- class 1 and 2 in one DET tree -------------------------------------------------------------
GOOD = ("good_a", "good_b", "good_c")
XML_NUMBERS = {  # stem -> annotation; every one is `bad_number`
    "num_width_overflow": xml(size=("1e400", "48")),
    "num_height_negative": xml(size=("64", "-48")),
    "num_width_nan": xml(size=("nan", "48")),
    "num_height_huge": xml(size=("64", "99999999999999999999")),
    "num_xmin_inf": xml(box=("-inf", 4, 40, 30)),
    "num_ymax_overflow": xml(box=(4, 4, 40, "1e999")),
    "num_xmax_nan": xml(box=(4, 4, "nan", 30)),
    "num_text": xml(box=(4, "TOPSECRET", 40, 30)),
}
HEADERS = {  # stem -> image bytes claiming a size past the limit: `image_too_large`
    "big_png": png_header(60000, 60000),  # 69 bytes, was DecompressionBombError
    "big_gif": gif_header(65535, 65535),
    "big_bmp": bmp_header(30000, 30000),
    "big_jpeg": jpeg_claiming(65500, 65500),
    "wide_png": png_header(70000, 8),  # few pixels, but wider than any JPEG can be
}


@pytest.fixture(scope="module")
def det_run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("hard") / "tree")
    tree = DetTree(root)
    tree.good(*GOOD)
    for stem, annotation in XML_NUMBERS.items():
        tree.add(stem, annotation, f.jpeg(64, 48))
    for stem, image in HEADERS.items():
        tree.add(stem, xml(), image)
    # Names that are not UTF-8: a pair, an unpaired image, an unpaired annotation, a folder.
    tree.add(b"name_pair_\xff", xml(), f.jpeg(64, 48))
    tree.add(b"name_lonely_img_\xfe", None, f.jpeg(64, 48))
    tree.add(b"name_lonely_xml_\xfd", xml(), None)
    tree.add(b"dir_\xc3\x28/inside", xml(), f.jpeg(64, 48))
    # No regular file behind the name: devices, FIFOs, dangling links; a link to a regular file is fine.
    os.symlink("/dev/zero", tree.path("img", "dev_zero", ".JPEG"))
    tree.add("dev_zero", xml())
    os.symlink("/dev/zero", tree.path("ann", "dev_zero_xml", ".xml"))
    tree.add("dev_zero_xml", None, f.jpeg(64, 48))
    os.mkfifo(tree.path("ann", "fifo", ".xml"))
    tree.add("fifo", None, f.jpeg(64, 48))
    os.mkfifo(tree.path("img", "fifo_img", ".JPEG"))
    tree.add("fifo_img", xml())
    os.symlink(os.path.join(root, "nowhere.JPEG"), tree.path("img", "dangling", ".JPEG"))
    tree.add("dangling", xml())
    elsewhere = os.path.join(root, "elsewhere")
    write(os.path.join(elsewhere, "linked.JPEG"), f.jpeg(64, 48, seed=9))
    os.symlink(os.path.join(elsewhere, "linked.JPEG"), tree.path("img", "good_linked", ".JPEG"))
    tree.add("good_linked", xml())
    # Links to a secret: its bytes must appear nowhere in the output.
    secret = os.path.join(root, "secret.txt")
    write(secret, SECRET * 3)
    os.symlink(secret, tree.path("img", "leak_img", ".JPEG"))
    tree.add("leak_img", xml())
    os.symlink(secret, tree.path("ann", "leak_xml", ".xml"))
    tree.add("leak_xml", None, f.jpeg(64, 48))
    tree.add("leak_tag", b"<annotation><TOPSECRET></wrong></annotation>", f.jpeg(64, 48))
    # Over the read limits: an image over --max-image-mb, an annotation over 1 MiB.
    tree.add("huge_file", xml(), f.jpeg(600, 400) + b"\0" * (1 << 20))
    tree.add("huge_xml", b"<annotation>" + b" " * (1 << 21) + b"</annotation>", f.jpeg(64, 48))
    out = str(tmp_path_factory.mktemp("hard_out"))
    rc = run_preprocess(root, out, "--splits", "train", "--num-shards", "train=2", "--synset-map", tree.synset_map,
                        "--max-image-mb", "1")
    return rc, out


def test_the_job_finishes_and_keeps_every_good_file(det_run):
    rc, out = det_run
    assert rc == 0
    assert kept_ids(out) == set(GOOD) | {"good_linked"}
    info = dataset_info.load(out)
    assert info.splits["train"].num_errors == len(errors_of(out))
    assert info.options["max_image_mb"] == 1 and info.options["downscale"] is False
    no_leftovers_and_no_leaks(out)


@pytest.mark.parametrize("stem", sorted(XML_NUMBERS))
def test_any_number_in_the_xml_is_that_files_error(det_run, stem):
    codes = by_name(errors_of(det_run[1]))
    assert codes[stem + ".xml"] == ["bad_number"]


@pytest.mark.parametrize("stem", sorted(HEADERS))
def test_any_format_s_dimension_header_is_that_files_error(det_run, stem):
    errors = [e for e in errors_of(det_run[1]) if os.path.basename(e["image"]) == stem + ".JPEG"]
    assert [e["code"] for e in errors] == ["image_too_large"]
    assert "pixel" in errors[0]["reason"]


def test_names_that_are_not_utf8_are_reported_escaped(det_run):
    errors = [e for e in errors_of(det_run[1]) if e["code"] == "bad_file_name"]
    shown = sorted(os.path.basename(e["annotation"] or e["image"]) for e in errors)
    assert shown == ["inside.JPEG", "inside.xml", "name_lonely_img_\\xfe.JPEG", "name_lonely_xml_\\xfd.xml",
                     "name_pair_\\xff.JPEG", "name_pair_\\xff.xml"]
    assert all("dir_\\xc3(/inside" in e["annotation"] + e["image"] for e in errors if "inside" in e["reason"])
    assert all(e["stage"] == "list" for e in errors)


@pytest.mark.parametrize("name, code", [
    ("dev_zero.JPEG", "not_a_regular_file"), ("dev_zero_xml.xml", "not_a_regular_file"),
    ("fifo.xml", "not_a_regular_file"), ("fifo_img.JPEG", "not_a_regular_file"),
    ("dangling.JPEG", "not_a_regular_file"),
    ("leak_img.JPEG", "not_an_image"), ("leak_xml.xml", "malformed_xml"), ("leak_tag.xml", "malformed_xml"),
    ("huge_file.JPEG", "file_too_large"), ("huge_xml.xml", "xml_too_large"),
])
def test_files_that_are_no_files_or_too_big_are_one_line_each(det_run, name, code):
    stem = os.path.splitext(name)[0]
    lines = [e for e in errors_of(det_run[1])
             if stem in {os.path.splitext(os.path.basename(p))[0] for p in (e["annotation"], e["image"])}]
    # One line for the pair: a partner left without its file is not reported again.
    assert [(os.path.basename(e["annotation"] or e["image"]) if e["stage"] == "list" else name, e["code"])
            for e in lines] == [(name, code)]


# --- class folders and solution CSVs --------------------------------------------------------
def test_folder_layout_with_a_class_folder_that_is_not_utf8(tmp_path):
    root = tmp_path / "folders"
    write(os.fsencode(root / "train" / "cat" / "a.jpg"), f.jpeg(64, 48))
    write(os.fsencode(root / "train" / "dog" / "b.jpg"), f.jpeg(64, 48, seed=1))
    write(os.fsencode(root / "train") + b"/\xffbad/c.jpg", f.jpeg(64, 48, seed=2))
    write(os.fsencode(root / "train" / "dog") + b"/d\xfe.jpg", f.jpeg(64, 48, seed=3))
    os.mkfifo(root / "train" / "cat" / "e.jpg")
    # Control characters: a tab in a class name would break labels.txt's columns, a newline its lines.
    write(os.fsencode(root / "train") + b"/t\tab/f.jpg", f.jpeg(64, 48, seed=4))
    write(os.fsencode(root / "train" / "cat") + b"/new\nline.jpg", f.jpeg(64, 48, seed=5))
    assert walk.class_folders(str(root), "train") == ["cat", "dog"]
    out = str(tmp_path / "out")
    assert run_preprocess(str(root), out, "--splits", "train", "--layout", "folder", "--num-shards", "train=1") == 0
    assert kept_ids(out) == {"cat/a.jpg", "dog/b.jpg"}
    assert sorted((os.path.basename(e["image"]), e["code"]) for e in errors_of(out)) == [
        ("c.jpg", "bad_file_name"), ("d\\xfe.jpg", "bad_file_name"), ("e.jpg", "not_a_regular_file"),
        ("f.jpg", "bad_file_name"), ("new\\x0aline.jpg", "bad_file_name")]
    with open(os.path.join(out, "labels.txt"), encoding="utf-8") as fh:
        assert [line.split("\t")[1] for line in fh] == ["background", "cat", "dog"]
    no_leftovers_and_no_leaks(out)


def cls_loc_tree(root, rows: list[str], csv_link: str = "") -> str:
    """A CLS-LOC val split of flat images labelled only by LOC_val_solution.csv."""
    tree = os.path.join(root, "ILSVRC")
    for i in range(4):
        write(os.path.join(tree, "Data", "CLS-LOC", "val", f"v{i}.JPEG"), f.jpeg(64, 48, seed=i))
    write(os.path.join(root, "LOC_synset_mapping.txt"), "".join(f"{s} class {s}\n" for s in SYN).encode())
    csv = os.path.join(root, "LOC_val_solution.csv")
    if csv_link:
        os.symlink(csv_link, csv)
    else:
        write(csv, ("ImageId,PredictionString\n" + "".join(r + "\n" for r in rows)).encode())
    return tree


def test_numbers_in_a_solution_csv_are_that_images_error(tmp_path):
    rows = [f"v0,{SYN[0]} 4 4 40 30", f"v1,{SYN[0]} 4 4 1e400 30", f"v2,{SYN[1]} nan 4 40 30",
            "TOPSECRET-CONTENT no comma here", f"v3,{SYN[1]} 4 4 40 TOPSECRET"]
    out = str(tmp_path / "out")
    assert run_preprocess(cls_loc_tree(str(tmp_path), rows), out, "--splits", "val", "--num-shards", "val=1") == 0
    assert kept_ids(out, "val") == {"v0"}
    errors = errors_of(out, "val")
    assert sorted(e["code"] for e in errors) == ["bad_csv_line", "bad_csv_row", "bad_csv_row", "bad_csv_row"]
    no_leftovers_and_no_leaks(out)


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_a_solution_csv_that_is_no_file_is_one_line_not_a_hang(tmp_path, target):
    if target == "fifo":
        target = str(tmp_path / "csv_fifo")
        os.mkfifo(target)
    out = str(tmp_path / "out")
    assert run_preprocess(cls_loc_tree(str(tmp_path), [], csv_link=target), out, "--splits", "val",
                          "--num-shards", "val=1") == 0
    codes = sorted(e["code"] for e in errors_of(out, "val"))
    assert codes == ["missing_annotation"] * 4 + ["not_a_regular_file"]


def test_capped_read_never_reads_past_the_limit(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"x" * 5000)
    assert len(fs.read_capped(str(path), 100)) == 101
    assert fs.read_capped(str(path), 10_000) == b"x" * 5000
    for target in ("/dev/zero", "/dev/null"):
        with pytest.raises(fs.NotARegularFile):
            fs.read_capped(target, 100)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(fs.NotARegularFile):  # opened without blocking, then refused
        fs.read_capped(str(tmp_path / "fifo"), 100)


@pytest.mark.parametrize("size, limit, expected", [(5000, 100, 101), (5000, 5000, 5000), (5000, 4999, 5000),
                                                   (5000, 10_000, 5000), (0, 10, 0)])
def test_capped_read_reads_what_the_file_holds_even_when_it_grew_after_its_size_was_seen(
        tmp_path, monkeypatch, size, limit, expected):
    """read_capped asks for the size fstat saw (+1), and reads on to the cap when there is
    more: a file that grew in between (here: fstat reports less) is still read whole."""
    path = tmp_path / "file"
    path.write_bytes(bytes(range(256)) * (size // 256) + b"y" * (size % 256))
    assert fs.read_capped(str(path), limit) == path.read_bytes()[:expected]
    real_fstat = os.fstat
    monkeypatch.setattr(os, "fstat", lambda fd: os.stat_result((*real_fstat(fd)[:6], size // 3, *real_fstat(fd)[7:])))
    assert fs.read_capped(str(path), limit) == path.read_bytes()[:expected]
