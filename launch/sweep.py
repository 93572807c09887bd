"""Runs one config over a grid of overrides, one workdir per grid point: here, or as a SLURM array.

    python launch/sweep.py configs/halftone/nib_resnet.py:demo runs/noise_sweep \\
        --grid model.nib.distribution=normal,uniform --grid model.nib.noise_scale=0.03,0.3
    python launch/sweep.py ... --parallel 2  # two points at a time on this machine
    python launch/sweep.py ... --print       # only print the commands
    python launch/sweep.py ... --slurm --slurm-option=--partition=gpu --slurm-option=--gpus=1
    python launch/sweep.py configs/positive_noise/digits.py:linear runs/pn_layer --grids-from layer

--grids-from NAME takes the --grid specs of the grid NAME from the config file's SWEEP_GRIDS, a
dict {name: [spec, ...]} (the file is imported for it); its axes come before those of --grid, and
both may be repeated.

Here, up to --parallel points run at once (default: one per GPU that `nvidia-smi -L` lists, else 1).
On a GPU machine each running point gets its own share of the GPUs through CUDA_VISIBLE_DEVICES; on
the CPU the points simply run side by side. A point's output goes to ROOT/<point>/sweep.log, and one
line per finished point gives its status and time. A failed point does not stop the others; the
sweep then exits with status 1 and lists the failed points.

--slurm writes ROOT/sweep.sbatch, a SLURM job array with one task per grid point (task k runs the
k-th command through srun; ROOT/points.txt lists task ids, points and commands), and submits it with
sbatch if sbatch is on PATH (with --print, or without sbatch, it prints the sbatch command instead).
Each --slurm-option becomes one `#SBATCH` line; an explicit --parallel N caps the number of array
tasks running at once. The job starts in the current directory, like the commands here.

The interpreter is $PYTHON if set, else the one running this script.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from types import FrameType


@dataclasses.dataclass(frozen=True)
class Point:
    """One grid point: its name (also its workdir's name), workdir and command line."""

    name: str
    workdir: str
    command: list[str]


class Stopped(Exception):
    """SIGTERM reached the sweep."""


def parse_grid(specs: list[str]) -> list[list[tuple[str, str]]]:
    """``["a.b=1,2", ...]`` -> one list of (key, value) pairs per axis; ValueError if malformed."""
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not key or not sep or not values:
            raise ValueError(f"--grid {spec!r}: expected key=v1,v2,...")
        axes.append([(key, value) for value in values.split(",")])
    return axes


def named_grids(config: str, names: list[str]) -> list[str]:
    """The --grid specs of the grids ``names`` in the SWEEP_GRIDS dict of ``config``'s file (its
    ``:argument`` ignored), in order; ValueError naming what is missing or malformed."""
    if not names:
        return []
    path = config.partition(":")[0]
    if not os.path.isfile(path):
        raise ValueError(f"--grids-from: no config file {path!r}")
    spec = importlib.util.spec_from_file_location("_sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    grids = getattr(module, "SWEEP_GRIDS", None)
    if not isinstance(grids, dict):
        raise ValueError(f"--grids-from: {path} defines no SWEEP_GRIDS dict {{name: [spec, ...]}}")
    specs = []
    for name in names:
        if name not in grids:
            raise ValueError(
                f"--grids-from {name}: {path}'s SWEEP_GRIDS has no grid {name!r}; it has: "
                + ", ".join(grids)
            )
        grid = grids[name]
        if not isinstance(grid, (list, tuple)) or not all(isinstance(s, str) for s in grid):
            raise ValueError(
                f"--grids-from {name}: {path}'s SWEEP_GRIDS[{name!r}] is not a list of specs"
            )
        specs += grid
    return specs


def grid_points(
    config: str, root: str, axes: list[list[tuple[str, str]]], python: str
) -> list[Point]:
    """Every combination of the axes' values (the last axis varies fastest)."""
    points = []
    for combination in itertools.product(*axes):
        name = "_".join(f"{key.split('.')[-1]}={value}" for key, value in combination) or "base"
        workdir = os.path.join(root, name)
        command = [
            python,
            "-m",
            "noise_research.main",
            f"--config={config}",
            f"--workdir={workdir}",
            *(f"--config.{key}={value}" for key, value in combination),
        ]
        points.append(Point(name, workdir, command))
    return points


def visible_gpus() -> list[str]:
    """The GPU ids a job may use: CUDA_VISIBLE_DEVICES's entries if it is set, else every GPU that
    ``nvidia-smi -L`` lists; none where nvidia-smi is missing or finds no GPU."""
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    count = sum(line.startswith("GPU ") for line in listing.stdout.splitlines())
    if listing.returncode != 0 or count == 0:
        return []
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [gpu.strip() for gpu in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if gpu.strip()]
    return [str(index) for index in range(count)]


def gpu_slots(parallel: int, gpus: list[str]) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES for each of ``parallel`` slots: an equal share of ``gpus`` each, or
    None (leave the environment alone) without GPUs."""
    if not gpus:
        return [None] * parallel
    if parallel > len(gpus):
        raise ValueError(f"--parallel {parallel}: more than the {len(gpus)} GPUs found")
    share = len(gpus) // parallel
    return [",".join(gpus[slot * share : (slot + 1) * share]) for slot in range(parallel)]


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped


def run_local(points: list[Point], slots: list[str | None]) -> list[tuple[Point, int]]:
    """Runs the points, one per free slot at a time; returns the failed ones with their status.

    SIGTERM or Ctrl-C stops starting points, passes SIGTERM to the running ones (which save a
    checkpoint) and waits for them before re-raising.
    """
    total = len(points)
    pending = list(points)
    free = list(range(len(slots)))
    running: dict[int, tuple[Point, subprocess.Popen, float]] = {}
    failed: list[tuple[Point, int]] = []
    finished = 0
    previous_handler = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        while pending or running:
            while pending and free:
                point, slot = pending.pop(0), free.pop(0)
                env = dict(os.environ)
                device_note = ""
                if slots[slot] is not None:
                    env["CUDA_VISIBLE_DEVICES"] = slots[slot]
                    device_note = f" on CUDA_VISIBLE_DEVICES={slots[slot]}"
                os.makedirs(point.workdir, exist_ok=True)
                log_path = os.path.join(point.workdir, "sweep.log")
                with open(log_path, "w") as log:
                    process = subprocess.Popen(
                        point.command,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
                running[slot] = (point, process, time.monotonic())
                print(f"start  {point.name}{device_note}: {shlex.join(point.command)}", flush=True)
            for slot, (point, process, started) in list(running.items()):
                status = process.poll()
                if status is None:
                    continue
                del running[slot]
                free.append(slot)
                finished += 1
                outcome = "ok" if status == 0 else f"FAILED (exit {status})"
                if status != 0:
                    failed.append((point, status))
                elapsed = time.monotonic() - started
                print(
                    f"[{finished}/{total}] {outcome} {point.name} in {elapsed:.1f}s "
                    f"(log: {os.path.join(point.workdir, 'sweep.log')})",
                    flush=True,
                )
            if running:
                time.sleep(0.1)
    except (Stopped, KeyboardInterrupt):
        print(
            f"sweep: stopping; SIGTERM to {len(running)} running point(s), "
            f"{len(pending)} not started",
            flush=True,
        )
        for _, process, _ in running.values():
            process.send_signal(signal.SIGTERM)
        for _, process, _ in running.values():
            process.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    return failed


def sbatch_script(points: list[Point], root: str, options: list[str], throttle: int | None) -> str:
    """A job array script: array task k runs ``srun`` + the k-th point's command."""
    array = f"0-{len(points) - 1}" + (f"%{throttle}" if throttle else "")
    output = os.path.join(os.path.abspath(root), "slurm-%A_%a.out")
    job_name = "sweep-" + os.path.basename(os.path.abspath(root))
    lines = [
        "#!/usr/bin/env bash",
        "# A grid sweep written by launch/sweep.py: array task k runs grid point k (points.txt).",
        f"#SBATCH --job-name={shlex.quote(job_name)}",
        f"#SBATCH --array={array}",
        f"#SBATCH --chdir={shlex.quote(os.getcwd())}",
        f"#SBATCH --output={shlex.quote(output)}",
        *(f"#SBATCH {option}" for option in options),
        "set -euo pipefail",
        'case "${SLURM_ARRAY_TASK_ID:?run this as a SLURM array task: sbatch THIS_SCRIPT}" in',
    ]
    for index, point in enumerate(points):
        lines += [
            f"  {index})",
            f"    echo {shlex.quote(f'grid point {index}: {point.name}')}",
            f"    srun {shlex.join(point.command)}",
            "    ;;",
        ]
    lines += [
        "  *)",
        f'    echo "no grid point $SLURM_ARRAY_TASK_ID (0-{len(points) - 1})" >&2',
        "    exit 2",
        "    ;;",
        "esac",
    ]
    return "\n".join(lines) + "\n"


def write_slurm(points: list[Point], root: str, options: list[str], throttle: int | None) -> str:
    """Writes ROOT/sweep.sbatch and ROOT/points.txt; returns the script's path."""
    os.makedirs(root, exist_ok=True)
    script = os.path.join(root, "sweep.sbatch")
    with open(script, "w") as f:
        f.write(sbatch_script(points, root, options, throttle))
    os.chmod(script, 0o755)
    with open(os.path.join(root, "points.txt"), "w") as f:
        for index, point in enumerate(points):
            f.write(f"{index}\t{point.name}\t{shlex.join(point.command)}\n")
    return script


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="the config file (with its :argument, if any)")
    parser.add_argument("root", help="one sub-directory per grid point is created here")
    parser.add_argument("--grid", action="append", default=[], help="key=v1,v2,... (repeatable)")
    parser.add_argument(
        "--grids-from",
        action="append",
        default=[],
        metavar="NAME",
        help="the grid NAME of the config file's SWEEP_GRIDS (repeatable; before --grid's axes)",
    )
    parser.add_argument("--print", action="store_true", help="print the commands, run nothing")
    parser.add_argument(
        "--parallel",
        type=int,
        default=None,
        metavar="N",
        help="points at once here (default: the GPU count, else 1); with --slurm, the most array "
        "tasks running at once (default: no limit)",
    )
    parser.add_argument(
        "--slurm", action="store_true", help="write ROOT/sweep.sbatch (a job array) and submit it"
    )
    parser.add_argument(
        "--slurm-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="an #SBATCH line for --slurm, e.g. --slurm-option=--partition=gpu (repeatable)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        axes = parse_grid(named_grids(args.config, args.grids_from) + args.grid)
    except ValueError as error:
        parser.error(str(error))
    if args.parallel is not None and args.parallel < 1:
        parser.error(f"--parallel {args.parallel}: must be at least 1")
    for option in args.slurm_option:
        if not option.startswith("-") or "\n" in option:
            parser.error(
                f"--slurm-option={option!r}: expected one sbatch option, e.g. --time=2:00:00"
            )
    if args.slurm_option and not args.slurm:
        parser.error("--slurm-option needs --slurm")
    python = os.environ.get("PYTHON") or sys.executable
    points = grid_points(args.config, args.root, axes, python)

    if args.slurm:
        script = write_slurm(points, args.root, args.slurm_option, args.parallel)
        submit = ["sbatch", script]
        print(f"wrote {script}: {len(points)} array tasks", flush=True)
        if args.print or shutil.which("sbatch") is None:
            print(f"submit with: {shlex.join(submit)}", flush=True)
            return 0
        return subprocess.run(submit, check=False).returncode

    if args.print:
        for point in points:
            print(shlex.join(point.command), flush=True)
        return 0

    gpus = visible_gpus()
    parallel = args.parallel or max(len(gpus), 1)
    try:
        slots = gpu_slots(parallel, gpus)
    except ValueError as error:
        parser.error(str(error))
    started = time.monotonic()
    try:
        failed = run_local(points, slots)
    except Stopped:
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    elapsed = time.monotonic() - started
    if failed:
        print(f"sweep: {len(failed)} of {len(points)} points failed:", flush=True)
        for point, status in failed:
            log = os.path.join(point.workdir, "sweep.log")
            print(f"  {point.name} (exit {status}, log: {log})", flush=True)
        return 1
    print(f"sweep: all {len(points)} points finished in {elapsed:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
