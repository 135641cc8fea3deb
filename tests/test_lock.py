"""The lock is what CI tests and what every packaging file installs: the environment holds
exactly locks/cpu.txt (no package more, none at another version), the gpu lock agrees with it,
and both satisfy pyproject.toml. The packaging files are checked against the lock in
test_dataflow.py and test_docker.py."""

from __future__ import annotations

import importlib.metadata
import os
import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests import lockfile

with open(os.path.join(lockfile.ROOT, "pyproject.toml"), "rb") as f:
    PROJECT = tomllib.load(f)["project"]


def makefile_extras(profile: str) -> list[str]:
    with open(os.path.join(lockfile.ROOT, "Makefile"), encoding="utf-8") as f:
        match = re.search(rf"^EXTRAS_{profile}\s*:=\s*(.+)$", f.read(), re.M)
    assert match, f"Makefile sets no EXTRAS_{profile}"
    return match[1].split()


def test_the_environment_is_exactly_the_cpu_lock():
    locked = lockfile.pins(lockfile.CPU)
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    installed.pop("detrec")
    wrong = {n: (installed.get(n), v) for n, v in locked.items() if installed.get(n) != v}
    assert not wrong, f"installed vs locked: {wrong}"
    extra = sorted(set(installed) - set(locked))
    assert not extra, f"installed but not locked: {extra}"


def test_the_dali_plugin_built_against_the_locked_tensorflow_loads():
    """Installed is not enough: a plugin built against another TensorFlow fails to load, and the
    DALI tests would then skip (tests/conftest.py) instead of running."""
    from detrec.train import input as input_lib

    assert input_lib.dali_available(), "nvidia.dali.plugin.tf does not load: run `make install` again"


def test_the_gpu_lock_shares_every_version_with_the_cpu_lock():
    cpu, gpu = lockfile.pins(lockfile.CPU), lockfile.pins(lockfile.GPU)
    differ = {n: (cpu[n], gpu[n]) for n in set(cpu) & set(gpu) if cpu[n] != gpu[n]}
    assert not differ, differ
    # The one swap between them: TensorFlow's CPU build for its CUDA build and its libraries.
    assert "tensorflow-cpu" in cpu and "tensorflow" not in cpu
    assert gpu["tensorflow"] == cpu["tensorflow-cpu"]
    assert any(n.startswith("nvidia-cudnn") for n in gpu)


def test_each_lock_satisfies_pyproject_with_the_makefiles_extras():
    for profile, path in (("cpu", lockfile.CPU), ("gpu", lockfile.GPU)):
        locked = lockfile.pins(path)
        extras = makefile_extras(profile)
        assert set(extras) <= set(PROJECT["optional-dependencies"]), extras
        wanted = PROJECT["dependencies"] + [d for e in extras for d in PROJECT["optional-dependencies"][e]]
        for req in map(Requirement, wanted):
            name = canonicalize_name(req.name)
            assert name in locked, f"{path} lacks {req}"
            assert req.specifier.contains(locked[name], prereleases=True), f"{path}: {name} {locked[name]} is not {req}"


def test_every_lock_line_is_one_exact_pin():
    for path in (lockfile.CPU, lockfile.GPU, lockfile.DATAFLOW):
        every = lockfile.pins(path, env=None)
        assert len(every) >= 100, f"{path} pins only {len(every)} packages: not a full closure"
