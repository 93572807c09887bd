"""GANs with Euclidean or Riemannian noise injection (gan-noise-injection paper) on the one loop.

Two players, two optimizers, one state: a step of kind ``'discriminator'`` (every even loop step;
``'discriminator_r1'`` every ``loss.r1_every``-th of them when ``loss.r1_gamma`` > 0, the lazy R1
of StyleGAN2) or ``'generator'`` (odd steps), each compiled once. Losses (Goodfellow et al. 2014,
non-saturating; Mescheder et al. 2018 for R1):

* discriminator: ``softplus(D(G(z))) + softplus(−D(x))``, plus with R1
  ``r1_every · γ/2 · ‖∇ₓD(x)‖²`` (lazy: the penalty is applied every ``r1_every`` discriminator
  steps, scaled up by that interval);
* generator: ``softplus(−D(G(z)))``, then the EMA of its weights
  ``ema ← β·ema + (1 − β)·params`` with β = `ema_decay` (samples and evaluation use the EMA).

Latents and injected noise are drawn per row from ``fold_in(step key, position)``: a sample does not
depend on the device or backend that computes it. BatchNorm statistics are over the global batch
(``axis_name`` under pmap), so jit and pmap give the same run.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from noise_research import config_schema as cs
from noise_research.data.base import BatchSource
from noise_research.data.shapes import ShapeBatches
from noise_research.layers.noise_injection import RNI_VARIANTS
from noise_research.layers.noise_maps import per_example
from noise_research.models.dcgan import (
    DCGAN_RESOLUTIONS,
    INJECTIONS,
    DCGANDiscriminator,
    DCGANGenerator,
)
from noise_research.tasks.base import Task
from noise_research.train.loop import LoopConfig
from noise_research.train.parallel import ParallelContext, cross_replica_mean
from noise_research.train.rng import step_rngs
from noise_research.viz import save_image_grid

DATASETS = ("shapes",)
EVAL_LATENT_OFFSET = 1_000_003  # eval latents come from positions no training step uses
FIGURE_NOISE_DRAWS = 100  # the paper's Figure 1: per-pixel std over this many noise draws


@dataclasses.dataclass(frozen=True)
class GanData:
    """The ``data`` section."""

    name: str = cs.setting("shapes", cs.one_of(*DATASETS), "'shapes' (embedded, coloured shapes)")
    resolution: int = cs.setting(32, cs.one_of(*DCGAN_RESOLUTIONS), "image side")
    batch_size: int = cs.setting(64, cs.batch_size(), "global batch of real images (and fakes)")
    seed: int = cs.setting(0, cs.integer(minimum=0), "seed of the embedded images")


@dataclasses.dataclass(frozen=True)
class GanModel:
    """The ``model`` section: a DCGAN pair (``models/dcgan.py``)."""

    latent_dim: int = cs.setting(100, cs.integer(minimum=1), "dimension of z ~ N(0, I)")
    width: int = cs.setting(64, cs.integer(minimum=1), "channels of the last generator features")
    discriminator_width: int = cs.setting(
        64, cs.integer(minimum=1), "channels of the first discriminator conv"
    )
    injection: str = cs.setting(
        "none", cs.one_of(*INJECTIONS), "'none', 'euclidean' (eq. 18) or 'riemannian' (eqs. 13–17)"
    )
    inject_at: tuple[int, ...] = cs.setting(
        (4, 8, 16, 32),
        cs.Rule(
            lambda v, _: isinstance(v, (tuple, list)) and all(s in (4, 8, 16, 32) for s in v),
            "a tuple of sides among 4, 8, 16, 32",
        ),
        "feature sides that get noise after their ReLU (the authors: 4, 8, 16, 32)",
    )
    rni_variant: str = cs.setting(
        "authors", cs.one_of(*RNI_VARIANTS), "the RNI form: the authors' code or the paper's"
    )


@dataclasses.dataclass(frozen=True)
class GanLoss:
    """The ``loss`` section."""

    r1_gamma: float = cs.setting(0.0, cs.number(minimum=0), "R1 weight γ (0: no R1)")
    r1_every: int = cs.setting(16, cs.integer(minimum=1), "discriminator steps between R1 steps")
    ema_decay: float = cs.setting(
        0.999,
        cs.fraction_below_one(),
        "decay of the generator's weight EMA, ramped up as min(decay, (1 + t) / (10 + t)) at "
        "generator step t so that the initial weights do not dominate a short run",
    )


@dataclasses.dataclass(frozen=True)
class GanOptimizer:
    """The ``optimizer`` section: Adam for both players (DESIGN.md: lr 2e-4, β = (0.5, 0.99))."""

    generator_learning_rate: float = cs.setting(2e-4, cs.positive_number(), "generator Adam lr")
    discriminator_learning_rate: float = cs.setting(
        2e-4, cs.positive_number(), "discriminator Adam lr"
    )
    beta1: float = cs.setting(0.5, cs.fraction_below_one(), "Adam β1")
    beta2: float = cs.setting(0.99, cs.fraction_below_one(), "Adam β2")


@dataclasses.dataclass(frozen=True)
class GanEval:
    """The ``eval`` section."""

    batch_size: int = cs.setting(64, cs.batch_size(), "global eval batch", resumable=True)
    num_batches: int = cs.setting(2, cs.integer(minimum=1), "eval batches", resumable=True)


SECTIONS = {
    "train": LoopConfig,
    "data": GanData,
    "model": GanModel,
    "loss": GanLoss,
    "optimizer": GanOptimizer,
    "eval": GanEval,
}


def config_rules() -> dict[str, cs.Rule]:
    """Every key a GAN config may hold, and what each allows."""
    return cs.experiment_rules(SECTIONS, task=cs.one_of("gan"))


def experiment_config(*, injection: str = "none", demo: bool = False) -> Any:
    """The DCGAN experiment (DESIGN.md: lr 2e-4, Adam(0.5, 0.99), batch 128, injection at 4, 8,
    16, 32); ``demo=True``: a 32² DCGAN that learns the embedded shapes in minutes on 2 cores."""
    sections = {
        "train": LoopConfig(num_steps=20_000, log_every=100, eval_every=2_000, report_every=5_000),
        "data": GanData(batch_size=128),
        "model": GanModel(injection=injection),
        "loss": GanLoss(),
        "optimizer": GanOptimizer(),
        "eval": GanEval(),
    }
    if demo:
        sections.update(
            train=LoopConfig(
                num_steps=1_200, log_every=50, eval_every=400, report_every=0, checkpoint_every=400
            ),
            data=GanData(batch_size=32),
            model=GanModel(injection=injection, width=16, discriminator_width=16),
            optimizer=GanOptimizer(generator_learning_rate=1e-3, discriminator_learning_rate=1e-3),
            eval=GanEval(batch_size=32, num_batches=2),
        )
    return cs.config_dict(sections, task="gan")


VARIANTS = tuple(f"{injection}{suffix}" for injection in INJECTIONS for suffix in ("", "_demo"))
"""Config-file arguments: an injection, with ``_demo`` for the CPU size (``dcgan.py:none_demo``)."""


def variant_from_arg(arg: str | None) -> tuple[str, bool]:
    """``(injection, demo)`` of the config-file argument; empty means ``'none'`` at full size."""
    if arg in (None, ""):
        return "none", False
    if arg not in VARIANTS:
        raise ValueError(f"config argument {arg!r} is unknown; allowed: {', '.join(VARIANTS)}")
    return arg.removesuffix("_demo"), arg.endswith("_demo")


@flax.struct.dataclass
class GanState:
    """Everything a GAN run needs to continue bit-for-bit: both players' params, BatchNorm
    statistics and optimizer states, the generator's EMA weights, the step and the root key."""

    step: jax.Array
    generator: Any
    generator_stats: Any
    generator_ema: Any
    generator_opt: Any
    discriminator: Any
    discriminator_stats: Any
    discriminator_opt: Any
    rng: jax.Array


