"""The NIB paper's semantic-synthesis comparison (section 4.1, Table 2) on procedural label maps.

    python -m noise_research.experiments.semantic_synthesis --out DIR [--seeds N] [--steps N]

Trains four runs per seed — Pix2Pix, Pix2Pix+NIB, SPADE, SPADE+NIB (``configs/semantic_synthesis/
{pix2pix,spade}.py:{plain,nib}_demo``, ``train.seed`` = the seed; the training pictures are the
same for every run) — each in ``DIR/runs/<method>/seed_<s>`` with the loop's checkpoints, so an
interrupted experiment continues where it stopped and a finished run is read back from its
``result.json``. Each run is evaluated once, at its end, with the EMA generator on held-out label
maps: **domain FID** (512 images against their 512 photographs, on the features of the factor
classifier of ``metrics/label_map_features.py``, trained once per process) and L1 / PSNR to the
paired photograph (128 images). Writes ``DIR/synthesis.md`` and ``synthesis.json`` (Table 2's
layout, mean ± std over seeds: method, domain FID, L1, PSNR; the paper's Cityscapes FIDs quoted
for the direction only) and ``DIR/synthesis.png``: the four generators on the same held-out label
maps (seed 0), with the label map and the real photograph.

The machinery is ``experiments/runs.py``'s (workdir layout, dotted overrides, resumable training)
and ``experiments/tables.py``'s (mean ± std table), imported.

**CPU budget** (the default): the demo sizes (32² pictures, generators of width 16 and 3 levels,
batch 16) for ``DEFAULT_CPU_STEPS`` steps (half discriminator, half generator steps), persistent
compilation cache in ``DIR/xla_cache`` (the second and later seeds compile nothing). Measured on
the project's 2-core VM shared with three other jobs (load 7–11): seed 0 took 14.8 min wall
(464 CPU-s, the feature network's training and every compile included), seed 1 13.1 min (262
CPU-s); a run trains in 140–310 s of wall time there. Seeds 0 and 1, 400 steps: domain FID
Pix2Pix 669 / 694, Pix2Pix+NIB 645 / 712, SPADE 338 / 367, SPADE+NIB 392 / 296 — the NIB's
effect is within the seed-to-seed spread at this budget. For scale, the same network scores
512 real photographs of another seed at 8.6, the real ones 3×3 box-blurred at 238, and every
segment filled flat with its mean colour (the right layout, no texture) at 425.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from noise_research import config_schema as cs
from noise_research.data.label_maps import colour_label_map
from noise_research.experiments import runs, tables
from noise_research.tasks import semantic_synthesis
from noise_research.viz import save_image_grid

METHODS: dict[str, dict[str, Any]] = {
    "Pix2Pix": {"model.architecture": "pix2pix", "model.first_layer": "conv"},
    "Pix2Pix+NIB": {"model.architecture": "pix2pix", "model.first_layer": "nib"},
    "SPADE": {"model.architecture": "spade", "model.first_layer": "conv"},
    "SPADE+NIB": {"model.architecture": "spade", "model.first_layer": "nib"},
}
"""Table 2's rows, as the config overrides of each run (on its architecture's demo config)."""

PAPER_FID = {"Pix2Pix": 92.9, "Pix2Pix+NIB": 88.1, "SPADE": 71.8, "SPADE+NIB": 54.6}
"""Table 2 of the NIB paper: FID on Cityscapes (Inception features; not comparable)."""

COLUMNS = ("domain_fid", "l1", "psnr")
HEADERS = {"domain_fid": "domain FID ↓", "l1": "L1 ↓", "psnr": "PSNR (dB) ↑"}
DEFAULT_CPU_STEPS = 400
SAMPLE_IMAGES = 8


def run_config(method: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The demo config of one run: its architecture and first layer, the seed, ``--steps``, one
    evaluation (with domain FID) at the end, no report pictures."""
    overrides = METHODS[method]
    config = semantic_synthesis.experiment_config(
        architecture=overrides["model.architecture"],
        first_layer=overrides["model.first_layer"],
        demo=True,
    ).to_dict()
    for key, value in overrides.items():
        runs.set_key(config, key, value)
    runs.set_train_budget(
        config, seed=seed, steps=args.steps or DEFAULT_CPU_STEPS, progress=args.progress
    )
    cs.validate(config, semantic_synthesis.config_rules(), num_devices=1)
    return config


