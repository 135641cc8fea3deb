"""PATH arguments -> the datasets and shard files to read, and what each shard should be.

A PATH is a dataset directory, a shard file or a glob, local or remote; all of them must lie in
one dataset folder (a directory given, or the folder holding a shard): one inspection reports
one dataset, its splits, classes and expected counts, and several are refused with a UserError
that says to inspect them one at a time. Every shard found is a
`Target` carrying its split and, when a `dataset_info.json` lists it, the `ShardInfo` it must
match, so reading and cross-checking need no second look at the folder. What cannot be
resolved (missing path, unlistable folder, missing or unlisted shard, malformed
dataset_info.json) becomes a `Problem` here and resolution goes on with the rest.

Paths go through `detrec.core.fs` only: resolving a local folder imports no TensorFlow.
`dataset_info.json` is validated once, by `detrec.core.dataset_info`; what is checked here is
its content against the folder (a split's count against its shards', listed against present).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from detrec.core import dataset_info, fs, schema
from detrec.core.dataset_info import ClassInfo, DatasetInfo, ShardInfo
from detrec.core.errors import UserError, one_line
from detrec.inspector.problem import Problem

UNNAMED_SPLIT = "(unnamed)"  # the split of a shard whose file name says none


@dataclasses.dataclass(frozen=True)
class Target:
    """One shard file to read, and what dataset_info.json says it should be (if anything).

    Attributes:
      path: the shard file.
      split: its split, from dataset_info.json or else its file name.
      expected: its dataset_info.json entry; None when no dataset_info.json lists it.
      num_classes: classes a label may name (for --verify); None when not known.
      labelled: whether its split's records have a class (dataset_info.json's word); None when
        not known.
    """

    path: str
    split: str
    expected: ShardInfo | None = None
    num_classes: int | None = None
    labelled: bool | None = None


@dataclasses.dataclass
class Dataset:
    """A dataset directory given (or found beside a given shard) and its shards.

    Attributes:
      dir: the directory, without a trailing slash.
      info: its dataset_info.json; None when absent or malformed (then not cross-checked).
      shards: the targets in it, including listed shards that turned out to be missing.
    """

    dir: str
    info: DatasetInfo | None
    shards: list[Target] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Resolution:
    """What `resolve` found: datasets, shard targets (each once, in order), problems, notes,
    the class vocabulary (id -> ClassInfo) from dataset_info.json or labels.txt, and the one
    dataset folder the PATHs lie in with its dataset_info.json (None: absent or malformed)."""

    folder: str | None = None
    info: DatasetInfo | None = None
    datasets: list[Dataset] = dataclasses.field(default_factory=list)
    targets: list[Target] = dataclasses.field(default_factory=list)
    problems: list[Problem] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    classes: dict[int, ClassInfo] = dataclasses.field(default_factory=dict)


def resolve(paths: Sequence[str]) -> Resolution:
    """Turns PATH arguments into datasets and shard targets, reporting what cannot be read.

    Args:
      paths: dataset directories, shard files or glob patterns, local or remote.

    Returns:
      The resolution; its `problems` list every PATH or listed shard that cannot be read.

    Raises:
      UserError: the PATHs lie in more than one folder. Reporting several datasets as one would
        merge their splits and classes; each is inspected on its own instead.
    """
    resolver = _Resolver()
    for path in paths:
        resolver.add(path)
    folders = list(resolver.folders.values())
    if len(folders) > 1:
        shown = ", ".join(folders[:3]) + (f" and {len(folders) - 3} more" if len(folders) > 3 else "")
        raise UserError(f"the PATHs lie in {len(folders)} folders ({shown}); detrec inspect reports one "
                        "dataset at a time: run it once per dataset folder")
    if folders:
        resolver.out.folder = folders[0]
        resolver.out.info = resolver.info_of(folders[0])
    return resolver.out


def read_labels_txt(text: str) -> list[ClassInfo]:
    """`id<TAB>synset<TAB>name` lines (vocab.labels_txt) -> classes; unreadable lines skipped."""
    return [c for c in map(labels_line, text.lstrip("\ufeff").splitlines()) if c is not None]


def labels_line(line: str) -> ClassInfo | None:
    """One labels.txt line as a class (`id<TAB>synset<TAB>name`, or space-separated, a missing
    name being the synset); None when it is not one."""
    parts = line.split("\t", 2) if "\t" in line else line.split(None, 2)
    if len(parts) < 2 or not parts[0].strip().isdigit():
        return None
    synset = parts[1].strip()
    return ClassInfo(int(parts[0]), synset, (parts[2] if len(parts) > 2 else synset).strip())


def split_of(path: str) -> str:
    """The split a shard's file name says (`train-00000-of-00004.tfrecord` -> train)."""
    parsed = schema.parse_shard_name(fs.basename(path))
    return parsed[0] if parsed else UNNAMED_SPLIT


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _key(path: str) -> str:
    """The same file or folder for every spelling of it (trailing slash, relative, through a link)."""
    return path.rstrip("/") if fs.is_url(path) else os.path.realpath(path)


