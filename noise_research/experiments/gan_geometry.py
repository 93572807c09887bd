"""The gan-noise-injection paper's geometry of DCGANs with no, Euclidean and Riemannian noise
injection, on the embedded coloured shapes: condition numbers (Table 2), Jacobian rank (Lemmas
1–2) and domain FID, mean ± std over seeds.

    python -m noise_research.experiments.gan_geometry --seeds 3 --out DIR [--steps N]

Each (injection, seed) is one run of the GAN task (``configs/gan/dcgan.py:<injection>_demo``,
``train.seed`` = the seed; the data are the same for every run) in ``DIR/runs/<injection>/
seed_<s>``, with the loop's checkpoints: an interrupted experiment continues where it stopped
(a finished run is read back from its ``result.json``). The evaluators run every quarter of the
training (the curve of domain FID in ``curves.png``) and at the end:

* **MC / TTMC** (`metrics.gan_geometry.condition_number_evaluator`): ``--condition-pairs``
  (z, Δz ~ N(0, 1e-4)) pairs with the injected noise held fixed within a pair; TTMC is the mean
  of the largest 2 % (the paper's 1000 of 50,000).
* **Jacobian rank** of the EMA generator (BatchNorm in evaluation mode) at ``--rank-samples``
  latents, float64 SVD with numpy's tolerance: of the image w.r.t. z (≤ dim z = 100 for every
  variant, Lemma 2) and w.r.t. (z, injected noise) (it may exceed dim z after an injection point);
  the per-layer ranks go to the JSON.
* **domain FID** (`metrics.domain_features`): the Fréchet distance in the features of a small
  classifier of the shapes' generative factors, **not FID** and not comparable with any published
  FID, between ``--fid-batches`` × 32 held-out shapes and as many samples.

Writes ``DIR/geometry.md`` and ``geometry.json`` (the table, every seed's values, the budget),
``curves.png`` (domain FID and the discriminator's loss over training, mean over seeds) and
``samples/<injection>_seed<s>.png`` (each run's final 8 × 8 samples, noise fixed).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from noise_research import config_schema as cs
from noise_research.experiments import runs, tables
from noise_research.metrics.gan_geometry import intermediate_features, layer_spectra
from noise_research.models.dcgan import INJECTIONS
from noise_research.tasks import gan
from noise_research.train.metric_writer import read_metrics
from noise_research.viz.plots import save_line_plot_grid

COLUMNS = ("mc", "ttmc", "rank_z", "rank_z_noise", "domain_fid")
HEADERS = {
    "mc": "MC",
    "ttmc": "TTMC",
    "rank_z": "rank J_z G",
    "rank_z_noise": "rank J_(z,ε) G",
    "domain_fid": "domain FID",
}
RANK_LATENT_OFFSET = 7_000_001  # rank latents come from positions no training or eval uses


def run_config(injection: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The GAN config of one run: the DCGAN demo with this injection and seed."""
    config = gan.experiment_config(injection=injection, demo=True).to_dict()
    steps = args.steps or config["train"]["num_steps"]
    runs.set_train_budget(
        config,
        seed=seed,
        steps=steps,
        progress=args.progress,
        evaluations=4,
        report_pictures=True,  # the final samples.png is the experiment's sample picture
    )
    if args.width:
        config["model"].update(width=args.width, discriminator_width=args.width)
    if args.batch_size:
        config["data"]["batch_size"] = args.batch_size
    config["eval"].update(
        metrics_every=max(1, steps // 4),
        condition_pairs=args.condition_pairs,
        fid_batches=args.fid_batches,
        metrics_batch_size=min(256, args.condition_pairs),
        domain_feature_steps=args.domain_feature_steps,
    )
    cs.validate(config, gan.config_rules(), num_devices=1)
    return config


def generator_features(task: gan.GanTask, state: Any):
    """``(z, noise) -> {layer: features}`` of one sample of the EMA generator in evaluation mode,
    the image last: what `layer_spectra` differentiates."""
    variables = {"params": state.generator_ema, "batch_stats": state.generator_stats}

    def features(z: jax.Array, noise: Mapping[Any, jax.Array] | None) -> dict[str, jax.Array]:
        batched = None if noise is None else {k: v[None] for k, v in noise.items()}
        image, collections = task.generator.apply(
            variables, z[None], noise=batched, inject=noise is not None, mutable=["intermediates"]
        )
        layers = intermediate_features(collections["intermediates"])
        return {**{name: value[0] for name, value in layers.items()}, "image": image[0]}

    return features


def jacobian_ranks(task: gan.GanTask, state: Any, num_samples: int) -> dict[str, Any]:
    """Mean ranks of every layer w.r.t. z and w.r.t. (z, noise) over ``num_samples`` latents."""
    root = jax.random.wrap_key_data(state.rng)
    features = generator_features(task, state)
    per_layer: dict[str, dict[str, list[int]]] = {}
    for sample in range(num_samples):
        key = jax.random.fold_in(root, RANK_LATENT_OFFSET + sample)
        latent_key, noise_key = jax.random.split(key)
        z = jax.random.normal(latent_key, (task.model_config.latent_dim,))
        noise = task.sample_noise(noise_key)
        for layer, spectra in layer_spectra(features, z, noise).items():
            for wrt, spectrum in spectra.items():
                per_layer.setdefault(layer, {}).setdefault(wrt, []).append(spectrum.rank)
    image = per_layer["image"]
    return {
        "rank_z": float(np.mean(image["z"])),
        # Without injection there is no noise input: the rank w.r.t. (z, ε) is the one w.r.t. z.
        "rank_z_noise": float(np.mean(image.get("z_noise", image["z"]))),
        "layer_ranks": {
            layer: {wrt: float(np.mean(ranks)) for wrt, ranks in by_input.items()}
            for layer, by_input in per_layer.items()
        },
    }


def run_one(injection: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Trains (or resumes) one run and measures it; a finished run is read from result.json."""
    workdir = runs.workdir_of(args.out, injection, seed)
    finished = runs.read_result(workdir)
    if finished is not None:
        return finished
    config = run_config(injection, seed, args)
    task = gan.build(config)
    loop, seconds = runs.train_or_resume(task, config, workdir)
    state = jax.tree.map(np.asarray, loop.state)
    result = {
        "injection": injection,
        "seed": seed,
        "steps": loop.step,
        "train_seconds": seconds,
        **{k: loop.evaluations["condition"][k] for k in ("mc", "ttmc", "max")},
        "domain_fid": loop.evaluations["domain_fid"]["domain_fid"],
        **jacobian_ranks(task, state, args.rank_samples),
        "curve": _curve(str(workdir)),
    }
    samples = sorted(workdir.glob("report/step_*/samples.png"))
    if samples:
        target = pathlib.Path(args.out) / "samples" / f"{injection}_seed{seed}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(samples[-1], target)
    return runs.write_result(workdir, result)


def _curve(workdir: str) -> dict[str, list[float]]:
    """Domain FID at each evaluation and the discriminator's loss at each log line."""
    fid = read_metrics(workdir, split="domain_fid")
    train_records = [r for r in read_metrics(workdir, split="train") if "discriminator_loss" in r]
    return {
        "fid_steps": [r["step"] for r in fid],
        "domain_fid": [r["domain_fid"] for r in fid],
        "loss_steps": [r["step"] for r in train_records],
        "discriminator_loss": [r["discriminator_loss"] for r in train_records],
    }


def summarize(results: Sequence[Mapping[str, Any]]) -> tables.Table:
    """Per injection and column: mean, std (ddof 1 over seeds; 0 for one seed) and n."""
    return tables.mean_std_over_seeds(results, "injection", INJECTIONS, COLUMNS)


def format_markdown(table: Mapping[str, Any], budget: Mapping[str, Any]) -> str:
    """The table as markdown, mean ± std over seeds, with its caption."""
    lines = tables.markdown_rows(table, "injection", HEADERS, COLUMNS, ".4g", ".2g")
    seeds = ", ".join(str(s) for s in budget["seeds"])
    lines += [
        "",
        f"DCGAN 32² on the embedded coloured shapes, {budget['steps']} loop steps (half "
        f"generator steps) per run, seeds {seeds}; mean ± std (ddof 1) over seeds. MC / TTMC: "
        f"{budget['condition_pairs']} pairs, Δz ~ N(0, 1e-4), injected noise fixed within a "
        f"pair, TTMC = mean of the top 2 %. Ranks: image Jacobian at {budget['rank_samples']} "
        "latents (dim z = 100), numpy's tolerance. **domain FID** (not FID): features of a "
        "small classifier of the shapes' factors, "
        f"{budget['fid_images']} held-out shapes vs as many samples. "
        f"Training time per run: {budget['mean_train_seconds']:.0f} s on {budget['device']}.",
    ]
    return "\n".join(lines) + "\n"


def save_curves(results: Sequence[Mapping[str, Any]], out: pathlib.Path) -> pathlib.Path:
    """``curves.png``: domain FID and the discriminator's loss over training, mean over seeds."""
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {
        "domain FID (not FID)": {},
        "discriminator loss": {},
    }
    for injection in INJECTIONS:
        curves = [r["curve"] for r in results if r["injection"] == injection]
        if not curves:
            continue
        for panel, steps_key, values_key in (
            ("domain FID (not FID)", "fid_steps", "domain_fid"),
            ("discriminator loss", "loss_steps", "discriminator_loss"),
        ):
            length = min(len(c[values_key]) for c in curves)
            steps = np.asarray(curves[0][steps_key][:length], np.float64)
            values = np.mean([c[values_key][:length] for c in curves], axis=0)
            panels[panel][injection] = (steps, values)
    return save_line_plot_grid(out / "curves.png", panels, "loop step", "value", ncols=2)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    runs.add_run_arguments(
        parser,
        per="injection",
        seeds=3,
        out="runs/gan_geometry",
        steps_help="loop steps per run (0: the demo config's)",
    )
    parser.add_argument(
        "--width", type=int, default=0, help="both networks' width (0: the demo config's)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=0, help="training batch (0: the demo config's)"
    )
    parser.add_argument("--condition-pairs", type=int, default=2000, help="pairs for MC/TTMC")
    parser.add_argument("--fid-batches", type=int, default=16, help="batches of 32 for domain FID")
    parser.add_argument(
        "--domain-feature-steps",
        type=int,
        default=400,
        help="training steps of domain FID's feature network",
    )
    parser.add_argument("--rank-samples", type=int, default=4, help="latents for the ranks")
    runs.add_subset_argument(parser, "--injections", INJECTIONS)
    args = parser.parse_args(argv)
    injections = runs.chosen(args.injections, INJECTIONS)
    if injections is None or args.seeds < 1:
        parser.error(
            f"--injections {args.injections!r} / --seeds {args.seeds}: injections among "
            f"{', '.join(INJECTIONS)}, at least one seed"
        )
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [run_one(i, seed, args) for seed in range(args.seeds) for i in injections]
    table = summarize(results)
    budget = {
        "steps": results[0]["steps"],
        "seeds": list(range(args.seeds)),
        "condition_pairs": args.condition_pairs,
        "rank_samples": args.rank_samples,
        "fid_images": args.fid_batches * 32,
        "mean_train_seconds": runs.mean_of_measured([r["train_seconds"] for r in results]),
        "device": runs.device_kind(),
    }
    report = {"table": table, "budget": budget, "runs": results}
    save_curves(results, out)
    runs.save_report(out, "geometry", report, format_markdown(table, budget))
    return report


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    main()
