"""The job graph, BuildShards, applied to a TestPipeline directly (no CLI): its one output
is the DatasetInfo it wrote, checked with assert_that against the tree it read."""

from __future__ import annotations

import glob
import os

import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that

from detrec.core import dataset_info, schema
from detrec.preprocess import beam_compat
from detrec.preprocess.graph import BuildShards, JobConfig


def _images(root: str, split: str) -> set[str]:
    return {os.path.splitext(os.path.basename(p))[0]
            for p in glob.glob(os.path.join(root, "Data", "DET", split, "**", "*.JPEG"), recursive=True)}


def test_build_shards_on_a_test_pipeline(synth_tree, tmp_path):
    out = str(tmp_path / "out")
    os.makedirs(out)
    config = JobConfig(input=synth_tree, output=out, num_shards={"train": 3, "val": 1}, verify_images="header",
                       synset_map=os.path.join(synth_tree, "devkit", "data", "map_det.txt"))
    expected = {split: _images(synth_tree, split) for split in ("train", "val")}

    def check(infos: list[dataset_info.DatasetInfo]) -> None:
        (info,) = infos
        assert {s: e.num_examples for s, e in info.splits.items()} == {s: len(v) for s, v in expected.items()}
        assert [len(info.splits[s].shards) for s in ("train", "val")] == [3, 1]
        assert info.options["synset_map"].endswith("map_det.txt") and info.created_by.startswith("detrec ")

    options = PipelineOptions(["--direct_num_workers=1", "--direct_running_mode=in_memory"])
    with test_pipeline.TestPipeline(runner=beam_compat.local_runner(options), options=options) as p:
        assert_that(p | BuildShards(config), check)

    # What the transform reported is what it wrote: the file, and every record in the shards.
    info = dataset_info.load(out)
    for split, ids in expected.items():
        files = dataset_info.shard_files(info, out, split)
        seen = [schema.decode(r.numpy()).source_id for r in tf.data.TFRecordDataset(files)]
        assert sorted(os.path.basename(s) for s in seen) == sorted(ids)