def run_one(method: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Trains (or resumes) one run, reads its final evaluation and keeps the EMA generator's
    images of the comparison's label maps (``samples.npy``); a finished run is read back."""
    workdir = runs.workdir_of(args.out, method, seed)
    finished = runs.read_result(workdir)
    if finished is not None:
        return finished
    config = run_config(method, seed, args)
    task = semantic_synthesis.build(config)
    loop, seconds = runs.train_or_resume(task, config, workdir)
    if loop.already_finished:  # trained by another process: its final evaluation is on file
        metrics = runs.final_records(workdir, loop.step, ("eval", "domain_fid"))
    else:
        metrics = {**loop.eval_metrics, **loop.evaluations["domain_fid"]}
    batch = comparison_batch(task)
    samples = np.asarray(jax.jit(task.sample)(loop.state, batch["label"], batch["position"]))
    np.save(workdir / "samples.npy", samples)
    result = {
        "method": method,
        "seed": seed,
        "steps": loop.step,
        "train_seconds": seconds,
        "domain_fid_images": int(metrics["domain_fid_num_fake"]),
        **{column: float(metrics[column]) for column in COLUMNS},
    }
    return runs.write_result(workdir, result)


def comparison_batch(task: semantic_synthesis.SemanticSynthesisTask) -> dict[str, np.ndarray]:
    """The held-out label maps of the comparison picture (the task's report batch, 8 maps)."""
    return task.report_batch()


def save_comparison(out: pathlib.Path, methods: Sequence[str], seed: int = 0) -> pathlib.Path:
    """``synthesis.png``: per held-out label map a row — the map, the real photograph, then each
    method's image of it (the runs of ``seed``)."""
    task = semantic_synthesis.build(run_config(methods[0], seed, _namespace()))
    batch = comparison_batch(task)
    samples = {m: np.load(runs.workdir_of(out, m, seed) / "samples.npy") for m in methods}
    grid, titles = [], []
    for row, labels in enumerate(batch["label"]):
        grid += [colour_label_map(labels), batch["image"][row]]
        titles += ["label map", "real"]
        for method in methods:
            grid.append(samples[method][row])
            titles.append(method)
    return save_image_grid(out / "synthesis.png", grid, titles, ncols=len(methods) + 2)


def _namespace() -> argparse.Namespace:
    return argparse.Namespace(steps=0, progress=False)


def format_markdown(table: Mapping[str, Any], budget: Mapping[str, Any]) -> str:
    """Table 2's layout (method, domain FID, L1, PSNR), mean ± std over seeds, with its caption."""
    lines = tables.markdown_rows(table, "method", HEADERS, COLUMNS, ".3g", ".2g")
    seeds = ", ".join(str(s) for s in budget["seeds"])
    paper = ", ".join(f"{m} {fid}" for m, fid in PAPER_FID.items())
    lines += [
        "",
        f"Procedural label maps ({budget['resolution']}², 6 classes, textured photographs; "
        f"data/label_maps.py), the demo configs (generator width {budget['width']}), "
        f"{budget['steps']} steps per run (half discriminator, half generator), seeds {seeds}; "
        "mean ± std (ddof 1) over seeds. Domain FID: Fréchet distance on the features of a "
        "texture-factor classifier trained on these photographs (metrics/label_map_features.py), "
        f"{budget['domain_fid_images']} generated images of held-out label maps against their "
        "photographs, lower is better; it is not FID. L1 / PSNR: EMA generator against the "
        f"paired photograph on {budget['eval_images']} held-out maps (textures cannot match "
        "pixel by pixel: these measure colour and layout). NIB: F-D-N-0.3, f1(I) + f2(N) "
        "(Pix2Pix: its first layer; SPADE: every convolution reading the label map). The paper "
        f"(Table 2, FID on Cityscapes, Inception features): {paper}. Training time per run: "
        + (
            f"{budget['mean_train_seconds']:.0f} s on {budget['device']}."
            if np.isfinite(budget["mean_train_seconds"])
            else "not measured (every run was trained by another process)."
        ),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    runs.add_run_arguments(
        parser,
        per="method",
        seeds=1,
        out="runs/semantic_synthesis",
        steps_help=f"steps per run (0: {DEFAULT_CPU_STEPS})",
    )
    runs.add_subset_argument(parser, "--methods", METHODS)
    args = parser.parse_args(argv)
    methods = runs.chosen(args.methods, METHODS)
    if methods is None or args.seeds < 1 or args.steps < 0:
        parser.error(
            f"--methods {args.methods!r} / --seeds {args.seeds} / --steps {args.steps}: methods "
            f"among {', '.join(METHODS)}, at least one seed, steps >= 0"
        )
    args.method_list = methods
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    methods = args.method_list
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs.use_compilation_cache(out)
    started = time.perf_counter()
    results = [run_one(m, seed, args) for seed in range(args.seeds) for m in methods]
    table = tables.mean_std_over_seeds(results, "method", METHODS, COLUMNS)
    config = run_config(methods[0], 0, args)
    budget = {
        "steps": results[0]["steps"],
        "seeds": list(range(args.seeds)),
        "resolution": config["data"]["resolution"],
        "width": config["model"]["width"],
        "domain_fid_images": results[0]["domain_fid_images"],
        "eval_images": config["eval"]["batch_size"] * config["eval"]["num_batches"],
        "mean_train_seconds": runs.mean_of_measured([r["train_seconds"] for r in results]),
        "device": runs.device_kind(),
        "wall_seconds_this_invocation": time.perf_counter() - started,
    }
    report = {"table": table, "budget": budget, "paper_fid": PAPER_FID, "runs": results}
    save_comparison(out, methods)
    runs.save_report(out, "synthesis", report, format_markdown(table, budget))
    return report


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    main()
