"""Look inside detrec shards: `inspect_paths()` runs an inspection and assembles its report.

`detrec inspect` (pipelines/inspect_cmd.py) is a thin CLI over `inspect_paths()`, which
returns one JSON-ready report. The work is done by one module per job, all below this one:
`resolve` (PATH arguments -> datasets and shard targets), `walk` (reads each shard through
`detrec.core.tfrecord`), `check` (record schema/JPEG checks, cross-check against
dataset_info.json and the DALI `.idx`), `stats` (label/size/box statistics). This module only
orders them and turns what they found into the report; `Problem` and
`Options` are re-exported here so the CLI needs this module alone.

Bad input is data here, not an exception: every defect becomes a `Problem` (file, byte
offset, record index, one-line reason) in the report, inspection goes on with the next
file, and the CLI exits 1 when there is any.

Report keys (`detrec inspect --json` prints exactly this dict)::

    report_version  1
    ok              true when `problems` is empty
    mode            "full" (every record read) or "quick" (headers only, payloads skipped)
    verified        true with --verify (schema check and JPEG decode of every record, and
                     labels.txt against dataset_info.json's classes: count, order, names)
    problems        [{file, offset, record, reason}]  offset/record are null when not known
    notes           [str]  things worth knowing that are not failures
    datasets        [{dir, source, created_by, num_classes, classes_from, checked_shards, cross_check_ok}]
                     the dataset directory given (none when only shard files or globs were);
                     PATHs in more than one folder are refused (UserError): one dataset a run
                     source, created_by ("detrec 0.1.0"), num_classes, classes_from (where the
                     class list came from) from dataset_info.json (null without a readable one,
                     or when the file does not say)
    classes         [{id, synset, name}]  the vocabulary used for names, background first
    splits          {split: {
                       num_examples, num_bytes, num_shards   counted from the files
                       expected_examples, converted_images, num_errors, errors_by_reason,
                       label_sources, box_sources, label_mismatches, labelled
                                                              from dataset_info.json (or null)
                         labelled: false for a split whose records have no class (CLS-LOC
                           test: label_source none, for predict)
                         label_sources: {xml|csv|folder: records} where image classes came from
                         box_sources: {xml|csv|none: records} where boxes came from
                         label_mismatches: folder-labelled records whose largest box differs
                       shards: [{file, num_examples, num_bytes, sha256, complete}]
                                 num_bytes: null when the file's size could not be had
                                 complete: the whole file was walked (false after a problem)
                       -- the rest only in "full" mode --
                       records_read        records behind the statistics below
                       converted_counted   records whose image was re-encoded, by source format
                       label_sources_counted  records by their `image/detrec/label_source`
                       without_class       records without a class (an unlabelled split's)
                       labels: [{id, synset, name, images, objects}]  images = image class;
                                 empty for an unlabelled split (no class histogram)
                       objects_per_image: {min, max, mean, histogram: {"n": images}}
                       width, height: {min, max, mean}  pixels
                       box_area: {count, min, p10, p50, p90, max, histogram: [{lo, hi, count}], outside}
                                 box area as a fraction of its image; the quantiles as
                                 numpy.quantile gives them, exact or within 2**-12 (stats.AreaStats);
                                 outside: boxes whose area is not in [0, 1] (fail --verify),
                                 counted in count only}}
    records         --show N: [{shard, record, offset, split, filename, source_id, width, height,
                     channels, format, encoded_bytes, sha256, class_label, class_text, class_name
                     (null, "", "" for a record without a class),
                     label_source, converted_from, objects: [{label, text, name, xmin, ymin, xmax, ymax, area,
                     difficult, truncated}]}]  never the image bytes
    contact_sheet   --contact-sheet only: {file, width, height, cell, cols, rows,
                     cells: [{shard, record, filename, x, y, scale}]}
                     An image that does not decode gets a marked cell (contact_sheet.UNDECODABLE_COLOR,
                     labelled) and a problem naming its shard and record; it is not in `cells`.
                     Each image is scaled to fit a cell x cell square and centred in it; x, y is
                     its top-left corner in the sheet, scale is sheet pixels per image pixel.
                     The largest box is drawn in contact_sheet.LARGEST_BOX_COLOR with the
                     image's class name, the others in contact_sheet.OTHER_BOX_COLOR.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Mapping, Sequence

from detrec.core import fs, schema
from detrec.core.dataset_info import ClassInfo, SplitInfo
from detrec.inspector.check import ShardResult, check_labels, cross_check, cross_check_counts
from detrec.inspector.contact_sheet import Sample
from detrec.inspector.problem import Problem
from detrec.inspector.resolve import Resolution, resolve
from detrec.inspector.walk import Options, Shown, Walker

__all__ = ["REPORT_VERSION", "Options", "Problem", "inspect_paths", "record_fields"]

REPORT_VERSION = 1


def inspect_paths(paths: Sequence[str], options: Options = Options(),
                  progress: Callable[[int], None] | None = None,
                  on_total: Callable[[int], None] | None = None) -> tuple[dict[str, Any], list[Sample]]:
    """Inspects datasets / shard files / globs; returns (report, contact-sheet samples).

    Args:
      paths: dataset directories, shard files or glob patterns, local or gs://.
      options: what to read and check.
      progress: called with bytes done as files are walked (for a tqdm bar).
      on_total: called once with the total bytes to walk, before the walk starts.

    Returns:
      The report (keys in this module's docstring) and the records sampled for a contact sheet.
    """
    found = resolve(paths)
    walker = Walker(options, len(found.targets), found.problems, progress)
    sizes: dict[str, int | None] = {}
    for t in found.targets:
        try:
            sizes[t.path] = fs.size(t.path)
        except fs.access_errors():
            sizes[t.path] = None  # Walker.shard tries again and reports why
    if on_total:
        on_total(sum(v or 0 for v in sizes.values()))
    results = []
    for target in found.targets:
        result = walker.shard(target, sizes[target.path])
        cross_check(result, found.problems, found.notes)
        result.offsets = []  # checked: memory stays one shard's, not the dataset's
        results.append(result)
    if options.verify and found.info is not None:
        check_labels(found.folder, found.info, found.problems, found.notes)
    if options.quick and any(t.expected for t in found.targets):
        found.notes.append("--quick: sha256 and record contents not checked")
    else:
        _cross_check_splits(found, walker, results)
    return _report(found, walker, results, options), walker.samples


def record_fields(record: schema.Record, classes: Mapping[int, ClassInfo]) -> dict[str, Any]:
    """A record as JSON-ready fields, image bytes replaced by their size."""
    def name(i: int, text: str) -> str:
        return classes[i].name if i in classes else text

    return {
        "filename": record.filename, "source_id": record.source_id,
        "width": record.width, "height": record.height, "channels": record.channels, "format": record.format,
        "encoded_bytes": len(record.encoded), "sha256": record.sha256,
        "class_label": record.class_label, "class_text": record.class_text,
        "class_name": "" if record.class_label is None else name(record.class_label, record.class_text),
        "label_source": record.label_source,
        "converted_from": record.converted_from,
        "objects": [{"label": b.label, "text": b.text, "name": name(b.label, b.text),
                     "xmin": round(b.xmin, 6), "ymin": round(b.ymin, 6), "xmax": round(b.xmax, 6),
                     "ymax": round(b.ymax, 6), "area": round(b.area, 6),
                     "difficult": b.difficult, "truncated": b.truncated} for b in record.objects],
    }


def _shown_fields(shown: Shown, classes: Mapping[int, ClassInfo]) -> dict[str, Any]:
    return {"shard": shown.target.path, "record": shown.index, "offset": shown.offset,
            "split": shown.target.split, **record_fields(shown.record, classes)}


def _cross_check_splits(found: Resolution, walker: Walker, results: list[ShardResult]) -> None:
    """Each split's counts in dataset_info.json against its records (check.cross_check_counts),
    where the records read are that whole split: every shard it lists, read to the end (the
    PATHs are one dataset's: `resolve` refuses several)."""
    complete = {r.target.path for r in results if r.complete}
    for d in found.datasets:
        for split, expected in (d.info.splits.items() if d.info else ()):
            read = [t.path for t in found.targets if t.split == split]
            whole = (len(read) == len(expected.shards)
                     and set(read) == {t.path for t in d.shards if t.split == split} <= complete)
            if whole:
                cross_check_counts(fs.join(d.dir, schema.DATASET_INFO), split, expected, walker.stats[split],
                                   found.problems)


def _split_entry(shards: list[ShardResult], info: SplitInfo | None) -> dict[str, Any]:
    """A split's counts from its files, beside what dataset_info.json says (null without it)."""
    return {
        "num_examples": sum(s.num_examples for s in shards),
        "num_bytes": sum(s.num_bytes or 0 for s in shards),
        "num_shards": len(shards),
        "expected_examples": info.num_examples if info else None,
        "converted_images": info.converted_images if info else None,
        "num_errors": info.num_errors if info else None,
        "errors_by_reason": dict(info.errors_by_reason) if info else None,
        "label_sources": dict(info.label_sources) if info else None,
        "box_sources": dict(info.box_sources) if info else None,
        "label_mismatches": info.label_mismatches if info else None,
        "labelled": info.labelled if info else None,
        "shards": [{"file": s.target.path, "num_examples": s.num_examples, "num_bytes": s.num_bytes,
                    "sha256": s.sha256, "complete": s.complete} for s in shards],
    }


def _report(found: Resolution, walker: Walker, results: list[ShardResult], options: Options) -> dict[str, Any]:
    by_split: dict[str, list[ShardResult]] = collections.defaultdict(list)
    for result in results:
        by_split[result.target.split].append(result)
    split_info: dict[str, SplitInfo] = {}
    for d in found.datasets:
        for split, entry in (d.info.splits.items() if d.info else ()):
            split_info.setdefault(split, entry)
    splits = {}
    for split in sorted(set(by_split) | set(split_info)):
        out = _split_entry(by_split.get(split, []), split_info.get(split))
        if not options.quick:
            out.update(walker.stats[split].to_json(found.classes, out["labelled"]))
        splits[split] = out
    datasets = []
    for d in found.datasets:
        prefix = d.dir.rstrip("/") + "/"
        clean = not any(p.file == d.dir or p.file.startswith(prefix) for p in found.problems)
        datasets.append({
            "dir": d.dir,
            "source": (d.info.source or None) if d.info else None,
            "created_by": (d.info.created_by or None) if d.info else None,
            "num_classes": d.info.num_classes if d.info else None,
            "classes_from": (d.info.classes_from or None) if d.info else None,
            "checked_shards": len(d.shards),
            "cross_check_ok": d.info is not None and clean,
        })
    return {
        "report_version": REPORT_VERSION,
        "ok": not found.problems,
        "mode": "quick" if options.quick else "full",
        "verified": options.verify and not options.quick,
        "problems": [dataclasses.asdict(p) for p in found.problems],
        "notes": found.notes,
        "datasets": datasets,
        "classes": [dataclasses.asdict(c) for _, c in sorted(found.classes.items())],
        "splits": splits,
        "records": [_shown_fields(s, found.classes) for s in walker.shown],
    }
