"""Beam DoFns that wrap the pure helpers: they count outcomes and route bad records to a
tagged `rejected` output (the user_score.py pattern). No parsing logic lives here.

The element they pass on is one per shard (plan.py): a ShardPlan of its pairs (paths,
sizes), then a ParsedPlan of its pairs with their boxes, both packed. JPEG bytes are read
inside the shard writer and streamed straight to the file, so they never cross a stage.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import logging
import time
from typing import Callable, Iterable, Iterator, TypeVar

import apache_beam as beam
from apache_beam.metrics import Metrics

from detrec.core import fs, image_fit, images, schema, tfrecord
from detrec.core.crashpoints import crashpoint
from detrec.preprocess import annotations, decode_check, labels, longlived, malloc_arenas, sources, walk
from detrec.preprocess import vocab as vocab_lib
from detrec.preprocess.pairing import Pair, Rejected
from detrec.preprocess.plan import Item, ParsedPlan, ShardKey, ShardPlan, plan_split
from detrec.preprocess.vocab import Vocabulary

T = TypeVar("T")
R = TypeVar("R")
REJECTED = "rejected"
LAYOUT = "layout"
NAMES = "names"
NAMESPACE = "detrec"
log = logging.getLogger("detrec.preprocess")
# Files in flight per shard on gs:// and other remote file systems, where each read is
# latency-bound.
REMOTE_READ_THREADS = 16
# Images in flight per shard writer on local files, by --verify-images. full: two, as the
# JPEG decode releases the GIL, so the single-process runner decodes on two cores (with a
# Beam worker per core, two still win by a little: the last shard gets both cores; 20k images,
# 16.4-16.5 s vs 16.7-16.8 s with one). header: one, as what is left is mostly Python and a
# second thread only contends for the GIL (measured on 2 cores, 20k images: 4.9 s vs 5.1-5.4
# s). ParseShard parses a shard's annotations on one thread locally.
LOCAL_WRITER_THREADS = {"full": 2, "header": 1}
# The largest image file read (--max-image-mb): ImageNet's largest are ~15 MB, and a JPEG at
# the pixel limit (image_fit.MAX_PIXELS) is rarely over 100 MB.
DEFAULT_MAX_IMAGE_MB = 128.0


@dataclasses.dataclass(frozen=True)
class ShardResult:
    """A written shard, and what its records' labels came from (summed into dataset_info.json).

    Attributes:
      label_sources: records by where their class came from (schema.LABEL_FROM_*).
      box_sources: records by where their boxes came from (plan.BOXES_FROM_*).
      label_mismatches: folder-labelled records whose largest box names another class.
      non_srgb: records whose source image carried a colour profile other than sRGB.
    """

    key: ShardKey
    num_examples: int
    num_bytes: int
    sha256: str
    converted: int
    label_sources: dict = dataclasses.field(default_factory=dict)
    box_sources: dict = dataclasses.field(default_factory=dict)
    label_mismatches: int = 0
    non_srgb: int = 0


def progress_metric(split: str, what: str) -> str:
    """Name of the Beam counter of a split's images `what` ("listed", "written", "rejected"):
    the job's progress on every runner that shows metrics (Dataflow's UI, Flink's), where the
    workers' log lines may not reach the launcher."""
    return f"{split}_images_{what}"


def _reject(r: Rejected):
    Metrics.counter(NAMESPACE, f"rejected_{r.code}").inc()
    Metrics.counter(NAMESPACE, progress_metric(r.split, "rejected")).inc()
    return beam.pvalue.TaggedOutput(REJECTED, r)


class _DetrecDoFn(beam.DoFn):
    """Setting up a worker, whichever runner started it: detrec's malloc settings
    (malloc_arenas: memory stays flat), and, in a worker this job owns alone (`owned_worker`:
    the DirectRunner's), what it has imported frozen out of the GC (a fast exit, see longlived;
    a long-lived worker shared by many jobs, as a worker pool's, keeps its GC whole)."""

    def __init__(self, owned_worker: bool = False):
        super().__init__()
        self._owned_worker = owned_worker

    def setup(self) -> None:
        malloc_arenas.limit()
        if self._owned_worker:
            longlived.freeze_once()