class _Resolver:
    """Adds PATH arguments one by one to `out`, each shard once, each folder's info read once."""

    def __init__(self) -> None:
        self.out = Resolution()
        self._seen: set[str] = set()
        self._info_cache: dict[str, DatasetInfo | None] = {}
        self._labels_count: dict[str, int] = {}
        self.folders: dict[str, str] = {}  # _key -> the folder as first named

    def info_of(self, directory: str) -> DatasetInfo | None:
        return self._info_cache.get(directory)

    def _in_folder(self, directory: str) -> None:
        self.folders.setdefault(_key(directory), directory)

    def _problem(self, file: str, reason: str) -> None:
        self.out.problems.append(Problem(file, reason))

    def add(self, path: str) -> None:
        if _is_glob(path):
            try:
                matches = fs.glob(path)
            except fs.access_errors() as exc:  # gs:// auth/network errors
                self._problem(path, f"cannot list: {one_line(exc)}")
                return
            if not matches:
                self._problem(path, "no file matches this pattern")
            for match in matches:
                self._add_one(match)
        else:
            self._add_one(path)

    def _add_one(self, path: str) -> None:
        try:
            exists = fs.exists(path)
            is_dir = exists and fs.isdir(path)
        except fs.access_errors() as exc:
            self._problem(path, f"cannot access: {one_line(exc)}")
            return
        if not exists:
            self._problem(path, "no such file or directory")
        elif is_dir:
            self._add_dataset(path.rstrip("/") or "/")
        else:
            self._add_shard(path)

    def _target(self, target: Target) -> None:
        key = _key(target.path)
        if key not in self._seen:
            self._seen.add(key)
            self.out.targets.append(target)

    def _load_info(self, directory: str) -> DatasetInfo | None:
        """dataset_info.json of `directory`, None when absent; a broken one is a Problem."""
        if directory not in self._info_cache:
            info = None
            path = dataset_info.path_in(directory)
            try:
                if fs.exists(path):
                    info = DatasetInfo.from_json(fs.read_bytes(path), path)
            except UserError as exc:  # malformed: from_json says what, and names the file
                reason = str(exc).removeprefix(path + ": ")  # ...which the Problem names too
                self._problem(path, f"{reason}; not cross-checked")
            except fs.access_errors() as exc:  # unreadable file
                self._problem(path, f"cannot read: {one_line(exc)}; not cross-checked")
            if info is not None:
                for c in info.classes:
                    self.out.classes.setdefault(c.id, c)
            else:
                self._load_labels(directory)
            self._info_cache[directory] = info
        return self._info_cache[directory]

    def _load_labels(self, directory: str) -> None:
        """Class names (and the class count for --verify) from labels.txt, when there is one."""
        path = fs.join(directory, schema.LABELS_FILE)
        try:
            if fs.exists(path):
                found = read_labels_txt(fs.read_bytes(path).decode("utf-8", "replace"))
                for c in found:
                    self.out.classes.setdefault(c.id, c)
                if found:
                    self._labels_count[directory] = max(c.id for c in found) + 1
        except fs.access_errors() as exc:
            self.out.notes.append(f"{path}: unreadable ({one_line(exc)}); class names come from the records")

    def _add_dataset(self, directory: str) -> None:
        if any(_key(d.dir) == _key(directory) for d in self.out.datasets):
            return
        self._in_folder(directory)
        info = self._load_info(directory)
        try:
            names = fs.listdir(directory)
        except fs.access_errors() as exc:
            self._problem(directory, f"cannot list: {one_line(exc)}")
            return
        shard_names = [n for n in names if n.endswith(schema.SHARD_SUFFIX)]
        leftovers = [n for n in names if fs.is_temp(n)]
        if leftovers:
            self.out.notes.append(f"{directory}: {len(leftovers)} temporary file(s) left by an interrupted job, "
                                  f"e.g. {leftovers[0]}")
        info_path = dataset_info.path_in(directory)
        dataset = Dataset(directory, info)
        self.out.datasets.append(dataset)
        if info is None:
            if not fs.exists(info_path):
                self._problem(directory, f"no {schema.DATASET_INFO}: not a finished detrec dataset "
                                         f"(inspecting its {len(shard_names)} shard file(s) anyway)"
                              if shard_names else
                              f"no {schema.DATASET_INFO} and no *{schema.SHARD_SUFFIX} files: not a detrec dataset")
            for name in shard_names:
                target = Target(fs.join(directory, name), split_of(name), None, self._labels_count.get(directory))
                dataset.shards.append(target)
                self._target(target)
            return
        listed = self._add_listed(dataset, info)
        for name in shard_names:
            if name not in listed:
                self._problem(fs.join(directory, name),
                              f"unlisted shard: not in {info_path} (left over from another run?)")

    def _add_listed(self, dataset: Dataset, info: DatasetInfo) -> set[str]:
        """Targets for the shards dataset_info.json lists; returns their file names."""
        directory = dataset.dir
        info_path = dataset_info.path_in(directory)
        listed = set()
        for split, entry in sorted(info.splits.items()):
            if entry.num_examples != entry.listed_examples:
                self._problem(info_path, f"split {split}: num_examples {entry.num_examples} but its "
                                         f"shards list {entry.listed_examples}")
            for shard in entry.shards:
                listed.add(shard.file)
                path = fs.join(directory, shard.file)
                target = Target(path, split, shard, info.num_classes, entry.labelled)
                dataset.shards.append(target)
                try:
                    exists = fs.exists(path)
                except fs.access_errors() as exc:
                    self._problem(path, f"cannot access: {one_line(exc)}")
                    continue
                if not exists:
                    if shard.num_examples or shard.num_bytes:
                        self._problem(path, f"missing: listed in {schema.DATASET_INFO} with "
                                            f"{shard.num_examples} examples")
                    continue
                self._target(target)
        return listed

    def _add_shard(self, path: str) -> None:
        directory = fs.dirname(path)
        self._in_folder(directory)
        info = self._load_info(directory)
        if info is None:
            self._target(Target(path, split_of(path), None, self._labels_count.get(directory)))
            return
        found = info.shard_of(fs.basename(path))
        if found is not None:
            split, shard = found
            self._target(Target(path, split, shard, info.num_classes, info.splits[split].labelled))
            return
        self._problem(path, f"unlisted shard: not in {dataset_info.path_in(directory)}")
        self._target(Target(path, split_of(path), None, info.num_classes))
