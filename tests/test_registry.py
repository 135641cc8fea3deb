"""detrec.train.registry: every entry defines its protocol, the CLI reads the tables without
TensorFlow, names resolve through the tables only, and the one-function-per-job input API
takes a folder or a loaded split alike."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from detrec.core import dataset_info
from detrec.core.errors import UserError
from detrec.train import input as input_lib
from detrec.train import predict, registry
from detrec.train.input import common
from tests.test_input import SIZE, epoch, records_by_key, rows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def members(protocol) -> set[str]:
    """What a module must define to be an entry: the protocol's attributes and methods."""
    return {name for name in (*protocol.__annotations__, *vars(protocol)) if not name.startswith("_")}


@pytest.mark.parametrize("table,load,protocol", [(registry.TRANSFORMS, registry.transform, registry.Transform),
                                                  (registry.INPUT_LINES, registry.input_line, registry.InputLine),
                                                  (registry.TASKS, registry.task, registry.Task)])
def test_every_entry_defines_its_protocol(table, load, protocol):
    assert len(members(protocol)) >= 7
    for name, (module, _) in table.items():
        entry = load(name)
        assert entry.__name__ == module
        assert not members(protocol) - set(vars(entry)), f"{module} lacks {members(protocol) - set(vars(entry))}"


def test_unknown_names_are_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"preprocess must be one of \('inception', 'seed'\), got 'vgg'"):
        registry.transform("vgg")
    with pytest.raises(ValueError, match=r"decoder must be one of \('auto', 'dali', 'cpu'\), got 'gpu'"):
        registry.resolve_decoder("gpu")
    with pytest.raises(ValueError, match="decoder"):
        registry.input_line("auto")  # auto is resolved, never loaded
    with pytest.raises(ValueError, match=r"task must be one of \('classify', 'localize'\), got 'detect'"):
        registry.task("detect")


def test_auto_and_availability_go_through_the_table(monkeypatch):
    monkeypatch.setattr(common, "dali_available", lambda: False)
    with pytest.raises(UserError, match="decoder 'dali' needs nvidia-dali"):
        registry.resolve_decoder("dali")
    assert registry.resolve_decoder("auto") == "cpu" and registry.resolve_decoder("cpu") == "cpu"
    monkeypatch.setattr(common, "dali_available", lambda: True)
    monkeypatch.setattr(common, "local_gpu_count", lambda: 2)
    assert registry.resolve_decoder("auto") == "dali"  # the first line that wants this machine
    assert registry.portable_decoder() == "cpu"
    assert registry.input_line("dali").pipeline_device(None, 3) == 1  # round robin over the GPUs
    assert registry.input_line("dali").pipeline_device(0, 3) == 0  # asked for: kept
    assert registry.input_line("cpu").pipeline_device(None, 3) is None


def test_the_cli_lists_the_registries_without_tensorflow():
    code = ("import sys, argparse; from detrec.pipelines import train_cmd; p = argparse.ArgumentParser(); "
            "train_cmd.configure(p); a = {x.dest: x for x in p._actions}; "
            "print(list(a['decoder'].choices), list(a['preprocess'].choices), list(a['task'].choices)); "
            "print('tensorflow' in sys.modules); print(a['decoder'].help); print(a['preprocess'].help); "
            "print(a['task'].help)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    choices, imported, decoder_help, preprocess_help, task_help = out.stdout.strip().splitlines()
    assert choices == f"{['auto', *registry.INPUT_LINES]} {list(registry.TRANSFORMS)} {list(registry.TASKS)}"
    assert imported == "False"
    for table, text in ((registry.INPUT_LINES, decoder_help), (registry.TRANSFORMS, preprocess_help),
                        (registry.TASKS, task_help)):
        for name, (_, line) in table.items():
            assert f"{name}: {line}" in text


@pytest.mark.parametrize("preprocess", list(registry.TRANSFORMS))
def test_predict_is_the_evaluation_transform(dataset_dir, preprocess):
    """Each transform's predict side gives the pixels its tf.data evaluation gives."""
    records = records_by_key(dataset_dir, "val")
    for image, _, key in epoch(dataset_dir, "val", preprocess=preprocess)[:8]:
        got = predict.eval_image(tf.constant(records[key].encoded), SIZE, preprocess).numpy()
        assert got.dtype == image.dtype
        np.testing.assert_array_equal(got, image)


def test_a_loaded_split_and_a_config_give_what_the_folder_gives(dataset_dir):
    settings = dict(batch_size=8, image_size=SIZE, training=True, decoder="cpu", seed=4, with_keys=True)
    split = input_lib.split_shards(dataset_info.load(dataset_dir), dataset_dir, "train")
    config = input_lib.InputConfig(**{**settings, "seed": 9})
    by_folder = rows(iter(input_lib.make_dataset(dataset_dir, "train", **settings).take(3)))
    by_split = rows(iter(input_lib.make_dataset(split, config=config, seed=4).take(3)))  # settings replace fields
    for a, b in zip(by_folder, by_split, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    assert input_lib.epoch_plan(split, batch_size=8, training=True, decoder="cpu") == input_lib.epoch_plan(
        dataset_dir, "train", batch_size=8, training=True, decoder="cpu")
    with pytest.raises(ValueError, match="split 'val' given with a loaded split 'train'"):
        input_lib.make_dataset(split, "val", config=config)
    with pytest.raises(ValueError, match="needs the name of a split"):
        input_lib.epoch_plan(dataset_dir, batch_size=8, training=True)
