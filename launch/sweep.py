"""Runs one config over a grid of overrides, one workdir per point, sequentially or printed.

    python launch/sweep.py configs/halftone/nib_resnet.py:demo runs/noise_sweep \
        --grid model.nib.distribution=normal,uniform --grid model.nib.noise_scale=0.03,0.3
    python launch/sweep.py ... --print     # only print the commands (e.g. to feed a scheduler)
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import subprocess
import sys


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("config")
    parser.add_argument("root", help="one sub-directory per grid point is created here")
    parser.add_argument("--grid", action="append", default=[], help="key=v1,v2,... (repeatable)")
    parser.add_argument("--print", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args()
    axes = []
    for spec in args.grid:
        key, sep, values = spec.partition("=")
        if not sep or not values:
            parser.error(f"--grid {spec!r}: expected key=v1,v2,...")
        axes.append([(key, value) for value in values.split(",")])
    for point in itertools.product(*axes) if axes else [()]:
        name = "_".join(f"{key.split('.')[-1]}={value}" for key, value in point) or "base"
        command = [
            sys.executable,
            "-m",
            "noise_research.main",
            f"--config={args.config}",
            f"--workdir={os.path.join(args.root, name)}",
            *(f"--config.{key}={value}" for key, value in point),
        ]
        print(shlex.join(command), flush=True)
        if not args.print:
            subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