class ListAndAssign(_DetrecDoFn):
    """(root, split, layout) -> a ShardPlan of Pairs per shard; Rejected for what the split's
    source could not pair (sources/: unpaired files, bad CSV lines or JSON entries...);
    (split, SplitSource) on the LAYOUT output.

    Listing, pairing and shard assignment happen together, in one place per split: they need
    the whole split's file names anyway (and its annotation file, COCO's JSON or a CSV, read
    here once, as a stream), and doing them here saves two shuffles.
    """

    def __init__(self, num_shards: dict[str, int], target_bytes: int, owned_worker: bool = False):
        super().__init__(owned_worker)
        self._num_shards = num_shards
        self._target = target_bytes

    def process(self, element: tuple[str, str, str]) -> Iterator:
        root, split, layout = element
        found = sources.resolve(root, split, layout)
        yield beam.pvalue.TaggedOutput(LAYOUT, (split, found))
        pairs = []
        for out in sources.get(found.layout).pairs(found):
            if isinstance(out, Pair):
                pairs.append(out)
            else:
                yield _reject(out)
        Metrics.counter(NAMESPACE, progress_metric(split, "listed")).inc(len(pairs))
        crashpoint("listed")
        yield from plan_split(split, pairs, self._num_shards.get(split), self._target)
        del pairs
        malloc_arenas.release()  # the listing's ~1 KB per image, else kept for the whole run


def _read(pair: Pair, path: str, what: str, limit: int) -> bytes | Rejected:
    """A source file's bytes (walk.read_capped), or the Rejected saying why they cannot be read."""
    try:
        return walk.read_capped(path, what, limit)
    except walk.ReadError as exc:
        return Rejected.of(pair, "read", exc.code, str(exc))


def _parse(pair: Pair, source: sources.Source) -> Item | Rejected:
    """The pair's boxes, as its source reads them, or the Rejected saying why not."""
    try:
        return source.annotate(pair)
    except sources.Unlabelled as exc:
        return Rejected.of(pair, exc.stage, exc.code, str(exc))


class ParseShard(_DetrecDoFn):
    """ShardPlan -> ParsedPlan (its pairs with their boxes); Rejected for annotations that do
    not parse; on the NAMES output, a train shard's distinct object names and class folders
    (the vocabulary's raw material, rule 3 of vocab.py) unless `names` is off (a synset map
    fixes the class list) or the tree fixes it itself (sources.fixes_classes, given `found`,
    each split's SplitSource, as a side input).

    Each annotation is parsed once, here: the writer needs the class list before its first
    record, so the names must be known before any shard is written; what is parsed for them
    travels on packed (plan.ParsedPlan) instead of being parsed again in the writer.
    """

    def __init__(self, splits: list[str], names: bool = True, owned_worker: bool = False):
        super().__init__(owned_worker)
        self._splits = splits
        self._names = names
        self._tree_fixes: bool | None = None

    def process(self, plan: ShardPlan, found: dict) -> Iterator:
        pairs = plan.pairs()
        source = sources.get(found[plan.key.split].layout)
        items = []
        parse = lambda pair: _parse(pair, source)  # noqa: E731
        for item in ordered_map(parse, pairs, _threads_for(pairs[0].image if pairs else "", local=1)):
            if isinstance(item, Rejected):
                yield _reject(item)
            else:
                items.append(item)
        if self._names and plan.key.split == vocab_lib.TRAIN and not self._tree_fixes_classes(found):
            names = {pair.folder_class for pair in pairs if pair.folder_class}
            names.update(obj.name for item in items for obj in item.annotation.objects)
            yield beam.pvalue.TaggedOutput(NAMES, names)
        yield ParsedPlan.of(plan.key, items, found[plan.key.split].labelled)

    def finish_bundle(self) -> None:
        malloc_arenas.release()

    def _tree_fixes_classes(self, found: dict) -> bool:
        if self._tree_fixes is None:
            self._tree_fixes = sources.fixes_classes(found)
        return self._tree_fixes


