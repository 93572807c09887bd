"""Deep neural dithering (the NIB paper's section 4.3, Table 4): a NIB halftoning ResNet trained on
tone + structure (Pang et al. 2008), with and without the blue-noise loss L_B, against
Floyd–Steinberg, ordered dithering and Ostromoukhov's error diffusion.

    python -m noise_research.experiments.dithering --out DIR [--steps N] [--seeds N]
    python -m noise_research.experiments.dithering --paper --out DIR   # an accelerator

The paper (section 4.3): "By taking the same loss function of [Pang et al., 2008], the CNN model
can generates halftone images with good tone similarity (measured by PSNR) but fails to achieve
desired blue-noise profile […] we formulate an additional loss term […] L_B = ‖DCT(H) ⊙ M‖₁ […]
this constraint can only be imposed on the dithered image H of constant-grayscale". Its Table 4, on
the *Structure* dataset of Pang et al. (`PAPER_TABLE_4`): Ostromoukhov 39.935 dB / SSIM 0.2425,
Pang 34.987 / 0.3032, deep neural dithering without L_B 37.392 / 0.2728, with L_B 36.434 / 0.3078.

Each variant (`VARIANTS`: ``blue_noise``, ``no_blue_noise``, the arguments of
``configs/halftone/dithering.py``; the loss and data are `tasks.halftone.dithering_config`'s) and
seed is one run of the halftoning task in ``DIR/runs/<variant>/seed_<s>`` with the loop's
checkpoints, so an interrupted experiment continues where it stopped and a finished run is only
restored (`runs.workdir_of`, the same layout as the noise-mode ablation). Then every
network and the three classical halftoners halftone the same images:

* the scikit-image samples (`data.sample_images`: camera, astronaut, coffee, chelsea, rocket,
  ``--sample-size``² each, none of them seen in training; the *Structure* dataset cannot be
  downloaded here): tone PSNR (`metrics.tone_psnr`, dB between the 11×11 σ = 2 blurred halftone
  and blurred gray) and SSIM (`metrics.ssim`), each the mean over the images;
* constant gray at g = 1/8, 1/4, 1/2 (4 images of the same side each): the radially averaged power
  spectra, the anisotropy at mid-gray and the low-frequency energy (the share of power below 0.1
  cycles/pixel, lower is bluer; the table gives the mean over the three levels, the JSON each).

Writes ``DIR/dithering.md`` and ``dithering.json`` (Table 4's layout — method, tone PSNR, SSIM —
plus the low-frequency energy; mean ± std over seeds for the networks, ddof 1, `tables`), and the
pictures of seed 0 (other seeds in ``DIR/seed_<s>/``): ``samples.png`` (each sample, then every
method's halftone of it), ``spectra.png`` and ``anisotropy.png``.

**CPU budget** (the default): the halftoning demo's sizes (ResNet of 10 blocks at width 16, 64²
crops, batch 4 + 4 constant gray, Adam 1e-3) for `halftone.DITHERING_DEMO_STEPS` = 1,500 steps per
variant. Chosen from a measured 4.0 steps/s on 2 nearly idle CPU cores (the first 100 steps of
``configs/halftone/dithering.py:blue_noise_demo``), so about 7 minutes per variant and 15 for the
experiment on idle cores. On the shared 2-core VM (load 6–9 from other jobs) the same command took
40.6 minutes: 1,654 s and 768 s of training (1.0–2 steps/s), the rest compiling and evaluating.
That run, seed 0, 256² samples: Floyd–Steinberg 41.8 dB / SSIM 0.081, ordered 35.5 / 0.071,
Ostromoukhov 43.2 / 0.078, without L_B 27.0 / 0.095, with L_B 25.8 / 0.110 (low-frequency energy
0.016 / 0.014 against < 0.001 for error diffusion): the networks already have the better SSIM, as
in the paper, but are ~16 dB short in tone; the paper's budget (``--paper``) is what closes that.

**Accelerator** (``--paper``): ``configs/halftone/dithering.py:blue_noise`` / ``:no_blue_noise``
at the paper's halftoning sizes (width 64, 256² crops, batch 8 + 8, Adam 1e-4, 100,000 steps);
``--steps`` shortens it.
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
from noise_research.classical import CLASSICAL_HALFTONERS
from noise_research.data.sample_images import DEFAULT_SAMPLE_IMAGE_NAMES, sample_images
from noise_research.experiments import runs, tables
from noise_research.metrics import halftone as metrics
from noise_research.tasks import halftone

VARIANTS: dict[str, str] = {
    "no_blue_noise": "deep neural dithering w/o L_B",
    "blue_noise": "deep neural dithering",
}
"""Config argument (``configs/halftone/dithering.py``) -> the row's name, as Table 4 names it."""

