"""GANs with Euclidean or Riemannian noise injection (gan-noise-injection paper) on the one loop.

Two players, two optimizers, one state: a step of kind ``'discriminator'`` (every even loop step;
``'discriminator_r1'`` every ``loss.r1_every``-th of them when ``loss.r1_gamma`` > 0, the lazy R1
of StyleGAN2) or ``'generator'`` (odd steps; ``'generator_path_length'`` every
``loss.path_length_every``-th of them when ``loss.path_length_weight`` > 0, StyleGAN2 only),
each compiled once. The pair is a DCGAN or a StyleGAN2 (``model.architecture``), both behind
``models/gan_pairs.py``. Losses (Goodfellow et al. 2014, non-saturating; Mescheder et al. 2018
for R1; Karras et al. 2020 for the path length, see `GanTask._path_length_penalty`):

* discriminator: ``softplus(D(G(z))) + softplus(−D(x))``, plus with R1
  ``r1_every · γ/2 · ‖∇ₓD(x)‖²`` (lazy: the penalty is applied every ``r1_every`` discriminator
  steps, scaled up by that interval);
* generator: ``softplus(−D(G(z)))``, then the EMA of its weights
  ``ema ← β·ema + (1 − β)·params`` with β = `ema_decay` (samples and evaluation use the EMA).

Latents and injected noise are drawn per row from ``fold_in(step key, position)``: a sample does not
depend on the device or backend that computes it. BatchNorm statistics, StyleGAN2's minibatch
standard deviation and the path-length mean are over the global batch, so jit and pmap give the
same run.
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
from noise_research.data.gan_images import CELEBA_CROPS, DEFAULT_CELEBA_CROP, TfdsGanImages
from noise_research.data.shapes import ShapeBatches
from noise_research.layers.noise_injection import RNI_VARIANTS
from noise_research.layers.noise_maps import per_example
from noise_research.metrics.fid import domain_fid_evaluator, fid_evaluator, to_uint8_range
from noise_research.metrics.gan_geometry import condition_number_evaluator
from noise_research.metrics.ppl import ppl_evaluator
from noise_research.models.dcgan import DCGAN_RESOLUTIONS, INJECTIONS
from noise_research.models.gan_pairs import DCGANPair, StyleGAN2Pair
from noise_research.models.inception import load_fid_inception_variables
from noise_research.models.lpips import load_lpips_vgg16_variables
from noise_research.tasks.base import Evaluator, Task
from noise_research.train.loop import WEIGHT_KEY, LoopConfig
from noise_research.train.parallel import (
    ParallelContext,
    cross_replica_mean,
    cross_replica_sum,
    global_mean,
)
from noise_research.train.rng import step_rngs
from noise_research.viz import save_image_grid

ARCHITECTURES = ("dcgan", "stylegan2")
EVAL_LATENT_OFFSET = 1_000_003  # eval latents come from positions no training step uses
FIGURE_NOISE_DRAWS = 100  # the paper's Figure 1: per-pixel std over this many noise draws


@dataclasses.dataclass(frozen=True)
class GanData:
    """The ``data`` section."""

    name: str = cs.setting(
        "shapes",
        cs.text(),
        "'shapes' (embedded, coloured shapes) or a TFDS image data set: 'celeb_a', "
        "'lsun/<category>', 'cifar10', … (data/gan_images.py; prepared offline as array_record)",
    )
    train_split: str = cs.setting("train", cs.text(), "TFDS: the training split")
    eval_split: str = cs.setting(
        "train", cs.text(), "TFDS: the split FID's real images come from (GANs: the training set)"
    )
    data_dir: str | None = cs.setting(
        None, cs.optional(cs.text()), "TFDS data_dir; None: TFDS's default", placeholder=str
    )
    celeba_crop: str = cs.setting(
        DEFAULT_CELEBA_CROP, cs.one_of(*CELEBA_CROPS), "celeb_a: the face crop before resizing"
    )
    random_flip: bool = cs.setting(False, cs.boolean(), "TFDS: mirror training images at random")
    input_workers: int | None = cs.setting(
        None,
        cs.optional(cs.integer(minimum=0)),
        "TFDS: processes building batches; None: one per CPU core; 0: a thread of this process",
        placeholder=int,
        resumable=True,
    )
    resolution: int = cs.setting(
        32,
        cs.Rule(
            lambda v, c: (
                v in DCGAN_RESOLUTIONS
                if c.get("model.architecture") == "dcgan"
                else isinstance(v, int) and v >= 4 and v & (v - 1) == 0
            ),
            lambda c: (
                "32 or 64 for model.architecture='dcgan'"
                if c.get("model.architecture") == "dcgan"
                else "a power of two ≥ 4 for model.architecture='stylegan2'"
            ),
        ),
        "image side",
    )
    batch_size: int = cs.setting(64, cs.batch_size(), "global batch of real images (and fakes)")
    seed: int = cs.setting(0, cs.integer(minimum=0), "seed of the embedded images")


def _injection_sides_rule() -> cs.Rule:
    def check(value: Any, context: cs.Context) -> bool:
        if not isinstance(value, (tuple, list)) or not value:
            return False
        resolution = context.get("data.resolution")
        last = resolution // 2 if context.get("model.architecture") == "dcgan" else resolution
        return all(isinstance(s, int) and 4 <= s <= last and s & (s - 1) == 0 for s in value)

    return cs.Rule(
        check,
        lambda c: (
            "a non-empty tuple of feature sides among 4, 8, …, data.resolution / 2 (DCGAN's "
            "ReLU features)"
            if c.get("model.architecture") == "dcgan"
            else "a non-empty tuple of layer sides among 4, 8, …, data.resolution"
        ),
    )


@dataclasses.dataclass(frozen=True)
class GanModel:
    """The ``model`` section: a DCGAN pair (``models/dcgan.py``) or a StyleGAN2 pair
    (``models/stylegan2.py``); both behind ``models/gan_pairs.py``."""

    architecture: str = cs.setting(
        "dcgan",
        cs.one_of(*ARCHITECTURES),
        "'dcgan' (BatchNorm) or 'stylegan2' (mapping network, "
        "modulated convolutions, residual discriminator with minibatch std)",
    )
    latent_dim: int = cs.setting(100, cs.integer(minimum=1), "dimension of z ~ N(0, I)")
    width: int = cs.setting(
        64, cs.integer(minimum=1), "DCGAN: channels of the last generator features"
    )
    discriminator_width: int = cs.setting(
        64, cs.integer(minimum=1), "DCGAN: channels of the first discriminator conv"
    )
    injection: str = cs.setting(
        "none", cs.one_of(*INJECTIONS), "'none', 'euclidean' (eq. 18) or 'riemannian' (eqs. 13–17)"
    )
    inject_at: tuple[int, ...] = cs.setting(
        (4, 8, 16),
        _injection_sides_rule(),
        "feature sides that get noise (DCGAN: after their ReLU, the authors: 4, 8, 16, 32; "
        "StyleGAN2: every synthesis layer at these sides)",
    )
    rni_variant: str = cs.setting(
        "authors", cs.one_of(*RNI_VARIANTS), "the RNI form: the authors' code or the paper's"
    )
    w_dim: int = cs.setting(512, cs.integer(minimum=1), "StyleGAN2: dimension of w")
    mapping_layers: int = cs.setting(8, cs.integer(minimum=1), "StyleGAN2: mapping network depth")
    channel_base: int = cs.setting(
        32768, cs.integer(minimum=1), "StyleGAN2: channels C(side) = min(channel_max, base / side)"
    )
    channel_max: int = cs.setting(512, cs.integer(minimum=1), "StyleGAN2: the most channels")
    mbstd_group_size: int = cs.setting(
        4,
        cs.Rule(
            lambda v, c: isinstance(v, int) and v >= 1 and c.get("data.batch_size") % v == 0,
            "a positive integer dividing data.batch_size",
        ),
        "StyleGAN2: rows per minibatch-std group (over the global batch)",
    )
    style_mixing: float = cs.setting(
        0.9, cs.number(minimum=0, maximum=1), "StyleGAN2: probability of style mixing per row"
    )


@dataclasses.dataclass(frozen=True)
class GanLoss:
    """The ``loss`` section."""

    r1_gamma: float = cs.setting(0.0, cs.number(minimum=0), "R1 weight γ (0: no R1)")
    r1_every: int = cs.setting(16, cs.integer(minimum=1), "discriminator steps between R1 steps")
    path_length_weight: float = cs.setting(
        0.0,
        cs.Rule(
            lambda v, c: (
                isinstance(v, (int, float))
                and v >= 0
                and (v == 0 or c.get("model.architecture") == "stylegan2")
            ),
            "a number ≥ 0, and 0 unless model.architecture = 'stylegan2' (it regularises w → G)",
        ),
        "path-length regulariser weight (StyleGAN2: 2; 0: off)",
    )
    path_length_every: int = cs.setting(
        4, cs.integer(minimum=1), "generator steps between path-length steps (lazy, scaled up)"
    )
    path_length_decay: float = cs.setting(
        0.01, cs.number(minimum=0, maximum=1), "update rate of the running path-length mean"
    )
    path_length_batch_shrink: int = cs.setting(
        2,
        cs.Rule(
            lambda v, c: (
                isinstance(v, int)
                and v >= 1
                and (
                    c.get("loss.path_length_weight") == 0
                    or (c.get("data.batch_size") // c.num_devices) % v == 0
                )
            ),
            lambda c: (
                "a positive integer dividing each device's rows, data.batch_size / "
                f"{c.num_devices} devices, when loss.path_length_weight > 0 (the kept rows are "
                "then the same on every backend)"
            ),
        ),
        "the regulariser uses every k-th row of the batch",
    )
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
    eps: float = cs.setting(1e-8, cs.positive_number(), "Adam ε")


@dataclasses.dataclass(frozen=True)
class GanEval:
    """The ``eval`` section: the per-batch drift signals (every ``train.eval_every`` steps) and
    the paper's metrics as evaluators (every ``eval.metrics_every`` steps, 0: at the end)."""

    batch_size: int = cs.setting(64, cs.batch_size(), "global eval batch", resumable=True)
    num_batches: int = cs.setting(2, cs.integer(minimum=1), "eval batches", resumable=True)
    metrics_every: int = cs.setting(
        0,
        cs.integer(minimum=0),
        "steps between FID/condition-number/PPL evaluations; 0: at the end of training",
        resumable=True,
    )
    fid_batches: int = cs.setting(
        0,
        cs.integer(minimum=0),
        "eval batches of real images (and as many samples) for FID, or for domain FID on the "
        "embedded shapes without inception_weights; 0: off",
        resumable=True,
    )
    inception_weights: str | None = cs.setting(
        None,
        cs.optional(cs.text()),
        "pytorch-fid's pt_inception-2015-12-05-6726825d.pth: FID and KID; None: domain FID "
        "(shapes only)",
        placeholder=str,
        resumable=True,
    )
    kid_samples: int = cs.setting(
        0, cs.integer(minimum=0), "rows of each set kept for KID; 0: no KID", resumable=True
    )
    condition_pairs: int = cs.setting(
        0,
        cs.integer(minimum=0),
        "(z, Δz) pairs for the condition numbers MC/TTMC (the paper: 50,000); 0: off",
        resumable=True,
    )
    ppl_pairs: int = cs.setting(
        0, cs.integer(minimum=0), "paths for PPL (StyleGAN: 100,000); 0: off", resumable=True
    )
    vgg16_weights: str | None = cs.setting(
        None,
        cs.optional(cs.text()),
        "torchvision's vgg16-397923af.pth for LPIPS (with lpips_weights); None: ppl_pixel",
        placeholder=str,
        resumable=True,
    )
    lpips_weights: str | None = cs.setting(
        None,
        cs.optional(cs.text()),
        "lpips' weights/v0.1/vgg.pth (shipped in the lpips pip package); None: ppl_pixel",
        placeholder=str,
        resumable=True,
    )
    domain_feature_steps: int = cs.setting(
        400,
        cs.integer(minimum=1),
        "training steps of domain FID's feature network (metrics/domain_features.py)",
    )
    metrics_batch_size: int = cs.setting(
        256, cs.batch_size(), "global pairs per batch of the condition-number and PPL evaluators"
    )


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


