"""What every experiment driver shares: one run's workdir, its budget, training it resumably on one
device, its timing, the compilation cache, the common command-line arguments and the report files.

A driver (``experiments/nib_ablation.py``, ``gan_geometry.py``, ``dithering.py``,
``contamination.py``, ``colour_hiding.py``, ``semantic_synthesis.py``) runs a grid of (name, seed)
configs through the one train loop, each in ``OUT/runs/<name>/seed_<s>`` (`workdir_of`) with the
loop's checkpoints, so an interrupted experiment continues where it stopped; a finished run is
read back (`read_result`, or `final_records` for one trained by another process). Each driver keeps
its own configs, result fields, table and pictures.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from noise_research.tasks.base import Task
from noise_research.train.loop import LoopConfig, LoopResult, train
from noise_research.train.metric_writer import read_metrics

RESULT_FILE = "result.json"
"""A finished run's result row, in its workdir (written by the driver, read back on a rerun)."""
TIMING_FILE = "train_seconds.json"
"""``{"train_seconds": s}``: written only by the session that trained the run to its end."""


def workdir_of(out: str | pathlib.Path, name: str, seed: int) -> pathlib.Path:
    """The workdir of run (``name``, ``seed``) of the experiment writing to ``out``."""
    return pathlib.Path(out) / "runs" / name / f"seed_{seed}"


def set_key(config: dict[str, Any], dotted: str, value: Any) -> None:
    """``config[a][b][c] = value`` for ``dotted`` = ``"a.b.c"``; a KeyError names an unknown key
    (an override never adds a key)."""
    *sections, leaf = dotted.split(".")
    for section in sections:
        config = config[section]
    if leaf not in config:
        raise KeyError(f"no config key {dotted!r}")
    config[leaf] = value


def set_train_budget(
    config: dict[str, Any],
    *,
    seed: int,
    steps: int,
    progress: bool,
    evaluations: int = 1,
    checkpoints: int = 4,
    report_pictures: bool = False,
) -> None:
    """The ``train`` section of one run: ``seed``, ``steps``, an evaluation every
    ``steps // evaluations`` steps (the loop evaluates at the end in any case), a checkpoint every
    ``steps // checkpoints``, and no report pictures unless ``report_pictures`` (then the config's
    own report settings stay)."""
    config["train"].update(
        seed=seed,
        num_steps=steps,
        eval_every=max(1, steps // evaluations),
        checkpoint_every=max(1, steps // checkpoints),
        progress=progress,
    )
    if not report_pictures:
        config["train"].update(report_every=0, final_report=False)


def train_or_resume(
    task: Task, config: Mapping[str, Any], workdir: pathlib.Path
) -> tuple[LoopResult, float]:
    """Trains one run in ``workdir``, resumes it from its last checkpoint, or restores it when it
    is finished; returns the loop's result and the seconds the run's training took: measured by
    the session that trained it to its end (kept in `TIMING_FILE`), NaN for a run finished by
    another process. An interrupted run exits with the hint to rerun the same command."""
    workdir = pathlib.Path(workdir)
    started = time.perf_counter()
    # The experiments' networks are small and fill no accelerator: each run takes one device.
    loop = train(task, LoopConfig(**config["train"]), str(workdir), devices=jax.devices()[:1])
    if loop.preempted:
        raise SystemExit(f"interrupted during {workdir}: run the same command again to continue")
    timing_path = workdir / TIMING_FILE
    if not loop.already_finished:
        timing_path.write_text(json.dumps({"train_seconds": time.perf_counter() - started}))
    if not timing_path.exists():
        return loop, float("nan")
    return loop, float(json.loads(timing_path.read_text())["train_seconds"])


def final_records(
    workdir: pathlib.Path, step: int, splits: Iterable[str] = ("eval",)
) -> dict[str, float]:
    """The metrics a run trained by another process wrote at ``step``, each split's last record
    there, merged; exits naming the split that has none."""
    metrics: dict[str, float] = {}
    for split in splits:
        records = [r for r in read_metrics(str(workdir), split=split) if r["step"] == step]
        if not records:
            raise SystemExit(f"{workdir} is at step {step} but has no {split} record there")
        metrics.update(records[-1])
    return metrics


def read_result(workdir: pathlib.Path) -> dict[str, Any] | None:
    """A finished run's result row (`RESULT_FILE`), or None when there is none yet."""
    path = pathlib.Path(workdir) / RESULT_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_result(workdir: pathlib.Path, result: Mapping[str, Any]) -> dict[str, Any]:
    """Writes a run's result row to `RESULT_FILE` and returns it."""
    (pathlib.Path(workdir) / RESULT_FILE).write_text(json.dumps(result, indent=1))
    return dict(result)


def mean_of_measured(seconds: Sequence[float]) -> float:
    """The mean of the finite values (runs trained here); NaN when there are none."""
    measured = [s for s in seconds if np.isfinite(s)]
    return float(np.mean(measured)) if measured else float("nan")


def device_kind() -> str:
    """The device a run trains on (the first), as the tables' captions name it."""
    return str(jax.devices()[0].device_kind)


def use_compilation_cache(out: str | pathlib.Path) -> None:
    """Keeps compiled programs in ``out/xla_cache`` unless a cache directory is already set."""
    if not jax.config.jax_compilation_cache_dir:
        # The seeds of a variant compile the same programs: the later ones read them here.
        jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(out) / "xla_cache"))


