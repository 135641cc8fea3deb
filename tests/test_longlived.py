"""Freezing long-lived objects out of the GC: each case runs in a fresh interpreter, since
freezing is process-wide and pytest's own process has long since imported everything."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


# Whether the GC still tracks an object: frozen ones are in its permanent generation, which
# gc.get_objects() leaves out. (Counts of frozen objects would tie these tests to how many
# objects a Beam or TensorFlow release happens to make.)
TRACKED = "import gc\ndef tracked(o): return any(x is o for x in gc.get_objects())\n"


def test_imports_run_with_the_gc_paused_then_are_frozen():
    enabled_inside, enabled_after, beam_tracked, later_tracked = _python(
        TRACKED + "from detrec.preprocess import longlived\n"
        "with longlived.importing():\n"
        "    import apache_beam; print(gc.isenabled())\n"
        "later = [[]]\n"
        "print(gc.isenabled(), tracked(apache_beam.__dict__), tracked(later))")
    assert (enabled_inside, enabled_after) == ("False", "True")
    assert (beam_tracked, later_tracked) == ("False", "True")  # what it imported is frozen, nothing after


def test_a_worker_the_job_owns_freezes_once_when_it_sets_up_a_detrec_dofn():
    before, first, between = _python(
        TRACKED + "from detrec.preprocess import dofns; import apache_beam\n"
        "print(tracked(apache_beam.__dict__))\n"
        "dofns.WriteShard('/tmp', 'header', owned_worker=True).setup(); print(tracked(apache_beam.__dict__))\n"
        "garbage = [[] for _ in range(10)]; dofns.ParseShard([], owned_worker=True).setup(); print(tracked(garbage))")
    assert (before, first) == ("True", "False")  # the first setup froze what the worker had loaded
    assert between == "True"  # a later setup freezes nothing more: later objects stay in the GC's reach


def test_a_shared_worker_keeps_its_gc_whole_but_gets_the_malloc_settings():
    """A worker pool's worker serves many jobs: nothing is frozen there, but detrec's malloc
    settings apply wherever a worker sets up a detrec DoFn (not only in the launcher's children)."""
    tracked, arenas, threshold = _python(
        TRACKED + "import os\nfor v in ('MALLOC_ARENA_MAX', 'MALLOC_MMAP_THRESHOLD_'): os.environ.pop(v, None)\n"
        "from detrec.preprocess import dofns; import apache_beam\n"
        "dofns.ListAndAssign({}, 1).setup(); dofns.WriteShard('/tmp', 'header').setup()\n"
        "print(tracked(apache_beam.__dict__), os.environ['MALLOC_ARENA_MAX'], os.environ['MALLOC_MMAP_THRESHOLD_'])")
    assert tracked == "True"
    assert (arenas, threshold) == ("2", str(256 * 1024))


@pytest.mark.parametrize("argv, owned", [([], True), (["--runner=direct"], True),
                                         (["--runner=PortableRunner"], False), (["--runner=FlinkRunner"], False)])
def test_only_the_direct_runners_workers_are_the_jobs_own(argv, owned):
    """Every detrec DoFn of the job graph freezes its worker's imports on the DirectRunner only
    (the launcher's own children), never on a runner whose workers outlive the job."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.pipeline import PipelineVisitor

    from detrec.preprocess import beam_compat, dofns
    from detrec.preprocess.graph import BuildShards, JobConfig

    pipeline = beam.Pipeline(runner="DirectRunner")
    _ = pipeline | BuildShards(JobConfig(input="/in", output="/out",
                                         owned_workers=beam_compat.runs_here(PipelineOptions(argv))))
    found = []

    class Visitor(PipelineVisitor):
        def visit_transform(self, node):
            fn = getattr(node.transform, "fn", None)
            if isinstance(fn, dofns._DetrecDoFn):
                found.append(fn._owned_worker)

    pipeline.visit(Visitor())
    assert found == [owned] * 3  # list, parse, write


def test_the_launcher_freezes_what_the_command_imports():
    out = _python(TRACKED + "from detrec.pipelines import cli\n"
                  "try:\n    cli.main(['preprocess', '--help'])\nexcept SystemExit:\n    pass\n"
                  "import apache_beam; print(tracked(apache_beam.__dict__))")
    assert "--verify-images" in out and out[-1] == "False"  # its help, then Beam's objects frozen


def test_freezing_does_not_wait_for_an_import_in_progress():
    """An import on one thread (a worker's first JPEG that needs TensorFlow's verdict, ~2 s)
    must not hold up another thread setting up its DoFn."""
    ok, = _python(
        "import threading; from detrec.preprocess import longlived\n"
        "inside, release = threading.Event(), threading.Event()\n"
        "def slow_import():\n"
        "    with longlived.importing():\n"
        "        inside.set(); release.wait()\n"
        "t = threading.Thread(target=slow_import); t.start(); inside.wait()\n"
        "setup = threading.Thread(target=longlived.freeze_once); setup.start(); setup.join(10)\n"
        "print(not setup.is_alive()); release.set(); t.join()")
    assert ok == "True"
