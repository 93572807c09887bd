"""Benchmarks, written as JSON: ``python -m noise_research.bench <name> [options]``.

Run from the repository root (the benchmarks read the experiment configs in ``configs/``).
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "halftone": "noise_research.bench.halftone",
    "classify": "noise_research.bench.classify",
    "input": "noise_research.bench.input",
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m noise_research.bench", description=__doc__)
    subparsers = parser.add_subparsers(dest="name", required=True)
    for name, module_name in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        module.add_arguments(subparsers.add_parser(name, help=module.__doc__.splitlines()[0]))
    args = parser.parse_args()
    importlib.import_module(BENCHMARKS[args.name]).run(args)


if __name__ == "__main__":
    main()
