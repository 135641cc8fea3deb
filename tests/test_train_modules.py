"""The trainer's small parts on their own: the model dir's leftovers and resume check, the
checkpointed run state's format, and the import boundaries between detrec.train modules.

Fast (no training): the end-to-end behaviour is in test_train.py.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

from detrec.core import fs
from detrec.core.errors import UserError
from detrec.train import rundir
from detrec.train.state import BestRecord, EpochSums, RunState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "train")


# --- the model dir ------------------------------------------------------------------------
def test_prepare_removes_the_temporaries_of_killed_writes_and_nothing_else(tmp_path):
    model_dir = str(tmp_path / "m")
    keep = [os.path.join(model_dir, rundir.METRICS),
            os.path.join(model_dir, rundir.EXPORT, rundir.EXPORT_MODEL),
            rundir.keys_path(model_dir, 1, 0)]
    leftovers = [fs.temp_path(os.path.join(model_dir, rundir.RUN_CONFIG)),
                 fs.temp_path(os.path.join(model_dir, rundir.METRICS)),
                 fs.temp_path(os.path.join(model_dir, rundir.EXPORT, rundir.EXPORT_MODEL)) + ".keras",
                 fs.temp_path(os.path.join(model_dir, rundir.EXPORT, rundir.EXPORT_LABELS)),
                 fs.temp_path(rundir.keys_path(model_dir, 1, 0))]
    for path in keep + leftovers:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("x")
    os.makedirs(rundir.scratch_dir(model_dir, 1))
    wanted = {"model": "semi_alexnet", "num_classes": 3, "image_size": 64, "synsets": ["bg", "a", "b"]}
    with open(os.path.join(model_dir, rundir.RUN_CONFIG), "w") as f:
        json.dump(dict(wanted, epochs=1), f)  # a detrec run killed while rewriting it
    rundir.prepare(model_dir, wanted, chief=True)
    assert [p for p in leftovers if os.path.exists(p)] == []
    assert all(os.path.exists(p) for p in keep) and os.path.isdir(rundir.scratch_dir(model_dir, 1))
    with open(os.path.join(model_dir, rundir.RUN_CONFIG)) as f:
        assert json.load(f) == wanted


def test_a_worker_that_is_not_the_chief_leaves_the_dir_alone(tmp_path):
    model_dir = str(tmp_path / "m")
    os.makedirs(model_dir)
    leftover = fs.temp_path(os.path.join(model_dir, rundir.METRICS))
    open(leftover, "w").close()
    rundir.prepare(model_dir, {"model": "semi_alexnet"}, chief=False)
    assert os.listdir(model_dir) == [os.path.basename(leftover)]


def test_check_resumable_names_what_differs(tmp_path):
    wanted = {key: 1 for key in rundir.RESUME_KEYS} | {"synsets": ["a", "b"], "model": "semi_alexnet"}
    with pytest.raises(UserError, match="no run_config.json"):
        rundir.check_resumable(str(tmp_path), wanted)
    with open(tmp_path / rundir.RUN_CONFIG, "w") as f:
        json.dump(dict(wanted, seed=2, lr=0.5), f)
    with pytest.raises(UserError, match=r"a run with other settings \(seed: 2 there, 1 now\)"):
        rundir.check_resumable(str(tmp_path), wanted)
    with open(tmp_path / rundir.RUN_CONFIG, "w") as f:
        json.dump(dict(wanted, synsets=["a"]), f)
    with pytest.raises(UserError, match=r"another model \(synsets: 1 vs 2 classes\)"):
        rundir.check_resumable(str(tmp_path), wanted)
    with open(tmp_path / rundir.RUN_CONFIG, "w") as f:
        json.dump(dict(wanted, epochs=7, lr=0.5), f)  # not part of the identity
    rundir.check_resumable(str(tmp_path), wanted)


# --- the state inside checkpoints ---------------------------------------------------------
def test_run_state_keeps_the_checkpoint_format():
    """Checkpoints store the epoch's sums as the list "partial" (loss, correct, examples,
    seconds, input wait): what every earlier detrec wrote, so those still resume."""
    state = RunState()
    assert json.loads(state.serialize()) == {"epoch": 0, "position": 0, "total_steps": 0, "history": [],
                                             "partial": [0.0] * 5}
    stored = {"epoch": 1, "position": 3, "total_steps": 15, "history": [{"epoch": 1}],
              "partial": [6.0, 12.0, 24.0, 2.0, 0.5]}
    state.deserialize(json.dumps(stored).encode())
    assert (state.epoch, state.position, state.total_steps, state.history) == (1, 3, 15, [{"epoch": 1}])
    assert state.sums == EpochSums(loss=6.0, correct=12.0, examples=24.0, seconds=2.0, input_wait=0.5)
    assert (state.sums.mean_loss, state.sums.accuracy, state.sums.images_per_sec,
            state.sums.input_wait_fraction) == (0.25, 0.5, 12.0, 0.25)
    assert json.loads(state.serialize()) == stored


def test_best_record_prefers_top1_then_lower_loss():
    best = BestRecord()
    assert json.loads(best.serialize()) == {"epoch": 0, "val_top1": -1.0, "val_loss": float("inf")}
    best.deserialize('{"epoch": 2, "val_top1": 0.5, "val_loss": 1.0}')
    assert best.beaten_by(0.6, 9.0) and best.beaten_by(0.5, 0.9)
    assert not best.beaten_by(0.5, 1.0) and not best.beaten_by(0.4, 0.1)


# --- import boundaries --------------------------------------------------------------------
def _module_name(path: str) -> str:
    rel = os.path.relpath(path, TRAIN)[:-3].replace(os.sep, ".")
    rel = rel[:-len(".__init__")] if rel.endswith(".__init__") else ("" if rel == "__init__" else rel)
    return "detrec.train" + (f".{rel}" if rel else "")


def _train_import_graph() -> dict[str, set[str]]:
    """detrec.train* module -> the detrec.train* modules it imports, function-level imports included."""
    paths = {}
    for folder, _, files in os.walk(TRAIN):
        paths.update({_module_name(os.path.join(folder, f)): os.path.join(folder, f)
                      for f in files if f.endswith(".py")})

    def known(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in paths.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets.update(f"{node.module}.{a.name}" for a in node.names)
        graph[name] = {known(t) for t in targets} - {None, name}
    return graph


def test_no_import_cycle_among_train_modules():
    graph = _train_import_graph()
    assert "detrec.train.input.dali" in graph and "detrec.train.trainer" in graph
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join(path + (name,))
        if name not in done:
            for target in sorted(graph[name]):
                visit(target, path + (name,))
            done.add(name)

    for name in sorted(graph):
        visit(name, ())
    # The two input lines share detrec.train.input.common and never import each other.
    assert "detrec.train.input.tfdata" not in graph["detrec.train.input.dali"]
    assert "detrec.train.input.dali" not in graph["detrec.train.input.tfdata"]


def test_predict_reads_the_export_layout_without_the_trainer():
    code = ("import sys; import detrec.train.predict; "
            "print(sorted(m for m in sys.modules if m.startswith('detrec.train')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"')))
    assert "detrec.train.rundir" in loaded
    assert not loaded & {"detrec.train.trainer", "detrec.train.config", "detrec.train.data",
                         "detrec.train.export", "detrec.train.models"}
