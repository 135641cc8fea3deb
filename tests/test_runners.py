"""`detrec preprocess` on runners other than the DirectRunner, short of running an engine (the
portable Job API run is tests/test_portable_runner.py): each runner's needs are checked before
anything starts, in one line; a runner detrec cannot run on, and any flag meant for another
runner than the one chosen, say why; local paths go only to workers that see them; a dry run
runs nothing; a runner without metrics still ends with exit 0 and a summary; the job's
progress is in Beam counters; and a late attempt of a shard loses nothing."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import fn_runner

from detrec.core import dataset_info, fs
from detrec.pipelines import cli
from detrec.pipelines.runners import dask, job_api
from detrec.preprocess import beam_compat, dofns, finalize, plan as planning, sources, vocab as vocab_lib
from detrec.preprocess.graph import BuildShards, JobConfig
from tests import image_factory
from tests.conftest import free_ports


def preprocess(capsys, tmp_path, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(["preprocess", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                   "--splits", "train", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error(rc: int, err: str) -> str:
    """The run's one error line (exit 2, no traceback)."""
    lines = [line for line in err.splitlines() if line.startswith("detrec preprocess: error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.fixture
def tree(tmp_path) -> str:
    """A folder-layout tree: 3 good images of 2 classes and one that does not decode."""
    for name, data in (("a/1.jpg", image_factory.jpeg(seed=1)), ("a/2.jpg", image_factory.jpeg(seed=2)),
                       ("b/3.jpg", image_factory.jpeg(seed=3)), ("b/bad.jpg", image_factory.truncated_jpeg())):
        path = tmp_path / "in" / "train" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return str(tmp_path / "in")


@pytest.fixture
def listening():
    """HOST:PORT of a socket that accepts connections (a stand-in job service or worker pool)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield f"localhost:{s.getsockname()[1]}"


def test_the_dask_runner_and_its_flags_are_refused_with_the_reason(capsys, tmp_path, tree):
    for argv in (["--runner=DaskRunner"], ["--runner", "apache_beam.runners.dask.dask_runner.DaskRunner"],
                 ["--dask_client_address=tcp://scheduler:8786"]):
        line = one_error(*preprocess(capsys, tmp_path, *argv)[::2])
        assert "DaskRunner" in line and "tagged outputs" in line and "PortableRunner" in line, line
    assert not os.path.exists(tmp_path / "out")


def test_the_dask_flags_named_are_those_of_beams_dask_options():
    """Dask is not installed with detrec, so its flags are listed by hand: against Beam's source."""
    import apache_beam

    source = open(os.path.join(os.path.dirname(apache_beam.__file__), "runners", "dask", "dask_runner.py")).read()
    assert set(dask.FLAGS) == set(re.findall(r"'--(dask_\w+)'", source))


@pytest.mark.parametrize("flag, runner", [("--flink_master=localhost:8081", "FlinkRunner"),
                                          ("--spark_master_url=spark://m:7077", "SparkRunner"),
                                          ("--prism_location=/opt/prism", "PrismRunner")])
def test_a_flag_for_another_runner_is_refused_not_ignored(capsys, tmp_path, tree, flag, runner):
    line = one_error(*preprocess(capsys, tmp_path, flag)[::2])
    assert f"option of the {runner}" in line and f"--runner {runner}" in line and "DirectRunner" in line, line


@pytest.mark.parametrize("runner, jar_flag", [("FlinkRunner", "--flink_job_server_jar"),
                                              ("SparkRunner", "--spark_job_server_jar")])
def test_a_jar_runner_without_java_or_its_jar_says_so_before_downloading(capsys, tmp_path, tree, monkeypatch,
                                                                         runner, jar_flag):
    tried = []
    monkeypatch.setattr(job_api, "downloadable", lambda url: tried.append(url) or "no route to host")
    monkeypatch.setattr(job_api.shutil, "which", lambda _name: None)
    cache = ["--jar_cache_dir", str(tmp_path / "jars")]
    line = one_error(*preprocess(capsys, tmp_path, f"--runner={runner}", *cache)[::2])
    assert "Java" in line and "--job_endpoint" in line and not tried, line  # no download tried without java

    monkeypatch.setattr(job_api.shutil, "which", lambda name: f"/usr/bin/{name}")
    line = one_error(*preprocess(capsys, tmp_path, f"--runner={runner}", *cache)[::2])
    assert "job-server" in line and "no route to host" in line and jar_flag in line, line
    assert tried and tried[0].endswith(".jar")

    jar = tmp_path / "jars" / os.path.basename(tried[0])  # in Beam's jar cache: found, nothing fetched
    jar.parent.mkdir()
    jar.write_bytes(b"PK")
    tried.clear()
    rc, out, err = preprocess(capsys, tmp_path, f"--runner={runner}", *cache, "--dry_run")
    assert rc == 0 and not tried and f"runner: {runner}" in out, err[-2000:]


def test_prism_without_its_binary_says_so(capsys, tmp_path, tree, monkeypatch):
    monkeypatch.setattr(job_api, "downloadable", lambda url: "name or service not known")
    from apache_beam.runners.portability.prism_runner import PrismJobServer

    monkeypatch.setattr(PrismJobServer, "BIN_CACHE", str(tmp_path / "no-cache"))
    line = one_error(*preprocess(capsys, tmp_path, "--runner=PrismRunner")[::2])
    assert "--prism_location" in line and "name or service not known" in line, line


def test_portable_runner_needs_a_job_service_and_workers_that_have_detrec(capsys, tmp_path, tree, listening):
    line = one_error(*preprocess(capsys, tmp_path, "--runner=PortableRunner")[::2])
    assert "needs --job_endpoint" in line
    nobody = f"localhost:{free_ports(1)[0]}"
    line = one_error(*preprocess(capsys, tmp_path, "--runner=PortableRunner", f"--job_endpoint={nobody}")[::2])
    assert f"no job service answers at --job_endpoint {nobody}" in line
    # Beam's default environment, its stock Docker image, has no detrec.
    line = one_error(*preprocess(capsys, tmp_path, "--runner=PortableRunner", f"--job_endpoint={listening}")[::2])
    assert "stock Docker image" in line and "docker/beam.Dockerfile" in line and "worker-pool" in line
    line = one_error(*preprocess(capsys, tmp_path, "--runner=PortableRunner", f"--job_endpoint={listening}",
                                 "--environment_type=EXTERNAL", f"--environment_config={nobody}")[::2])
    assert f"no worker pool answers at --environment_config {nobody}" in line
    rc, out, err = preprocess(capsys, tmp_path, "--runner=PortableRunner", f"--job_endpoint={listening}",
                              "--environment_type=EXTERNAL", f"--environment_config={listening}", "--dry_run")
    assert rc == 0 and "runner: PortableRunner" in out, err[-2000:]


@pytest.mark.parametrize("argv, why", [
    (["--runner=PortableRunner", "--job_endpoint=jobs.example:8099", "--environment_type=LOOPBACK"],
     "the job service at jobs.example:8099 runs the job on its own machines"),
    (["--runner=PortableRunner", "--job_endpoint=localhost:8099", "--sdk_container_image=detrec-beam:1"],
     "its SDK workers run in Docker containers"),
    (["--runner=PortableRunner", "--job_endpoint=localhost:8099", "--environment_type=EXTERNAL",
      "--environment_config=pool.example:50000"], "its SDK workers run at pool.example:50000"),
    (["--runner=FlinkRunner", "--flink_master=flink.example:8081", "--job_endpoint=localhost:8099",
      "--environment_type=EXTERNAL", "--environment_config=localhost:50000"], "its engine runs on a cluster"),
    (["--runner=SparkRunner", "--spark_master_url=spark://m:7077", "--job_endpoint=localhost:8099",
      "--environment_type=EXTERNAL", "--environment_config=localhost:50000"], "its engine runs on a cluster"),
])
def test_local_paths_go_only_to_workers_that_see_them(capsys, tmp_path, tree, monkeypatch, argv, why):
    monkeypatch.setattr(job_api, "answers", lambda address: True)
    line = one_error(*preprocess(capsys, tmp_path, *argv)[::2])
    assert f"--input {tree} is a local path, but {why}" in line and "--shared-filesystem" in line, line
    rc, out, err = preprocess(capsys, tmp_path, *argv, "--shared-filesystem", "--dry_run")
    assert rc == 0 and "dry run" in out, err[-2000:]


def test_a_local_job_service_with_local_workers_takes_local_paths(capsys, tmp_path, tree, listening):
    rc, out, err = preprocess(capsys, tmp_path, "--runner=PortableRunner", f"--job_endpoint={listening}",
                              "--environment_type=LOOPBACK", "--dry_run")
    assert rc == 0, err[-2000:]


@pytest.mark.parametrize("argv, says", [
    (["--runner=Fastest"], "Beam has no runner of that name; choose one of DataflowRunner, DirectRunner"),
    (["--runner=my.runners.Missing", "--shared-filesystem"], "cannot load it (No module named 'my')"),
    (["--runner=InteractiveRunner", "--shared-filesystem"], "cannot load it (Interactive runner not available"),
    (["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=docker"],
     "--environment_type docker: Beam takes DOCKER, PROCESS, EXTERNAL, LOOPBACK"),
    (["--runner=PrismRunner", "--prism_location=/no/such/prism"], "--prism_location /no/such/prism is no file"),
    (["--runner=FlinkRunner", "--flink_job_server_jar=/no/such.jar"], "--flink_job_server_jar names no file"),
])
def test_a_runner_or_runner_option_beam_cannot_use_is_one_line(capsys, tmp_path, tree, argv, says):
    assert says in one_error(*preprocess(capsys, tmp_path, *argv)[::2])


def test_a_dry_run_on_the_direct_runner_runs_nothing(capsys, tmp_path, tree):
    """Beam's --dry_run is Dataflow's: other runners ignore it and would run the whole job."""
    rc, out, err = preprocess(capsys, tmp_path, "--dry_run", "--direct_num_workers=1",
                              "--direct_running_mode=in_memory")
    assert rc == 0 and "runner: DirectRunner" in out and "WriteShards" in out, err[-2000:]
    assert not os.path.exists(tmp_path / "out")


def test_a_runner_without_metrics_ends_with_a_summary_of_what_is_known(capsys, tmp_path, tree):
    """A runner whose result has no metrics (as Beam's DaskRunner): exit 0, the summary from
    dataset_info, and a line saying the per-split seconds are not available."""
    rc, out, err = preprocess(capsys, tmp_path, "--runner=tests.test_runners.NoMetricsRunner",
                              "--shared-filesystem")
    assert rc == 0, err[-3000:]
    info = dataset_info.load(str(tmp_path / "out"))
    assert info.splits["train"].num_examples == 3 and info.splits["train"].num_errors == 1
    row = next(line for line in out.splitlines() if line.startswith("train "))
    assert row.split()[1:3] == ["3", "1"] and row.split()[6:8] == ["-", "-"], out
    assert "per-split seconds are not available from the tests.test_runners.NoMetricsRunner" in out
    assert "3 examples in" in out


class NoMetricsRunner(fn_runner.FnApiRunner):
    """Beam's in-process runner, with a result that has no metrics."""

    def run_pipeline(self, pipeline, options):
        result = super().run_pipeline(pipeline, options)

        def no_metrics():
            raise NotImplementedError("this runner has no metrics")

        result.metrics = no_metrics
        return result


def test_progress_is_counted_in_beam_metrics_per_split(tree, tmp_path):
    """listed, written and rejected images per split: what a runner's UI shows while the job
    runs, where the workers' log lines do not reach the launcher."""
    os.makedirs(tmp_path / "out")
    options = PipelineOptions(["--direct_num_workers=1", "--direct_running_mode=in_memory"])
    pipeline = beam.Pipeline(runner=beam_compat.local_runner(options), options=options)
    _ = pipeline | BuildShards(JobConfig(input=tree, output=str(tmp_path / "out"), splits=("train",),
                                         verify_images="full"))
    result = pipeline.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed
                for c in result.metrics().query(MetricsFilter().with_namespace(dofns.NAMESPACE))["counters"]}
    assert {k: counters.get(dofns.progress_metric("train", k)) for k in ("listed", "written", "rejected")} == {
        "listed": 4, "written": 3, "rejected": 1}


def one_shard(tree: str, tmp_path) -> tuple:
    """(output folder, the split's source, its one parsed shard plan, the vocabulary): what a
    WriteShard attempt takes, made by the job's own DoFns."""
    out = str(tmp_path / "out")
    os.makedirs(out)
    source = sources.resolve(tree, "train", "auto")
    plans = [p for p in dofns.ListAndAssign({"train": 1}, 1).process((tree, "train", "auto"))
             if isinstance(p, planning.ShardPlan)]
    *_, parsed = dofns.ParseShard(["train"]).process(plans[0], {"train": source})
    return out, source, parsed, sources.vocabulary(vocab_lib.from_synsets([]), {"train": source}, ["train"])


def test_a_late_attempt_of_a_shard_loses_nothing_when_finalize_took_its_temporary(tree, tmp_path, monkeypatch):
    """Two attempts of one shard (a runner's retry or backup): the first commits and the job
    finalizes, deleting every temporary file, while the second is between writing and
    committing. The second must end quietly, the dataset stay whole and no temporary remain."""
    out, source, parsed, vocab = one_shard(tree, tmp_path)
    late_ready, finalized = threading.Event(), threading.Event()
    real_crashpoint = dofns.crashpoint

    def pause_the_late_attempt(name):
        if name == "shard-written" and threading.current_thread().name == "late":
            late_ready.set()
            assert finalized.wait(60)
        real_crashpoint(name)

    monkeypatch.setattr(dofns, "crashpoint", pause_the_late_attempt)
    outcome = {}

    def late_attempt():
        try:
            outcome["results"] = [r for r in dofns.WriteShard(out, "full").process(parsed, vocab)
                                  if isinstance(r, dofns.ShardResult)]
        except BaseException as exc:  # noqa: BLE001 - the test reports it below
            outcome["error"] = exc

    late = threading.Thread(target=late_attempt, name="late")
    late.start()
    assert late_ready.wait(60)  # the late attempt has written its temporaries
    first = [r for r in dofns.WriteShard(out, "full").process(parsed, vocab) if isinstance(r, dofns.ShardResult)]
    assert any(fs.is_temp(n) for n in os.listdir(out))
    info = finalize.finalize(None, out, tree, ["train"], {}, None, vocab, {"train": source}, first, [])
    assert not any(fs.is_temp(n) for n in os.listdir(out))
    finalized.set()
    late.join(60)
    assert "error" not in outcome, outcome.get("error")
    assert [r.sha256 for r in outcome["results"]] == [r.sha256 for r in first]
    assert not any(fs.is_temp(n) for n in os.listdir(out))
    (shard,) = info.splits["train"].shards
    with open(os.path.join(out, shard.file), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == shard.sha256
    assert dataset_info.load(out).splits["train"].num_examples == 3


def test_a_late_attempt_still_fails_when_what_is_committed_is_not_its_shard(tree, tmp_path, monkeypatch):
    """Its temporary gone and other bytes under the shard's name: that is a real failure."""
    out, source, parsed, vocab = one_shard(tree, tmp_path)

    def lose_the_temporaries(name):
        if name == "shard-written":
            for n in os.listdir(out):
                if fs.is_temp(n):
                    os.remove(os.path.join(out, n))
            with open(os.path.join(out, parsed.key.name), "wb") as f:
                f.write(b"another shard")

    monkeypatch.setattr(dofns, "crashpoint", lose_the_temporaries)
    with pytest.raises(FileNotFoundError):
        list(dofns.WriteShard(out, "full").process(parsed, vocab))
