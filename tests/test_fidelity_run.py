"""A preprocess run as the operating system sees it (issue 22, points 12, 13, 19).

* SIGTERM (`kill`, `timeout`, `docker stop`) stops a run as SIGINT (Ctrl-C) does, sent to the
  launcher alone or to its whole process group, on the in-process and the multi-process
  runner: exit 143 (130), one line, no traceback, no temporary file, no process left.
* One run at a time per output folder: a second run exits 2 naming the first one's pid and
  writes nothing; a killed run leaves no lock that stops the next.
* The errors file's name is spelt once (core/schema.py).

The runs are real `detrec preprocess` processes, stopped once the folder shows them mid-run
(a temporary shard exists), never after a fixed wait.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from detrec.core import dataset_info, fs, schema
from detrec.pipelines import cli, stopping
from detrec.preprocess import output_folder, synth

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Big enough that each of two shards takes a second or more to write (480x360: ~60 KB JPEGs;
# at 160x120 both shards were written in 0.3 s, and a loaded run once missed that window).
TREE = dict(train=800, val=0, classes=5, seed=3, width=480, height=360)
MODES = {"in-process": ["--direct_num_workers=1", "--direct_running_mode=in_memory"],
         "multi-process": ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> str:
    return synth.generate(synth.SynthConfig(out=str(tmp_path_factory.mktemp("fidelity")), **TREE))["root"]


def _args(tree: str, out: str, *extra: str) -> list[str]:
    return ["preprocess", "--input", tree, "--output", out, "--splits", "train", "--num-shards", "train=2",
            *extra]


def _start(tree: str, out: str, mode: str) -> subprocess.Popen:
    """`detrec preprocess` in its own process group (as a shell job is), stderr captured."""
    return subprocess.Popen([sys.executable, "-m", "detrec.pipelines.cli", *_args(tree, out, *MODES[mode])],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_mid_run(proc: subprocess.Popen, out: str) -> None:
    """Returns once a shard is being written (its temporary file exists)."""
    deadline = time.monotonic() + 120
    while not (os.path.isdir(out) and any(fs.is_temp(n) for n in os.listdir(out))):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run never got to writing a shard (exit {proc.poll()}): {proc.communicate()}")
        time.sleep(0.01)


def _group(pgid: int) -> dict[int, str]:
    """pid -> state of every process in process group `pgid`."""
    return {pid: stat[0] for pid, stat in stopping.process_table().items() if int(stat[2]) == pgid}


def _alive(pgid: int) -> list[int]:
    return [pid for pid in _group(pgid) if stopping.running(pid)]


def _listing(folder: str) -> dict[str, tuple[int, int]]:
    return {n: (os.stat(os.path.join(folder, n)).st_size, os.stat(os.path.join(folder, n)).st_mtime_ns)
            for n in sorted(os.listdir(folder))}


# --- 12. SIGTERM as SIGINT -------------------------------------------------------------------
@pytest.mark.parametrize("mode, signum, whole_group", [
    ("multi-process", signal.SIGTERM, False),  # kill PID
    ("multi-process", signal.SIGTERM, True),  # timeout(1), systemd: the whole group
    ("multi-process", signal.SIGINT, True),  # Ctrl-C in a terminal
    ("in-process", signal.SIGTERM, False),
    ("in-process", signal.SIGINT, False),
])
def test_a_signal_mid_run_stops_it_in_one_line_and_leaves_nothing_running_or_temporary(tree, tmp_path, mode,
                                                                                       signum, whole_group):
    out = str(tmp_path / "out")
    proc = _start(tree, out, mode)
    _wait_mid_run(proc, out)
    if whole_group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    # Nothing of the run is alive once the launcher has exited (workers included), so
    # nothing can write into the folder any more.
    assert _alive(proc.pid) == [], _group(proc.pid)
    assert proc.returncode == 128 + signum, stderr
    name = signal.Signals(signum).name
    stops = [line for line in stderr.splitlines() if line.startswith("detrec preprocess:")]
    assert len(stops) == 1 and f"stopped by {name}" in stops[0], stderr
    # Every other line is one of detrec's progress lines: no traceback, no gRPC, no worker noise.
    others = [line for line in stderr.splitlines() if line not in stops]
    assert all(re.match(r"\d\d:\d\d:\d\d (?!worker:)", line) for line in others), stderr
    assert not re.search(r"Traceback|grpc|Error|Exception", stderr), stderr
    left = os.listdir(out)
    assert not [n for n in left if fs.is_temp(n)], left
    assert output_folder.LOCK_FILE not in left and schema.DATASET_INFO not in left, left
    assert stdout == ""


def test_multi_process_workers_leave_stop_signals_to_the_launcher():
    """The Beam assumption behind beam_compat.WORKER_SIGNALS: the workers the local runner
    starts ignore SIGINT and SIGTERM (Ctrl-C reaches the whole process group; the launcher
    ends them), while this process still takes both."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import BeamAssertException, assert_that

    from detrec.preprocess import beam_compat

    def ignored(_) -> tuple[int, bool, bool]:
        with open("/proc/self/status") as f:
            mask = int(next(line for line in f if line.startswith("SigIgn:")).split()[1], 16)
        return os.getpid(), bool(mask >> (signal.SIGINT - 1) & 1), bool(mask >> (signal.SIGTERM - 1) & 1)

    here = os.getpid()

    def check(found):
        if not found or any(pid == here or not (sigint and sigterm) for pid, sigint, sigterm in found):
            raise BeamAssertException(f"workers' (pid, SIGINT ignored, SIGTERM ignored): {found}")

    # Python's own dispositions to start from, whatever this process inherited (a shell starts
    # a background job with SIGINT ignored, and the workers would inherit that instead).
    inherited = {s: signal.signal(s, h) for s, h in ((signal.SIGINT, signal.default_int_handler),
                                                      (signal.SIGTERM, signal.SIG_DFL))}
    try:
        argv = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
        options = PipelineOptions(argv)
        with beam.Pipeline(runner=beam_compat.local_runner(options), options=options) as p:
            assert_that(p | beam.Create(range(4)) | beam.Map(ignored), check)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        for s, h in inherited.items():
            signal.signal(s, h)