def experiment_config(
    *, architecture: str = "dcgan", injection: str = "none", demo: bool = False
) -> Any:
    """The experiment of the gan-noise-injection paper for one architecture and injection.

    * ``'dcgan'`` (DESIGN.md): 32² DCGAN, lr 2e-4, Adam(0.5, 0.99), batch 128, injection after
      every ReLU feature map (4, 8, 16 at 32²; the authors' 4, 8, 16, 32 are a 64² DCGAN's).
    * ``'stylegan2'`` (section 5: 128², config E, StyleGAN2's settings): ``lsun/church_outdoor``,
      batch 32, Adam(0, 0.99) at lr 0.0025, R1 γ = 0.0002 · 128² / 32 ≈ 0.1 every 16 D steps,
      path length weight 2 every 4 G steps, style mixing 0.9, EMA half-life 10k images.

    ``demo=True``: a CPU size on the embedded coloured shapes (minutes on 2 cores).
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture={architecture!r}; allowed: {', '.join(ARCHITECTURES)}")
    if architecture == "dcgan":
        sections = {
            "train": LoopConfig(
                num_steps=20_000, log_every=100, eval_every=2_000, report_every=5_000
            ),
            "data": GanData(batch_size=128),
            "model": GanModel(injection=injection),
            "loss": GanLoss(),
            "optimizer": GanOptimizer(),
            "eval": GanEval(),
        }
        if demo:
            # Measured on 2 CPU cores (README): R1 (γ = 2 every 4 D steps) and a generator twice
            # as fast as the discriminator keep the pair balanced (D loss ≈ 0.65); without R1 or
            # at equal rates the discriminator wins within 600 steps (D loss < 0.05).
            sections.update(
                train=LoopConfig(
                    num_steps=3_000,
                    log_every=50,
                    eval_every=500,
                    report_every=0,
                    checkpoint_every=500,
                ),
                data=GanData(batch_size=32),
                model=GanModel(injection=injection, width=16, discriminator_width=16),
                loss=GanLoss(r1_gamma=2.0, r1_every=4),
                optimizer=GanOptimizer(
                    generator_learning_rate=4e-4, discriminator_learning_rate=2e-4
                ),
                eval=GanEval(batch_size=32, num_batches=2),
            )
        return cs.config_dict(sections, task="gan")
    sides = (4, 8, 16, 32, 64, 128)
    sections = {
        "train": LoopConfig(
            num_steps=200_000, log_every=100, eval_every=10_000, report_every=20_000
        ),
        "data": GanData(name="lsun/church_outdoor", resolution=128, batch_size=32),
        "model": GanModel(
            architecture="stylegan2",
            latent_dim=512,
            injection=injection,
            inject_at=sides,
            channel_base=16384,
            channel_max=512,
        ),
        "loss": GanLoss(r1_gamma=0.1, path_length_weight=2.0, ema_decay=0.5 ** (32 / 10_000)),
        "optimizer": GanOptimizer(
            generator_learning_rate=0.0025, discriminator_learning_rate=0.0025, beta1=0.0
        ),
        "eval": GanEval(batch_size=32, num_batches=4),
    }
    if demo:
        sections.update(
            train=LoopConfig(
                num_steps=1_200, log_every=50, eval_every=400, report_every=0, checkpoint_every=400
            ),
            data=GanData(resolution=32, batch_size=32),
            model=GanModel(
                architecture="stylegan2",
                latent_dim=64,
                w_dim=64,
                mapping_layers=2,
                injection=injection,
                inject_at=sides[:4],
                channel_base=512,
                channel_max=64,
            ),
            loss=GanLoss(r1_gamma=0.1, path_length_weight=2.0, ema_decay=0.999),
            optimizer=GanOptimizer(
                generator_learning_rate=2e-3, discriminator_learning_rate=2e-3, beta1=0.0
            ),
            eval=GanEval(batch_size=32, num_batches=2),
        )
    return cs.config_dict(sections, task="gan")


VARIANTS = tuple(f"{injection}{suffix}" for injection in INJECTIONS for suffix in ("", "_demo"))
"""Config-file arguments: an injection, with ``_demo`` for the CPU size (``dcgan.py:none_demo``)."""


def variant_from_arg(arg: str | None, default: str = "none") -> tuple[str, bool]:
    """``(injection, demo)`` of the config-file argument; empty means ``default`` at full size."""
    if arg in (None, ""):
        return default, False
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


def make_pair(model: GanModel, resolution: int) -> DCGANPair | StyleGAN2Pair:
    """The generator–discriminator pair of the ``model`` section (``models/gan_pairs.py``)."""
    injection = dict(
        injection=model.injection, inject_at=tuple(model.inject_at), rni_variant=model.rni_variant
    )
    if model.architecture == "dcgan":
        return DCGANPair(
            generator_fields=dict(resolution=resolution, width=model.width, **injection),
            discriminator_width=model.discriminator_width,
            latent_dim=model.latent_dim,
        )
    channels = dict(channel_base=model.channel_base, channel_max=model.channel_max)
    return StyleGAN2Pair(
        generator_fields=dict(
            resolution=resolution,
            w_dim=model.w_dim,
            mapping_layers=model.mapping_layers,
            **channels,
            **injection,
        ),
        discriminator_fields=dict(**channels, mbstd_group_size=model.mbstd_group_size),
        latent_dim=model.latent_dim,
        style_mixing=model.style_mixing,
    )


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
        adam = dict(b1=self.optimizer.beta1, b2=self.optimizer.beta2, eps=self.optimizer.eps)
        self.generator_tx = optax.adam(self.optimizer.generator_learning_rate, **adam)
        self.discriminator_tx = optax.adam(self.optimizer.discriminator_learning_rate, **adam)
        self.pair = make_pair(self.model_config, self.data.resolution)
        self.generator = self.pair.generator

    def keys_free_on_resume(self) -> set[str]:
        """The loop's resumable keys and ``train.num_steps``: both players train at constant
        rates, so a longer run is the same run, extended."""
        return super().keys_free_on_resume() | {"train.num_steps"}

    # --- data -------------------------------------------------------------------------------
    def _source(self, train: bool, process_index: int, process_count: int) -> BatchSource:
        data = self.data
        batch_size = data.batch_size if train else self.eval_config.batch_size
        if data.name == "shapes":
            size = (data.resolution, data.resolution)
            seed = data.seed if train else data.seed + 1
            return ShapeBatches(batch_size, size, seed, process_index, process_count)
        split_key = "data.train_split" if train else "data.eval_split"
        return TfdsGanImages(
            data.name,
            split=data.train_split if train else data.eval_split,
            global_batch_size=batch_size,
            resolution=data.resolution,
            train=train,
            seed=data.seed,
            data_dir=data.data_dir,
            celeba_crop=data.celeba_crop,
            random_flip=data.random_flip,
            num_workers=data.input_workers,
            process_index=process_index,
            process_count=process_count,
            config_keys={
                "name": "data.name",
                "split": split_key,
                "data_dir": "data.data_dir",
                "resolution": "data.resolution",
                "celeba_crop": "data.celeba_crop",
            },
        )

    def train_source(self, process_index: int, process_count: int) -> BatchSource:
        return self._source(True, process_index, process_count)

    def eval_source(self, process_index: int, process_count: int) -> BatchSource:
        return self._source(False, process_index, process_count)

    @functools.cached_property
    def num_eval_batches(self) -> int:
        """``eval.num_batches``, refused beyond a TFDS eval split's one pass."""
        requested = self.eval_config.num_batches
        if self.data.name != "shapes":
            available = self.eval_source(0, 1).num_batches
            if requested > available:
                raise cs.ConfigError(
                    f"config.eval.num_batches = {requested!r}: not allowed; the eval split "
                    f"{self.data.eval_split!r} has {available} batches of "
                    f"{self.eval_config.batch_size}"
                )
        return requested

    # --- state ------------------------------------------------------------------------------
    def init(self, rng: jax.Array, example_batch: Mapping[str, Any]) -> GanState:
        pair_key, root_key = jax.random.split(rng)
        variables = self.pair.init(pair_key, tuple(example_batch["image"].shape[1:]))
        return GanState(
            step=jnp.zeros((), jnp.int32),
            generator=variables.generator,
            generator_stats=variables.generator_stats,
            generator_ema=variables.generator,
            generator_opt=self.generator_tx.init(variables.generator),
            discriminator=variables.discriminator,
            discriminator_stats=variables.discriminator_stats,
            discriminator_opt=self.discriminator_tx.init(variables.discriminator),
            rng=jax.random.key_data(root_key),
        )

    def latents(self, key: jax.Array, positions: jax.Array) -> jax.Array:
        """z ~ N(0, I) per row, from ``fold_in(key, position)``: (B, latent_dim)."""
        dim = self.model_config.latent_dim
        return per_example(key, positions, lambda k: jax.random.normal(k, (dim,)))

    # --- steps ------------------------------------------------------------------------------
    def _step_keys(self, state: GanState, kind: str) -> dict[str, jax.Array]:
        root = jax.random.wrap_key_data(state.rng)
        return step_rngs(root, state.step, ("latent", "noise", "mixing", "path_length"), kind)

    def _fakes(self, state, params, positions, keys, parallel):
        """Training-mode fakes of the rows at ``positions`` and the generator's new statistics."""
        z = self.latents(keys["latent"], positions)
        return self.pair.generate(params, state.generator_stats, z, positions, keys, parallel)

    def _discriminator_step(self, kind: str, r1: bool):
        def step(state: GanState, batch: Mapping[str, jax.Array], parallel: ParallelContext):
            keys = self._step_keys(state, kind)
            fakes, _ = self._fakes(state, state.generator, batch["position"], keys, parallel)
            fakes = jax.lax.stop_gradient(fakes)
            reals = batch["image"]

            def loss_fn(params):
                def logits(images, stats):
                    return self.pair.discriminate(params, stats, images, parallel)

                real_logits, real_stats = logits(reals, state.discriminator_stats)
                fake_logits, fake_stats = logits(fakes, real_stats)
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
                return loss, (metrics, fake_stats)

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

    def _path_length_penalty(self, params, stats, positions, keys, parallel):
        """StyleGAN2's path-length regulariser on every ``path_length_batch_shrink``-th row:
        ``a = ‖J_wᵀ y‖₂`` with y ~ N(0, I)/√(H·W) (per row; the w of all layers, averaged over
        layers as StyleGAN2 does), ``(a − ā)²`` with the running mean ā ← ā + decay · (mean a −
        ā) over the global batch. Returns (penalty, new ā, mean a)."""
        rows = positions[:: self.loss.path_length_batch_shrink]
        ws, _ = self.pair.mapped(params, self.latents(keys["latent"], rows), rows, keys["mixing"])
        images, pullback = jax.vjp(
            lambda ws: self.pair.synthesize(params, ws, rows, keys["noise"]), ws
        )
        height, width = images.shape[1:3]
        directions = per_example(
            keys["path_length"], rows, lambda k: jax.random.normal(k, images.shape[1:])
        ) / jnp.sqrt(height * width)
        (gradients,) = pullback(directions)
        lengths = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(gradients), axis=2), axis=1))
        old_mean = stats["path_length_mean"]
        mean_length = global_mean(jax.lax.stop_gradient(lengths), parallel)
        new_mean = old_mean + self.loss.path_length_decay * (mean_length - old_mean)
        penalty = jnp.mean(jnp.square(lengths - new_mean))
        return penalty, new_mean, mean_length

    def _generator_step(self, kind: str, path_length: bool):
        def step(state: GanState, batch: Mapping[str, jax.Array], parallel: ParallelContext):
            keys = self._step_keys(state, kind)

            def loss_fn(params):
                fakes, stats = self._fakes(state, params, batch["position"], keys, parallel)
                logits, _ = self.pair.discriminate(
                    state.discriminator, state.discriminator_stats, fakes, parallel
                )
                loss = jnp.mean(jax.nn.softplus(-logits))
                metrics = {"generator_loss": loss}
                if path_length:
                    penalty, new_mean, mean_length = self._path_length_penalty(
                        params, state.generator_stats, batch["position"], keys, parallel
                    )
                    stats = dict(stats, path_length_mean=new_mean)
                    metrics.update(path_length_penalty=penalty, path_length=mean_length)
                    weight = self.loss.path_length_every * self.loss.path_length_weight
                    loss = loss + weight * penalty
                return loss, (metrics, stats)

            grads, (metrics, stats) = jax.grad(loss_fn, has_aux=True)(state.generator)
            grads = cross_replica_mean(grads, parallel)
            updates, opt = self.generator_tx.update(grads, state.generator_opt, state.generator)
            generator = optax.apply_updates(state.generator, updates)
            decay = ema_decay(self.loss.ema_decay, state.step // 2)
            ema = jax.tree.map(
                lambda e, p: decay * e + (1 - decay) * p, state.generator_ema, generator
            )
            new_state = state.replace(
                step=state.step + 1,
                generator=generator,
                generator_stats=stats,
                generator_ema=ema,
                generator_opt=opt,
            )
            return new_state, cross_replica_mean(metrics, parallel)

        return step

    def train_steps(self):
        steps = {
            "discriminator": self._discriminator_step("discriminator", r1=False),
            "generator": self._generator_step("generator", path_length=False),
        }
        if self.loss.r1_gamma > 0:
            steps["discriminator_r1"] = self._discriminator_step("discriminator_r1", r1=True)
        if self.loss.path_length_weight > 0:
            steps["generator_path_length"] = self._generator_step(
                "generator_path_length", path_length=True
            )
        return steps

    def step_kind(self, step: int) -> str:
        """Even steps train the discriminator (with R1 every ``r1_every``-th of them), odd steps
        the generator (with the path-length regulariser every ``path_length_every``-th)."""
        if step % 2:
            if self.loss.path_length_weight > 0 and (step // 2) % self.loss.path_length_every == 0:
                return "generator_path_length"
            return "generator"
        if self.loss.r1_gamma > 0 and (step // 2) % self.loss.r1_every == 0:
            return "discriminator_r1"
        return "discriminator"

    # --- evaluation -------------------------------------------------------------------------
    def sample(
        self,
        state: GanState,
        z: jax.Array,
        noise: Mapping[Any, jax.Array] | None = None,
        noise_key: jax.Array | None = None,
        inject: bool = True,
    ) -> jax.Array:
        """Images of the EMA generator in evaluation mode (BatchNorm running statistics), with
        the injected noise given, drawn from ``noise_key``, or switched off."""
        return self.pair.sample(
            state.generator_ema, state.generator_stats, z, noise, noise_key, inject
        )

    def eval_step(
        self, state: GanState, batch: Mapping[str, jax.Array], parallel: ParallelContext
    ) -> dict[str, jax.Array]:
        """The discriminator's view of held-out real images and of EMA samples, and how far the
        samples' colour statistics are from the real batch's (a cheap drift signal)."""
        root = jax.random.wrap_key_data(state.rng)
        positions = batch["position"] + EVAL_LATENT_OFFSET
        z = self.latents(jax.random.fold_in(root, EVAL_LATENT_OFFSET), positions)
        fakes = self.sample(state, z, noise_key=jax.random.fold_in(root, EVAL_LATENT_OFFSET + 1))

        def logits(images):
            return self.pair.discriminate(
                state.discriminator, state.discriminator_stats, images, parallel, train=False
            )[0]

        reals = batch["image"]
        mask = batch.get("mask", jnp.ones(reals.shape[:1], jnp.float32))
        count = cross_replica_sum(jnp.sum(mask), parallel)

        def masked_mean(values: jax.Array) -> jax.Array:
            """The mean over the global batch's real rows (padding rows weigh 0)."""
            weights = mask.reshape(-1, *([1] * (values.ndim - 1)))
            return cross_replica_sum(jnp.sum(weights * values, axis=0), parallel) / count

        metrics = {
            "real_logit": masked_mean(logits(reals)),
            "fake_logit": masked_mean(logits(fakes)),
            "colour_mean_gap": jnp.mean(
                jnp.abs(
                    masked_mean(jnp.mean(fakes, axis=(1, 2)))
                    - masked_mean(jnp.mean(reals, axis=(1, 2)))
                )
            ),
            WEIGHT_KEY: count,
        }
        return metrics

    # --- evaluators (the paper's metrics) -------------------------------------------------
    def _eval_fakes(self, state: GanState, batch: Mapping[str, jax.Array]) -> jax.Array:
        """EMA samples for the rows of an eval batch, keyed by position (device-independent)."""
        root = jax.random.wrap_key_data(state.rng)
        positions = batch["position"] + EVAL_LATENT_OFFSET
        z = self.latents(jax.random.fold_in(root, EVAL_LATENT_OFFSET), positions)
        return self.sample(state, z, noise_key=jax.random.fold_in(root, EVAL_LATENT_OFFSET + 1))

    def sample_noise(self, key: jax.Array) -> dict[Any, jax.Array] | None:
        """One sample's injected noise maps (no batch axis), N(0, 1); None without injection."""
        shapes = self.pair.noise_shapes(1)
        if not shapes:
            return None
        keys = jax.random.split(key, len(shapes))
        return {
            name: jax.random.normal(k, shape[1:])
            for k, (name, shape) in zip(keys, shapes.items(), strict=True)
        }

    def evaluators(self) -> dict[str, Evaluator]:
        """``fid`` (Inception weights given) or ``domain_fid`` (embedded shapes), ``condition``
        (MC, TTMC, max; injected noise held fixed within a pair) and ``ppl`` / ``ppl_pixel``,
        each when its ``eval`` setting asks for it."""
        config = self.eval_config
        sample_noise = None if self.model_config.injection == "none" else self.sample_noise
        evaluators: dict[str, Evaluator] = {}
        if config.fid_batches:
            evaluators.update(self._fid_evaluator())
        if config.condition_pairs:
            evaluators["condition"] = condition_number_evaluator(
                lambda state, z, noise: self.sample(state, z, noise=noise),
                self.model_config.latent_dim,
                num_pairs=config.condition_pairs,
                batch_size=config.metrics_batch_size,
                sample_noise=sample_noise,
                every=config.metrics_every,
            )
        if config.ppl_pairs:
            lpips = None
            if config.vgg16_weights or config.lpips_weights:
                lpips = load_lpips_vgg16_variables(
                    config.vgg16_weights,
                    config.lpips_weights,
                    vgg16_config_key="eval.vgg16_weights",
                    lpips_config_key="eval.lpips_weights",
                )
            evaluators["ppl"] = ppl_evaluator(
                lambda state, z: self.pair.path_map(state.generator_ema, z),
                lambda state, latent, noise: self.pair.path_synthesize(
                    state.generator_ema, state.generator_stats, latent, noise
                ),
                self.model_config.latent_dim,
                lpips_variables=lpips,
                num_pairs=config.ppl_pairs,
                batch_size=config.metrics_batch_size,
                space=self.pair.path_space,
                sample_noise=sample_noise,
                every=config.metrics_every,
            )
        return evaluators

    def _fid_evaluator(self) -> dict[str, Evaluator]:
        config = self.eval_config
        available = None if self.data.name == "shapes" else self.eval_source(0, 1).num_batches
        if available is not None and config.fid_batches > available:
            raise cs.ConfigError(
                f"config.eval.fid_batches = {config.fid_batches!r}: not allowed; the eval split "
                f"{self.data.eval_split!r} has {available} batches of {config.batch_size}"
            )
        common = dict(
            source=self.eval_source,
            num_batches=config.fid_batches,
            kid_capacity=config.kid_samples,
            every=config.metrics_every,
        )
        if config.inception_weights:
            variables = load_fid_inception_variables(
                config.inception_weights, "eval.inception_weights"
            )
            return {
                "fid": fid_evaluator(
                    variables,
                    fake_fn=lambda state, batch: to_uint8_range(self._eval_fakes(state, batch)),
                    **common,
                )
            }
        if self.data.name != "shapes":
            raise cs.ConfigError(
                f"config.eval.fid_batches = {config.fid_batches!r}: FID of {self.data.name!r} "
                "needs config.eval.inception_weights (pytorch-fid's "
                "pt_inception-2015-12-05-6726825d.pth); domain FID exists for the embedded "
                "'shapes' only"
            )
        from noise_research.metrics.domain_features import shapes_feature_network

        network = shapes_feature_network(
            self.data.resolution, seed=self.data.seed, steps=config.domain_feature_steps
        )
        return {
            "domain_fid": domain_fid_evaluator(
                network.features_fn,
                fake_fn=self._eval_fakes,
                feature_dim=network.feature_dim,
                network=network.params,
                **common,
            )
        }

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
