"""Benchmarks, written as JSON: ``python -m noise_research.bench <name> [options]``.

They run from any directory: they build their configs with the tasks' own ``experiment_config``,
not from the files in ``configs/``; a relative ``--out`` is relative to the current directory. A
bad option stops the command before anything is compiled, with one line on stderr naming the
option, the value and what is allowed (``error: --size: config.data.crop_size = 5: not allowed;
it must be an integer >= 8``), and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from typing import NoReturn

from noise_research.config_schema import ConfigError

BENCHMARKS = {
    "halftone": "noise_research.bench.halftone",
    "classify": "noise_research.bench.classify",
    "input": "noise_research.bench.input",
    "gan": "noise_research.bench.gan",
}


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser that reports a mistake as one stderr line, ``error: <option>: ...``, and
    exit status 2 (the format of ``noise_research.main``), without the usage lines."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message.removeprefix('argument ')}\n")


def build_parser() -> argparse.ArgumentParser:
    """The command's parser: one subcommand per benchmark, with that benchmark's options."""
    parser = OneLineErrorParser(prog="python -m noise_research.bench", description=__doc__)
    subparsers = parser.add_subparsers(dest="name", metavar="benchmark", required=True)
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        module.add_arguments(subparsers.add_parser(name, help=module.__doc__.splitlines()[0]))
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Runs the benchmark ``argv`` names (default: the command line); a bad option exits with
    status 2 and one ``error:`` line (a config rule's :class:`ConfigError` included)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        importlib.import_module(BENCHMARKS[args.name]).run(args)
    except ConfigError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
