"""The classic thread-pooled converter, as `detrec bench preprocess --peers` runs it.

What most ImageNet TFRecords in the wild were made with: `build_imagenet_data.py` of the
TensorFlow models repository (inception, then slim). Written here from its description, for
TensorFlow 2 (the original needs TF1 sessions):
- the file list is cut into `num_threads` contiguous ranges, one Python thread each;
- each thread writes `num_shards / num_threads` whole shards of its range, one after another;
- each image is read whole and fully decoded by TensorFlow (`tf.io.decode_jpeg`, the check
  and the source of height and width), then one tf.train.Example holds the raw JPEG bytes,
  the label, the synset and the boxes of its XML (normalised).
Like the original, it trusts its input: a file that does not decode stops it.
"""

from __future__ import annotations

import math
import os
import threading

from detrec.pipelines import benchutil


def _example(tf, encoded: bytes, label: int, synset: str, boxes: list[tuple[float, float, float, float]],
             height: int, width: int, filename: str):
    feature = tf.train.Feature

    def floats(values):
        return feature(float_list=tf.train.FloatList(value=values))

    def ints(values):
        return feature(int64_list=tf.train.Int64List(value=values))

    def strings(values):
        return feature(bytes_list=tf.train.BytesList(value=values))

    xmin, ymin, xmax, ymax = (list(column) for column in zip(*boxes)) if boxes else ([], [], [], [])
    return tf.train.Example(features=tf.train.Features(feature={
        "image/height": ints([height]), "image/width": ints([width]),
        "image/colorspace": strings([b"RGB"]), "image/channels": ints([3]),
        "image/class/label": ints([label]), "image/class/synset": strings([synset.encode()]),
        "image/format": strings([b"JPEG"]), "image/filename": strings([filename.encode()]),
        "image/object/bbox/xmin": floats(xmin), "image/object/bbox/xmax": floats(xmax),
        "image/object/bbox/ymin": floats(ymin), "image/object/bbox/ymax": floats(ymax),
        "image/object/bbox/label": ints([label] * len(boxes)),
        "image/encoded": strings([encoded])}))


def _annotation(etree, xml_path: str) -> tuple[str, list[tuple[float, float, float, float]]]:
    """(the first object's synset, or "" for none; every box as (xmin, ymin, xmax, ymax) in 0..1)."""
    data = etree.parse(xml_path).getroot()
    width, height = float(data.findtext("size/width")), float(data.findtext("size/height"))
    boxes, synset = [], ""
    for obj in data.iter("object"):
        synset = synset or obj.findtext("name")
        box = obj.find("bndbox")
        boxes.append((float(box.findtext("xmin")) / width, float(box.findtext("ymin")) / height,
                      float(box.findtext("xmax")) / width, float(box.findtext("ymax")) / height))
    return synset, boxes


def classic_convert(root: str, split: str, output: str, num_threads: int, num_shards: int) -> int:
    """Converts ROOT's DET `split` into `num_shards` shards in `output`; the images written."""
    import tensorflow as tf
    from lxml import etree

    ann_root = os.path.join(root, "Annotations", "DET", split)
    img_root = os.path.join(root, "Data", "DET", split)
    xml_paths = benchutil.det_xml_paths(root, split)
    annotations = [_annotation(etree, path) for path in xml_paths]  # the original's bbox pass
    labels = {synset: i + 1 for i, synset in enumerate(sorted({s for s, _ in annotations if s}))}
    num_threads = max(1, min(num_threads, num_shards))
    shards_per_thread = math.ceil(num_shards / num_threads)
    num_shards = shards_per_thread * num_threads  # the original asserts num_shards % num_threads == 0
    bounds = [len(xml_paths) * i // num_shards for i in range(num_shards + 1)]
    written = [0] * num_threads

    def work(thread: int) -> None:
        for shard in range(thread * shards_per_thread, (thread + 1) * shards_per_thread):
            name = os.path.join(output, f"{split}-{shard:05d}-of-{num_shards:05d}")
            with tf.io.TFRecordWriter(name) as writer:
                for i in range(bounds[shard], bounds[shard + 1]):
                    rel = os.path.relpath(xml_paths[i], ann_root)[:-4]
                    with open(os.path.join(img_root, rel + ".JPEG"), "rb") as f:
                        encoded = f.read()
                    image = tf.io.decode_jpeg(encoded, channels=3)  # the full decode check
                    height, width = int(image.shape[0]), int(image.shape[1])
                    synset, boxes = annotations[i]
                    example = _example(tf, encoded, labels.get(synset, 0), synset, boxes, height, width, rel)
                    writer.write(example.SerializeToString())
                    written[thread] += 1

    threads = [threading.Thread(target=work, args=(t,)) for t in range(num_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(written)
