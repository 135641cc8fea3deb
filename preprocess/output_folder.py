"""What is already in `--output`, and what a run may delete or replace there.

detrec never deletes or overwrites a file it did not write. A folder is writable when it is
empty or new, when it holds a detrec dataset (a dataset_info.json that detrec can read), or
when it holds only what an interrupted detrec run leaves (shards, their .idx, labels.txt,
errors-<split>.jsonl and detrec's own temporary files, with at least one shard or temporary
file among them). Anything else is refused before the job starts, with one line that names
a file that is not detrec's. The cleanup at the end (finalize) then only ever touches files
of those detrec names.
"""

from __future__ import annotations

import dataclasses

from detrec.core import dataset_info, fs, schema
from detrec.core.dataset_info import DatasetInfo
from detrec.core.errors import UserError

_ERRORS_PREFIX, _ERRORS_SUFFIX = "errors-", ".jsonl"


def is_shard_file(name: str) -> bool:
    """A shard or its DALI index, by detrec's naming."""
    base = name[: -len(schema.INDEX_SUFFIX)] if name.endswith(schema.INDEX_SUFFIX) else name
    return schema.parse_shard_name(base) is not None


def is_detrec_name(name: str) -> bool:
    """A name detrec preprocess writes in its output folder."""
    return (is_shard_file(name) or fs.is_temp(name)
            or name in (schema.DATASET_INFO, schema.LABELS_FILE)
            or (name.startswith(_ERRORS_PREFIX) and name.endswith(_ERRORS_SUFFIX)))


@dataclasses.dataclass(frozen=True)
class OutputFolder:
    """The state of an output folder before a run: its previous dataset, if it holds one."""

    path: str
    previous: DatasetInfo | None = None


def check(path: str) -> OutputFolder:
    """Raises UserError unless a run may write into `path` (see the module docstring)."""
    if not fs.exists(path):
        return OutputFolder(path)
    if not fs.isdir(path):
        raise UserError(f"--output {path} is a file; pass a folder")
    names = fs.listdir(path)
    if not names:
        return OutputFolder(path)
    if schema.DATASET_INFO in names:
        try:
            previous = dataset_info.load(path)
        except UserError as exc:
            raise UserError(f"--output {path} holds a {schema.DATASET_INFO} detrec cannot read ({exc}); "
                            "it is not a detrec dataset: pass a new or empty folder") from None
        return OutputFolder(path, previous)
    foreign = [n for n in names if not is_detrec_name(n)]
    if foreign or not any(is_shard_file(n) or fs.is_temp(n) for n in names):
        example = (foreign or names)[0]
        raise UserError(f"--output {path} is not empty and not a detrec dataset (it holds {example!r}); "
                        "detrec writes only into a new or empty folder or one of its own datasets")
    return OutputFolder(path)
