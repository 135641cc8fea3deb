"""Every place detrec leans on Apache Beam internals, each with why, in one module.

Beam 2.77 offers no public way to do these four things; tests/test_beam_compat.py checks
each assumption directly, so a Beam upgrade that changes one fails loudly there, not as a
silent slowdown or a lost log line in a user's run.

1. `local_runner`: the DirectRunner first tries Prism, which downloads its binary from
   GitHub at run time (offline: a failed fetch or a hang; online: a runner that ignores
   --direct_running_mode). We build the FnApiRunner it would fall back to, as it does.
2. `forward_worker_logs`: the multi-processing workers' log lines reach the launcher only
   as text-format `LogEntry` protos re-logged by the local job service; we parse them back
   into plain lines so per-shard progress is visible.
3. `option_names`, `flags_of`: Beam registers its flags on `PipelineOptions` subclasses
   through the private `_add_argparse_args`; we collect them to reject a mistyped flag up
   front (Beam itself silently ignores unknown flags) and to tell which runner a flag is for.
4. `check_options`: Beam's option parser reports a bad value by printing to stderr and
   raising SystemExit; we capture that text and turn it into one UserError line.
5. `local_runner` also starts the multi-processing workers with SIGINT and SIGTERM ignored
   (WORKER_SIGNALS, prefixed to the worker's shell command in the job's environment): Ctrl-C
   or a `kill` of the process group reaches every process, and each worker would print its
   own traceback; the launcher ends its workers itself (pipelines/stopping.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.portability.api import beam_fn_api_pb2
from google.protobuf import text_format

from detrec.core.errors import UserError

# Where Beam's local runner re-logs what its worker processes log.
WORKER_LOGGER = "apache_beam.runners.portability.local_job_service"
# Before a multi-processing worker's command (run by /bin/sh): ignored signals stay ignored
# across exec, and Python leaves an ignored SIGINT alone.
WORKER_SIGNALS = b"trap '' INT TERM; exec "


# --runner values that mean Beam's local runner: detrec runs the FnApiRunner itself (local_runner).
LOCAL_RUNNERS = ("DirectRunner", "FnApiRunner", "SwitchingDirectRunner")


def runner_key(name: str) -> str:
    """--runner as Beam's create_runner reads it: the class name, any case, "Runner" optional."""
    last = name.rsplit(".", 1)[-1].lower()
    return last if last.endswith("runner") else last + "runner"


def runs_here(options: PipelineOptions) -> bool:
    """Whether the job runs in processes this launcher owns (the DirectRunner), not in a service."""
    name = options.view_as(StandardOptions).runner or "DirectRunner"
    return runner_key(name) in {runner_key(n) for n in LOCAL_RUNNERS}


def local_runner(options: PipelineOptions):
    """For the DirectRunner, the FnApiRunner it would fall back to, chosen up front; None
    for other runners (Beam picks from the options)."""
    if not runs_here(options):
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return _fn_api_runner()(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def _fn_api_runner():
    """FnApiRunner, starting its worker processes with WORKER_SIGNALS (it puts the worker
    command into the job's environment just before this method)."""
    from apache_beam.portability import python_urns
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    class LocalRunner(fn_runner.FnApiRunner):
        def run_via_runner_api(self, pipeline_proto, options):
            for env in pipeline_proto.components.environments.values():
                if env.urn == python_urns.SUBPROCESS_SDK and not env.payload.startswith(WORKER_SIGNALS):
                    env.payload = WORKER_SIGNALS + env.payload
            return super().run_via_runner_api(pipeline_proto, options)

    return LocalRunner


class WorkerLogFilter(logging.Filter):
    """Passes the lines logged by code under `source_dir` (and any error) among the log
    entries that Beam's workers forward, rewritten as plain messages with the worker's
    timestamp; drops Beam's own chatter."""

    def __init__(self, source_dir: str):
        super().__init__()
        self.source_dir = source_dir.rstrip(os.sep) + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        entry = beam_fn_api_pb2.LogEntry()
        try:
            text_format.Parse(str(record.args[0]) if record.args else "", entry)
        except text_format.ParseError:
            return False
        ours = entry.log_location.startswith(self.source_dir)
        if not entry.message or not (ours or record.levelno >= logging.ERROR):
            return False
        record.msg, record.args = entry.message if ours else f"worker: {entry.message}", ()
        record.created = entry.timestamp.seconds + entry.timestamp.nanos / 1e9
        return True


def forward_worker_logs(source_dir: str, handler: logging.Handler) -> None:
    """Shows the workers' lines from code under `source_dir` through `handler`."""
    workers = logging.getLogger(WORKER_LOGGER)
    workers.setLevel(logging.INFO)
    workers.propagate = False
    if not workers.handlers:
        workers.addHandler(handler)
    if not any(isinstance(f, WorkerLogFilter) for f in workers.filters):
        workers.addFilter(WorkerLogFilter(source_dir))


def option_names() -> set[str]:
    """Every flag name (without dashes) some registered PipelineOptions class accepts."""
    return {name for cls in PipelineOptions.__subclasses__() for name in flags_of(cls)}


def flags_of(cls: type[PipelineOptions]) -> tuple[str, ...]:
    """The flag names (without dashes) one PipelineOptions class registers; () for a class
    that needs extras we don't have."""
    parser = argparse.ArgumentParser(add_help=False)
    try:
        cls._add_argparse_args(parser)
    except Exception:
        return ()
    return tuple(opt.lstrip("-") for action in parser._actions for opt in action.option_strings)


def check_options(options: PipelineOptions) -> None:
    """Parses every option now; a bad value becomes a UserError with Beam's own message."""
    messages = io.StringIO()
    try:
        with contextlib.redirect_stderr(messages):
            options.get_all_options()
    except SystemExit:
        last = (messages.getvalue().strip().splitlines() or ["invalid pipeline option"])[-1]
        raise UserError(last.split("error: ", 1)[-1]) from None