def add_run_arguments(
    parser: argparse.ArgumentParser,
    *,
    per: str,
    seeds: int,
    out: str,
    steps_help: str,
    paper_help: str | None = None,
) -> None:
    """The arguments every driver takes: ``--seeds`` (0 … N−1 per ``per``), ``--out``, ``--steps``
    (0: the driver's default, ``steps_help``), ``--paper`` (only with ``paper_help``: the paper's
    sizes) and ``--no-progress`` (``args.progress``)."""
    parser.add_argument("--seeds", type=int, default=seeds, help=f"seeds 0 … N−1 per {per}")
    parser.add_argument("--out", default=out, help="output directory")
    parser.add_argument("--steps", type=int, default=0, help=steps_help)
    if paper_help is not None:
        parser.add_argument("--paper", action="store_true", help=paper_help)
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def add_subset_argument(parser: argparse.ArgumentParser, flag: str, names: Sequence[str]) -> None:
    """``flag`` (e.g. ``--variants``): a comma-separated subset of ``names``, all by default; read
    it with `chosen`."""
    parser.add_argument(
        flag, default=",".join(names), help=f"comma-separated subset of {', '.join(names)}"
    )


def chosen(text: str, names: Sequence[str]) -> list[str] | None:
    """The names ``text`` lists (comma-separated, in its order); None when it lists none or one
    not among ``names`` (the driver then refuses the command line, naming what is allowed)."""
    picked = [name for name in text.split(",") if name]
    return picked if picked and set(picked) <= set(names) else None


def add_halftone_size_arguments(parser: argparse.ArgumentParser) -> None:
    """The halftoning drivers' (``nib_ablation``, ``dithering``) ``--crop-size`` and ``--width``
    (0: the config's); `set_halftone_sizes` applies them."""
    parser.add_argument(
        "--crop-size", type=int, default=0, help="training crops and eval images (0: config's)"
    )
    parser.add_argument("--width", type=int, default=0, help="the ResNet's width (0: config's)")


def set_halftone_sizes(config: dict[str, Any], args: argparse.Namespace) -> None:
    """``--crop-size`` (training crops and eval images) and ``--width`` (the ResNet's) on a
    halftoning config, where given."""
    if args.crop_size:
        config["data"]["crop_size"] = args.crop_size
        config["eval"]["image_size"] = args.crop_size
    if args.width:
        config["model"]["width"] = args.width


def save_report(out: pathlib.Path, stem: str, report: Mapping[str, Any], markdown: str) -> None:
    """``out/<stem>.json`` (the report) and ``out/<stem>.md`` (the table), and prints the table."""
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text(markdown)
    print(markdown)
