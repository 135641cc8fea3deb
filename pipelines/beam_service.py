"""`detrec beam-service job-service|worker-pool`: Beam's portable Job API servers, ready for detrec.

    detrec beam-service job-service [--port 8099]     # runs submitted jobs itself
    detrec beam-service worker-pool [--port 50000]    # starts SDK workers for them
    detrec preprocess ... --runner PortableRunner --job_endpoint localhost:8099 \
        --environment_type EXTERNAL --environment_config localhost:50000

Both are Beam's own servers (local_job_service, worker_pool_main), run from detrec's Python, so
they work from a fresh shell: Beam's worker pool starts each SDK worker as a bare `python`,
found on PATH, which outside the venv cannot import Beam (the job then waits ~300 s and fails
with DEADLINE_EXCEEDED). Here that `python` is this interpreter, and the workers inherit
detrec's malloc settings (preprocess/malloc_arenas.py). Each serves until SIGINT or SIGTERM.

Security: both listen on every interface (Beam offers no bind address) without authentication,
and whoever reaches the worker pool can run code in its workers. Each prints a warning saying
so; run them on a trusted network or inside a network namespace, with the ports firewalled.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from detrec.core.errors import UserError
from detrec.pipelines import stopping
from detrec.preprocess import malloc_arenas

HELP = "run Beam's Job API servers (job service, SDK worker pool) for --runner PortableRunner; trusted networks only"
WARNING = ("warning: {what} listens on every interface, unauthenticated (whoever reaches it can run code here); "
           "use it on a trusted network only")


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="role", metavar="ROLE", required=True)
    job = sub.add_parser("job-service", help="Beam's local Job API service: runs the jobs submitted to it")
    job.add_argument("--port", type=int, default=8099, help="port to listen on (default 8099; 0: any free port)")
    pool = sub.add_parser("worker-pool", help="Beam's SDK worker pool (--environment_type EXTERNAL), with "
                          "workers that run this Python")
    pool.add_argument("--port", type=int, default=50000, help="port to listen on (default 50000; 0: any free port)")


def _python_on_path() -> str:
    """A folder holding a `python` that runs this interpreter, put first on PATH for the
    workers Beam's pool starts (a wrapper script: a symlink would lose the venv)."""
    folder = tempfile.mkdtemp(prefix="detrec-worker-python-")
    wrapper = os.path.join(folder, "python")
    with open(wrapper, "w", encoding="utf-8") as f:
        f.write(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    os.chmod(wrapper, 0o755)
    os.environ["PATH"] = folder + os.pathsep + os.environ.get("PATH", "")
    return folder


def run(args: argparse.Namespace, extra: list[str]) -> int:
    stopping.check_port(args.port)
    try:
        return _serve(args)
    except RuntimeError as exc:  # e.g. the port is taken: gRPC says "Failed to bind"
        raise UserError(f"beam-service {args.role}: {' '.join(str(exc).split())}") from None


def _serve(args: argparse.Namespace) -> int:
    if args.role == "job-service":
        from apache_beam.runners.portability import local_job_service

        servicer = local_job_service.LocalJobServicer()
        port = servicer.start_grpc_server(args.port)
        print(WARNING.format(what="the job service"), file=sys.stderr, flush=True)
        ready = f"job service ready on port {port} (--runner PortableRunner --job_endpoint localhost:{port})"
        return stopping.serve_until_stopped(servicer.stop, ready)
    from apache_beam.runners.worker import worker_pool_main

    malloc_arenas.limit()  # what the workers inherit
    folder = _python_on_path()
    try:
        address, server = worker_pool_main.BeamFnExternalWorkerPoolServicer.start(use_process=True, port=args.port)
        print(WARNING.format(what="the worker pool"), file=sys.stderr, flush=True)
        port = address.rsplit(":", 1)[1]
        return stopping.serve_until_stopped(
            lambda: server.stop(0), f"worker pool ready on port {port} (--environment_type EXTERNAL "
                                    f"--environment_config localhost:{port})")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
