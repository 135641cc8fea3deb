"""`detrec inspect PATH...`: counts, integrity, label statistics and a contact sheet of shards.

The work is in detrec.inspector (entry point `inspector/report.py`); this module parses flags,
shows progress, renders the report (text or `--json`, keys documented in inspector/report.py)
and writes the PNG.
Exit codes: 0 all good, 1 a problem was found in the data (each printed as one line on
stderr: file, byte offset, record index, reason), 2 bad flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
from typing import Any

from detrec.core import fs
from detrec.core.errors import UserError, one_line
from detrec.inspector import contact_sheet, report as inspection
from detrec.pipelines import argtypes

HELP = "look inside shards: counts, integrity, labels, pictures"
EPILOG = """\
PATH is a dataset directory (with dataset_info.json), a shard file or a glob such as
'out/train-*.tfrecord' (quote it), local or gs://; several PATHs must lie in one dataset
folder (inspect one dataset per run). With a dataset_info.json every listed shard must exist
and match its record count, size and sha256, and no unlisted shard may sit beside them;
--verify also checks labels.txt against it. Exit code 1 when anything is wrong; each problem
is one line on stderr.
"""


def _grid(text: str) -> tuple[int, int]:
    try:
        return contact_sheet.parse_grid(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None




def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("paths", nargs="+", metavar="PATH", help="dataset directory, shard file or glob")
    parser.add_argument("--verify", action="store_true",
                        help="also check every record against the schema and decode every JPEG (3 channels)")
    parser.add_argument("--quick", action="store_true",
                        help="headers only: counts and sizes, seeking past payloads (no sha256, no statistics)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")
    parser.add_argument("--show", type=argtypes.count, default=0, metavar="N", help="print N records' fields (no image bytes)")
    parser.add_argument("--contact-sheet", metavar="FILE.png",
                        help="write a grid of sample images with their boxes and class names")
    parser.add_argument("--grid", type=_grid, default=(4, 4), metavar="COLSxROWS",
                        help="contact-sheet grid (default 4x4)")
    parser.add_argument("--cell", type=int, default=contact_sheet.CELL, metavar="PX",
                        help=f"contact-sheet cell size in pixels (default {contact_sheet.CELL})")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.quick and args.verify:
        raise UserError("--verify reads every record; drop --quick")
    if args.contact_sheet and not args.contact_sheet.lower().endswith(".png"):
        raise UserError(f"--contact-sheet {args.contact_sheet}: the file name must end in .png")
    if not 16 <= args.cell <= 2048:
        raise UserError(f"--cell {args.cell}: choose 16..2048 pixels")
    cols, rows = args.grid
    options = inspection.Options(quick=args.quick, verify=args.verify, show=args.show,
                                 samples=cols * rows if args.contact_sheet else 0)
    from tqdm import tqdm

    bars: list[Any] = []
    desc = "verify" if args.verify else ("scan" if args.quick else "read")

    def on_total(total: int) -> None:
        bars.append(tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr, leave=False))

    try:
        report, samples = inspection.inspect_paths(args.paths, options, progress=lambda n: bars[0].update(n),
                                                   on_total=on_total)
    finally:
        for bar in bars:
            bar.close()
    if args.contact_sheet:
        report["contact_sheet"] = _write_sheet(args.contact_sheet, samples, report, cols, rows, args.cell)
    for problem in report["problems"]:
        print(f"detrec inspect: {inspection.Problem(**problem).line()}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=False))
    else:
        print(render_text(report))
    return 0 if report["ok"] else 1


def _write_sheet(path: str, samples: list[contact_sheet.Sample], report: dict[str, Any], cols: int, rows: int,
                 cell: int) -> dict[str, Any]:
    """Draws the contact sheet, writes it as a PNG (whole or not at all) and returns its report
    entry; a sampled image that does not decode joins the report's problems."""
    undecodable: list[inspection.Problem] = []
    image, cells = contact_sheet.contact_sheet(samples, cols, rows, contact_sheet.class_names(report), cell,
                                               undecodable)
    if undecodable:
        report["problems"] += [dataclasses.asdict(p) for p in undecodable]
        report["ok"] = False
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    try:
        fs.write_atomic(path, buf.getvalue())
    except fs.access_errors() as exc:  # missing folder, no permission, bucket errors
        raise UserError(f"--contact-sheet {path}: cannot write ({one_line(exc)})") from None
    if not cells:
        report["notes"].append(f"{path}: no readable record to draw; the sheet is empty")
    return {"file": path, "width": image.width, "height": image.height, "cell": cell,
            "cols": cols, "rows": rows, "cells": cells}


# --- text rendering -----------------------------------------------------------------------
def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n:,} B"


