"""What detrec knows of one Beam runner (the registry is in __init__)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

from apache_beam.options.pipeline_options import PipelineOptions

Paths = Mapping[str, str]  # flag -> the path given (--input, --output, --synset-map)


def _nothing(_options: PipelineOptions, _paths: Paths) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class Runner:
    """What detrec knows of one Beam runner."""

    name: str                                   # as Beam spells it in --runner
    aliases: tuple[str, ...] = ()               # other --runner values that mean it
    check: Callable[[PipelineOptions, Paths], None] = _nothing
    # Why its workers may not see this machine's files ("" = they do): local --input and
    # --output are then refused unless --shared-filesystem says they see them all the same.
    elsewhere: Callable[[PipelineOptions], str] = lambda _options: ""
    refused: str = ""                           # why detrec does not run on it ("" = it does)
    flags: tuple[str, ...] = ()                 # its own options' flag names, without dashes
    dry_run: bool = False                       # Beam's --dry_run validates a submission to it