class CollectVocabulary(beam.CombineFn):
    """Per-shard synset sets -> the sorted Vocabulary (one combine, lifted before the shuffle)."""

    def create_accumulator(self) -> set[str]:
        return set()

    def add_input(self, acc: set[str], names: set[str]) -> set[str]:
        acc |= names
        return acc

    def merge_accumulators(self, accs: Iterable[set[str]]) -> set[str]:
        return set().union(*accs)

    def extract_output(self, acc: set[str]) -> Vocabulary:
        return vocab_lib.from_synsets(acc)


def _threads_for(path: str, local: int) -> int:
    """Threads for reading a shard's files: many where reads are remote, `local` otherwise."""
    return REMOTE_READ_THREADS if "://" in path else local


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """fn over items on a thread pool, results in input order, at most 2*threads in flight."""
    if threads <= 1:
        yield from map(fn, items)
        return
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class _HashingWriter:
    """An output file that keeps the size and sha256 of what went through it,
    so dataset_info.json gets each shard's digest without reading the shard back."""

    def __init__(self, path: str):
        self._file = fs.open(path, "wb")
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._digest.update(data)
        self.size += len(data)
        self._file.write(data)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def __enter__(self) -> "_HashingWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()


def split_time_metric(split: str, edge: str) -> str:
    """Name of the Beam distribution holding the epoch ms at which a split's shards start or end."""
    return f"{split}_shard_{edge}_ms"


