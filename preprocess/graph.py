"""The whole `detrec preprocess` job graph as one composite transform, BuildShards.

    p | BuildShards(JobConfig(...))  ->  a one-element PCollection: the DatasetInfo written

The CLI (pipelines/preprocess_cmd.py) only parses flags, checks them and runs the pipeline;
tests apply BuildShards to a TestPipeline directly. Every step has a label (Dataflow shows them).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import apache_beam as beam

from detrec.core import fs, image_fit, images
from detrec.core.dataset_info import DatasetInfo
from detrec.preprocess import plan, sources, vocab as vocab_lib
from detrec.preprocess.dofns import (
    DEFAULT_MAX_IMAGE_MB, LAYOUT, NAMES, REJECTED, CollectVocabulary, ListAndAssign, ParseShard, WriteShard,
)
from detrec.preprocess.finalize import finalize


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """What one preprocess run converts, and how (paths local or gs://)."""

    input: str
    output: str
    splits: tuple[str, ...] = ("train", "val")
    layout: str = "auto"
    synset_map: str = ""  # "" = the sorted synsets seen in the train split
    num_shards: Mapping[str, int] = dataclasses.field(default_factory=dict)
    target_shard_mb: float = plan.DEFAULT_TARGET_SHARD_MB
    verify_images: str = "full"
    # Per-image limits (dofns.WriteShard): the largest file read, the most pixels a record may
    # hold (image_fit.MAX_PIXELS: what the training decoders accept), and whether a larger
    # picture is shrunk to fit (re-encoded, counted as converted) instead of rejected.
    max_image_mb: float = DEFAULT_MAX_IMAGE_MB
    max_pixels: int = image_fit.MAX_PIXELS
    downscale: bool = False
    # Pictures whose shorter side is over this are stored resized to it (0: every picture at its
    # own size), re-encoded at resize_quality (core/images.py).
    shorter_side: int = 0
    resize_quality: int = images.RESIZE_QUALITY
    # The dataset already in `output` (output_folder.check): its other splits are kept when
    # this run's class list is the same, so a `--splits train` rerun leaves a whole dataset.
    previous: DatasetInfo | None = None
    # Whether the job's workers are processes started for this job alone (the DirectRunner's):
    # only those freeze their imports out of the GC (dofns._DetrecDoFn).
    owned_workers: bool = False

    def options(self) -> dict:
        """The record of these choices kept in dataset_info.json."""
        return {"splits": list(self.splits), "layout": self.layout, "synset_map": self.synset_map,
                "num_shards": dict(self.num_shards), "target_shard_mb": self.target_shard_mb,
                "verify_images": self.verify_images, "max_image_mb": self.max_image_mb,
                "max_pixels": self.max_pixels, "downscale": self.downscale,
                # Only when set: a dataset of original pixels records what it always did.
                **({"shorter_side": self.shorter_side, "resize_quality": self.resize_quality}
                   if self.shorter_side else {})}


class BuildShards(beam.PTransform):
    """Source tree -> shards, labels.txt, errors-<split>.jsonl, dataset_info.json (written last)."""

    def __init__(self, config: JobConfig):
        super().__init__()
        self.config = config

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        cfg = self.config
        root, output = fs.absolute(cfg.input), fs.absolute(cfg.output)
        listed = (
            pbegin
            | "Splits" >> beam.Create([(root, split, cfg.layout) for split in cfg.splits])
            | "ListPairAssign" >> beam.ParDo(ListAndAssign(dict(cfg.num_shards), int(cfg.target_shard_mb * 1e6),
                                                      owned_worker=cfg.owned_workers))
            .with_outputs(LAYOUT, REJECTED, main="shards")
        )
        shards = listed.shards | "Distribute" >> beam.Reshuffle()  # one element per split fans out over workers
        parsed = shards | "ParseAnnotations" >> beam.ParDo(
            ParseShard(list(cfg.splits), names=not cfg.synset_map, owned_worker=cfg.owned_workers),
            beam.pvalue.AsDict(listed[LAYOUT]),
        ).with_outputs(NAMES, REJECTED, main="plans")
        vocab = self._vocabulary(pbegin, parsed[NAMES], listed[LAYOUT])
        written = (
            parsed.plans
            | "WriteShards" >> beam.ParDo(WriteShard(output, cfg.verify_images, cfg.max_image_mb, cfg.max_pixels,
                                                     cfg.downscale, cfg.shorter_side, cfg.resize_quality,
                                                     owned_worker=cfg.owned_workers),
                                          beam.pvalue.AsSingleton(vocab))
            .with_outputs(REJECTED, main="shards")
        )
        rejected = (listed[REJECTED], parsed[REJECTED], written[REJECTED]) | "AllRejected" >> beam.Flatten()
        return (
            pbegin
            | "Finish" >> beam.Create([None])
            | "WriteDatasetInfo" >> beam.Map(
                finalize, output, root, list(cfg.splits), cfg.options(), cfg.previous, beam.pvalue.AsSingleton(vocab),
                beam.pvalue.AsDict(listed[LAYOUT]), beam.pvalue.AsList(written.shards), beam.pvalue.AsList(rejected))
        )

    def _vocabulary(self, pbegin: beam.pvalue.PBegin, names: beam.PCollection,
                    found: beam.PCollection) -> beam.PCollection:
        """The class list (vocab.py's rules): the synset map when given, else what the tree
        fixes (class folders, LOC_synset_mapping.txt), else the sorted synsets of the train split
        (`names`: ParseShard's, one set per train shard)."""
        if self.config.synset_map:
            return (
                pbegin
                | "SynsetMapFile" >> beam.Create([fs.absolute(self.config.synset_map)])
                | "ReadSynsetMap" >> beam.Map(vocab_lib.read_synset_map)
            )
        return (
            names
            | "SortedVocabulary" >> beam.CombineGlobally(CollectVocabulary())
            | "TreeVocabulary" >> beam.Map(sources.vocabulary, beam.pvalue.AsDict(found), list(self.config.splits))
        )
