"""Runners that reach their engine through Beam's portable Job API.

PortableRunner submits to a job service that is already running: Beam's own
(`detrec beam-service job-service`), or a Flink or Spark job server. FlinkRunner and SparkRunner
start Beam's job server for their engine from a Java jar (unless given --job_endpoint), and
PrismRunner starts Beam's Go runner from a binary. Each of those pieces is checked here, so a
missing one is one line before the job starts, not minutes of download retries ending in a
misleading "urlopen error":
- a job service that answers at --job_endpoint (or java and the job-server jar to start one:
  a local file, Beam's jar cache, or a download this machine can make);
- for Prism, its binary (--prism_location, Beam's cache, or a download from GitHub);
- SDK workers that can import detrec: an EXTERNAL worker pool that answers (`detrec
  beam-service worker-pool`, whose workers run detrec's own Python), LOOPBACK (workers in this
  process), PROCESS, or a DOCKER image built from docker/beam.Dockerfile. Beam's default for a
  job service, its stock SDK image, has neither detrec nor TensorFlow.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import urllib.parse
import urllib.request

from apache_beam.options.pipeline_options import (FlinkRunnerOptions, JobServerOptions, PipelineOptions,
                                                  PortableOptions, PrismRunnerOptions, SparkRunnerOptions,
                                                  WorkerOptions)

from detrec.core.errors import UserError, one_line
from detrec.pipelines.runners.runner import Paths, Runner
from detrec.preprocess import beam_compat

# Workers that run where the job service runs (LOOPBACK: inside this launcher).
_HERE_ENVIRONMENTS = ("LOOPBACK", "PROCESS")
_FLINK_LOCAL = ("[local]", "[auto]")  # Flink inside the job server (Beam's MAGIC_HOST_NAMES)
_SPARK_LOCAL = re.compile(r"^local(\[.+\])?$")  # Beam's LOCAL_MASTER_PATTERN
PROBE_SECONDS = 3.0


def answers(address: str) -> bool:
    """Whether something accepts a TCP connection at HOST:PORT within PROBE_SECONDS."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=PROBE_SECONDS):
            return True
    except (OSError, ValueError):
        return False


def downloadable(url: str) -> str:
    """"" when this machine can fetch `url` (a HEAD request answers), else why not."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=PROBE_SECONDS):
            return ""
    except Exception as exc:  # DNS, refused, timeout, HTTP errors: all mean "not from here"
        return one_line(exc, 120)


def _host_port(address: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(address if "//" in address else "//" + address)
    if parsed.port is None:
        raise ValueError(f"no port in {address!r}")
    return parsed.hostname or "localhost", parsed.port


def _is_local(address: str) -> bool:
    try:
        host = _host_port(address)[0]
    except ValueError:
        return False
    return host in ("localhost", "::1", "0.0.0.0", socket.gethostname()) or host.startswith("127.")


ENVIRONMENTS = ("DOCKER", "PROCESS", "EXTERNAL", "LOOPBACK")  # Beam's names for --environment_type


def _environment(options: PipelineOptions, default: str) -> str:
    """The SDK workers' environment type, one of ENVIRONMENTS (a beam:env: URN by its name)."""
    env = options.view_as(PortableOptions).environment_type or default
    if env.startswith("beam:env:"):
        return env.split(":")[2].upper()
    if env not in ENVIRONMENTS:
        raise UserError(f"--environment_type {env}: Beam takes {', '.join(ENVIRONMENTS)} (in capitals) "
                        "or a beam:env: URN")
    return env


def _check_workers(name: str, options: PipelineOptions, env: str) -> None:
    """The SDK workers will be able to import detrec."""
    portable = options.view_as(PortableOptions)
    if env == "DOCKER" and not (options.view_as(WorkerOptions).sdk_container_image or portable.environment_config):
        raise UserError(f"{name}: its SDK workers would run Beam's stock Docker image, which has neither detrec nor "
                        "TensorFlow; pass --sdk_container_image IMAGE built from docker/beam.Dockerfile, or "
                        "--environment_type EXTERNAL --environment_config HOST:PORT of a `detrec beam-service "
                        "worker-pool`")
    if env == "EXTERNAL":
        pool = portable.environment_config
        if not pool:
            raise UserError(f"{name}: --environment_type EXTERNAL needs --environment_config HOST:PORT, the address "
                            "of a running `detrec beam-service worker-pool`")
        if not answers(pool):
            raise UserError(f"{name}: no worker pool answers at --environment_config {pool}; start one there first "
                            "(`detrec beam-service worker-pool --port PORT`)")


def _check_endpoint(name: str, options: PipelineOptions) -> None:
    endpoint = options.view_as(PortableOptions).job_endpoint
    if endpoint != "embed" and not answers(endpoint):
        raise UserError(f"{name}: no job service answers at --job_endpoint {endpoint}; start one there first "
                        "(`detrec beam-service job-service --port PORT`, or a Flink or Spark job server)")


def _where(options: PipelineOptions, env: str, engine_here: bool) -> str:
    """Why the workers may not see this machine's files ("" when they do)."""
    portable = options.view_as(PortableOptions)
    endpoint = portable.job_endpoint
    if endpoint and endpoint != "embed" and not _is_local(endpoint):
        return f"the job service at {endpoint} runs the job on its own machines"
    if not engine_here:
        return "its engine runs on a cluster"
    if env == "DOCKER":
        return "its SDK workers run in Docker containers, which do not see this machine's folders"
    if env == "EXTERNAL" and not _is_local(portable.environment_config or ""):
        return f"its SDK workers run at {portable.environment_config}"
    if env not in (*_HERE_ENVIRONMENTS, "EXTERNAL"):
        return f"its SDK workers run in a {env} environment"
    return ""


