"""Lints docker/*.Dockerfile, since no Docker engine is available to build them here.

What can break an image without anyone noticing: a COPY of a path that was renamed or that
.dockerignore keeps out of the build context, a base image tag that drifted from the versions
the lock (Dataflow needs the worker's Beam to equal the launcher's), an unpinned
`pip install`, and running as root.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import sys
import tomllib

import pytest
from packaging.requirements import Requirement

from tests import lockfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILES = {"beam": "docker/beam.Dockerfile", "train": "docker/train.Dockerfile"}


def instructions(path: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: continuations joined, comments dropped."""
    lines, current = [], ""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not current and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if current and line.lstrip().startswith("#"):
                continue  # a comment inside a continued instruction
            if line.endswith("\\"):
                current += line[:-1] + " "
                continue
            lines.append(current + line)
            current = ""
    assert not current, f"{path}: ends inside a line continuation"
    out = []
    for line in lines:
        keyword, _, rest = line.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


def build_args(instrs: list[tuple[str, str]]) -> dict[str, str]:
    args = {}
    for keyword, rest in instrs:
        if keyword == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value.strip('"')
    return args


def stages(instrs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Instructions grouped by build stage (each starts at a FROM)."""
    out: list[list[tuple[str, str]]] = []
    for keyword, rest in instrs:
        if keyword == "FROM":
            out.append([])
        if out:
            out[-1].append((keyword, rest))
    return out


def final_base(path: str) -> str:
    instrs = instructions(path)
    return substitute(stages(instrs)[-1][0][1].split()[0], build_args(instrs))


def pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def dockerignore_patterns() -> list[str]:
    path = os.path.join(ROOT, ".dockerignore")
    with open(path, encoding="utf-8") as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = rel.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
            excluded = not negate
    return excluded


def copy_sources(rest: str) -> tuple[list[str], bool]:
    """Sources of a COPY/ADD and whether it copies from another image/stage (`--from=`)."""
    tokens = shlex.split(rest)
    from_other = any(t.startswith("--from=") for t in tokens)
    paths = [t for t in tokens if not t.startswith("--")]
    return paths[:-1], from_other


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_every_copy_source_exists_and_is_in_the_build_context(name):
    path = DOCKERFILES[name]
    patterns = dockerignore_patterns()
    copies = [rest for kw, rest in instructions(path) if kw in ("COPY", "ADD")]
    local = [src for rest in copies for src in copy_sources(rest)[0] if not copy_sources(rest)[1]]
    assert local, f"{path} copies nothing from the repository"
    for src in local:
        assert os.path.exists(os.path.join(ROOT, src)), f"{path}: COPY source {src!r} does not exist in the repo"
        assert not ignored(src, patterns), f"{path}: COPY source {src!r} is excluded by .dockerignore"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_every_package_folder_reaches_the_image(name):
    """`pip install .` in the image needs every folder pyproject.toml maps into `detrec`."""
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        folders = set(tomllib.load(f)["tool"]["setuptools"]["package-dir"].values())
    copied = {src.rstrip("/") for kw, rest in instructions(DOCKERFILES[name]) if kw == "COPY"
              for src in copy_sources(rest)[0]}
    assert folders <= copied, f"{DOCKERFILES[name]} does not copy {sorted(folders - copied)}"


def test_dockerignore_keeps_local_state_out():
    patterns = dockerignore_patterns()
    for private in (".venv", ".git", "tests", "demo_out", "some_dataset/train-00000-of-00001.tfrecord",
                    "pipelines/__pycache__/cli.cpython-311.pyc"):
        assert ignored(private, patterns), f"{private} would be sent to the Docker daemon"


def test_beam_image_is_the_pinned_beam_sdk():
    image = final_base(DOCKERFILES["beam"])
    match = re.fullmatch(r"apache/beam_python(\d+)\.(\d+)_sdk:(\d+\.\d+\.\d+)", image)
    assert match, f"beam.Dockerfile must build on apache/beam_pythonX.Y_sdk:VERSION, not {image}"
    py, beam_version = f"{match[1]}.{match[2]}", match[3]
    # Dataflow runs the launcher's graph with the worker's SDK: they must be the same release,
    # the locked one (CI's; requirements.txt, which the image installs, is held to it too).
    locked = lockfile.pins(lockfile.CPU)["apache-beam"]
    assert beam_version == locked, f"{image}: Beam {beam_version}, but the lock has {locked}"
    requires_python = pyproject()["project"]["requires-python"]
    assert Requirement(f"python{requires_python}").specifier.contains(f"{py}.0"), (
        f"{image}: Python {py} is outside requires-python {requires_python}")


def test_beam_workers_start_with_detrecs_malloc_settings():
    """Workers started by any runner from this image get what malloc_arenas sets for the
    DirectRunner's (the launcher's environment reaches only its own children)."""
    from detrec.preprocess import malloc_arenas

    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(rest for kw, rest in instructions(DOCKERFILES["beam"])
                                                     if kw == "ENV")))
    assert {v: env.get(v) for v, _, _ in malloc_arenas.SETTINGS} == {
        v: str(value) for v, _, value in malloc_arenas.SETTINGS}


def test_beam_image_carries_the_flex_template_launcher():
    instrs = instructions(DOCKERFILES["beam"])
    launchers = [rest for kw, rest in instrs if kw == "COPY" and "python_template_launcher" in rest]
    assert launchers, "beam.Dockerfile lacks /opt/google/dataflow/python_template_launcher"
    py = re.search(r"beam_python(\d+)\.(\d+)_sdk", final_base(DOCKERFILES["beam"]))
    assert f"python{py[1]}{py[2]}-template-launcher-base" in launchers[0], "launcher and SDK Python differ"
    env = " ".join(rest for kw, rest in instrs if kw == "ENV")
    py_file = re.search(r"FLEX_TEMPLATE_PYTHON_PY_FILE=(\S+)", env)
    assert py_file, "FLEX_TEMPLATE_PYTHON_PY_FILE is not set"
    workdir_src = "/opt/detrec/src/"
    assert py_file[1].startswith(workdir_src)
    assert os.path.isfile(os.path.join(ROOT, py_file[1][len(workdir_src):])), py_file[1]


def test_train_image_is_the_pinned_tensorflow_gpu_image_with_pinned_dali():
    path = DOCKERFILES["train"]
    image = final_base(path)
    match = re.fullmatch(r"tensorflow/tensorflow:(\d+\.\d+\.\d+)-gpu", image)
    assert match, f"train.Dockerfile must build on tensorflow/tensorflow:VERSION-gpu, not {image}"
    tf_version = match[1]
    locked = lockfile.pins(lockfile.GPU)
    assert tf_version == locked["tensorflow"], f"{image}: TF {tf_version}, the gpu lock has {locked['tensorflow']}"
    dali = build_args(instructions(path)).get("DALI_VERSION")
    assert dali, "train.Dockerfile must pin ARG DALI_VERSION"
    for package in ("nvidia-dali-cuda120", "nvidia-dali-tf-plugin-cuda120"):
        assert dali == locked[package], f"DALI {dali}, the gpu lock has {package} {locked[package]}"
    runs = " ".join(rest for kw, rest in instructions(path) if kw == "RUN")
    # Everything else detrec pulls in is held to the gpu lock.
    assert re.search(r"pip install -c locks/gpu\.txt \.", runs), "the train image does not install within locks/gpu.txt"
    # The plugin compiles against the installed TF: it must come after it, without isolation.
    assert re.search(r"--no-build-isolation\s+\"?nvidia-dali-tf-plugin-cuda120==\$\{DALI_VERSION\}", runs)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_every_image_reference_has_an_explicit_tag(name):
    instrs = instructions(DOCKERFILES[name])
    args = build_args(instrs)
    images = [rest.split()[0] for kw, rest in instrs if kw == "FROM"]
    images += [t.split("=", 1)[1] for kw, rest in instrs if kw == "COPY"
               for t in shlex.split(rest) if t.startswith("--from=")]
    for image in (substitute(i, args) for i in images):
        name_part, _, tag = image.rpartition(":")
        # A version or date tag (2.77.0, 2.21.0-gpu, 20230622_RC00), not a moving one (latest, latest-gpu).
        assert name_part and "/" not in tag and re.match(r"\d", tag), f"{image}: pin a version tag"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_every_pip_install_is_pinned(name):
    path = DOCKERFILES[name]
    instrs = instructions(path)
    args = build_args(instrs)
    commands = [c for kw, rest in instrs if kw == "RUN" for c in re.split(r"&&|;", substitute(rest, args))]
    installs = [shlex.split(c) for c in commands if re.search(r"\bpip\s+install\b", c)]
    assert installs, f"{path} installs nothing with pip"
    for tokens in installs:
        rest = tokens[tokens.index("install") + 1:]
        i = 0
        while i < len(rest):
            token = rest[i]
            if token in ("-r", "-c", "--requirement", "--constraint"):
                req_file = rest[i + 1]
                assert_pinned_file(os.path.join(ROOT, req_file), path)
                i += 2
                continue
            if not token.startswith("-") and token != ".":
                assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][\w.]*", token), (
                    f"{path}: `pip install {token}` is not pinned with ==")
            i += 1


def assert_pinned_file(req_path: str, dockerfile: str) -> None:
    assert os.path.isfile(req_path), f"{dockerfile}: {req_path} does not exist"
    with open(req_path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                req = Requirement(line)
                assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", (
                    f"{req_path}: {line!r} is not pinned with ==")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_runs_as_a_non_root_user_it_creates(name):
    final = stages(instructions(DOCKERFILES[name]))[-1]
    users = [(i, rest.split(":")[0]) for i, (kw, rest) in enumerate(final) if kw == "USER"]
    assert users, f"{DOCKERFILES[name]}: no USER in the final stage, the container would run as root"
    index, user = users[-1]
    assert user not in ("root", "0"), f"{DOCKERFILES[name]} ends as {user}"
    created = any(kw == "RUN" and re.search(rf"useradd\b.*\b{re.escape(user)}\b", rest)
                  for kw, rest in final[:index])
    assert created, f"{DOCKERFILES[name]}: USER {user} is never created"


def test_linter_catches_a_broken_dockerfile(tmp_path, monkeypatch):
    """The lint must be able to fail: a Dockerfile with each mistake is rejected."""
    bad = tmp_path / "docker"
    bad.mkdir()
    (bad / "bad.Dockerfile").write_text(
        "FROM tensorflow/tensorflow:latest-gpu\n"
        "COPY no_such_dir /src\n"
        "RUN pip install lxml \\\n && true\n"
    )
    (tmp_path / ".dockerignore").write_text("*\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    monkeypatch.setitem(DOCKERFILES, "bad", "docker/bad.Dockerfile")
    for check in (test_every_copy_source_exists_and_is_in_the_build_context,
                  test_every_image_reference_has_an_explicit_tag,
                  test_every_pip_install_is_pinned,
                  test_runs_as_a_non_root_user_it_creates):
        with pytest.raises(AssertionError):
            check("bad")

