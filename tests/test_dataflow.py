"""`detrec preprocess` on Dataflow, checked without a cloud: `--dry_run` builds and validates the
real job graph (DataflowRunner, gs:// input and output, no credentials) in both packaging modes,
through the very launch script and Flex Template entry point the docs give; bad Dataflow flags
fail before anything is submitted, with one line; and the packaging files cannot drift from the
CLI or from the versions CI tests with.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib

import pytest
from detrec.pipelines import preprocess_cmd, cli
from detrec.pipelines.dataflow import main as flex_main
from tests import lockfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATAFLOW = os.path.join(ROOT, "pipelines", "dataflow")
PROJECT, REGION, BUCKET = "detrec-ci", "us-central1", "detrec-ci-bucket"
IMAGE = f"{REGION}-docker.pkg.dev/{PROJECT}/detrec/detrec-beam:0.1.0"
GS_IN, GS_OUT = f"gs://{BUCKET}/ILSVRC", f"gs://{BUCKET}/datasets/det-v1"
DATAFLOW_FLAGS = ["--runner", "DataflowRunner", "--project", PROJECT, "--region", REGION]


def offline_env(tmp_path) -> dict[str, str]:
    """This environment minus any Google credentials or gcloud configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUDSDK_", "GCLOUD"))}
    env["CLOUDSDK_CONFIG"] = str(tmp_path / "no-gcloud-config")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


@pytest.mark.parametrize("mode", ["setup", "image"])
def test_launch_script_dry_run_builds_the_dataflow_graph_without_credentials(mode, tmp_path):
    env = offline_env(tmp_path) | {
        "PYTHON": sys.executable, "PROJECT": PROJECT, "REGION": REGION, "BUCKET": BUCKET,
        "INPUT": GS_IN, "OUTPUT": GS_OUT, "MODE": mode, "IMAGE": IMAGE,
    }
    proc = subprocess.run(
        ["bash", os.path.join(DATAFLOW, "launch.sh"), "--num-shards", "train=8,val=2", "--dry_run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dry run: pipeline graph built and validated" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert_would_run(proc.stdout, {
        "setup": "an sdist of ./setup.py; pip install -r pipelines/dataflow/requirements.txt",
        "image": f"the container image {IMAGE}"}[mode])


def assert_would_run(out: str, shipped: str) -> None:
    """The dry run's report: Dataflow runs the whole job graph, and its workers get `shipped`."""
    lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in out.splitlines()
             if line.startswith("  ") and ":" in line}
    assert lines["runner"] == "DataflowRunner", out
    steps = lines["steps"].split(", ")
    for step in ("ListPairAssign", "ParseAnnotations", "WriteShards", "WriteDatasetInfo"):
        assert step in steps, out
    assert lines["workers get"] == shipped, out


def test_flex_template_entry_point_dry_run(capsys):
    """The launcher's argv (underscored template parameters + Beam options) builds the graph."""
    rc = flex_main.main([
        f"--input={GS_IN}", f"--output={GS_OUT}", "--num_shards=train=8,val=2",
        "--verify_images=header", "--target_shard_mb=64", f"--synset_map=gs://{BUCKET}/map_det.txt",
        f"--project={PROJECT}", f"--region={REGION}", f"--temp_location=gs://{BUCKET}/tmp",
        f"--staging_location=gs://{BUCKET}/staging", f"--sdk_container_image={IMAGE}", "--dry_run",
    ])
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    assert "dry run: pipeline graph built and validated" in out.out
    assert_would_run(out.out, f"the container image {IMAGE}")


def test_flex_translation_renames_detrec_flags_only():
    argv = ["--input=gs://b/in", "--num_shards=train=8", "--target_shard_mb", "64", "--synset_map=gs://b/m.txt",
            "--labels=team=vision", "--temp_location=gs://b/tmp", "--num_workers=3"]
    assert flex_main.translate(argv) == [
        "--input=gs://b/in", "--num-shards=train=8", "--target-shard-mb", "64", "--synset-map=gs://b/m.txt",
        "--labels=team=vision", "--temp_location=gs://b/tmp", "--num_workers=3", "--runner=DataflowRunner",
    ]
    assert flex_main.translate(["--runner=DirectRunner"]) == ["--runner=DirectRunner"]


def preprocess_flags() -> dict[str, argparse.Action]:
    parser = argparse.ArgumentParser(add_help=False)
    preprocess_cmd.configure(parser)
    return {opt: a for a in parser._actions for opt in a.option_strings if opt.startswith("--")}


def test_flex_metadata_matches_the_cli():
    with open(os.path.join(DATAFLOW, "metadata.json"), encoding="utf-8") as f:
        metadata = json.load(f)
    assert metadata["name"] and metadata["description"]
    params = {p["name"]: p for p in metadata["parameters"]}
    flags = flex_main.detrec_flags()
    actions = preprocess_flags()
    # One template parameter per detrec option, each naming a real flag.
    assert {flags[name] for name in params} == set(actions)
    allowed_keys = {"name", "label", "helpText", "isOptional", "regexes", "paramType", "customMetadata"}
    param_types = {"DEFAULT", "TEXT", "GCS_READ_BUCKET", "GCS_WRITE_BUCKET", "GCS_READ_FILE",
                   "GCS_WRITE_FILE", "GCS_READ_FOLDER", "GCS_WRITE_FOLDER"}
    for name, param in params.items():
        assert set(param) <= allowed_keys, f"{name}: unknown keys {set(param) - allowed_keys}"
        assert param["label"] and param["helpText"] and param["paramType"] in param_types
        action = actions[flags[name]]
        # Required exactly when the CLI requires it.
        assert param.get("isOptional", False) is (not action.required), name
        regexes = [re.compile(r) for r in param.get("regexes", [])]
        assert regexes, f"{name}: no validation regex"
        good = [action.default] if action.default not in (None, "") else []
        good += list(action.choices or [])
        for value in good:
            assert all(r.fullmatch(str(value)) for r in regexes), f"{name}: rejects the CLI's own {value!r}"
    examples = {"input": (GS_IN, "/local/ILSVRC"), "output": (GS_OUT, "out"),
                "num_shards": ("train=1024,val=64", "train=0"), "synset_map": ("gs://b/map_det.txt", "map_det.txt"),
                "verify_images": ("header", "none"), "target_shard_mb": ("128", "big"),
                "splits": ("train,val", "train;val"), "layout": ("coco", "kitti")}
    for name, (ok, bad) in examples.items():
        regexes = [re.compile(r) for r in params[name]["regexes"]]
        assert all(r.fullmatch(ok) for r in regexes), f"{name} rejects {ok!r}"
        assert not all(r.fullmatch(bad) for r in regexes), f"{name} accepts {bad!r}"


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    rc = cli.main(["preprocess", *argv])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, names",
    [
        ([f"--input={GS_IN}", f"--output={GS_OUT}", *DATAFLOW_FLAGS, f"--sdk_container_image={IMAGE}"],
         "--temp_location"),
        ([f"--input={GS_IN}", f"--output={GS_OUT}", *DATAFLOW_FLAGS, "--temp_location=/tmp/beam",
          f"--sdk_container_image={IMAGE}"], "--temp_location"),
        ([f"--input={GS_IN}", "--output=/tmp/detrec-out", *DATAFLOW_FLAGS, f"--temp_location=gs://{BUCKET}/tmp",
          f"--sdk_container_image={IMAGE}"], "--output"),
        (["--input=/data/ILSVRC", f"--output={GS_OUT}", *DATAFLOW_FLAGS, f"--temp_location=gs://{BUCKET}/tmp",
          f"--sdk_container_image={IMAGE}"], "--input"),
        ([f"--input={GS_IN}", f"--output={GS_OUT}", *DATAFLOW_FLAGS, f"--temp_location=gs://{BUCKET}/tmp"],
         "--setup_file"),
    ],
    ids=["no-temp-location", "local-temp-location", "local-output", "local-input", "no-packaging"],
)
def test_bad_dataflow_options_fail_before_submission_with_one_line(capsys, argv, names):
    rc, err = run_cli(capsys, *argv, "--dry_run")
    errors = [line for line in err.splitlines() if line.startswith("detrec preprocess: error:")]
    assert rc == 2, err[-2000:]
    assert len(errors) == 1 and names in errors[0], err[-2000:]
    assert "Traceback" not in err


