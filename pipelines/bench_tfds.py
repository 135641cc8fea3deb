"""A TensorFlow Datasets contender for `detrec bench preprocess`: the DET tree as a typical TFDS
user would write it, a minimal GeneratorBasedBuilder built with the default single-process
`download_and_prepare()`.

Features: the image (tfds.features.Image given the image's path, so TFDS reads and copies the
bytes; it does not decode them), the image's class (its largest box's, 0 = background when
it has none) and its objects (a Sequence of BBoxFeature + ClassLabel). Classes: "background"
then the synsets of devkit/data/map_det.txt in its order, else the sorted synsets seen in
the split's XML, so ids match detrec's 1..K. XML is parsed with lxml.

tensorflow_datasets is the optional extra `bench-tfds`: it is imported only inside the
functions below, so this module imports (and the bench runs, without the TFDS rows) where
it is not installed.
"""

from __future__ import annotations

import importlib.util
import os

from lxml import etree

from detrec.pipelines.benchutil import det_xml_paths

BACKGROUND = "background"
EXTRA = "bench-tfds"  # pip install 'detrec[bench-tfds]'


def available() -> bool:
    """Whether tensorflow_datasets is importable (without importing it)."""
    return importlib.util.find_spec("tensorflow_datasets") is not None


def class_names(root: str, split: str) -> list[str]:
    """["background", synsets...]: map_det.txt's order when ROOT has it, else sorted as seen."""
    map_det = os.path.join(root, "devkit", "data", "map_det.txt")
    if os.path.isfile(map_det):
        with open(map_det, encoding="utf-8") as f:
            synsets = [line.split()[0] for line in f if line.strip()]
    else:
        synsets = sorted({n.text for p in det_xml_paths(root, split) for n in etree.parse(p).iterfind("object/name")})
    return [BACKGROUND, *synsets]


def _clip(value: float) -> float:
    return min(max(value, 0.0), 1.0)


def builder_class():
    """The builder class (defined on call: tensorflow_datasets is imported here, not above)."""
    import tensorflow_datasets as tfds

    class DetTree(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """An ImageNet-DET split (Annotations/DET/<split>/**.xml + Data/DET/<split>/**.JPEG)."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "Initial release."}

        def __init__(self, *, root: str, split: str = "train", **kwargs):
            self._root, self._split = root, split
            self._names = class_names(root, split)
            super().__init__(**kwargs)

        def _info(self) -> tfds.core.DatasetInfo:
            return tfds.core.DatasetInfo(
                builder=self,
                description="ImageNet-DET style tree: images, boxes and the largest box's class.",
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=self._names),
                    "objects": tfds.features.Sequence({
                        "bbox": tfds.features.BBoxFeature(),
                        "label": tfds.features.ClassLabel(names=self._names),
                    }),
                }),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            return {self._split: self._generate_examples()}

        def _generate_examples(self):
            ann_root = os.path.join(self._root, "Annotations", "DET", self._split)
            img_root = os.path.join(self._root, "Data", "DET", self._split)
            for xml_path in det_xml_paths(self._root, self._split):
                data = etree.parse(xml_path).getroot()
                source_id = os.path.relpath(xml_path, ann_root)[:-4]
                width, height = float(data.findtext("size/width")), float(data.findtext("size/height"))
                objects, areas = [], []
                for obj in data.iter("object"):
                    xmin, ymin, xmax, ymax = (float(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax"))
                    box = tfds.features.BBox(ymin=_clip(ymin / height), xmin=_clip(xmin / width),
                                             ymax=_clip(ymax / height), xmax=_clip(xmax / width))
                    objects.append({"bbox": box, "label": obj.findtext("name")})
                    areas.append((xmax - xmin) * (ymax - ymin))
                label = objects[areas.index(max(areas))]["label"] if objects else BACKGROUND
                yield source_id, {"image": os.path.join(img_root, source_id + ".JPEG"), "label": label,
                                  "objects": objects}

    return DetTree


def build(root: str, split: str, data_dir: str) -> int:
    """Builds the split with TFDS's default single-process writer under data_dir; returns the
    example count read back from the dataset_info.json it wrote."""
    import tensorflow_datasets as tfds

    builder = builder_class()(root=root, split=split, data_dir=data_dir)
    # Nothing to download, and no look for a prepared copy on GCS (no network).
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return tfds.builder_from_directory(builder.data_dir).info.splits[split].num_examples
