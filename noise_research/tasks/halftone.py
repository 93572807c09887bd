"""Halftoning (deep neural dithering) with or without a Noise Incentive Block.

The network maps a gray image I in [−1, 1] to a continuous map y = tanh(·); the halftone is
``h = binarize(y)`` with a straight-through (identity) gradient. Losses (DESIGN.md, from the NIB
authors' halftoning code; the paper's section 4.3 for the blue-noise term):

* tone loss ``mean((blur(h) − blur(I))²)`` with the Gaussian blur of kernel 11, σ = 2, weight 0.6
  (both sides are blurred, so the loss and the tone-PSNR metric measure the same thing);
* quantization loss ``mean(||y| − 1|)``, weight 0.2, pulling y to ±1 so binarization changes little;
* blue-noise loss ``L_B = ‖DCT(H) ⊙ M‖₁`` (paper, section 4.3), as an L1 on the low-frequency DCT
  block between halftone and gray, computed only on a batch of constant-gray images (where the
  gray's spectrum is pure DC), weight 0.3.

Every step trains on ``data.batch_size`` images (procedural comics or a TFDS set) plus
``data.constant_batch_size`` constant-gray images, both through one forward pass.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from noise_research import config_schema as cs
from noise_research.classical import CLASSICAL_HALFTONERS
from noise_research.data import (
    ComicBatches,
    TfdsImageBatches,
    comic_image,
    constant_gray_batch,
    gray_ramp,
    gray_steps,
    sample_images,
)
from noise_research.data.base import BatchSource, ProcessSlice
from noise_research.layers import NIB_COMBINES, NOISE_DISTRIBUTIONS
from noise_research.metrics import halftone as metrics
from noise_research.models.halftone import FIRST_LAYERS, HALFTONE_MODELS, build_halftone_model
from noise_research.train.loop import loop_config_rules
from noise_research.train.parallel import cross_replica_mean
from noise_research.train.rng import step_rngs
from noise_research.train.state import TrainState
from noise_research.viz import save_image_grid, save_line_plot

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
DTYPES = ("float32", "bfloat16")
EVAL_SEED_OFFSET = 1_000_003  # eval comics come from a seed no training step uses
EVAL_NOISE_INDEX = 2**31 - 1  # eval's dynamic noise: fold_in(root, index) no training step uses


def config_rules() -> dict[str, cs.Rule]:
    """Every key a halftoning config may hold, and what each allows."""
    nib_needs_bernoulli = cs.Rule(
        lambda v, ctx: (
            v in NIB_COMBINES
            and (v != "impulse" or ctx.get("model.nib.distribution") == "bernoulli")
        ),
        "one of 'symmetric', 'impulse', 'feature' ('impulse' needs "
        "model.nib.distribution='bernoulli')",
    )
    noise_scale = cs.Rule(
        lambda v, ctx: (
            isinstance(v, int | float)
            and v >= 0
            and (ctx.get("model.nib.distribution") != "bernoulli" or v <= 1)
        ),
        "a number >= 0 (a probability in [0, 1] for the 'bernoulli' distribution)",
    )
    stationary = cs.Rule(
        lambda v, ctx: isinstance(v, bool) and (v or ctx.get("model.nib.distribution") != "grid"),
        "True or False (the 'grid' control is a fixed pattern: True)",
    )
    return {
        "task": cs.one_of("halftone"),
        **loop_config_rules(),
        "data.name": cs.text(),
        "data.split": cs.text(),
        "data.data_dir": cs.optional(cs.text()),
        "data.image_key": cs.text(),
        "data.crop_size": cs.integer(minimum=8),
        "data.batch_size": cs.batch_size(),
        "data.constant_batch_size": cs.batch_size(),
        "data.seed": cs.integer(minimum=0),
        "model.name": cs.one_of(*HALFTONE_MODELS),
        "model.width": cs.integer(minimum=1),
        "model.first_layer": cs.one_of(*FIRST_LAYERS),
        "model.dtype": cs.one_of(*DTYPES),
        "model.nib.combine": nib_needs_bernoulli,
        "model.nib.distribution": cs.one_of(*NOISE_DISTRIBUTIONS),
        "model.nib.noise_scale": noise_scale,
        "model.nib.stationary": stationary,
        "model.nib.kernel_size": cs.Rule(
            lambda v, _: isinstance(v, int) and v >= 1 and v % 2 == 1, "an odd integer >= 1"
        ),
        "loss.tone_weight": cs.number(minimum=0),
        "loss.quantization_weight": cs.number(minimum=0),
        "loss.blue_noise_weight": cs.number(minimum=0),
        "loss.blue_noise_fraction": cs.number(minimum=0.01, maximum=1.0),
        "optimizer.name": cs.one_of(*OPTIMIZERS),
        "optimizer.learning_rate": cs.positive_number(),
        "optimizer.schedule": cs.one_of(*SCHEDULES),
        "optimizer.warmup_steps": cs.integer(minimum=0),
        "optimizer.weight_decay": cs.number(minimum=0),
        "eval.image_size": cs.integer(minimum=16),
        "eval.batch_size": cs.batch_size(),
        "eval.num_batches": cs.integer(minimum=1),
        "eval.report_image_size": cs.integer(minimum=16),
    }


def binarize(y: jax.Array) -> jax.Array:
    """``round((y+1)/2)·2 − 1`` in the forward pass, identity gradient (straight-through)."""
    hard = jnp.where(y >= 0, 1.0, -1.0).astype(y.dtype)
    return y + jax.lax.stop_gradient(hard - y)


def halftone_losses(
    y: jax.Array, gray: jax.Array, num_constant: int, weights: Mapping[str, float]
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted loss and its terms; the last ``num_constant`` rows are constant-gray images."""
    chex.assert_equal_shape([y, gray])
    halftone = binarize(y)
    tone = jnp.mean((metrics.tone_blur(halftone) - metrics.tone_blur(gray)) ** 2)
    quantization = jnp.mean(jnp.abs(jnp.abs(y) - 1.0))
    fraction = weights["blue_noise_fraction"]
    blue_noise = jnp.mean(
        jnp.abs(
            metrics.dct_low_frequency(halftone[-num_constant:], fraction)
            - metrics.dct_low_frequency(gray[-num_constant:], fraction)
        )
    )
    loss = (
        weights["tone_weight"] * tone
        + weights["quantization_weight"] * quantization
        + weights["blue_noise_weight"] * blue_noise
    )
    return loss, {
        "loss": loss,
        "tone_loss": tone,
        "quantization_loss": quantization,
        "blue_noise_loss": blue_noise,
    }


