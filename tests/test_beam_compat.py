"""Each Beam internal detrec relies on (preprocess/beam_compat.py), checked directly: a Beam
upgrade that changes one fails here, loudly, instead of in a user's run."""

from __future__ import annotations

import logging
import os

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner

from detrec.core.errors import UserError
from detrec.preprocess import beam_compat


def test_pinned_beam_version():
    """The assumptions below were checked against this Beam; recheck them when it moves."""
    assert beam.__version__.startswith("2.77."), beam.__version__


def test_local_runs_go_straight_to_the_fn_api_runner():
    """No Prism attempt (it downloads a binary at run time); other runners are Beam's choice."""
    assert isinstance(beam_compat.local_runner(PipelineOptions([])), fn_runner.FnApiRunner)
    assert isinstance(beam_compat.local_runner(PipelineOptions(["--runner=DirectRunner"])), fn_runner.FnApiRunner)
    assert beam_compat.local_runner(PipelineOptions(["--runner=DataflowRunner"])) is None


@pytest.mark.parametrize("mode, elsewhere", [("multi_processing", True), ("in_memory", False)])
def test_the_fn_api_runner_honours_the_running_mode(mode, elsewhere):
    """The runner we build reads --direct_running_mode and --direct_num_workers as Beam's own
    does: in multi_processing mode the DoFns run in worker processes, in_memory in this one."""
    from apache_beam.testing.util import BeamAssertException, assert_that

    argv = [f"--direct_running_mode={mode}", "--direct_num_workers=2"]
    here = os.getpid()

    def ran_where_expected(lists):
        (pids,) = lists
        if len(pids) != 6 or any((pid != here) != elsewhere for pid in pids):
            raise BeamAssertException(f"{mode}: elements ran in {sorted(set(pids))}, the launcher is {here}")

    with beam.Pipeline(runner=beam_compat.local_runner(PipelineOptions(argv)), options=PipelineOptions(argv)) as p:
        pids = p | beam.Create(range(6)) | beam.Map(lambda _: os.getpid()) | beam.combiners.ToList()
        assert_that(pids, ran_where_expected)


def _relog(entries: list[beam_fn_api_pb2.LogEntry], source_dir: str) -> list[logging.LogRecord]:
    """Passes worker log entries through Beam's own local logging servicer, as a
    multi-processing worker's logs travel, and returns what our filter lets through."""
    from apache_beam.runners.portability import local_job_service

    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = logging.getLogger(beam_compat.WORKER_LOGGER)
    handler, log_filter = Keep(), beam_compat.WorkerLogFilter(source_dir)
    saved = logger.filters[:]  # a preprocess run in this process may have installed its own
    logger.filters[:] = [log_filter]
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        bundle = beam_fn_api_pb2.LogEntry.List(log_entries=entries)
        local_job_service.BeamFnLoggingServicer().Logging([bundle])
    finally:
        logger.removeHandler(handler)
        logger.filters[:] = saved
        logger.setLevel(old_level)
    return seen


def _entry(message: str, location: str, severity=beam_fn_api_pb2.LogEntry.Severity.INFO):
    entry = beam_fn_api_pb2.LogEntry(message=message, log_location=location, severity=severity)
    entry.timestamp.seconds = 1_700_000_000
    return entry


def test_worker_log_lines_are_turned_back_into_plain_lines(tmp_path):
    source = str(tmp_path / "preprocess")
    seen = _relog([
        _entry("wrote train-00000-of-00001.tfrecord", os.path.join(source, "dofns.py:310")),
        _entry("beam chatter", "/site-packages/apache_beam/x.py:1"),
        _entry("boom", "/site-packages/apache_beam/x.py:1", beam_fn_api_pb2.LogEntry.Severity.ERROR),
    ], source)
    assert [r.getMessage() for r in seen] == ["wrote train-00000-of-00001.tfrecord", "worker: boom"]
    assert seen[0].created == 1_700_000_000


def test_option_names_cover_beams_flags():
    names = beam_compat.option_names()
    for flag in ("runner", "direct_num_workers", "direct_running_mode", "project", "region", "temp_location",
                 "setup_file", "sdk_container_image", "dry_run", "labels", "num_workers"):
        assert flag in names, flag
    assert "synset-map" not in names and "synset_map" not in names  # detrec's flag has no Beam twin


def test_a_bad_option_value_becomes_one_user_error():
    with pytest.raises(UserError, match="direct_running_mode"):
        beam_compat.check_options(PipelineOptions(["--direct_running_mode=sideways"]))
    beam_compat.check_options(PipelineOptions(["--direct_running_mode=in_memory"]))  # a good one passes
