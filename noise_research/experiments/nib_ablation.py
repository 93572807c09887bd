"""The NIB paper's noise-mode ablation (section 3.2, "What role is the noise map?", Figure 4): the
halftoning ResNet with no NIB and with each NIB variant, tone PSNR mean ± std over seeds.

    python -m noise_research.experiments.nib_ablation --seeds 3 --out DIR [--steps N]
    python -m noise_research.experiments.nib_ablation --paper --seeds 3 --out DIR   # accelerator

The paper's definitions (section 3.2):

    "we take the Stationary noise generation from Normal distribution N(0.0, 0.3) as the reference
    group (S-N-0.3), and further construct four control groups: dynamic noise from N(0.0, 0.3)
    (D-N-0.3), stationary noise from N(0.0, 0.03) (S-N-0.03), and stationary noise from uniform
    distribution U(−0.3, 0.3) (S-U-0.3). Here, dynamic noise means freshly generating a noise map
    for each input and stationary noise means using a fixed noise map for all input data. In
    addition, a regular grid with alternative black and white lines, is compared as an baseline of
    disobeying the principle of non-periodic repeating unit."

    "we may introduce the perturbation by an impulse noise map B with each element sampled from
    Bernoulli distribution, and then it turns into Ĩ = f1(I·B) + f2(I·(1 − B)). Also, the
    perturbation even could be performed in the feature domain only, i.e. Ĩ = f1(I) + f2(N) […]
    they are evaluated in Figure 4 as two variants of new paradigms (D-B-0.5 and F-D-N-0.3)"

    "The yellow dash line denotes the model accuracy without NIB applied. The short lines above
    the bars exhibit the standard deviations."

`VARIANTS` maps each name to the config overrides (every NIB field set explicitly, so no variant
leans on a default; ``kernel_size`` stays 3 for all):

| variant      | model.first_layer | combine   | distribution | noise_scale | stationary |
|--------------|-------------------|-----------|--------------|-------------|------------|
| no-NIB       | conv              | –         | –            | –           | –          |
| S-N-0.3      | nib               | symmetric | normal       | 0.3 (std)   | True       |
| D-N-0.3      | nib               | symmetric | normal       | 0.3 (std)   | False      |
| S-N-0.03     | nib               | symmetric | normal       | 0.03 (std)  | True       |
| S-U-0.3      | nib               | symmetric | uniform      | 0.3 (±)     | True       |
| regular-grid | nib               | symmetric | grid         | 0.3 (±)     | True       |
| D-B-0.5      | nib               | impulse   | bernoulli    | 0.5 (P(1))  | False      |
| F-D-N-0.3    | nib               | feature   | normal       | 0.3 (std)   | False      |

"symmetric" is f1(I + N) + f2(I − N), "impulse" f1(I·B) + f2(I·(1 − B)), "feature" f1(I) + f2(N)
(`layers.nib`). N(0.0, 0.3) is read as standard deviation 0.3 on data in [−1, 1] (DESIGN.md). The
regular grid (`layers.noise_maps`, "grid") is rows alternating +a and −a, period 2; the paper gives
no amplitude: a = 0.3 gives the grid the reference's standard deviation, so only periodicity
differs from S-N-0.3. "Dynamic" is a fresh map per example and step (and a fixed eval draw).

Each (variant, seed) is one run of the halftoning task (``configs/halftone/nib_resnet.py:demo``, or
the paper's sizes with ``--paper``, with the variant's overrides and ``train.seed`` = the seed; the
training comics are the same for every run) in ``DIR/runs/<variant>/seed_<s>``, with the loop's
checkpoints: an interrupted experiment continues where it stopped, and a finished run is read back
from its ``result.json`` (or, for a run trained elsewhere, from its metrics file). Each run is
evaluated once, at its end, on the task's eval set (held-out comics and constant-gray patches):
``comic/tone_psnr`` and ``constant/tone_psnr`` (dB between the blurred halftone and the blurred
gray). Writes ``DIR/ablation.md`` and ``ablation.json`` (the table, every run's values, the budget)
and ``ablation.png`` (Figure 4's layout: a bar group per NIB variant, comic and constant, error
bars = std, dashed lines = the no-NIB results).

**CPU budget** (the default): the demo sizes (ResNet of 10 blocks at width 16, 64² crops, batch
4 + 4 constant gray, Adam 1e-3) for ``DEFAULT_CPU_STEPS`` = 150 steps, a final evaluation on 16
images of 64², no report pictures. Measured on 2 CPU cores (shared with other jobs, load ≈ 3),
150 steps at 2–5 steps/s: a variant's first seed takes 64–71 s (it compiles), the others 33–44 s
(they read the programs from the persistent compilation cache ``DIR/xla_cache``), 53 s per run on
average; the full grid (8 variants × 3 seeds) takes about 8 × 70 s + 16 × 45 s ≈ 21 minutes
(≤ 30). The measured runs, seeds 0 and 1: no-NIB comic 16.9 ± 0.5 dB, constant 14.7 ± 0.0 dB (flat
output on flat input); D-N-0.3 comic 20.7 ± 0.6 dB, constant 20.9 ± 0.2 dB. A run this short
shows the flatness gap on constant gray (no-NIB far below), not the paper's fine ranking.

**Accelerator (the paper's budget)**: ``--paper`` takes ``configs/halftone/nib_resnet.py`` (width
64, 256² crops, batch 8 + 8, Adam 1e-4, 100,000 steps, eval on 32 images of 256²); ``--steps``
shortens it.

**On a cluster**, one grid point per job. A variant changes several keys at once, which
``launch/sweep.py --grid`` (a product of axes) cannot express as one axis; ``--print-commands``
prints one ``python -m noise_research.main`` line per (variant, seed), with this experiment's
workdirs, so that running this module with the same ``--out`` (and flags) afterwards reads the
finished runs and writes the table without training:

    python -m noise_research.experiments.nib_ablation --paper --seeds 3 --out DIR --print-commands

``--print-sweep`` prints one ``launch/sweep.py`` command per variant instead (the variant's keys as
single-valued ``--grid`` axes, the seeds as the one real axis; add ``--slurm`` to submit an array
of 3 jobs per variant; its workdirs are sweep.py's ``DIR/sweep/<variant>/<point>``, so collect
those runs by hand or use ``--print-commands``), e.g. for D-B-0.5:

    python launch/sweep.py configs/halftone/nib_resnet.py DIR/sweep/D-B-0.5 \\
        --grid=model.first_layer=nib --grid=model.nib.combine=impulse \\
        --grid=model.nib.distribution=bernoulli --grid=model.nib.noise_scale=0.5 \\
        --grid=model.nib.stationary=False --grid=train.checkpoint_every=25000 \\
        --grid=train.eval_every=100000 --grid=train.final_report=False \\
        --grid=train.report_every=0 --grid=train.seed=0,1,2
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from noise_research import config_schema as cs
from noise_research.experiments import runs, tables
from noise_research.tasks import halftone

NO_NIB = "no-NIB"


def _nib(combine: str, distribution: str, noise_scale: float, stationary: bool) -> dict[str, Any]:
    """A NIB first layer with every `NibConfig` field the paper varies set explicitly."""
    return {
        "model.first_layer": "nib",
        "model.nib.combine": combine,
        "model.nib.distribution": distribution,
        "model.nib.noise_scale": noise_scale,
        "model.nib.stationary": stationary,
    }


VARIANTS: dict[str, dict[str, Any]] = {
    NO_NIB: {"model.first_layer": "conv"},
    "S-N-0.3": _nib("symmetric", "normal", 0.3, stationary=True),
    "D-N-0.3": _nib("symmetric", "normal", 0.3, stationary=False),
    "S-N-0.03": _nib("symmetric", "normal", 0.03, stationary=True),
    "S-U-0.3": _nib("symmetric", "uniform", 0.3, stationary=True),
    "regular-grid": _nib("symmetric", "grid", 0.3, stationary=True),
    "D-B-0.5": _nib("impulse", "bernoulli", 0.5, stationary=False),
    "F-D-N-0.3": _nib("feature", "normal", 0.3, stationary=False),
}
"""Figure 4's variants (the module docstring's table), as dotted config overrides."""

COLUMNS = ("comic_tone_psnr", "constant_tone_psnr")
EVAL_KEYS = {"comic_tone_psnr": "comic/tone_psnr", "constant_tone_psnr": "constant/tone_psnr"}
HEADERS = {
    "comic_tone_psnr": "comic tone PSNR (dB)",
    "constant_tone_psnr": "constant tone PSNR (dB)",
}
DEFAULT_CPU_STEPS = 150


def base_config_file(args: argparse.Namespace) -> str:
    """The config file (with its argument) each run starts from."""
    return "configs/halftone/nib_resnet.py" + ("" if args.paper else ":demo")


def run_config(variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The halftoning config of one run: the base sizes, the variant's overrides, the seed, and
    one evaluation at the end with no report pictures."""
    config = halftone.experiment_config(
        model="resnet", first_layer="nib", demo=not args.paper
    ).to_dict()
    for key, value in VARIANTS[variant].items():
        runs.set_key(config, key, value)
    steps = args.steps or (config["train"]["num_steps"] if args.paper else DEFAULT_CPU_STEPS)
    runs.set_train_budget(config, seed=seed, steps=steps, progress=args.progress)
    runs.set_halftone_sizes(config, args)
    cs.validate(config, halftone.config_rules(), num_devices=1)
    return config


