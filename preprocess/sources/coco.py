"""COCO: annotations/instances_<split>YEAR.json with the split's images in <split>YEAR/ (train2017/,
val2017/; other years alike, and a folder without the year).

- Boxes are `[x, y, w, h]` in pixels of the image the JSON describes (its width and height).
- Classes are 1..K in ascending COCO category id (COCO's ids have gaps); labels.txt keeps the
  COCO id in its synset column and the category name as the name (`vocabulary`).
- An image's class is its largest box's that is not a crowd; crowd boxes are kept, marked
  (`image/object/is_crowd`). An image without annotations is background: COCO annotates every
  instance of its categories.
- One line each (errors-<split>.jsonl): an image the JSON lists without its file
  (`missing_image`), a file it does not list (`image_not_listed`), an annotation of no listed
  image, an entry that is not what COCO writes, and an image with a bad box (w or h <= 0,
  non-finite, or outside the image by more than a pixel: `bad_box`).
- Memory: the JSON (448 MB for train2017) is streamed once per split while listing
  (json_stream), each image's annotations packed into ~45 bytes per box; each shard's plan
  carries only its own images' (plan.ShardPlan), unpacked in its parse step.
"""

from __future__ import annotations

import json
import math
import re
import struct
from typing import Iterator, Mapping, Sequence

from detrec.core import fs
from detrec.preprocess import annotations, json_stream, pairing, vocab as vocab_lib, walk
from detrec.preprocess.plan import Item
from detrec.preprocess.sources.contract import Source, SplitSource, Unlabelled

BOXES_FROM_JSON = "json"
_SIZE = struct.Struct("<ii")  # the image's width, height
_BOX = struct.Struct("<qiddddB")  # annotation id, category id, x, y, w, h, iscrowd
EDGE_SLACK = 1.0  # pixels a box may pass the image's edge by (COCO's rounding), clipped


class Coco(Source):
    name = "coco"
    summary = "COCO: annotations/instances_SPLITYEAR.json + SPLITYEAR/ images"

    def files_of(self, root: str, split: str) -> tuple[str, str]:
        """(instances JSON, image folder) of a split, ("", "") when the tree has none."""
        folder = fs.join(root, "annotations")
        if not fs.isdir(folder):
            return "", ""
        pattern = re.compile(rf"instances_{re.escape(split)}(\d{{4}})?\.json")
        for name in sorted(fs.listdir(folder), reverse=True):  # the latest year first
            match = pattern.fullmatch(name)
            if match:
                images = fs.join(root, f"{split}{match.group(1) or ''}")
                if fs.isdir(images):
                    return fs.join(folder, name), images
        return "", ""

    def missing(self, root: str, split: str) -> str:
        if self.files_of(root, split)[0]:
            return ""
        return f"{root}: no annotations/instances_{split}YEAR.json beside a {split}YEAR/ image folder"

    def pairs(self, source: SplitSource) -> Iterator[pairing.Pair | pairing.Rejected]:
        split = source.split
        json_path, image_dir = self.files_of(source.root, split)
        images: dict[int, tuple[str, int, int]] = {}
        boxes: dict[int, bytearray] = {}
        for problem in _read(json_path, split, images, boxes):
            yield problem
        by_name: dict[str, int] = {}
        prefix = fs.basename(image_dir) + "/"  # a file_name given with its folder (train2017/x.jpg)
        for image_id, (name, _, _) in list(images.items()):
            name = name.removeprefix(prefix)
            if name in by_name:
                del images[image_id]
                boxes.pop(image_id, None)
                yield pairing.Rejected(split, _where(json_path, image_id), "", "json", "duplicate_file_name",
                                       f"{_where(json_path, image_id)}: file {name!r} is image "
                                       f"{by_name[name]}'s too: kept there")
            else:
                by_name[name] = image_id
        listed = walk.listed(split, "image", image_dir, walk.IMAGE_EXTENSIONS, recursive=True, whole_key=True)
        for out in pairing.joined(split, listed, by_name, "image_not_listed",
                                  f"an image {fs.basename(json_path)} does not list"):
            if isinstance(out, pairing.Rejected):
                yield out
                continue
            entry, image_id = out
            _, width, height = images.pop(image_id)
            yield pairing.Pair(split, str(image_id), "", entry.path, entry.key, entry.size, "",
                               _where(json_path, image_id), _SIZE.pack(width, height) + bytes(boxes.pop(image_id, b"")))
        for name, image_id in sorted(by_name.items()):
            yield pairing.Rejected(split, _where(json_path, image_id), "", "pair", "missing_image",
                                   f"{_where(json_path, image_id)}: lists {name!r}, which is not in {image_dir}")
        for image_id in sorted(boxes):
            yield pairing.Rejected(split, _where(json_path, image_id), "", "json", "annotation_without_image",
                                   f"{json_path}: annotations of image id {image_id}, which it does not list")

    def annotate(self, pair: pairing.Pair) -> Item:
        data = pair.label_data
        width, height = _SIZE.unpack_from(data)
        objects = []
        for ann_id, category, x, y, w, h, crowd in _BOX.iter_unpack(data[_SIZE.size:]):
            problem = _box_problem(x, y, w, h, width, height)
            if problem:
                raise Unlabelled("box", "bad_box", f"{pair.label_where}: annotation {ann_id}: bbox "
                                                   f"[{x:g}, {y:g}, {w:g}, {h:g}] {problem}")
            objects.append(annotations.Object(str(category), x, y, x + w, y + h, crowd=bool(crowd)))
        return Item(pair, annotations.Annotation(width, height, tuple(objects)), BOXES_FROM_JSON)

    def fixes_classes(self, found: Mapping[str, SplitSource]) -> bool:
        return True

    def vocabulary(self, found: Mapping[str, SplitSource], splits: Sequence[str]) -> vocab_lib.Vocabulary:
        """The categories of the train split's JSON (else the first split's), by ascending id."""
        first = found.get(vocab_lib.TRAIN) or next(iter(found.values()))
        json_path = self.files_of(first.root, first.split)[0]
        categories: dict[int, str] = {}
        for category in _categories(json_path):
            if not (isinstance(category, dict) and _is_id(category.get("id"))
                    and isinstance(category.get("name"), str) and category["name"].strip()):
                raise vocab_lib.VocabError(f"{json_path}: a category without an id and a name: "
                                           f"{annotations.shown(str(category))}")
            if category["id"] in categories:
                raise vocab_lib.VocabError(f"{json_path}: category id {category['id']} listed twice")
            categories[category["id"]] = " ".join(category["name"].split())
        if not categories:
            raise vocab_lib.VocabError(f"{json_path}: no categories")
        text = "".join(f"{cid} {name}\n" for cid, name in sorted(categories.items()))
        vocab = vocab_lib.parse_synset_map(text, json_path)  # the map rules: no background name, text only
        return vocab_lib.Vocabulary(vocab.synsets, vocab.names, f"categories of {json_path}")


