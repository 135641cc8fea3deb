"""Freezing long-lived objects out of the GC: each case runs in a fresh interpreter, since
freezing is process-wide and pytest's own process has long since imported everything."""

from __future__ import annotations

import os
import subprocess
import sys

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


def test_a_worker_freezes_once_when_it_sets_up_a_detrec_dofn():
    before, first, between = _python(
        TRACKED + "from detrec.preprocess import dofns; import apache_beam\n"
        "print(tracked(apache_beam.__dict__))\n"
        "dofns.WriteShard('/tmp', 'header').setup(); print(tracked(apache_beam.__dict__))\n"
        "garbage = [[] for _ in range(10)]; dofns.ParseShard([]).setup(); print(tracked(garbage))")
    assert (before, first) == ("True", "False")  # the first setup froze what the worker had loaded
    assert between == "True"  # a later setup freezes nothing more: later objects stay in the GC's reach


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