# --- PortableRunner ---------------------------------------------------------------------------
def _portable_check(options: PipelineOptions, _paths: Paths) -> None:
    if not options.view_as(PortableOptions).job_endpoint:
        raise UserError("PortableRunner needs --job_endpoint HOST:PORT, a running Job API service "
                        "(`detrec beam-service job-service`, or a Flink or Spark job server)")
    _check_endpoint("PortableRunner", options)
    _check_workers("PortableRunner", options, _environment(options, "DOCKER"))


PORTABLE = Runner("PortableRunner", check=_portable_check,
                  elsewhere=lambda o: _where(o, _environment(o, "DOCKER"), engine_here=True))


# --- FlinkRunner and SparkRunner: a job server from a jar ---------------------------------------
def _check_jar(name: str, options: PipelineOptions, server, flag: str) -> None:
    """The job-server jar is on this machine, in Beam's cache, or downloadable from here."""
    from apache_beam.utils.subprocess_server import JavaJarServer

    try:
        jar = server(options).path_to_jar()
    except (ValueError, RuntimeError):  # Beam's words for a jar path that names no file
        raise UserError(f"{name}: {flag} names no file and no URL; pass the path of the job-server jar") from None
    cache = options.view_as(JobServerOptions).jar_cache_dir or JavaJarServer.JAR_CACHE
    if os.path.exists(jar) or os.path.exists(os.path.join(cache, os.path.basename(jar))):
        return
    why = downloadable(jar)
    if why:
        raise UserError(f"{name} starts its job server from {os.path.basename(jar)}, which is neither on this machine "
                        f"nor downloadable from it ({why}); fetch it where you can and pass {flag} PATH, or run a job "
                        "server yourself and pass --job_endpoint HOST:PORT")


def _jar_runner_check(name: str, options: PipelineOptions, server, flag: str, uber_jar: bool, env: str) -> None:
    if options.view_as(PortableOptions).job_endpoint:
        _check_endpoint(name, options)
    else:
        java = options.view_as(JobServerOptions).job_server_java_launcher or "java"
        if not uber_jar and not shutil.which(java):
            raise UserError(f"{name} starts Beam's job server for it with Java, and {java!r} is not on PATH: install "
                            "Java 11 or later, or run a job server yourself and pass --job_endpoint HOST:PORT")
        _check_jar(name, options, server, flag)
    _check_workers(name, options, env)


def _flink_env(options: PipelineOptions) -> str:
    local = options.view_as(FlinkRunnerOptions).flink_master in _FLINK_LOCAL
    return _environment(options, "LOOPBACK" if local else "DOCKER")


def _flink_check(options: PipelineOptions, _paths: Paths) -> None:
    from apache_beam.runners.portability.flink_runner import FlinkJarJobServer

    flink = options.view_as(FlinkRunnerOptions)
    uber = flink.flink_submit_uber_jar and flink.flink_master not in _FLINK_LOCAL
    _jar_runner_check("FlinkRunner", options, FlinkJarJobServer, "--flink_job_server_jar", uber, _flink_env(options))


FLINK = Runner("FlinkRunner", check=_flink_check, flags=beam_compat.flags_of(FlinkRunnerOptions),
               elsewhere=lambda o: _where(o, _flink_env(o),
                                          o.view_as(FlinkRunnerOptions).flink_master in _FLINK_LOCAL))


def _spark_local(options: PipelineOptions) -> bool:
    return _SPARK_LOCAL.match(options.view_as(SparkRunnerOptions).spark_master_url) is not None


def _spark_env(options: PipelineOptions) -> str:
    return _environment(options, "LOOPBACK" if _spark_local(options) else "DOCKER")


def _spark_check(options: PipelineOptions, _paths: Paths) -> None:
    from apache_beam.runners.portability.spark_runner import SparkJarJobServer

    uber = bool(options.view_as(SparkRunnerOptions).spark_submit_uber_jar)
    _jar_runner_check("SparkRunner", options, SparkJarJobServer, "--spark_job_server_jar", uber, _spark_env(options))


SPARK = Runner("SparkRunner", check=_spark_check, flags=beam_compat.flags_of(SparkRunnerOptions),
               elsewhere=lambda o: _where(o, _spark_env(o), _spark_local(o)))


# --- PrismRunner: Beam's Go runner from a binary -------------------------------------------------
PRISM_RELEASES = "https://github.com/apache/beam/releases"


def _prism_check(options: PipelineOptions, _paths: Paths) -> None:
    from apache_beam.runners.portability.prism_runner import PrismJobServer

    location = options.view_as(PrismRunnerOptions).prism_location
    if location and os.path.exists(location):
        pass
    elif location and not urllib.parse.urlsplit(location).scheme:
        raise UserError(f"PrismRunner: --prism_location {location} is no file; pass the path of a prism binary")
    elif location or not (os.path.isdir(PrismJobServer.BIN_CACHE) and os.listdir(PrismJobServer.BIN_CACHE)):
        why = downloadable(location or PRISM_RELEASES)
        if why:
            raise UserError(f"PrismRunner downloads its binary at start ({location or PRISM_RELEASES}), and this "
                            f"machine cannot ({why}); pass --prism_location PATH of a prism binary")
    _check_workers("PrismRunner", options, _environment(options, "LOOPBACK"))


PRISM = Runner("PrismRunner", check=_prism_check, flags=beam_compat.flags_of(PrismRunnerOptions),
               elsewhere=lambda o: _where(o, _environment(o, "LOOPBACK"), engine_here=True))
