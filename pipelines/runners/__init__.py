"""The Beam runners `detrec preprocess` knows, one module each, and what the launcher asks them.

    runner = runners.vet(options, paths, shared_filesystem)   # of(options), refused or checked
    runner.check(options, paths)    # a UserError naming what it lacks, before anything starts
    runner.elsewhere(options)       # "" when its workers see this machine's files, else why not

--runner takes Beam's names, their short forms ("flink") or a class path. A runner detrec
cannot run on says why (`refused`) as soon as it is named, or one of its flags is. A flag of a
runner's own options (`flags`) with another runner chosen is refused too: Beam would ignore
it. A runner not listed still runs (Beam builds it from its class path), its workers counted
as remote.

Adding a runner: one module with a `RUNNER = Runner(...)` (runner.py), and one line in RUNNERS below.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from detrec.core.errors import UserError, one_line
from detrec.pipelines.runners import dask, dataflow, direct, job_api
from detrec.pipelines.runners.runner import Paths, Runner
from detrec.preprocess import beam_compat

RUNNERS = (direct.RUNNER, dataflow.RUNNER, job_api.PORTABLE, job_api.FLINK, job_api.SPARK, job_api.PRISM, dask.RUNNER)
# --runner as Beam reads it (beam_compat.runner_key) -> the runner it names
_BY_KEY = {beam_compat.runner_key(name): r for r in RUNNERS for name in (r.name, *r.aliases)}


def of(options: PipelineOptions) -> Runner:
    """The runner --runner names (the DirectRunner when none is given)."""
    name = options.view_as(StandardOptions).runner or "DirectRunner"
    found = _BY_KEY.get(beam_compat.runner_key(name))
    if found is not None:
        return found
    return Runner(name, check=_importable, elsewhere=lambda _o: f"detrec cannot tell where {name}'s workers run")


def _importable(options: PipelineOptions, _paths: Paths) -> None:
    """A runner detrec does not list can be built (Beam would fail later, with a traceback)."""
    from apache_beam.runners.runner import create_runner

    name = options.view_as(StandardOptions).runner
    try:
        create_runner(name)
    except ValueError:  # Beam's "Unexpected pipeline runner": not a name, not a class path
        known = ", ".join(sorted(r.name for r in RUNNERS if not r.refused))
        raise UserError(f"--runner {name}: Beam has no runner of that name; choose one of {known}, "
                        "or give a runner's class path") from None
    except Exception as exc:  # a class path that does not import, a runner missing its extra
        raise UserError(f"--runner {name}: cannot load it ({one_line(exc, 160)})") from None


def check_flags(args: list[str], options: PipelineOptions) -> None:
    """A flag of another runner's own options than the one chosen ends the run here, in one
    line: Beam would ignore it (a job meant for Flink would run on the DirectRunner). A flag
    of a runner detrec refuses (DaskRunner) says why it is refused."""
    chosen = of(options)
    given = {arg.split("=", 1)[0][2:] for arg in args if arg.startswith("--")}
    for runner in RUNNERS:
        flag = next((f for f in runner.flags if f in given), None)
        if flag is None or runner is chosen:
            continue
        if runner.refused:
            raise UserError(f"--{flag} is an option of the {runner.name}: {runner.refused}")
        raise UserError(f"--{flag} is an option of the {runner.name}, but the job would run on the {chosen.name}, "
                        f"which ignores it: pass --runner {runner.name} too")


def vet(options: PipelineOptions, paths: Paths, shared_filesystem: bool) -> Runner:
    """The runner of `options`, refused, or checked (its own needs, then where its workers read)."""
    runner = of(options)
    if runner.refused:
        raise UserError(f"--runner {runner.name}: {runner.refused}")
    runner.check(options, paths)
    why = runner.elsewhere(options)
    if why and not shared_filesystem:
        from detrec.core import fs

        for flag, path in paths.items():
            if path and not fs.is_url(path):
                raise UserError(f"{flag} {path} is a local path, but {why}: pass paths every worker reads "
                                "(gs://...), or --shared-filesystem when all of them see this path")
    return runner