# --- 13. one run per output folder -----------------------------------------------------------
def test_a_second_run_into_a_busy_folder_exits_2_naming_the_first_and_writes_nothing(tree, tmp_path, capsys):
    out = str(tmp_path / "out")
    first = _start(tree, out, "multi-process")
    _wait_mid_run(first, out)
    # Freeze the first run (launcher and workers) so the folder holds still while the second
    # one tries; it finishes normally afterwards.
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 30
        while any(state != "T" for state in _group(first.pid).values()) and time.monotonic() < deadline:
            time.sleep(0.01)
        before = _listing(out)
        assert cli.main(_args(tree, out, *MODES["in-process"])) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"pid {first.pid}" in err[0] and out in err[0], err
        assert _listing(out) == before
        assert output_folder.LOCK_FILE in before
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    info = dataset_info.load(out)
    assert sum(s.num_examples for s in info.splits["train"].shards) == TREE["train"]
    assert output_folder.LOCK_FILE not in os.listdir(out)


def test_a_killed_run_leaves_no_lock_that_stops_the_next(tree, tmp_path, capsys):
    out = str(tmp_path / "out")
    killed = _start(tree, out, "multi-process")
    _wait_mid_run(killed, out)
    os.killpg(killed.pid, signal.SIGKILL)  # no handler runs: the lock file stays, its flock does not
    killed.wait(timeout=60)
    deadline = time.monotonic() + 30
    while _alive(killed.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _alive(killed.pid) == []
    with open(os.path.join(out, output_folder.LOCK_FILE)) as f:
        assert f.read().strip() == str(killed.pid)
    assert output_folder.check(out).previous is None  # the leftovers are detrec's own
    assert cli.main(_args(tree, out, "--verify-images", "header", *MODES["in-process"])) == 0
    capsys.readouterr()
    left = os.listdir(out)
    assert output_folder.LOCK_FILE not in left and not [n for n in left if fs.is_temp(n)], left
    info = dataset_info.load(out)
    assert sum(s.num_examples for s in info.splits["train"].shards) == TREE["train"]
    assert cli.main(["inspect", out, "--quick"]) == 0
    capsys.readouterr()


def test_the_lock_file_is_detrecs_own_and_never_a_shard(tmp_path):
    """A folder holding only what a killed run leaves (its lock file, temporaries) is taken up;
    the lock is never taken for a shard, a temporary file or a user's file."""
    out = tmp_path / "out"
    out.mkdir()
    (out / output_folder.LOCK_FILE).write_text("12345\n")
    assert output_folder.check(str(out)).previous is None
    assert output_folder.is_detrec_name(output_folder.LOCK_FILE)
    assert not output_folder.is_shard_file(output_folder.LOCK_FILE) and not fs.is_temp(output_folder.LOCK_FILE)
    assert schema.parse_shard_name(output_folder.LOCK_FILE) is None


def test_an_object_store_output_warns_in_one_line_that_it_has_no_lock(synth_tree, capsys):
    from tests import object_store  # defining its FileSystem registers memobj://

    out = "memobj://bucket/fidelity-out"
    assert cli.main(["preprocess", "--input", synth_tree, "--output", out, "--verify-images", "header",
                     *MODES["in-process"]]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "no lock" in line]
    assert len(warnings) == 1 and out in warnings[0], err
    assert not any(output_folder.LOCK_FILE in name for name in object_store.OBJECTS)


# --- 19. the errors file's name, spelt once ---------------------------------------------------
def test_the_errors_file_name_is_spelt_only_in_the_schema():
    spelt = []
    for folder in ("core", "preprocess", "pipelines", "inspector", "train"):
        for dirpath, _, names in os.walk(os.path.join(REPO, folder)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    with open(path, encoding="utf-8") as f:
                        if re.search(r"""["']errors-["'{]""", f.read()):
                            spelt.append(os.path.relpath(path, REPO))
    assert spelt == [os.path.join("core", "schema.py")]
    assert output_folder.is_detrec_name(schema.errors_name("train"))
    assert output_folder.is_detrec_name(schema.errors_name("my.split-2"))