def _committed_already(final: str, sha256: str) -> bool:
    """Whether `final` holds these very bytes: a straggler's commit that found its temporary
    file gone (finalize removes every temporary once all shards are in, and a runner may still
    run a backup attempt of a shard then) lost nothing, as shards are deterministic."""
    try:
        digest = hashlib.sha256()
        with fs.open(final, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest() == sha256
    except OSError:
        return False


def _discard(tmp: str) -> None:
    for path in (tmp, tmp + schema.INDEX_SUFFIX):
        try:
            if fs.exists(path):
                fs.remove(path)
        except OSError:
            pass  # finalize's cleanup, or the next run's, takes it


class WriteShard(_DetrecDoFn):
    """ParsedPlan -> ShardResult; bad images and boxes -> Rejected.

    Writes to a temporary name and renames when complete (with its DALI .idx), so a killed
    job never leaves a partial file under a final name and a rerun simply overwrites. A late
    attempt of a shard already committed (retries and backups of other runners) finds the
    same bytes there and ends quietly, whenever finalize took its temporary file.
    """

    def __init__(self, output: str, verify: str, max_image_mb: float = DEFAULT_MAX_IMAGE_MB,
                 max_pixels: int = image_fit.MAX_PIXELS, downscale: bool = False, shorter_side: int = 0,
                 resize_quality: int = images.RESIZE_QUALITY, owned_worker: bool = False):
        super().__init__(owned_worker)
        self._output = output
        self._verify = verify
        self._decodes = decode_check.checker(verify)
        self._max_bytes = int(max_image_mb * (1 << 20))
        self._max_pixels = max_pixels
        self._downscale = downscale
        self._shorter_side = shorter_side
        self._resize_quality = resize_quality

    def process(self, plan: ParsedPlan, vocab: Vocabulary) -> Iterator:
        key = plan.key
        # The split's writing time for the summary: first shard start to last shard end.
        Metrics.distribution(NAMESPACE, split_time_metric(key.split, "start")).update(int(time.time() * 1000))
        final = fs.join(self._output, key.name)
        tmp = fs.temp_path(final)
        converted, non_srgb, index_lines, mismatches = 0, 0, [], 0
        label_sources: collections.Counter[str] = collections.Counter()
        box_sources: collections.Counter[str] = collections.Counter()
        with _HashingWriter(tmp) as out:
            # Reading, checking and encoding may run on a few threads (file reads, the JPEG
            # decode and hashing release the GIL); records are written in plan order, so the
            # bytes do not depend on the thread count and memory holds only a small window.
            items = plan.items()
            threads = _threads_for(items[0].pair.image if items else "", LOCAL_WRITER_THREADS[self._verify])
            records = ordered_map(lambda item: self._record(item, vocab, plan.labelled), items, threads)
            for result in records:
                if isinstance(result, Rejected):
                    yield _reject(result)
                    continue
                record, payload, item, disagrees, profiled = result
                label_sources[record.label_source] += 1
                box_sources[item.boxes_from] += 1
                mismatches += disagrees
                index_lines.append(tfrecord.index_line(out.size, len(payload)))
                head, tail = tfrecord.frame(payload)
                for chunk in (head, payload, tail):
                    out.write(chunk)
                converted += bool(record.converted_from)
                non_srgb += profiled
        with fs.open(tmp + schema.INDEX_SUFFIX, "wb") as f:
            f.write("".join(index_lines).encode("ascii"))
        crashpoint("shard-written")
        try:
            fs.replace(tmp + schema.INDEX_SUFFIX, final + schema.INDEX_SUFFIX)
            fs.replace(tmp, final)
        except Exception:
            if not _committed_already(final, out.sha256):
                raise
            _discard(tmp)
            log.warning("%s: another attempt of this shard (a runner's retry or backup) committed the same bytes "
                        "first, and the job's cleanup took this late attempt's temporary file; nothing lost",
                        key.name)
        Metrics.counter(NAMESPACE, progress_metric(key.split, "written")).inc(len(index_lines))
        Metrics.distribution(NAMESPACE, split_time_metric(key.split, "end")).update(int(time.time() * 1000))
        Metrics.counter(NAMESPACE, "converted_images").inc(converted)
        Metrics.counter(NAMESPACE, "non_srgb_images").inc(non_srgb)
        Metrics.counter(NAMESPACE, "folder_labels_unlike_largest_box").inc(mismatches)
        log.info("wrote %s: %d examples, %.1f MB", key.name, len(index_lines), out.size / 1e6)
        yield ShardResult(key, len(index_lines), out.size, out.sha256, converted, dict(sorted(label_sources.items())),
                          dict(sorted(box_sources.items())), mismatches, non_srgb)

    def _record(self, item: Item, vocab: Vocabulary,
                labelled: bool) -> tuple[schema.Record, bytes, Item, bool, bool] | Rejected:
        """One example, checked and serialized (with its item, whether its folder class
        differs from its largest box's and whether its source's colour profile is not sRGB),
        or why it cannot be; without a class when its split is not `labelled`."""
        pair = item.pair
        data = _read(pair, pair.image, "image", self._max_bytes)
        if isinstance(data, Rejected):
            return data
        try:
            image = images.prepare(data, self._decodes, self._max_pixels, self._downscale, self._shorter_side,
                                   self._resize_quality)
        except images.ImageError as exc:
            return Rejected.of(pair, "image", exc.code, f"{pair.image}: {exc}")
        del data
        # Boxes without a <size> are in the source's own pixels: its size, not the stored one.
        source_width, source_height = image.source_size
        try:
            got = labels.label_image(item.annotation, item.boxes_from, pair.folder_class, source_width, source_height,
                                     vocab.id_of, pair.label_file or pair.image, labelled)
        except annotations.AnnotationError as exc:
            stage = "label" if exc.code in labels.LABEL_CODES else "box"
            return Rejected.of(pair, stage, exc.code, str(exc))
        # images.prepare turned an EXIF-rotated photo upright: its boxes turn with it.
        annotated = (item.annotation.width, item.annotation.height) if item.annotation else None
        record = schema.Record(
            encoded=image.data, height=image.height, width=image.width, filename=pair.image_rel,
            source_id=pair.source_id, objects=images.upright_boxes(got.boxes, image, annotated),
            class_label=got.class_label, class_text=got.class_text,
            converted_from=image.converted_from, label_source=got.source,
        )
        return record, schema.encode(record), item, got.disagrees, image.non_srgb