def _name(path: str) -> str:
    return fs.basename(path)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def render_text(report: dict[str, Any]) -> str:
    """The report for people: one block per split, then cross-check, records, notes, verdict."""
    out: list[str] = []
    for d in report["datasets"]:
        extra = ", ".join(f"{k} {d[k]}" for k in ("created_by", "num_classes", "source") if d.get(k) is not None)
        out.append(f"dataset {d['dir']}" + (f" ({extra})" if extra else ""))
        if d.get("classes_from"):
            out.append(f"  classes from {d['classes_from']}")
    for split, s in report["splits"].items():
        out.append("")
        out.append(f"split {split}: {s['num_examples']:,} records in {s['num_shards']} shard(s), {_mb(s['num_bytes'])}")
        if s["expected_examples"] is not None:
            reasons = ", ".join(f"{k} {v}" for k, v in (s["errors_by_reason"] or {}).items())
            out.append(f"  dataset_info.json: {s['expected_examples']:,} examples, "
                       f"{_fmt(s['converted_images'])} converted images, {_fmt(s['num_errors'])} rejected"
                       + (f" ({reasons})" if reasons else ""))
            origins = _origins(s)
            if origins:
                out.append(f"  dataset_info.json: {origins}")
        width = max([len(_name(sh["file"])) for sh in s["shards"]] + [5])
        out.append(f"  {'shard':<{width}}  {'records':>9}  {'bytes':>13}  sha256")
        for sh in s["shards"]:
            digest = sh["sha256"][:12] if sh["sha256"] else ("-" if sh["complete"] else "(incomplete)")
            size = "-" if sh["num_bytes"] is None else f"{sh['num_bytes']:,}"
            out.append(f"  {_name(sh['file']):<{width}}  {sh['num_examples']:>9,}  {size:>13}  {digest}")
        if not s.get("records_read"):
            continue
        out.append(f"  statistics from {s['records_read']:,} records")
        out.append(f"  image classes from: {_counts(s.get('label_sources_counted'))} "
                   "(xml/csv: the largest box's; folder: the image's class folder)")
        if s["labels"]:
            out.append("  labels:")
            out.append(f"    {'id':>4}  {'synset':<12} {'name':<24} {'images':>8} {'objects':>8}")
        for row in s["labels"]:
            out.append(f"    {row['id']:>4}  {row['synset']:<12} {row['name'][:24]:<24} {row['images']:>8,} "
                       f"{row['objects']:>8,}")
        if s["without_class"]:
            out.append(f"  unlabelled: {s['without_class']:,} records without a class"
                       + ("" if s["labels"] else " (no class histogram)"))
        opi = s["objects_per_image"]
        hist = "  ".join(f"{k}:{v}" for k, v in opi["histogram"].items())
        out.append(f"  objects per image: {hist or '-'}   (mean {_fmt(opi['mean'])}, max {_fmt(opi['max'])})")
        w, h = s["width"], s["height"]
        out.append(f"  image size: width {_fmt(w['min'])}..{_fmt(w['max'])} px, "
                   f"height {_fmt(h['min'])}..{_fmt(h['max'])} px")
        a = s["box_area"]
        out.append(f"  box area (share of image, {a['count']:,} boxes): min {_fmt(a['min'])}  p10 {_fmt(a['p10'])}  "
                   f"median {_fmt(a['p50'])}  p90 {_fmt(a['p90'])}  max {_fmt(a['max'])}")
        if a.get("outside"):
            out.append(f"    {a['outside']:,} box(es) with an area outside [0, 1] (invalid records: run --verify)")
        out.append("    " + "  ".join(f"{b['lo']:.1f}-{b['hi']:.1f}:{b['count']}" for b in a["histogram"]))
        converted = ", ".join(f"{k} {v}" for k, v in s["converted_counted"].items()) or "none"
        out.append(f"  re-encoded images in the records: {converted}")
    for d in report["datasets"]:
        verdict = "ok" if d["cross_check_ok"] else "FAILED (see problems)"
        out.append("")
        out.append(f"cross-check of {d['dir']} against dataset_info.json: {verdict}")
    if report["records"]:
        out.append("")
        out.append("records:")
        for r in report["records"]:
            out.extend(_record_lines(r))
    if "contact_sheet" in report:
        cs = report["contact_sheet"]
        out.append("")
        out.append(f"contact sheet: {cs['file']} ({cs['width']}x{cs['height']}, {len(cs['cells'])} images)")
    for note in report["notes"]:
        out.append(f"note: {note}")
    out.append("")
    checked = "verified (CRCs, schema, JPEG decode)" if report["verified"] else (
        "headers scanned" if report["mode"] == "quick" else "read (CRCs checked)")
    n = len(report["problems"])
    out.append(f"{checked}: " + ("OK" if not n else f"{n} problem(s), listed on stderr"))
    return "\n".join(out)


def _counts(counts: dict[str, int] | None) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in (counts or {}).items()) or "-"


def _origins(s: dict[str, Any]) -> str:
    """Where a split's labels came from, as dataset_info.json counted them ("" when it does not say)."""
    if s.get("labelled") is False:
        return "unlabelled: no class, no boxes (for predict)"
    if not s.get("label_sources") and not s.get("box_sources"):
        return ""
    text = f"labels from {_counts(s['label_sources'])}; boxes from {_counts(s['box_sources'])}"
    n = s.get("label_mismatches")
    if n:
        text += f"; {n:,} folder label{'s' if n != 1 else ''} unlike the largest box's"
    return text


def _record_lines(r: dict[str, Any]) -> list[str]:
    lines = [f"  {_name(r['shard'])} record {r['record']} (offset {r['offset']}, split {r['split']})",
             f"    filename {r['filename']}   source_id {r['source_id']}",
             f"    image {r['width']}x{r['height']}, {r['channels']} channels, {r['format']}, "
             f"{r['encoded_bytes']:,} bytes, sha256 {r['sha256'][:16]}",
             (f"    class {r['class_label']} {r['class_text']} ({r['class_name']}), from {r['label_source']}"
              if r["class_label"] is not None else "    no class (an unlabelled split's record)")
             + (f", re-encoded from {r['converted_from']}" if r["converted_from"] else "")]
    for i, o in enumerate(r["objects"]):
        flags = " ".join(f for f in ("difficult", "truncated") if o[f])
        lines.append(f"    object {i}: {o['label']} {o['text']} ({o['name']})  x {o['xmin']:.3f}-{o['xmax']:.3f}  "
                     f"y {o['ymin']:.3f}-{o['ymax']:.3f}  area {o['area']:.3f} {flags}".rstrip())
    if not r["objects"]:
        lines.append("    no objects" + (" (background image)" if r["class_label"] == 0 else ""))
    return lines
