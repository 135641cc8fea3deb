"""Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE): runs `detrec preprocess` on Dataflow.

The template launcher calls this file with every template parameter as `--name=value` plus the
job's own Beam options (project, region, temp/staging locations, ...). Template parameter names
use underscores (`num_shards`), like Beam's options, while detrec's flags use hyphens
(`--num-shards`); this module renames them and hands everything to the same CLI a laptop uses,
so a template run and `detrec preprocess --runner DataflowRunner` build the same graph.

Parameter metadata for the console form lives next to this file, in metadata.json.
"""

from __future__ import annotations

import argparse
import sys

def detrec_flags() -> dict[str, str]:
    """Template parameter name -> `detrec preprocess` flag, read from the real parser."""
    from detrec.pipelines import preprocess_cmd

    parser = argparse.ArgumentParser(add_help=False)
    preprocess_cmd.configure(parser)
    flags = {}
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--"):
                flags[option[2:].replace("-", "_")] = option
    return flags


def translate(argv: list[str], flags: dict[str, str] | None = None) -> list[str]:
    """Launcher argv -> `detrec preprocess` argv (detrec flags renamed, Beam options untouched).

    Adds `--runner=DataflowRunner` when the launcher did not say, because detrec's default
    runner is the local DirectRunner.
    """
    flags = detrec_flags() if flags is None else flags
    out: list[str] = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name.startswith("--") and name[2:] in flags:
            out.append(f"{flags[name[2:]]}={value}" if eq else flags[name[2:]])
        else:
            out.append(arg)
    if not any(a == "--runner" or a.startswith("--runner=") for a in out):
        out.append("--runner=DataflowRunner")
    return out


def main(argv: list[str] | None = None) -> int:
    from detrec.pipelines import cli

    return cli.main(["preprocess", *translate(list(sys.argv[1:] if argv is None else argv))])


if __name__ == "__main__":
    sys.exit(main())