def build(config: Mapping[str, Any]) -> GanTask:
    """The task for a validated config (a plain nested dict)."""
    return GanTask(config)


class GanTask(Task):
    """Train steps, evaluation and report of the GAN experiment (see the module docstring)."""

    sections = SECTIONS

    def __init__(self, config: Mapping[str, Any]):
        self.config = config
        self.data = cs.read_section(GanData, config["data"])
        self.model_config = cs.read_section(GanModel, config["model"])
        self.loss = cs.read_section(GanLoss, config["loss"])
        self.optimizer = cs.read_section(GanOptimizer, config["optimizer"])
        self.eval_config = cs.read_section(GanEval, config["eval"])
        self.num_eval_batches = self.eval_config.num_batches
        model = self.model_config
        self.generator_tx = optax.adam(
            self.optimizer.generator_learning_rate, self.optimizer.beta1, self.optimizer.beta2
        )
        self.discriminator_tx = optax.adam(
            self.optimizer.discriminator_learning_rate, self.optimizer.beta1, self.optimizer.beta2
        )
        self._generator_fields = dict(
            resolution=self.data.resolution,
            width=model.width,
            injection=model.injection,
            inject_at=tuple(model.inject_at),
            rni_variant=model.rni_variant,
        )
        self.generator = DCGANGenerator(**self._generator_fields)
        self.discriminator = DCGANDiscriminator(width=model.discriminator_width)

    def keys_free_on_resume(self) -> set[str]:
        """The loop's resumable keys and ``train.num_steps``: both players train at constant
        rates, so a longer run is the same run, extended."""
        return super().keys_free_on_resume() | {"train.num_steps"}

    # --- models bound to a backend ----------------------------------------------------------
    def _models(self, parallel: ParallelContext) -> tuple[DCGANGenerator, DCGANDiscriminator]:
        """The pair with BatchNorm statistics over the global batch on this backend."""
        return (
            DCGANGenerator(**self._generator_fields, axis_name=parallel.axis_name),
            DCGANDiscriminator(
                width=self.model_config.discriminator_width, axis_name=parallel.axis_name
            ),
        )

    # --- data -------------------------------------------------------------------------------
    def train_source(self, process_index: int, process_count: int) -> BatchSource:
        size = (self.data.resolution, self.data.resolution)
        return ShapeBatches(
            self.data.batch_size, size, self.data.seed, process_index, process_count
        )

    def eval_source(self, process_index: int, process_count: int) -> BatchSource:
        size = (self.data.resolution, self.data.resolution)
        return ShapeBatches(
            self.eval_config.batch_size, size, self.data.seed + 1, process_index, process_count
        )

    # --- state ------------------------------------------------------------------------------
    def init(self, rng: jax.Array, example_batch: Mapping[str, Any]) -> GanState:
        generator_key, discriminator_key, root_key = jax.random.split(rng, 3)
        z = jnp.zeros((1, self.model_config.latent_dim))
        generator_variables = self.generator.init({"params": generator_key}, z, inject=False)
        images = jnp.zeros((1, *example_batch["image"].shape[1:]))
        discriminator_variables = self.discriminator.init({"params": discriminator_key}, images)
        generator = generator_variables["params"]
        discriminator = discriminator_variables["params"]
        return GanState(
            step=jnp.zeros((), jnp.int32),
            generator=generator,
            generator_stats=generator_variables["batch_stats"],
            generator_ema=generator,
            generator_opt=self.generator_tx.init(generator),
            discriminator=discriminator,
            discriminator_stats=discriminator_variables["batch_stats"],
            discriminator_opt=self.discriminator_tx.init(discriminator),
            rng=jax.random.key_data(root_key),
        )

    def latents(self, key: jax.Array, positions: jax.Array) -> jax.Array:
        """z ~ N(0, I) per row, from ``fold_in(key, position)``: (B, latent_dim)."""
        dim = self.model_config.latent_dim
        return per_example(key, positions, lambda k: jax.random.normal(k, (dim,)))

    # --- steps ------------------------------------------------------------------------------
    def _fakes(self, state: GanState, positions: jax.Array, kind: str, parallel, generator=None):
        """Generated images (train-mode BatchNorm) and the generator's new statistics."""
        keys = step_rngs(jax.random.wrap_key_data(state.rng), state.step, ("latent", "noise"), kind)
        generator_model, _ = self._models(parallel)
        params = state.generator if generator is None else generator
        images, updates = generator_model.apply(
            {"params": params, "batch_stats": state.generator_stats},
            self.latents(keys["latent"], positions),
            train=True,
            positions=positions,
            rngs={"noise": keys["noise"]},
            mutable=["batch_stats"],
        )
        return images, updates["batch_stats"]

    def _discriminator_step(self, kind: str, r1: bool):
        def step(state: GanState, batch: Mapping[str, jax.Array], parallel: ParallelContext):
            _, discriminator_model = self._models(parallel)
            fakes, _ = self._fakes(state, batch["position"], kind, parallel)
            fakes = jax.lax.stop_gradient(fakes)
            reals = batch["image"]

            def loss_fn(params):
                def logits(images, stats):
                    return discriminator_model.apply(
                        {"params": params, "batch_stats": stats},
                        images,
                        train=True,
                        mutable=["batch_stats"],
                    )

                real_logits, real_updates = logits(reals, state.discriminator_stats)
                fake_logits, fake_updates = logits(fakes, real_updates["batch_stats"])
                loss = jnp.mean(jax.nn.softplus(fake_logits) + jax.nn.softplus(-real_logits))
                metrics = {
                    "discriminator_loss": loss,
                    "real_logit": jnp.mean(real_logits),
                    "fake_logit": jnp.mean(fake_logits),
                }
                if r1:
                    penalty = r1_penalty(lambda x: logits(x, state.discriminator_stats)[0], reals)
                    metrics["r1_penalty"] = penalty
                    loss = loss + self.loss.r1_every * self.loss.r1_gamma / 2 * penalty
                return loss, (metrics, fake_updates["batch_stats"])

            grads, (metrics, stats) = jax.grad(loss_fn, has_aux=True)(state.discriminator)
            grads = cross_replica_mean(grads, parallel)
            updates, opt = self.discriminator_tx.update(
                grads, state.discriminator_opt, state.discriminator
            )
            new_state = state.replace(
                step=state.step + 1,
                discriminator=optax.apply_updates(state.discriminator, updates),
                discriminator_stats=stats,
                discriminator_opt=opt,
            )
            return new_state, cross_replica_mean(metrics, parallel)

        return step

    def _generator_step(
        self, state: GanState, batch: Mapping[str, jax.Array], parallel: ParallelContext
    ):
        _, discriminator_model = self._models(parallel)

        def loss_fn(params):
            fakes, stats = self._fakes(state, batch["position"], "generator", parallel, params)
            logits, _ = discriminator_model.apply(
                {"params": state.discriminator, "batch_stats": state.discriminator_stats},
                fakes,
                train=True,
                mutable=["batch_stats"],
            )
            loss = jnp.mean(jax.nn.softplus(-logits))
            return loss, ({"generator_loss": loss}, stats)

        grads, (metrics, stats) = jax.grad(loss_fn, has_aux=True)(state.generator)
        grads = cross_replica_mean(grads, parallel)
        updates, opt = self.generator_tx.update(grads, state.generator_opt, state.generator)
        generator = optax.apply_updates(state.generator, updates)
        decay = ema_decay(self.loss.ema_decay, state.step // 2)
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.generator_ema, generator)
        new_state = state.replace(
            step=state.step + 1,
            generator=generator,
            generator_stats=stats,
            generator_ema=ema,
            generator_opt=opt,
        )
        return new_state, cross_replica_mean(metrics, parallel)

    def train_steps(self):
        steps = {
            "discriminator": self._discriminator_step("discriminator", r1=False),
            "generator": self._generator_step,
        }
        if self.loss.r1_gamma > 0:
            steps["discriminator_r1"] = self._discriminator_step("discriminator_r1", r1=True)
        return steps

    def step_kind(self, step: int) -> str:
        """Even steps train the discriminator (with R1 every ``r1_every``-th of them), odd steps
        the generator."""
        if step % 2:
            return "generator"
        if self.loss.r1_gamma > 0 and (step // 2) % self.loss.r1_every == 0:
            return "discriminator_r1"
        return "discriminator"

    # --- evaluation -------------------------------------------------------------------------
    def sample(
        self,
        state: GanState,
        z: jax.Array,
        noise: Mapping[int, jax.Array] | None = None,
        noise_key: jax.Array | None = None,
        inject: bool = True,
    ) -> jax.Array:
        """Images of the EMA generator in evaluation mode (BatchNorm running statistics), with
        the injected noise given, drawn from ``noise_key``, or switched off."""
        rngs = {} if noise_key is None else {"noise": noise_key}
        return self.generator.apply(
            {"params": state.generator_ema, "batch_stats": state.generator_stats},
            z,
            noise=noise,
            inject=inject,
            rngs=rngs,
        )

    def eval_step(
        self, state: GanState, batch: Mapping[str, jax.Array], parallel: ParallelContext
    ) -> dict[str, jax.Array]:
        """The discriminator's view of held-out real images and of EMA samples, and how far the
        samples' colour statistics are from the real batch's (a cheap drift signal)."""
        _, discriminator_model = self._models(parallel)
        root = jax.random.wrap_key_data(state.rng)
        positions = batch["position"] + EVAL_LATENT_OFFSET
        z = self.latents(jax.random.fold_in(root, EVAL_LATENT_OFFSET), positions)
        fakes = self.sample(state, z, noise_key=jax.random.fold_in(root, EVAL_LATENT_OFFSET + 1))
        variables = {"params": state.discriminator, "batch_stats": state.discriminator_stats}
        real_logits = discriminator_model.apply(variables, batch["image"])
        fake_logits = discriminator_model.apply(variables, fakes)
        metrics = {
            "real_logit": jnp.mean(real_logits),
            "fake_logit": jnp.mean(fake_logits),
            "colour_mean_gap": jnp.mean(
                jnp.abs(jnp.mean(fakes, axis=(0, 1, 2)) - jnp.mean(batch["image"], axis=(0, 1, 2)))
            ),
        }
        return cross_replica_mean(metrics, parallel)

    # --- report -----------------------------------------------------------------------------
    def report(self, state: GanState, workdir: str, step: int) -> dict[str, float]:
        """``samples.png``: 8 × 8 EMA samples with the injected noise fixed; ``noise_std.png``
        (with injection): 8 latents, each with the per-pixel standard deviation of its image over
        100 noise draws (the paper's Figure 1)."""
        out = os.path.join(workdir, "report", f"step_{step:07d}")
        os.makedirs(out, exist_ok=True)
        root = jax.random.wrap_key_data(state.rng)
        z = self.latents(jax.random.fold_in(root, 1), jnp.arange(64))
        noise_key = jax.random.fold_in(root, 2)
        images = np.asarray(_jitted_sample(self)(state, z, noise_key))
        save_image_grid(os.path.join(out, "samples.png"), list(images), [""] * 64, ncols=8)
        results: dict[str, float] = {}
        if self.model_config.injection != "none":
            draws = jax.random.split(jax.random.fold_in(root, 3), FIGURE_NOISE_DRAWS)
            per_draw = jax.lax.map(lambda key: _jitted_sample(self)(state, z[:8], key), draws)
            std = np.asarray(jnp.mean(jnp.std(per_draw, axis=0), axis=-1, keepdims=True))
            grid = [*images[:8], *(std / max(float(std.max()), 1e-8) * 2.0 - 1.0)]
            save_image_grid(os.path.join(out, "noise_std.png"), grid, [""] * 16, ncols=8)
            results["noise_pixel_std"] = float(std.mean())
        return results


@functools.lru_cache(maxsize=8)
def _jitted_sample(task: GanTask):
    return jax.jit(lambda state, z, key: task.sample(state, z, noise_key=key))


def ema_decay(decay: float, generator_step: jax.Array) -> jax.Array:
    """The EMA decay at a generator step t: min(decay, (1 + t) / (10 + t)) (the ramp of
    TensorFlow's ExponentialMovingAverage with ``num_updates``): the average forgets the initial
    weights within the first steps instead of keeping e^(−t(1−decay)) of them."""
    return jnp.minimum(decay, (1.0 + generator_step) / (10.0 + generator_step))


def r1_penalty(logits_fn, reals: jax.Array) -> jax.Array:
    """E‖∇ₓ D(x)‖² over the real images (Mescheder et al. 2018, eq. 9), a mean over the shard
    (the step averages it over shards)."""
    gradients = jax.grad(lambda x: jnp.sum(logits_fn(x)))(reals)
    return jnp.mean(jnp.sum(jnp.square(gradients), axis=(1, 2, 3)))
