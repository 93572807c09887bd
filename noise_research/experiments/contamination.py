"""Does the NIB contaminate data? The NIB paper's section 3.3 and Figure 5: an autoencoder with a
plain, an additive-noise and a NIB first layer, reconstruction PSNR over the training budget.

    python -m noise_research.experiments.contamination --out DIR [--seeds N] [--steps N]
    python -m noise_research.experiments.contamination --paper --out DIR   # an accelerator

The paper: "we employ NIB into an auto-encoder model that reconstructs the input from a learned
latent representation. For comparison, we build a naive baseline that adds white noise to the
input data. [...] the quantitative evaluation on a dataset (3367 images) gives: 47.95 db
(Autoencoder), 35.54 db (Autoencoder+noise), 48.56 db (Autoencoder+NIB)".

Each (variant, seed) is one run of the autoencoder task (``configs/autoencoder/contamination.py``
``:plain_demo``, ``:noise_demo``, ``:nib_demo``, or the full sizes with ``--paper``; ``train.seed``
= the seed, the training crops the same for every run) in ``DIR/runs/<variant>/seed_<s>`` with
the loop's checkpoints: an interrupted experiment continues where it stopped, and a finished run
is read back from its ``result.json``. Every run is evaluated `EVAL_POINTS` times over its budget
(``reconstruction_psnr`` on the held-out tiles), because a NIB must *learn* to cancel its noise
(f1 ≈ f2 on the image, section 3.1): early in training it still carries N and trails the plain
model, so one point of the budget says little. Writes

* ``DIR/contamination.md`` and ``.json``: the PSNR of each variant at each evaluated step, mean ±
  std over seeds (ddof 1; `experiments.tables`), and the paired gaps NIB − plain and plain − noise
  per seed, so the gap's course over the budget is read off one table;
* ``DIR/psnr_vs_step.png``: PSNR of each variant and the two gaps against the step;
* ``DIR/figure5.png``: Figure 5, a held-out image, the noisy input I + N (d), the three
  reconstructions of seed 0 and their error maps on one colour scale.

**CPU budget** (the default): ``:<variant>_demo`` (width 16, latent 8 channels at half
resolution, 32² crops of 256² samples, batch 8, Adam 3e-3 with a cosine decay, 4,000 steps), one
seed. Measured on the 2-core VM shared with three other jobs (load ≈ 7): 119 s per run, 364 s for
the command (3 runs, the figures); seed 0 at steps 800 … 4000:

| variant | 800 | 1600 | 2400 | 3200 | 4000 |
|---|---|---|---|---|---|
| plain | 28.61 | 33.38 | 39.68 | 41.14 | 41.45 |
| noise | 24.75 | 25.53 | 25.46 | 25.81 | 25.82 |
| nib | 24.72 | 32.53 | 36.93 | 38.17 | 38.64 |
| NIB − plain | −3.90 | −0.85 | −2.75 | −2.98 | −2.81 |
| plain − noise | 3.86 | 7.85 | 14.21 | 15.34 | 15.63 |

The ordering plain ≳ NIB ≫ noise holds from step 1600 on; the NIB trails the plain model by
≈ 3 dB at this budget (the paper: NIB 0.6 dB above it after full training), and its
reconstruction with an independent noise map differs from its own at 42.5 dB, so N itself is not
the main limit any more. ``--paper``: the full sizes (width 64, 256² crops, Adam 1e-4, 50,000
steps) for an accelerator.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from noise_research import config_schema as cs
from noise_research.experiments import runs, tables
from noise_research.tasks import autoencoder
from noise_research.train.loop import LoopConfig, restore_state
from noise_research.train.metric_writer import read_metrics
from noise_research.viz import method_colors, save_line_plot_grid

VARIANTS = tuple(autoencoder.VARIANT_FIRST_LAYERS)  # plain, noise, nib
GAPS = {"NIB − plain": ("nib", "plain"), "plain − noise": ("plain", "noise")}
"""The paired differences the table reports, per seed: (minuend, subtrahend)."""
ASYMMETRY = "NIB ‖f1 − f2‖ / ‖f1 + f2‖"
NOISE_PSNR = "NIB output vs N' (dB)"
CLEAN_PSNR = "noise, evaluated on clean I (dB)"
PROBES = {
    "clean_input_psnr": CLEAN_PSNR,
    "nib_noise_psnr": NOISE_PSNR,
    "nib_asymmetry": ASYMMETRY,
}
"""The probes' rows (eval metric -> row): the noise model's PSNR on the clean image (its noise
off: a training-only augmentation); the NIB's PSNR between its reconstructions with its noise map N
and with an independent N' (how much of N reaches the output, +inf: none), and its kernels'
asymmetry (`tasks.autoencoder.nib_asymmetry`)."""
PAPER_DB = {"plain": 47.95, "noise": 35.54, "nib": 48.56}
EVAL_POINTS = 5


def run_config(variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The autoencoder config of one run: the variant's config file (``:<variant>_demo``, or the
    full size with ``--paper``), the seed, `EVAL_POINTS` evaluations, no report pictures."""
    first_layer = autoencoder.VARIANT_FIRST_LAYERS[variant]
    config = autoencoder.experiment_config(first_layer=first_layer, demo=not args.paper).to_dict()
    steps = args.steps or config["train"]["num_steps"]
    runs.set_train_budget(
        config, seed=seed, steps=steps, progress=args.progress, evaluations=EVAL_POINTS
    )
    if config["optimizer"]["warmup_steps"] >= steps:
        config["optimizer"]["warmup_steps"] = steps // 10
    cs.validate(config, autoencoder.config_rules(), num_devices=1)
    return config