TAIL_BYTES = 1 << 20
_CATEGORIES = re.compile(r'"categories"\s*:\s*')


def _categories(json_path: str) -> Iterator:
    """The JSON's categories: from its last MB when it ends with them, as COCO's writers put
    them (the whole file need not be read again); else streamed."""
    with fs.open(json_path, "rb") as raw:
        raw.seek(max(0, fs.size(json_path) - TAIL_BYTES))
        tail = raw.read().decode("utf-8", "replace")
    found = _CATEGORIES.match(tail, max(tail.rfind('"categories"'), 0))
    if found:
        try:
            value, end = json.JSONDecoder().raw_decode(tail, found.end())
        except ValueError:
            value, end = None, 0
        if isinstance(value, list) and tail[end:].strip() == "}":  # the top level's last member
            yield from value
            return
    with fs.open(json_path, "rb") as raw:
        for _, category in json_stream.top_level_elements(raw, {"categories"}):
            yield category


def _where(json_path: str, image_id: int) -> str:
    return f"{json_path}:image {image_id}"


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 62


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read(json_path: str, split: str, images: dict, boxes: dict) -> Iterator[pairing.Rejected]:
    """Streams the JSON's images (id -> file name, width, height) and annotations (image id ->
    packed boxes) into `images` and `boxes`; a Rejected for each entry that cannot be used."""
    def bad(code: str, why: str) -> pairing.Rejected:
        return pairing.Rejected(split, json_path, "", "json", code, f"{json_path}: {why}")

    try:
        with fs.open(json_path, "rb") as raw:
            for key, entry in json_stream.top_level_elements(raw, {"images", "annotations"}):
                if not isinstance(entry, dict):
                    yield bad("bad_entry", f"an entry of {key} that is no object")
                elif key == "images":
                    image_id, name = entry.get("id"), entry.get("file_name")
                    width, height = entry.get("width"), entry.get("height")
                    if not (_is_id(image_id) and isinstance(name, str) and name
                            and all(isinstance(v, int) and 0 < v < 1 << 31 for v in (width, height))):
                        yield bad("bad_image_entry", f"an image without an id, file_name, width and height: "
                                                     f"{annotations.shown(str(entry))}")
                    elif image_id in images:
                        yield bad("duplicate_image_id", f"image id {image_id} listed twice")
                    else:
                        images[image_id] = (name, width, height)
                else:
                    ann_id, image_id, category = entry.get("id", 0), entry.get("image_id"), entry.get("category_id")
                    bbox, crowd = entry.get("bbox"), entry.get("iscrowd", 0)
                    if not (_is_id(image_id) and _is_id(category) and _is_id(abs(ann_id) + 1 if isinstance(ann_id, int) else None)
                            and isinstance(bbox, list) and len(bbox) == 4 and all(map(_number, bbox))
                            and crowd in (0, 1)):
                        yield bad("bad_annotation", f"an annotation without an image_id, category_id, 4-number "
                                                    f"bbox and iscrowd 0/1: {annotations.shown(str(entry))}")
                    else:
                        x, y, w, h = (float(v) if abs(v) < 1e300 else math.inf for v in bbox)
                        boxes.setdefault(image_id, bytearray()).extend(
                            _BOX.pack(ann_id, category, x, y, w, h, crowd))
    except json_stream.JsonStreamError as exc:
        yield bad("bad_json", f"not a COCO instances file ({exc}); the images read before it are kept")


def _box_problem(x: float, y: float, w: float, h: float, width: int, height: int) -> str:
    """Why a COCO bbox cannot be kept, "" when it can."""
    if not all(map(math.isfinite, (x, y, w, h))):
        return "is not finite"
    if w <= 0 or h <= 0:
        return "has no area (w or h <= 0)"
    if x < -EDGE_SLACK or y < -EDGE_SLACK or x + w > width + EDGE_SLACK or y + h > height + EDGE_SLACK:
        return f"lies outside the {width}x{height} image"
    return ""


SOURCE = Coco()
