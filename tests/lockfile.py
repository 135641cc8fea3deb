"""The lock (locks/*.txt, written by `make lock`) as data, for the tests that hold the installed
environment and the packaging files (Dataflow requirements, Dockerfiles) to it."""

from __future__ import annotations

import importlib.metadata
import os
import re

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU, GPU = os.path.join(ROOT, "locks", "cpu.txt"), os.path.join(ROOT, "locks", "gpu.txt")
DATAFLOW = os.path.join(ROOT, "pipelines", "dataflow", "requirements.txt")
# Dataflow's workers: the Beam SDK image's Python on Linux x86-64 (docker/beam.Dockerfile).
WORKER_ENV = default_environment() | {"sys_platform": "linux", "platform_system": "Linux",
                                      "platform_machine": "x86_64", "python_version": "3.11",
                                      "python_full_version": "3.11.0", "implementation_name": "cpython",
                                      "platform_python_implementation": "CPython"}


def requirements(path: str) -> list[Requirement]:
    """Every requirement line of a requirements file (comments and `# via` notes dropped)."""
    with open(path, encoding="utf-8") as f:
        lines = (line.split("#", 1)[0].strip() for line in f)
        return [Requirement(line) for line in lines if line]


def pins(path: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """name -> the version pinned with ==, for each line whose marker holds in `env` (here by default).

    Raises AssertionError on a line that is not one exact pin.
    """
    out = {}
    for req in requirements(path):
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{path}: {req} is not pinned with =="
        if req.marker is None or req.marker.evaluate(env or default_environment()):
            out[canonicalize_name(req.name)] = specs[0].version
    return out


def closure(roots: list[str], env: dict[str, str]) -> set[str]:
    """Canonical names of `roots` (requirement strings) and all they pull in, read from the
    installed distributions' metadata, with markers (extras included) evaluated in `env`."""
    seen: set[str] = set()
    todo = [(Requirement(r), frozenset(Requirement(r).extras)) for r in roots]
    while todo:
        req, extras = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate(env | {"extra": e}) for e in extras | {""}):
            continue
        name = canonicalize_name(req.name)
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        wanted = frozenset(req.extras)
        for text in importlib.metadata.requires(req.name) or []:
            todo.append((Requirement(text), wanted))
    return {re.sub(r"\[.*\]$", "", key) for key in seen}
