"""`detrec preprocess`: the Beam job that turns an image tree into verified TFRecord shards.

    detrec preprocess --input ROOT --output OUT [--splits train,val]
        [--layout auto|det|cls-loc|voc|coco|open-images|folder] [--synset-map FILE]
        [--num-shards train=64,val=8] [--target-shard-mb 128] [--verify-images full|header]
        [--max-image-mb MB] [--max-pixels N [--downscale]] [--shorter-side N [--resize-quality Q]]
        [--shared-filesystem] [any Apache Beam pipeline option]

Unknown flags go to PipelineOptions (the wordcount.py pattern), so the same command runs on
the DirectRunner (default here: multi-processing on all cores), on Dataflow, or on any engine
behind Beam's portable Job API (pipelines/runners/ says what each runner needs).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import re
import sys
import time
from typing import Iterator

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)

from detrec.core import dataset_info, fs, image_fit, images, schema
from detrec.core.errors import IOFailure, UserError, one_line
from detrec.preprocess import (beam_compat, decode_check, malloc_arenas, output_folder, plan, sources,
                               vocab as vocab_lib, walk)
from detrec.pipelines import argtypes, runners, stopping
from detrec.preprocess.dofns import DEFAULT_MAX_IMAGE_MB, NAMESPACE, split_time_metric
from detrec.preprocess.graph import BuildShards, JobConfig

HELP = "Beam job: ILSVRC/VOC/image-folder tree -> verified, sharded TFRecords"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="folder holding Annotations/ and Data/ (or ILSVRC/), "
                        "or the split folders of an image-folder tree (local or gs://)")
    parser.add_argument("--output", required=True, help="output folder for shards and metadata (local or gs://)")
    parser.add_argument("--splits", default="train,val", help="comma-separated splits (default train,val)")
    parser.add_argument("--layout", default=sources.AUTO, choices=sources.LAYOUTS,
                        help="source tree layout: " + "; ".join(f"{name}: {s.summary}" for name, s in
                                                                sources.SOURCES.items()) + "; auto tries them in that order")
    parser.add_argument("--synset-map", default="", help="class list (map_det.txt, LOC_synset_mapping.txt); "
                        "default: a folder tree's sorted train class folders, a CLS-LOC tree's "
                        "LOC_synset_mapping.txt (in ROOT or its parent), else the sorted synsets seen in train")
    parser.add_argument("--num-shards", default="", metavar="SPLIT=N,...",
                        help="shards per split, e.g. train=64,val=8 (default: from --target-shard-mb)")
    parser.add_argument("--target-shard-mb", type=float, default=plan.DEFAULT_TARGET_SHARD_MB,
                        help="shard size when --num-shards does not fix the count (default 128)")
    parser.add_argument("--verify-images", default="full", choices=decode_check.VERIFY_MODES,
                        help="full: decode every JPEG; header: trust a well-formed header + end marker")
    parser.add_argument("--max-image-mb", type=argtypes.bounded(float, 0.001, 4096), default=DEFAULT_MAX_IMAGE_MB,
                        help=f"largest image file read, larger ones are errors (default {DEFAULT_MAX_IMAGE_MB:g})")
    parser.add_argument("--max-pixels", type=argtypes.bounded(int, 1, image_fit.MAX_PIXELS),
                        default=image_fit.MAX_PIXELS, help="most pixels an image may have, larger ones are errors "
                        f"(default and most {image_fit.MAX_PIXELS}: what TensorFlow's JPEG decoder accepts)")
    parser.add_argument("--downscale", type=argtypes.yes_no, nargs="?", const=True, default=False,
                        help="shrink images over --max-pixels to fit (re-encoded, counted as converted) "
                        "instead of rejecting them")
    # Checked in _run (argtypes.checked): a bad value is one line, not argparse's usage block.
    parser.add_argument("--shorter-side", metavar="N", help="store images whose shorter side is over N pixels "
                        "resized to N (aspect kept; re-encoded, counted as converted: no longer the source's bytes "
                        "nor all its pixels); smaller images keep their bytes. Default: every image at its own size")
    parser.add_argument("--resize-quality", metavar="Q", help="JPEG quality (1-100, 4:2:0 chroma) of the images "
                        f"--shorter-side resizes (default {images.RESIZE_QUALITY})")
    parser.add_argument("--shared-filesystem", type=argtypes.yes_no, nargs="?", const=True, default=False,
                        help="the runner's workers see this machine's local --input and --output at the same "
                        "paths (NFS, a cluster's shared disk); without it, runners whose workers may run "
                        "elsewhere take only paths every worker reads (gs://)")


def parse_num_shards(text: str, splits: list[str]) -> dict[str, int]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        split, sep, value = part.partition("=")
        if not sep or not re.fullmatch(r"\s*[0-9]+\s*", value) or int(value) < 1:
            raise UserError(f"--num-shards wants SPLIT=N pairs such as train=64,val=8, got {part!r}")
        if split.strip() not in splits:
            raise UserError(f"--num-shards names split {split.strip()!r}, which is not in --splits {','.join(splits)}")
        out[split.strip()] = int(value)
    return out


def pipeline_options(extra: list[str]) -> PipelineOptions:
    """Beam options from the leftover flags; locally defaults to all cores in separate processes."""
    extra = [a for a in map(_dry_run_flag, extra) if a is not None]
    options = PipelineOptions(extra)
    runners.check_flags(extra, options)
    known = beam_compat.option_names()
    unknown = [a for a in extra if a.startswith("-") and a.split("=")[0].lstrip("-") not in known]
    if unknown:
        raise UserError(f"unknown option {unknown[0]}; see `detrec preprocess --help` and Beam's pipeline options")
    beam_compat.check_options(options)
    direct = options.view_as(DirectOptions)
    if beam_compat.runs_here(options) and "--direct_num_workers" not in " ".join(extra):
        direct.direct_num_workers = 0  # one worker per core
        direct.direct_running_mode = "multi_processing"
    options.view_as(SetupOptions).save_main_session = False
    return options


def _dry_run_flag(arg: str) -> str | None:
    """Beam's --dry_run takes a value and treats any string, even "False", as true: accept
    the bare flag people type and make False mean false."""
    if arg == "--dry_run":
        return "--dry_run=True"
    if arg.startswith("--dry_run="):
        value = arg.split("=", 1)[1].lower()
        if value in ("true", "1", "yes"):
            return "--dry_run=True"
        if value in ("false", "0", "no", ""):
            return None
        raise UserError(f"--dry_run takes no value (or True/False), got {value!r}")
    return arg


def validate(args: argparse.Namespace, options: PipelineOptions, dry_run: bool = False) -> None:
    """Fails fast, before any worker starts, on mistakes a user can fix: the runner's own needs
    first (runners/), then the paths and the tree (a dry run lists no remote tree: it needs no
    credentials)."""
    paths = {"--input": args.input, "--output": args.output, "--synset-map": args.synset_map}
    runners.vet(options, paths, args.shared_filesystem)
    for flag, path in paths.items():
        if path and not walk.is_text(path):
            raise UserError(f"{flag} {path!r}: the path is not valid UTF-8 text; rename it or pass another")
    for flag in ("--input", "--synset-map"):
        if paths[flag] and not fs.is_url(paths[flag]) and not fs.exists(paths[flag]):
            raise UserError(f"{flag} {paths[flag]}: no such file or directory")
    if args.synset_map and not fs.is_url(args.synset_map):
        try:
            vocab_lib.read_synset_map(args.synset_map)
        except (vocab_lib.VocabError, OSError) as exc:
            raise UserError(f"--synset-map: {exc}") from None
    if fs.is_url(args.input) and dry_run:
        return
    if not fs.isdir(args.input):
        raise UserError(f"--input {args.input}: not a directory (pass the folder holding Annotations/ and Data/)")
    _check_tree(args)
    if not fs.is_url(args.output) and fs.exists(args.output) and not fs.isdir(args.output):
        raise UserError(f"--output {args.output} is a file; pass a folder")


def _check_tree(args: argparse.Namespace) -> None:
    """Every split is there in a layout detrec reads, and the class list the tree fixes itself
    (a CLS-LOC tree's LOC_synset_mapping.txt) parses: what the workers would otherwise fail on,
    as one line here."""
    root = fs.absolute(args.input)
    found = {}
    for split in (s for s in args.splits.split(",") if s):
        try:
            found[split] = sources.resolve(root, split, args.layout)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        except Exception as exc:  # a bucket that cannot be listed: permissions, network
            raise UserError(f"--input {args.input}: cannot list it ({one_line(exc, 200)})") from None
    if not args.synset_map:
        try:
            sources.fixed_vocabulary(found, list(found))
        except (vocab_lib.VocabError, OSError) as exc:
            raise UserError(f"{exc} (found beside the tree; fix it or pass --synset-map)") from None


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is logged (tools and tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _log_progress() -> None:
    """Shows detrec's per-stage/per-shard log lines (visible progress on long runs), from
    this process (in-memory runner) and from Beam's worker processes (multi-processing).

    Beam's own report of a failing DoFn (a traceback logged before the job fails) is kept
    quiet: the failure reaches the user once, as the launcher's one-line error or, for a
    bug, as the exception itself."""
    logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    own = logging.getLogger("detrec")
    own.setLevel(logging.INFO)
    own.propagate = False
    if not own.handlers:
        own.addHandler(handler)
    beam_compat.forward_worker_logs(os.path.dirname(walk.__file__), handler)


def job_config(args: argparse.Namespace, num_shards: dict[str, int], owned_workers: bool = False) -> JobConfig:
    return JobConfig(input=args.input, output=args.output, splits=tuple(args.splits.split(",")),
                     layout=args.layout, synset_map=args.synset_map or "", num_shards=num_shards,
                     target_shard_mb=args.target_shard_mb, verify_images=args.verify_images,
                     max_image_mb=args.max_image_mb, max_pixels=args.max_pixels, downscale=args.downscale,
                     **resize_options(args), owned_workers=owned_workers)


def resize_options(args: argparse.Namespace) -> dict[str, int]:
    """JobConfig's shorter_side and resize_quality from their flags (one UserError line when bad)."""
    if args.shorter_side is None:
        if args.resize_quality is not None:
            raise UserError("--resize-quality sets the quality of images --shorter-side resizes: give --shorter-side too")
        return {}
    quality = images.RESIZE_QUALITY if args.resize_quality is None else args.resize_quality
    return {"shorter_side": argtypes.checked("--shorter-side", argtypes.bounded(int, 1, image_fit.MAX_SIDE),
                                             args.shorter_side),
            "resize_quality": argtypes.checked("--resize-quality", argtypes.bounded(int, 1, 100), str(quality))}


def split_seconds(result, splits: list[str]) -> dict[str, float] | None:
    """Each split's writing time, first shard start to last shard end, from the job's metrics
    (splits are written concurrently, so the job's time says nothing per split); None when
    the runner reports no metrics."""
    from apache_beam.metrics.metric import MetricsFilter

    def edge(split: str, name: str):
        query = MetricsFilter().with_namespace(NAMESPACE).with_name(split_time_metric(split, name))
        found = result.metrics().query(query).get("distributions")
        return found[0].result if found else None

    out = {}
    try:
        for split in splits:
            start, end = edge(split, "start"), edge(split, "end")
            if start is not None and end is not None and start.count and end.count:
                out[split] = max(end.max - start.min, 1) / 1000
    except (NotImplementedError, AttributeError):  # a runner without metrics (or a result without them)
        return None
    return out


def summary_table(info: dataset_info.DatasetInfo, seconds: dict[str, float]) -> str:
    """Per split: examples, errors, converted, shards, MB, writing seconds and img/s, reasons;
    then where each split's classes and boxes came from, and where the class list came from."""
    rows = [f"{'split':<8} {'examples':>9} {'errors':>7} {'converted':>9} {'shards':>6} {'MB':>9} "
            f"{'seconds':>8} {'img/s':>8}  errors by reason"]
    for split, entry in info.splits.items():
        reasons = ", ".join(f"{k}={v}" for k, v in entry.errors_by_reason.items()) or "-"
        took = seconds.get(split)
        timing = f"{took:>8.1f} {entry.num_examples / took:>8.0f}" if took else f"{'-':>8} {'-':>8}"
        rows.append(f"{split:<8} {entry.num_examples:>9} {entry.num_errors:>7} {entry.converted_images:>9} "
                    f"{len(entry.shards):>6} {entry.num_bytes / 1e6:>9.1f} {timing}  {reasons}")
    rows.append("")
    for split, entry in info.splits.items():
        rows.append(f"{split:<8} {label_origins(entry)}")
    rows.append(f"{info.num_classes - 1} classes + background, from {info.classes_from or 'the synset map'}")
    return "\n".join(rows)


def label_origins(entry: dataset_info.SplitInfo) -> str:
    """`labels from folder=96; boxes from csv=20 none=36 xml=40; 3 folder labels unlike the largest box's`
    (read: where the image classes came from; where the boxes did; folder classes that are not
    the class of the image's largest box, as ImageNet train has); `unlabelled: no class, no
    boxes (for predict)` for a split whose tree gives no labels."""
    if not entry.labelled:
        return "unlabelled: no class, no boxes (for predict)"

    def counts(c) -> str:
        return " ".join(f"{k}={v}" for k, v in c.items()) or "-"

    text = f"labels from {counts(entry.label_sources)}; boxes from {counts(entry.box_sources)}"
    n = entry.label_mismatches
    if n:
        text += f"; {n} folder label{'s' if n != 1 else ''} unlike the largest box's"
    return text


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """The command; SIGINT and SIGTERM stop it alike (stopping.py): one line, exit 130 or 143."""
    try:
        with stopping.signals_raise():
            return _run(args, extra)
    except KeyboardInterrupt as stop:
        left = getattr(stop, "left", "the job had not started")  # _held says more once the job runs
        print(f"detrec preprocess: stopped by {stopping.signal_name(stop)}; {left}", file=sys.stderr)
        return stopping.exit_code(stop)


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    malloc_arenas.limit()
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    if not splits:
        raise UserError("--splits is empty; pass e.g. --splits train,val")
    args.splits = ",".join(splits)
    num_shards = parse_num_shards(args.num_shards, splits)
    if not (math.isfinite(args.target_shard_mb) and args.target_shard_mb > 0):
        raise UserError(f"--target-shard-mb must be a positive number of MB, got {args.target_shard_mb}")
    options = pipeline_options(extra)
    dry_run = bool(options.get_all_options().get("dry_run"))
    config = job_config(args, num_shards, owned_workers=beam_compat.runs_here(options))  # checks its flags
    validate(args, options, dry_run)
    _log_progress()
    if dry_run:
        return _execute(args, options, config, dry_run)
    with _held(args.output, beam_compat.runs_here(options)) as previous:
        return _execute(args, options, dataclasses.replace(config, previous=previous), dry_run)


@contextlib.contextmanager
def _held(output: str, here: bool) -> Iterator[dataset_info.DatasetInfo | None]:
    """The output folder, held by this run alone (output_folder.py), yielding the dataset
    already in it. When SIGINT or SIGTERM stops a job that runs `here`, its workers are ended
    and then its temporary files removed (in that order: nothing may write after the cleanup);
    a job on a remote runner (Dataflow) is not this process's to end, nor are its files."""
    output_folder.check(output)  # a folder that is not detrec's is refused before anything is written
    if fs.is_url(output):
        logging.getLogger("detrec").warning(
            "%s: object stores have no lock; two runs into one output folder there replace each other's "
            "files (run one at a time)", output)
    spared = stopping.child_processes()
    with contextlib.ExitStack() as stack:
        with _io_errors(output):
            fs.makedirs(output)
            stack.enter_context(output_folder.lock(output))
            folder = output_folder.check(output)  # again, now that no other run can change it
            # dataset_info.json marks a complete dataset: remove it first, rewrite it last.
            if folder.previous is not None:
                fs.remove(dataset_info.path_in(output))
        if here:
            stack.enter_context(stopping.children_end_first(spared))
        try:
            yield folder.previous
        except KeyboardInterrupt as stop:
            if not here:
                stop.left = "a job already submitted goes on in its runner: cancel it there"
                raise
            with stopping.second_signal_kills():
                stopping.end_child_processes(spared)
                output_folder.remove_temporaries(output)
            stop.left = "workers ended and temporary files removed; run the same command again to finish"
            raise


def _execute(args: argparse.Namespace, options: PipelineOptions, config: JobConfig, dry_run: bool) -> int:
    """Builds and runs the job, then prints its summary (or what a dry run would do)."""
    start = time.perf_counter()
    runner = runners.of(options)
    try:
        pipeline = beam.Pipeline(runner=beam_compat.local_runner(options), options=options)
    except ValueError as exc:  # Beam's own option validation (project id, locations...)
        raise UserError(" ".join(str(exc).split())) from None
    _ = pipeline | "BuildShards" >> BuildShards(config)
    if dry_run and not runner.dry_run:  # other runners ignore --dry_run: they would run the job
        pipeline.to_runner_api()
    else:
        with _io_errors(args.output, clean=not dry_run), _service_errors(runner, options):
            result = pipeline.run()
            finished = dry_run or _detached(options) or result.wait_until_finish()
    if dry_run:
        print("dry run: pipeline graph built and validated; nothing was submitted")
        print("\n".join(dry_run_report(pipeline, options)))
        return 0
    if _detached(options):
        print(f"submitted; {schema.DATASET_INFO} appears in {args.output} when the job has finished")
        return 0
    seconds = time.perf_counter() - start
    if str(finished).split(".")[-1] not in ("DONE", "None"):
        raise UserError(f"the pipeline ended in state {finished}; see the runner's logs "
                        "(Dataflow: pipelines/dataflow/runbook.md)")
    info = dataset_info.load(args.output)
    timed = split_seconds(result, list(info.splits))
    print(summary_table(info, timed or {}))
    if not timed and any(e.num_examples for e in info.splits.values()):
        print(f"(per-split seconds are not available from the {runner.name}: it reports no timing metrics)")
    total = sum(e.num_examples for e in info.splits.values())
    print(f"{total} examples in {seconds:.1f}s ({total / max(seconds, 1e-9):.0f} img/s, start-up included) -> "
          f"{args.output} (details: {schema.DATASET_INFO}, {schema.errors_name('<split>')})")
    return 0


@contextlib.contextmanager
def _service_errors(runner: runners.Runner, options: PipelineOptions) -> Iterator[None]:
    """A job service or worker pool that stops answering mid-job, as one line (gRPC's own
    error is a page of stream state)."""
    import grpc

    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        name = getattr(code, "name", "an RPC error")
        hint = ""
        if (options.view_as(PortableOptions).environment_type or "").upper() == "EXTERNAL":
            hint = ("; a worker pool must start its SDK workers with a Python that has detrec: "
                    "start it with `detrec beam-service worker-pool`")
        raise UserError(f"the {runner.name}'s job service stopped answering ({name}){hint}") from None


def dry_run_report(pipeline: beam.Pipeline, options: PipelineOptions) -> list[str]:
    """What a dry run would have run and shipped: the runner, the job's top-level steps in the
    graph just built, and what the workers get besides the Beam SDK."""
    names = [t.unique_name for t in pipeline.to_runner_api().components.transforms.values()]
    steps = sorted({n.split("/")[1] for n in names if n.startswith("BuildShards/")})
    setup, worker = options.view_as(SetupOptions), options.view_as(WorkerOptions)
    shipped = []
    if setup.setup_file:
        shipped.append(f"an sdist of {setup.setup_file}")
    if setup.requirements_file:
        shipped.append(f"pip install -r {setup.requirements_file}")
    if worker.sdk_container_image:
        shipped.append(f"the container image {worker.sdk_container_image}")
    return [f"  runner: {options.view_as(StandardOptions).runner or 'DirectRunner'}",
            f"  steps: {', '.join(steps)}",
            f"  workers get: {'; '.join(shipped) or 'nothing beyond the Beam SDK'}"]


def _detached(options: PipelineOptions) -> bool:
    """Whether the launcher submits the job and returns without waiting for it."""
    return bool(options.view_as(GoogleCloudOptions).template_location
                or options.view_as(StandardOptions).no_wait_until_finish)


@contextlib.contextmanager
def _io_errors(output: str, clean: bool = False) -> Iterator[None]:
    """The machine's I/O failures (a full disk, a read-only file system, permissions) as one
    IOFailure line instead of a traceback; with `clean`, the run's temporary files in
    `output` are removed first, so a full disk is not left full of them."""
    try:
        yield
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as exc:
        cause = _os_error(exc)
        if cause is None:
            raise
        if clean:
            with contextlib.suppress(Exception):
                output_folder.remove_temporaries(output)
        raise IOFailure(f"writing {output} failed: {cause}") from None


def _os_error(exc: BaseException) -> str | None:
    """The OSError behind a failure, as one line; Beam's workers report theirs as text."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    match = re.search(r"(?:OSError|PermissionError|FileNotFoundError): (\[Errno \d+\][^\n]*)", str(exc))
    return match.group(1) if match else None


def main(argv: list[str] | None = None) -> int:
    """`python -m detrec.pipelines.preprocess_cmd ...` (same as `detrec preprocess ...`)."""
    from detrec.pipelines.cli import main as cli_main

    return cli_main(["preprocess", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