def eval_history(workdir: str | pathlib.Path, key: str = "reconstruction_psnr") -> dict[int, float]:
    """``{step: value}`` of a run's evaluations of ``key`` (the last record of a step wins)."""
    return {
        int(record["step"]): float(record[key])
        for record in read_metrics(str(workdir), split="eval")
        if key in record
    }


def run_one(variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Trains (or resumes) one run and reads its evaluations over the budget; a finished run is
    read from its result.json."""
    workdir = runs.workdir_of(args.out, variant, seed)
    finished = runs.read_result(workdir)
    if finished is not None:
        return finished
    config = run_config(variant, seed, args)
    loop, seconds = runs.train_or_resume(autoencoder.build(config), config, workdir)
    history = eval_history(workdir)
    if loop.step not in history:
        raise SystemExit(f"{workdir} is at step {loop.step} but has no evaluation there")
    result = {
        "variant": variant,
        "seed": seed,
        "steps": loop.step,
        "train_seconds": seconds,
        "psnr_by_step": {str(step): psnr for step, psnr in sorted(history.items())},
        **{
            f"{key}_by_step": {
                str(step): value for step, value in sorted(eval_history(workdir, key).items())
            }
            for key in PROBES
        },
    }
    return runs.write_result(workdir, result)


def step_column(step: int) -> str:
    return f"step_{step}"


def table_rows(results: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[int]]:
    """One flat row per run (``row`` = variant, a column per evaluated step) and one per seed and
    gap (``row`` = the gap's name, the paired difference per step); and the steps every run
    evaluated."""
    steps = sorted(
        set.intersection(*(set(map(int, r["psnr_by_step"])) for r in results)) if results else []
    )
    rows = [
        {"row": r["variant"], **{step_column(s): r["psnr_by_step"][str(s)] for s in steps}}
        for r in results
    ]
    by_run = {(r["variant"], r["seed"]): r for r in results}
    for gap, (minuend, subtrahend) in GAPS.items():
        for seed in sorted({r["seed"] for r in results}):
            if (minuend, seed) in by_run and (subtrahend, seed) in by_run:
                first, second = by_run[minuend, seed], by_run[subtrahend, seed]
                rows.append(
                    {
                        "row": gap,
                        **{
                            step_column(s): first["psnr_by_step"][str(s)]
                            - second["psnr_by_step"][str(s)]
                            for s in steps
                        },
                    }
                )
    rows += [
        {"row": row, **{step_column(s): r[f"{key}_by_step"][str(s)] for s in steps}}
        for key, row in PROBES.items()
        for r in results
        if r.get(f"{key}_by_step")
    ]
    return rows, steps


def summarize(results: Sequence[Mapping[str, Any]]) -> tuple[tables.Table, list[int]]:
    """Per variant and gap, per evaluated step: mean, std (ddof 1 over seeds) and n."""
    rows, steps = table_rows(results)
    columns = [step_column(s) for s in steps]
    return tables.mean_std_over_seeds(
        rows, "row", [*VARIANTS, *GAPS, *PROBES.values()], columns
    ), steps


def format_markdown(table: tables.Table, steps: Sequence[int], budget: Mapping[str, Any]) -> str:
    """The table as markdown (dB, mean ± std over seeds) with its caption."""
    columns = [step_column(s) for s in steps]
    headers = {step_column(s): f"step {s}" for s in steps}
    lines = tables.markdown_rows(table, "variant", headers, columns, ".2f")
    seeds = ", ".join(str(s) for s in budget["seeds"])
    final = step_column(steps[-1])
    paper = " / ".join(f"{PAPER_DB[v]:.2f}" for v in VARIANTS)
    ours = " / ".join(f"{table[v][final]['mean']:.2f}" if v in table else "–" for v in VARIANTS)
    lines += [
        "",
        f"Reconstruction PSNR (dB, on [−1, 1], peak-to-peak 2) of the autoencoder on "
        f"{budget['eval_tiles']} held-out tiles of {budget['tile_size']}² "
        f"({', '.join(autoencoder.EVAL_IMAGE_NAMES)}, never trained on), after each number of "
        f"training steps; {budget['config']}, width {budget['width']}, latent "
        f"{budget['latent_channels']} channels at half resolution, {budget['crop_size']}² "
        f"crops, batch {budget['batch_size']}, {budget['steps']} steps per run, seeds {seeds}; "
        "mean ± std (ddof 1) over seeds. The gap rows are paired differences per seed: NIB − "
        "plain near 0 means the NIB did not contaminate the input, plain − noise is what "
        "additive noise destroyed. A NIB learns to cancel its noise during training (f1 ≈ f2 "
        "on the image), so read the gap's course, not one column. The NIB's rows: the PSNR "
        "between its reconstructions with its noise map N and with an independent N' (how "
        "much of N reaches the output; above the NIB's PSNR, N is no longer what limits it), "
        "and ‖f1 − f2‖ / ‖f1 + f2‖ of its two kernels (0: N cancelled in the first layer; "
        "channels that later layers ignore count too). 'noise, evaluated on clean I': the "
        "noise model's reconstruction of the clean image, i.e. the noise as a training-only "
        "augmentation (the paper does not say whether its baseline adds N at evaluation).",
        "",
        f"At the end ({steps[-1]} steps) plain / noise / NIB: {ours} dB; the paper (3367 VOC "
        f"images, its full training): {paper} dB. Training time per run: "
        + (
            f"{budget['mean_train_seconds']:.0f} s on {budget['device']}"
            if np.isfinite(budget["mean_train_seconds"])
            else "not measured (read back from finished runs)"
        )
        + f"; this command (runs already finished are read back): {budget['wall_seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def save_psnr_plot(table: tables.Table, steps: Sequence[int], path: pathlib.Path) -> pathlib.Path:
    """Panels against the step: each variant's PSNR, the two gaps, the NIB's asymmetry."""
    columns = [step_column(s) for s in steps]
    x = np.asarray(steps, np.float64)

    def curves(rows: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {
            row: (x, np.array([table[row][c]["mean"] for c in columns]))
            for row in rows
            if row in table
        }

    panels = {
        "reconstruction PSNR (dB)": curves(VARIANTS),
        "gap (dB)": curves(list(GAPS)),
    }
    panels["reconstruction PSNR (dB)"].update(curves([NOISE_PSNR, CLEAN_PSNR]))
    if ASYMMETRY in table:
        panels[ASYMMETRY + " (ratio)"] = curves([ASYMMETRY])
    colors = method_colors([*VARIANTS, *GAPS, *PROBES.values()])
    return save_line_plot_grid(
        path, panels, xlabel="training step", ylabel="dB, or ratio", ncols=3, colors=colors
    )


def save_comparison_figure(args: argparse.Namespace, variants: Sequence[str], path: pathlib.Path):
    """Figure 5 from seed 0's final checkpoints: returns each variant's PSNR on the image."""
    reconstructions, noisy = {}, None
    image = None
    for variant in variants:
        config = run_config(variant, 0, args)
        task = autoencoder.build(config)
        restored = restore_state(
            task, LoopConfig(**config["train"]), str(runs.workdir_of(args.out, variant, 0))
        )
        if restored is None:
            raise SystemExit(f"{runs.workdir_of(args.out, variant, 0)} holds no checkpoint")
        image = autoencoder.report_image(config["eval"]["report_image_size"])
        reconstruction, first_input = task.reconstruct(restored[0], image)
        reconstructions[variant] = reconstruction[0]
        if variant == "noise":
            noisy = first_input[0]
    if noisy is None:
        noisy = autoencoder.reference_noisy_input(image, 0.3)[0]
    return autoencoder.save_figure5(path, image[0], noisy, reconstructions)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line's arguments, checked (an unknown variant exits with status 2)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    runs.add_run_arguments(
        parser,
        per="variant",
        seeds=1,
        out="runs/contamination",
        steps_help="steps per run (0: the config's, 4,000 for the CPU demo, 50,000 with --paper)",
        paper_help="the full sizes (an accelerator), not the CPU demo",
    )
    runs.add_subset_argument(parser, "--variants", VARIANTS)
    args = parser.parse_args(argv)
    variants = runs.chosen(args.variants, VARIANTS)
    if variants is None or args.seeds < 1 or args.steps < 0:
        parser.error(
            f"--variants {args.variants!r} / --seeds {args.seeds} / --steps {args.steps}: "
            f"variants among {', '.join(VARIANTS)}, at least one seed, steps >= 0"
        )
    args.variant_list = [v for v in VARIANTS if v in variants]
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    args = parse_args(argv)
    variants = args.variant_list
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs.use_compilation_cache(out)
    results = [run_one(v, seed, args) for seed in range(args.seeds) for v in variants]
    table, steps = summarize(results)
    figure_psnr = save_comparison_figure(args, variants, out / "figure5.png")
    save_psnr_plot(table, steps, out / "psnr_vs_step.png")
    config = run_config(variants[0], 0, args)
    budget = {
        "config": "configs/autoencoder/contamination.py:<variant>"
        + ("" if args.paper else "_demo"),
        "steps": results[0]["steps"],
        "seeds": list(range(args.seeds)),
        "width": config["model"]["width"],
        "latent_channels": config["model"]["latent_channels"],
        "crop_size": config["data"]["crop_size"],
        "batch_size": config["data"]["batch_size"],
        "eval_tiles": autoencoder.build(config).num_eval_batches * config["eval"]["batch_size"],
        "tile_size": config["eval"]["tile_size"],
        "mean_train_seconds": runs.mean_of_measured([r["train_seconds"] for r in results]),
        "wall_seconds": time.perf_counter() - started,
        "device": runs.device_kind(),
    }
    report = {
        "table": table,
        "steps": steps,
        "budget": budget,
        "paper_db": PAPER_DB,
        "figure5_psnr": figure_psnr,
        "runs": results,
    }
    runs.save_report(out, "contamination", report, format_markdown(table, steps, budget))
    return report


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    main()