@dataclasses.dataclass
class HalftoneBatches:
    """Training batches: ``image`` from the image source plus ``constant`` gray images."""

    images: BatchSource
    constant_per_process: int
    crop_size: int
    seed: int
    process_index: int

    @property
    def global_batch_size(self) -> int:
        return self.images.global_batch_size

    def batch(self, step: int) -> dict[str, np.ndarray]:
        constant = constant_gray_batch(
            self.seed,
            step,
            self.constant_per_process,
            (self.crop_size, self.crop_size),
            process_index=self.process_index,
        )
        return {"image": self.images.batch(step)["image"], "constant": constant}


@dataclasses.dataclass
class HalftoneEvalBatches:
    """A fixed eval set: held-out comic images and constant-gray patches at evenly spaced levels."""

    global_batch_size: int
    num_batches: int
    image_size: int
    seed: int
    process_index: int
    process_count: int

    def batch(self, index: int) -> dict[str, np.ndarray]:
        positions = ProcessSlice(
            self.global_batch_size, self.process_index, self.process_count
        ).global_positions(index)
        size = (self.image_size, self.image_size)
        comics = np.stack([comic_image(self.seed + EVAL_SEED_OFFSET, n, size) for n in positions])
        total = self.global_batch_size * self.num_batches
        levels = np.linspace(-0.95, 0.95, total, dtype=np.float32)[list(positions)]
        constant = np.broadcast_to(levels[:, None, None, None], comics.shape).copy()
        return {"image": comics, "constant": constant}


def build(config: Mapping[str, Any]) -> HalftoneTask:
    """The task for a validated config (a plain nested dict)."""
    return HalftoneTask(config)