ROWS = (*CLASSICAL_HALFTONERS, *VARIANTS.values())
COLUMNS = ("tone_psnr", "ssim", "low_frequency_energy")
HEADERS = {
    "tone_psnr": "tone PSNR (dB) ↑",
    "ssim": "SSIM ↑",
    "low_frequency_energy": "low-frequency energy ↓",
}
PAPER_TABLE_4 = {
    "Ostromoukhov halftoning [2001]": (39.935, 0.2425),
    "Pang halftoning [2008]": (34.987, 0.3032),
    "Deep neural dithering / L_B": (37.392, 0.2728),
    "Deep neural dithering": (36.434, 0.3078),
}
"""The paper's Table 4 on the Structure dataset: method -> (PSNR, SSIM)."""


def run_config(variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The config of one run: ``configs/halftone/dithering.py:<variant>[_demo]``, the seed, the
    step budget, one evaluation at the end and no report pictures (this module draws its own)."""
    config = halftone.dithering_config(
        blue_noise=variant == "blue_noise", demo=not args.paper
    ).to_dict()
    steps = args.steps or config["train"]["num_steps"]
    runs.set_train_budget(config, seed=seed, steps=steps, progress=args.progress, checkpoints=6)
    runs.set_halftone_sizes(config, args)
    if args.structure_weight is not None:
        config["loss"]["structure_weight"] = args.structure_weight
    cs.validate(config, halftone.config_rules(), num_devices=1)
    return config


def train_variant(
    variant: str, seed: int, args: argparse.Namespace
) -> tuple[halftone.Halftoner, dict[str, Any]]:
    """Trains (or resumes, or restores a finished) run; its network as a halftoner and the run's
    facts (steps, seconds of the session that finished it; NaN when it was finished before)."""
    config = run_config(variant, seed, args)
    task = halftone.build(config)
    loop, seconds = runs.train_or_resume(task, config, runs.workdir_of(args.out, variant, seed))
    facts = {
        "variant": variant,
        "seed": seed,
        "steps": loop.step,
        "train_seconds": seconds,
        "final_eval": {k: float(v) for k, v in (loop.eval_metrics or {}).items()},
    }
    state = loop.state
    network = halftone.one_image_at_a_time(lambda gray: task.halftone_images(state, gray))
    return network, facts


def evaluate(
    methods: Mapping[str, halftone.Halftoner], out: pathlib.Path, sample_size: int
) -> dict[str, dict[str, Any]]:
    """Every method's figures on the scikit-image samples and on constant gray, and the pictures
    (``out/samples.png``, ``spectra.png``, ``anisotropy.png``)."""
    out.mkdir(parents=True, exist_ok=True)
    samples = sample_images(size=sample_size)
    gray = np.stack(list(samples.values()))
    halftones = halftone.save_halftone_grid(str(out / "samples.png"), samples, methods)
    energies = halftone.save_constant_gray_spectra(str(out), methods, sample_size)
    rows = {}
    for name in methods:
        tone = np.asarray(metrics.tone_psnr(halftones[name], gray), np.float64)
        ssim = np.asarray(metrics.ssim(halftones[name], gray), np.float64)
        rows[name] = {
            "tone_psnr": float(tone.mean()),
            "ssim": float(ssim.mean()),
            "low_frequency_energy": float(np.mean(list(energies[name].values()))),
            "per_image": {
                image: {"tone_psnr": float(t), "ssim": float(s)}
                for image, t, s in zip(samples, tone, ssim, strict=True)
            },
            **energies[name],
        }
    return rows


def format_markdown(table: tables.Table, budget: Mapping[str, Any]) -> str:
    """Table 4's layout (method, tone PSNR, SSIM) + low-frequency energy, the paper's Table 4
    beside it, and the caption saying what was run."""
    lines = tables.markdown_rows(table, "method", HEADERS, COLUMNS, ".3f")
    seeds = ", ".join(str(s) for s in budget["seeds"])
    lines += [
        "",
        f"Networks: {budget['config']} (NIB ResNet, width {budget['width']}, "
        f"{budget['crop_size']}² crops of procedural comics and held-out scikit-image samples, "
        f"structure weight {budget['structure_weight']}), {budget['steps']} steps, seeds {seeds} "
        f"(mean ± std, ddof 1, over seeds where more than one); training time per run "
        + (
            f"{budget['mean_train_seconds']:.0f} s"
            if np.isfinite(budget["mean_train_seconds"])
            else "not measured (restored runs)"
        )
        + f" on {budget['device']}; the whole command {budget['wall_seconds']:.0f} s. Images: "
        f"{', '.join(budget['samples'])} at {budget['sample_size']}² (scikit-image, in place of "
        "the paper's Structure dataset). Tone PSNR: blurred halftone vs blurred gray (11×11, "
        "σ = 2); SSIM: Wang et al. 2004 (11×11, σ = 1.5), both the mean over the images; "
        "low-frequency energy: share of the power of constant-gray halftones (g = 1/8, 1/4, 1/2, "
        "mean) below 0.1 cycles/pixel (white noise ≈ 0.031).",
        "",
        "The paper's Table 4 (Structure dataset):",
        "",
        "| method | PSNR | SSIM |",
        "|---|---|---|",
        *(f"| {name} | {psnr} | {ssim} |" for name, (psnr, ssim) in PAPER_TABLE_4.items()),
    ]
    return "\n".join(lines) + "\n"


def write_report(
    out: pathlib.Path, results: Sequence[Mapping[str, Any]], budget: Mapping[str, Any]
) -> dict[str, Any]:
    """``dithering.json`` (table, budget, every run's figures) and ``dithering.md``."""
    table = tables.mean_std_over_seeds(results, "method", ROWS, COLUMNS)
    report = {"table": table, "budget": dict(budget), "paper_table_4": PAPER_TABLE_4}
    report["results"] = list(results)
    runs.save_report(out, "dithering", report, format_markdown(table, budget))
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    runs.add_run_arguments(
        parser,
        per="variant",
        seeds=1,
        out="runs/dithering",
        steps_help=f"steps per run (0: {halftone.DITHERING_DEMO_STEPS}, or the paper config's "
        "with --paper)",
        paper_help="the paper's sizes: for an accelerator",
    )
    parser.add_argument(
        "--sample-size", type=int, default=256, help="side of the evaluation images"
    )
    runs.add_halftone_size_arguments(parser)
    parser.add_argument(
        "--structure-weight",
        type=float,
        default=None,
        help=f"loss.structure_weight (default {halftone.DITHERING_STRUCTURE_WEIGHT})",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.sample_size < 16:
        parser.error(f"--seeds {args.seeds} / --sample-size {args.sample_size}: >= 1 / >= 16")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs.use_compilation_cache(out)
    classical = {
        name: halftone.one_image_at_a_time(fn) for name, fn in CLASSICAL_HALFTONERS.items()
    }
    results, trained = [], []
    for seed in range(args.seeds):
        networks = {}
        for variant, row in VARIANTS.items():
            networks[row], facts = train_variant(variant, seed, args)
            trained.append(facts)
        # The classical halftoners are deterministic: their rows are measured once, with seed 0.
        methods = {**(classical if seed == 0 else {}), **networks}
        figures = evaluate(methods, out if seed == 0 else out / f"seed_{seed}", args.sample_size)
        results += [{"method": name, "seed": seed, **row} for name, row in figures.items()]
    config = run_config("blue_noise", 0, args)
    budget = {
        "config": "configs/halftone/dithering.py:<variant>" + ("" if args.paper else "_demo"),
        "steps": trained[0]["steps"],
        "seeds": list(range(args.seeds)),
        "width": config["model"]["width"],
        "crop_size": config["data"]["crop_size"],
        "structure_weight": config["loss"]["structure_weight"],
        "samples": list(DEFAULT_SAMPLE_IMAGE_NAMES),
        "sample_size": args.sample_size,
        "mean_train_seconds": runs.mean_of_measured([r["train_seconds"] for r in trained]),
        "wall_seconds": time.perf_counter() - started,
        "device": runs.device_kind(),
        "runs": trained,
    }
    return write_report(out, results, budget)


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    main()
