"""The codebase's shape, checked from the source: one import name, no cycles, the dependency
rule, rooms of a livable size, no dependency that nothing uses.

The import graph is read with `ast` from every product module, function-level imports
included, so a lazy import cannot hide a cycle or a forbidden dependency.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# package -> folder, exactly as pyproject.toml's package-dir maps them
with open(os.path.join(REPO, "pyproject.toml"), "rb") as _f:
    PYPROJECT = tomllib.load(_f)
PACKAGE_DIRS: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]
PARTS = ("core", "preprocess", "train", "inspector", "pipelines")
MAX_LINES = 500


def product_modules() -> dict[str, str]:
    """detrec module name -> source file, for every module of the distribution."""
    out = {}
    for package, folder in PACKAGE_DIRS.items():
        base = os.path.join(REPO, folder)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d != "__pycache__" and
                           os.path.join(dirpath, d) not in {os.path.join(REPO, f) for f in PACKAGE_DIRS.values()}]
            rel = os.path.relpath(dirpath, base)
            prefix = package if rel == "." else f"{package}.{rel.replace(os.sep, '.')}"
            for name in filenames:
                if name.endswith(".py"):
                    out[prefix if name == "__init__.py" else f"{prefix}.{name[:-3]}"] = os.path.join(dirpath, name)
    return out


def imports_of(module: str, path: str) -> set[str]:
    """Every module name `path` imports, anywhere in the file (relative imports resolved)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = product_modules()


def detrec_graph() -> dict[str, set[str]]:
    return {m: {i for i in imports_of(m, p) if i in MODULES and i != m} for m, p in MODULES.items()}


def part_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PARTS else None


def test_every_part_is_found():
    assert {part_of(m) for m in MODULES} >= set(PARTS)
    assert len(MODULES) > 30


def test_every_package_is_listed_for_the_wheel():
    """pyproject lists packages by hand (discovery would sweep in tests/): none may be missing."""
    packages = {m for m, p in MODULES.items() if p.endswith("__init__.py")}
    assert packages == set(PYPROJECT["tool"]["setuptools"]["packages"])


def test_no_import_cycle():
    graph = detrec_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            # importing a.b.c runs a and a.b first: an edge into the package's own __init__
            # is not a cycle unless the __init__ imports back.
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_dependency_rule():
    """core depends on nothing of ours; preprocess, train and the inspector only on core;
    only pipelines composes them."""
    allowed = {"core": {"core"}, "preprocess": {"core", "preprocess"}, "train": {"core", "train"},
               "inspector": {"core", "inspector"}, "pipelines": set(PARTS)}
    for module, deps in detrec_graph().items():
        part = part_of(module)
        if part is None:
            continue
        wrong = sorted(d for d in deps if part_of(d) not in allowed[part] | {None})
        assert not wrong, f"{module} ({part}) imports {wrong}"


def test_core_imports_neither_beam_nor_tensorflow():
    """Statically (only fs's remote backends reach for whichever the process already runs)
    and at run time, in a fresh interpreter that imports every core module."""
    for module, path in MODULES.items():
        if part_of(module) != "core" or module == "detrec.core.fs":
            continue
        heavy = sorted(i for i in imports_of(module, path) if i.split(".")[0] in ("tensorflow", "apache_beam", "keras"))
        assert not heavy, f"{module} imports {heavy}"
    core = [m for m in MODULES if part_of(m) == "core"]
    code = (f"import sys; import {', '.join(core)}; "
            "bad = [m for m in ('tensorflow', 'apache_beam', 'keras') if m in sys.modules]; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_every_module_says_its_job():
    missing = sorted(m for m, p in MODULES.items() if not ast.get_docstring(ast.parse(open(p, encoding="utf-8").read())))
    assert not missing, f"modules without a docstring: {missing}"


def test_no_module_over_500_lines():
    sizes = {m: sum(1 for _ in open(p, encoding="utf-8")) for m, p in MODULES.items()}
    big = {m: n for m, n in sizes.items() if n > MAX_LINES}
    assert not big, big


def test_every_required_dependency_is_imported():
    """A required dependency is installed on every Dataflow worker: each must be used."""
    import_names = {"apache-beam": "apache_beam", "google-crc32c": "google_crc32c", "Pillow": "PIL"}
    used = {i.split(".")[0] for m, p in MODULES.items() for i in imports_of(m, p)}
    for requirement in PYPROJECT["project"]["dependencies"]:
        name = requirement.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip()
        assert import_names.get(name, name) in used, f"{name} is required but no module imports it"


def test_module_names_do_not_shadow_the_standard_library():
    stdlib = sys.stdlib_module_names
    clashes = sorted(m for m in MODULES if m.rsplit(".", 1)[-1] in stdlib - {"graph"})
    assert not clashes, clashes


def _outside(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


CHECK = ("import importlib.util, sys; import detrec, detrec.core.schema, detrec.train, detrec.pipelines.cli; "
         "stray = [n for n in ('train', 'preprocess', 'pipelines', 'core', 'inspector') "
         "if importlib.util.find_spec(n) is not None]; assert not stray, stray; print(detrec.core.schema.__file__)")


def test_only_detrec_is_importable_from_outside_the_repo_editable():
    proc = _outside(CHECK)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == os.path.join(REPO, "core", "schema.py")


@pytest.mark.slow
def test_the_wheel_holds_only_detrec(tmp_path, repo_build):
    """Built as a wheel and installed on its own, only `detrec` is importable."""
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), REPO], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("detrec-*.whl")
    import zipfile

    tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"detrec", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}, tops
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    proc = _outside(CHECK, PYTHONPATH=str(site))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(site / "detrec" / "core" / "schema.py")
