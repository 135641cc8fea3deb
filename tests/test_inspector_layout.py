"""`detrec inspect` of a local folder runs without importing TensorFlow (it reads records
through detrec.core alone), and reports who wrote the dataset. The inspector's place in the
import graph is checked with the rest in test_architecture.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from detrec.core import dataset_info, schema, tfrecord
from tests import image_factory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny_dataset(out: str) -> None:
    """A finished one-shard dataset written by hand through detrec.core (no preprocess run)."""
    records = [schema.Record(encoded=image_factory.jpeg(32, 24, seed=i), height=24, width=32, filename=f"{i}.JPEG",
                             source_id=str(i), objects=(schema.Box(0.1, 0.1, 0.6, 0.9, 1, "n1"),), class_label=1,
                             class_text="n1") for i in range(3)]
    data, index = b"", ""
    for record in records:
        payload = schema.encode(record)
        head, tail = tfrecord.frame(payload)
        index += tfrecord.index_line(len(data), len(payload))
        data += head + payload + tail
    name = schema.shard_name("train", 0, 1)
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
    with open(os.path.join(out, name + schema.INDEX_SUFFIX), "w") as f:
        f.write(index)
    shard = dataset_info.ShardInfo(name, len(records), len(data), hashlib.sha256(data).hexdigest())
    info = dataset_info.DatasetInfo(
        num_classes=2, classes=(dataset_info.ClassInfo(0, "background", "background"),
                                dataset_info.ClassInfo(1, "n1", "one")),
        splits={"train": dataset_info.SplitInfo(len(records), (shard,))}, source="hand-made")
    with open(dataset_info.path_in(out), "w") as f:
        f.write(info.to_json())


def test_inspecting_a_local_folder_imports_no_tensorflow(tmp_path):
    _tiny_dataset(str(tmp_path))
    code = ("import json, sys\n"
            "from detrec.pipelines import cli\n"
            f"rc = cli.main(['inspect', '--json', {str(tmp_path)!r}])\n"
            "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n"
            "sys.exit(rc)\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["splits"]["train"]["num_examples"] == 3
    dataset = report["datasets"][0]
    assert dataset["cross_check_ok"] and dataset["source"] == "hand-made"
    assert dataset["created_by"] == dataset_info.CREATED_BY  # from the typed info, as written


def test_created_by_of_a_real_dataset_is_reported(dataset_dir, capsys):
    from detrec.pipelines import cli

    assert cli.main(["inspect", "--quick", "--json", dataset_dir]) == 0
    report = json.loads(capsys.readouterr().out)
    with open(dataset_info.path_in(dataset_dir)) as f:
        written = json.load(f)["created_by"]
    assert written.startswith("detrec ") and report["datasets"][0]["created_by"] == written