def _flag_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return (
            "(" + ",".join(_flag_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
        )
    return str(value)


def config_overrides(variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The ``--config.KEY=VALUE`` overrides that turn the base config file into `run_config`:
    the variant's keys always (so a command names its variant), then every other differing key."""
    # The base file, nib_resnet.py[:demo], is experiment_config(model="resnet", first_layer="nib").
    base = cs.flatten(
        halftone.experiment_config(model="resnet", first_layer="nib", demo=not args.paper).to_dict()
    )
    target = cs.flatten(run_config(variant, seed, args))
    overrides = dict(VARIANTS[variant])
    overrides.update({k: v for k, v in target.items() if base[k] != v and k not in overrides})
    return overrides


def run_command(variant: str, seed: int, args: argparse.Namespace) -> str:
    """One ``python -m noise_research.main`` line that trains (variant, seed) in its workdir."""
    words = [
        "python",
        "-m",
        "noise_research.main",
        f"--config={base_config_file(args)}",
        f"--workdir={runs.workdir_of(args.out, variant, seed)}",
        *(
            f"--config.{k}={_flag_value(v)}"
            for k, v in config_overrides(variant, seed, args).items()
        ),
    ]
    return shlex.join(words)


def sweep_command(variant: str, seeds: int, args: argparse.Namespace) -> str:
    """One ``launch/sweep.py`` line for a variant: its keys as single-valued axes, seeds as one."""
    overrides = {k: v for k, v in config_overrides(variant, 0, args).items() if k != "train.seed"}
    words = [
        "python",
        "launch/sweep.py",
        base_config_file(args),
        str(pathlib.Path(args.out) / "sweep" / variant),
        *(f"--grid={k}={_flag_value(v)}" for k, v in overrides.items()),
        "--grid=train.seed=" + ",".join(str(s) for s in range(seeds)),
    ]
    return shlex.join(words)


def run_one(variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Trains (or resumes) one run and reads its final evaluation; a finished run is read from
    result.json, one finished elsewhere (``--print-commands``) from its metrics file."""
    workdir = runs.workdir_of(args.out, variant, seed)
    finished = runs.read_result(workdir)
    if finished is not None:
        return finished
    config = run_config(variant, seed, args)
    loop, seconds = runs.train_or_resume(halftone.build(config), config, workdir)
    metrics = loop.eval_metrics
    if loop.already_finished:  # trained by another process: its final evaluation is on file
        metrics = runs.final_records(workdir, loop.step)
    return runs.write_result(
        workdir,
        {
            "variant": variant,
            "seed": seed,
            "steps": loop.step,
            "train_seconds": seconds,
            **{column: float(metrics[key]) for column, key in EVAL_KEYS.items()},
            "comic_ssim": float(metrics["comic/ssim"]),
            "constant_ssim": float(metrics["constant/ssim"]),
        },
    )


def summarize(results: Sequence[Mapping[str, Any]]) -> tables.Table:
    """Per variant and column: mean, std (ddof 1 over seeds; 0 for one seed) and n."""
    return tables.mean_std_over_seeds(results, "variant", VARIANTS, COLUMNS)


def format_markdown(table: Mapping[str, Any], budget: Mapping[str, Any]) -> str:
    """The table as markdown, mean ± std over seeds, with its caption."""
    lines = tables.markdown_rows(table, "variant", HEADERS, COLUMNS, ".2f")
    seeds = ", ".join(str(s) for s in budget["seeds"])
    lines += [
        "",
        f"Halftoning ResNet ({budget['config']}, width {budget['width']}, "
        f"{budget['crop_size']}² crops), {budget['steps']} steps per run, seeds {seeds}; "
        "mean ± std (ddof 1) over seeds. Tone PSNR: dB between the blurred halftone and the "
        f"blurred gray on {budget['eval_images']} held-out comics and as many constant-gray "
        f"patches of {budget['eval_size']}², higher is better. Variants: the NIB paper's Figure 4 "
        "(noise_research/experiments/nib_ablation.py). Training time per run: "
        + (
            f"{budget['mean_train_seconds']:.0f} s on {budget['device']}."
            if np.isfinite(budget["mean_train_seconds"])
            else "not measured (every run was trained by another process)."
        ),
    ]
    return "\n".join(lines) + "\n"


def bar_chart(table: Mapping[str, Any]) -> Figure:
    """Figure 4's layout: one bar group per NIB variant (comic, constant), std error bars, and
    the no-NIB results as dashed lines; drawn without pyplot (own Figure and Agg canvas)."""
    figure = Figure(figsize=(9.6, 4.8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    variants = [v for v in table if v != NO_NIB]
    width = 0.8 / len(COLUMNS)
    for index, column in enumerate(COLUMNS):
        positions = np.arange(len(variants)) + (index - (len(COLUMNS) - 1) / 2) * width
        means = [table[v][column]["mean"] for v in variants]
        stds = [table[v][column]["std"] for v in variants]
        label = HEADERS[column].replace(" (dB)", "")
        axes.bar(positions, means, width, yerr=stds, capsize=3, color=f"C{index}", label=label)
        if NO_NIB in table:
            no_nib = table[NO_NIB][column]["mean"]
            axes.axhline(
                no_nib, color=f"C{index}", linestyle="--", label=f"{label}, no NIB ({no_nib:.1f})"
            )
    axes.set_xticks(np.arange(len(variants)), variants)
    axes.set_ylabel("tone PSNR (dB)")
    axes.set_title("NIB variants (the NIB paper's Figure 4): mean ± std over seeds")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize="small", loc="lower right")
    figure.tight_layout()
    return figure


def save_bar_chart(table: Mapping[str, Any], path: pathlib.Path) -> pathlib.Path:
    """`bar_chart` as a PNG at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bar_chart(table).savefig(path, format="png", dpi=100)
    return path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line's arguments, checked (an unknown variant exits with status 2)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    runs.add_run_arguments(
        parser,
        per="variant",
        seeds=3,
        out="runs/nib_ablation",
        steps_help=f"steps per run (0: {DEFAULT_CPU_STEPS}, or the paper config's with --paper)",
        paper_help="the paper's sizes (configs/halftone/nib_resnet.py): for an accelerator",
    )
    runs.add_halftone_size_arguments(parser)
    runs.add_subset_argument(parser, "--variants", VARIANTS)
    parser.add_argument(
        "--print-commands",
        action="store_true",
        help="print one `python -m noise_research.main` line per (variant, seed); run nothing",
    )
    parser.add_argument(
        "--print-sweep",
        action="store_true",
        help="print one `launch/sweep.py` line per variant (seeds as its axis); run nothing",
    )
    args = parser.parse_args(argv)
    variants = runs.chosen(args.variants, VARIANTS)
    if variants is None or args.seeds < 1:
        parser.error(
            f"--variants {args.variants!r} / --seeds {args.seeds}: variants among "
            f"{', '.join(VARIANTS)}, at least one seed"
        )
    args.variant_list = variants
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    variants = args.variant_list
    if args.print_commands or args.print_sweep:
        lines = [run_command(v, s, args) for s in range(args.seeds) for v in variants]
        if args.print_sweep:
            lines = [sweep_command(v, args.seeds, args) for v in variants]
        print("\n".join(lines))
        return {"commands": lines}
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs.use_compilation_cache(out)
    results = [run_one(v, seed, args) for seed in range(args.seeds) for v in variants]
    table = summarize(results)
    config = run_config(variants[0], 0, args)
    eval_config = config["eval"]
    budget = {
        "config": base_config_file(args),
        "steps": results[0]["steps"],
        "seeds": list(range(args.seeds)),
        "width": config["model"]["width"],
        "crop_size": config["data"]["crop_size"],
        "eval_images": eval_config["batch_size"] * eval_config["num_batches"],
        "eval_size": eval_config["image_size"],
        "mean_train_seconds": runs.mean_of_measured([r["train_seconds"] for r in results]),
        "device": runs.device_kind(),
    }
    report = {"table": table, "budget": budget, "variants": VARIANTS, "runs": results}
    save_bar_chart(table, out / "ablation.png")
    runs.save_report(out, "ablation", report, format_markdown(table, budget))
    return report


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    main()