class HalftoneTask:
    """Train / eval steps and the report of the halftoning experiment (see the module docstring)."""

    def __init__(self, config: Mapping[str, Any]):
        self.config = config
        model_config = dict(config["model"])
        nib = dict(model_config.pop("nib"))
        name = model_config.pop("name")
        dtype = jnp.dtype(model_config.pop("dtype"))
        if model_config["first_layer"] != "nib":
            nib = None  # the model rejects NIB settings for a plain first layer
        self.model: nn.Module = build_halftone_model(name, nib=nib, dtype=dtype, **model_config)
        self.loss_weights = dict(config["loss"])
        self.num_eval_batches = int(config["eval"]["num_batches"])
        self.tx = _make_optimizer(config["optimizer"], config["train"]["num_steps"])
        self._forward_jit = _jitted_forward(self.model)

    # --- data -------------------------------------------------------------------------------
    def train_source(self, process_index: int, process_count: int) -> BatchSource:
        data = self.config["data"]
        common = dict(
            global_batch_size=data["batch_size"],
            seed=data["seed"],
            process_index=process_index,
            process_count=process_count,
        )
        if data["name"] == "comic":
            images = ComicBatches(size=(data["crop_size"], data["crop_size"]), **common)
        else:
            images = TfdsImageBatches(
                data["name"],
                split=data["split"],
                crop_size=data["crop_size"],
                data_dir=data["data_dir"],
                image_key=data["image_key"],
                **common,
            )
        return HalftoneBatches(
            images=images,
            constant_per_process=data["constant_batch_size"] // process_count,
            crop_size=data["crop_size"],
            seed=data["seed"],
            process_index=process_index,
        )

    def eval_source(self, process_index: int, process_count: int) -> BatchSource:
        evaluation = self.config["eval"]
        return HalftoneEvalBatches(
            global_batch_size=evaluation["batch_size"],
            num_batches=evaluation["num_batches"],
            image_size=evaluation["image_size"],
            seed=self.config["data"]["seed"],
            process_index=process_index,
            process_count=process_count,
        )

    # --- pure steps -------------------------------------------------------------------------
    def init(self, rng: jax.Array, example_batch: Mapping[str, Any]) -> TrainState:
        params_key, noise_key, state_key = jax.random.split(rng, 3)
        example = jnp.zeros((1, *example_batch["image"].shape[1:]), jnp.float32)
        variables = self.model.init({"params": params_key, "noise": noise_key}, example)
        return TrainState.create(variables=variables, tx=self.tx, rng=state_key)

    def _forward(self, variables: Any, images: jax.Array, rngs: dict[str, jax.Array]) -> jax.Array:
        return self.model.apply(variables, images, rngs=rngs)

    def train_step(
        self, state: TrainState, batch: Mapping[str, jax.Array], axis_name: str | None
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        gray = jnp.concatenate([batch["image"], batch["constant"]], axis=0)
        num_constant = batch["constant"].shape[0]
        rngs = step_rngs(state.rng, state.step, ("noise",), axis_name)

        def loss_fn(params: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
            y = self._forward({"params": params, **state.model_state}, gray, rngs)
            return halftone_losses(y.astype(jnp.float32), gray, num_constant, self.loss_weights)

        grads, step_metrics = jax.grad(loss_fn, has_aux=True)(state.params)
        grads = cross_replica_mean(grads, axis_name)
        step_metrics = cross_replica_mean(step_metrics, axis_name)
        return state.apply_gradients(grads), step_metrics

    def eval_step(
        self, state: TrainState, batch: Mapping[str, jax.Array], axis_name: str | None
    ) -> dict[str, jax.Array]:
        rngs = {"noise": jax.random.fold_in(state.rng, EVAL_NOISE_INDEX)}
        results = {}
        for split in ("image", "constant"):
            gray = batch[split]
            y = self._forward(state.variables, gray, rngs).astype(jnp.float32)
            halftone = jnp.where(y >= 0, 1.0, -1.0)
            prefix = "comic" if split == "image" else "constant"
            results[f"{prefix}/tone_psnr"] = jnp.mean(metrics.tone_psnr(halftone, gray))
            results[f"{prefix}/ssim"] = jnp.mean(metrics.ssim(halftone, gray))
            results[f"{prefix}/fraction_binary"] = jnp.mean(metrics.fraction_binary(y))
        return cross_replica_mean(results, axis_name)

    # --- host-side report -------------------------------------------------------------------
    def halftone_images(self, state: TrainState, gray: np.ndarray) -> np.ndarray:
        """The model's halftones in {−1, +1} of a host batch (B, H, W, 1)."""
        y = self._forward_jit(state.variables, jnp.asarray(gray), jax.random.PRNGKey(0))
        return np.where(np.asarray(y) >= 0, 1.0, -1.0).astype(np.float32)

    def report(self, state: TrainState, workdir: str, step: int) -> dict[str, float]:
        """Pictures (halftones, spectra, classical methods side by side) and the comparison table.

        Every method halftones one image at a time, so the model and the jitted error-diffusion
        engine compile once per image size (the report size and the eval size), not once per batch.
        """
        out = os.path.join(workdir, "report", f"step_{step:07d}")
        os.makedirs(out, exist_ok=True)
        model_name = f"{self.config['model']['first_layer']}-{self.config['model']['name']}"
        methods = {model_name: lambda gray: self.halftone_images(state, gray)}
        methods.update(CLASSICAL_HALFTONERS)
        methods = {name: _one_image_at_a_time(fn) for name, fn in methods.items()}

        size = self.config["eval"]["report_image_size"]
        samples = sample_images(size=size)
        ramps = {
            "ramp": gray_ramp((size, size)),
            "steps": gray_steps(np.linspace(-0.9, 0.9, 8), (size, size)),
        }
        for file_name, images in (("samples.png", samples), ("gray_ramps.png", ramps)):
            gray = np.stack(list(images.values()))
            halftones = {name: fn(gray) for name, fn in methods.items()}
            grid, titles = [], []
            for i, image_name in enumerate(images):
                grid.append(gray[i])
                titles.append(image_name)
                for name in methods:
                    grid.append(halftones[name][i])
                    titles.append(name)
            save_image_grid(os.path.join(out, file_name), grid, titles, ncols=len(methods) + 1)

        spectra, anisotropies, table = {}, {}, {}
        levels = {"1/8": -0.75, "1/4": -0.5, "1/2": 0.0}
        for name, fn in methods.items():
            row: dict[str, float] = {}
            for label, level in levels.items():
                flat = np.full((4, size, size, 1), level, np.float32)
                flat_halftones = fn(flat)
                spectra[f"{name} g={label}"] = metrics.radially_averaged_power_spectrum(
                    flat_halftones
                )
                if label == "1/2":
                    anisotropies[name] = metrics.anisotropy(flat_halftones)
                row[f"constant_{label}_low_frequency_energy"] = float(
                    metrics.low_frequency_energy(flat_halftones)
                )
            table[name] = row
        save_line_plot(
            os.path.join(out, "spectra.png"),
            spectra,
            xlabel="radial frequency (cycles/pixel)",
            ylabel="power",
            title="Radially averaged power spectra of constant-gray halftones",
            logy=True,
        )
        save_line_plot(
            os.path.join(out, "anisotropy.png"),
            anisotropies,
            xlabel="radial frequency (cycles/pixel)",
            ylabel="anisotropy (dB)",
            title="Anisotropy of mid-gray halftones",
        )

        eval_source = self.eval_source(0, 1)
        eval_batches = [eval_source.batch(i) for i in range(self.num_eval_batches)]
        for split, prefix in (("image", "comic"), ("constant", "constant")):
            gray_eval = np.concatenate([b[split] for b in eval_batches])
            for name, fn in methods.items():
                halftone_eval = jnp.asarray(fn(gray_eval))
                table[name][f"{prefix}_tone_psnr"] = float(
                    np.mean(metrics.tone_psnr(halftone_eval, jnp.asarray(gray_eval)))
                )
                table[name][f"{prefix}_ssim"] = float(
                    np.mean(metrics.ssim(halftone_eval, jnp.asarray(gray_eval)))
                )
        _write_table(out, table, step)
        return {f"{name}/{key}": value for name, row in table.items() for key, value in row.items()}


def _one_image_at_a_time(halftoner):
    def halftone_each(gray: np.ndarray) -> np.ndarray:
        return np.concatenate([halftoner(gray[i : i + 1]) for i in range(gray.shape[0])])

    return halftone_each


def _jitted_forward(model: nn.Module):
    @jax.jit
    def forward(variables: Any, gray: jax.Array, noise_key: jax.Array) -> jax.Array:
        return model.apply(variables, gray, rngs={"noise": noise_key})

    return forward


def _write_table(out: str, table: dict[str, dict[str, float]], step: int) -> None:
    with open(os.path.join(out, "comparison.json"), "w") as f:
        json.dump({"step": step, "methods": table}, f, indent=2)
    columns = list(next(iter(table.values())))
    lines = [
        "| method | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.4g}" for c in columns) + " |")
    with open(os.path.join(out, "comparison.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _make_optimizer(config: Mapping[str, Any], num_steps: int) -> optax.GradientTransformation:
    """Adam (the authors': lr 1e-4) or AdamW, constant or cosine schedule with linear warm-up."""
    peak = config["learning_rate"]
    warmup = config["warmup_steps"]
    if config["schedule"] == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, peak, warmup_steps=warmup, decay_steps=max(num_steps, warmup + 1)
        )
    elif warmup:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup]
        )
    else:
        schedule = peak
    if config["name"] == "adamw":
        return optax.adamw(schedule, weight_decay=config["weight_decay"])
    return optax.adam(schedule)