def test_worker_requirements_are_the_locked_closure_of_detrec_with_tensorflow_cpu():
    """Workers install requirements.txt: it must be what CI tests (the lock's versions), and all
    of it (detrec's runtime and cpu extra with everything they pull in on a Linux worker)."""
    worker = lockfile.pins(lockfile.DATAFLOW, lockfile.WORKER_ENV)
    locked = lockfile.pins(lockfile.CPU, lockfile.WORKER_ENV)
    differ = {n: (v, locked.get(n)) for n, v in worker.items() if locked.get(n) != v}
    assert not differ, f"requirements.txt vs locks/cpu.txt: {differ}"
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    # Workers may import TensorFlow (tf.io.gfile, the decode check for a JPEG libjpeg warns about): the cpu extra too.
    needed = lockfile.closure(project["dependencies"] + project["optional-dependencies"]["cpu"], lockfile.WORKER_ENV)
    assert needed == set(worker), (f"requirements.txt lacks {sorted(needed - set(worker))}, "
                                   f"has more: {sorted(set(worker) - needed)}")


def test_setup_shim_stages_every_package(tmp_path, repo_build):
    """`--setup_file ./setup.py` ships an sdist: it must hold all code and the Dataflow files."""
    proc = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (sdist,) = tmp_path.glob("detrec-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("detrec/__init__.py", "core/schema.py", "preprocess/dofns.py", "preprocess/graph.py", "pipelines/preprocess_cmd.py",
                   "pipelines/dataflow/main.py", "pipelines/dataflow/metadata.json",
                   "pipelines/dataflow/requirements.txt", "train/__init__.py", "pyproject.toml"):
        assert needed in names, f"sdist lacks {needed}"
    # setuptools adds tests/test_*.py to an sdist by default (not installed); nothing local beyond.
    assert not any(n.startswith((".venv/", ".git/", "demo_out/")) or n.endswith(".tfrecord") for n in names)
