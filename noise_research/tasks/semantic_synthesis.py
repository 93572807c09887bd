"""Semantic image synthesis with or without Noise Incentive Blocks (NIB paper, 4.1, Table 2).

A generator turns a procedural label map (flat segments, ``data/label_maps.py``) into the textured
photograph paired with it; a label-conditioned PatchGAN judges (label map, image) pairs. Two
architectures (``models/semantic_synthesis.py``), each with a plain first layer or NIBs:

* ``'pix2pix'`` (Isola et al. 2017): U-Net, no z; adversarial loss (non-saturating, the original's
  BCE; or LSGAN) + ``λ_L1 · ‖G(m) − x‖₁`` with λ_L1 = 100; one PatchGAN; Adam 2e-4, β = (0.5,
  0.999), batch 1 at the paper's size.
* ``'spade'`` (Park et al. 2019): SPADE residual generator from the downsampled label map; hinge
  adversarial loss + ``λ_FM · feature matching`` with λ_FM = 10 (L1 between the discriminator's
  hidden activations of real and generated pairs, averaged over layers and scales, as pix2pixHD);
  two discriminator scales; TTUR Adam, G 1e-4, D 4e-4, β = (0, 0.9). SPADE's VGG perceptual loss
  (λ = 10) needs ImageNet VGG-19 weights, which cannot be downloaded here: **left out**.

The GAN machinery of the GAN issue (``tasks/gan.py``) is reused by import: its state
(:class:`~noise_research.tasks.gan.GanState`: both players, their optimizers, the generator's EMA),
its optimizer section (:class:`~noise_research.tasks.gan.GanOptimizer`), :func:`~noise_research.
tasks.gan.ema_decay` and the lazy R1 :func:`~noise_research.tasks.gan.r1_penalty` (off by
default; Pix2Pix and SPADE use none). Even loop steps are ``'discriminator'`` steps (or
``'discriminator_r1'``), odd steps ``'generator'`` steps, each compiled once; batches stay indexed
by the loop step, so resume is exact. Evaluation and samples use the EMA generator.

**The NIB** (``model.nib``, a :class:`~noise_research.layers.nib.NibConfig` subsection): by
default the paper's F-D-N-0.3, Ĩ = f1(I) + f2(N) with a fresh N(0, 0.3) map per example and step,
"especially suitable to the case of semantic input" (section 3.2): a one-hot label map is not
perturbed (I ± N would blur the class code), the noise enters as its own feature. Set
``model.nib.combine='symmetric'`` (and ``stationary=True``) for the S-N-0.3 reference. Where it
goes: Pix2Pix's first layer; in SPADE every convolution that reads the label map (each SPADE
module's shared convolution and the initial ``fc``). Dynamic noise is drawn per row from
``fold_in(step key, position)``; evaluation uses one fixed key, so its samples are reproducible.

**Evaluation**: on held-out label maps (seed ``data.seed + EVAL_SEED_OFFSET``), per batch the L1
and PSNR (dB, peak-to-peak 2 on [−1, 1]) between the EMA generator's image and the paired
photograph — mostly a measure of colour and layout, since a texture cannot match pixel by pixel —
and, with ``eval.fid_batches`` > 0, **domain FID** over ``fid_batches × eval.batch_size`` images
(the GAN issue's evaluator, ``metrics/fid.py``, on the features of a factor classifier trained on
these photographs, ``metrics/label_map_features.py``; not FID, not comparable with Table 2's
Cityscapes numbers). The report writes ``samples.png``: label map, real photograph, generated.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from noise_research import config_schema as cs
from noise_research.data.base import BatchSource
from noise_research.data.label_maps import NUM_CLASSES, LabelMapBatches, colour_label_map
from noise_research.layers.nib import NibConfig
from noise_research.metrics.fid import domain_fid_evaluator
from noise_research.metrics.halftone import psnr
from noise_research.models.halftone import FIRST_LAYERS
from noise_research.models.semantic_synthesis import (
    ARCHITECTURES,
    PatchDiscriminator,
    build_generator,
)
from noise_research.tasks.base import Evaluator, Task
from noise_research.tasks.gan import GanOptimizer, GanState, ema_decay, r1_penalty
from noise_research.train.loop import LoopConfig
from noise_research.train.parallel import ParallelContext, cross_replica_mean
from noise_research.train.rng import step_rngs
from noise_research.viz import save_image_grid

EVAL_SEED_OFFSET = 1_000_003  # held-out label maps come from a seed no training batch uses
EVAL_NOISE_INDEX = 2**31 - 1  # the evaluation's NIB noise and dropout key: fold_in(root, this)
ADVERSARIAL_LOSSES = ("non_saturating", "lsgan", "hinge")


def _side_rule() -> cs.Rule:
    return cs.Rule(
        lambda v, c: isinstance(v, int) and v >= 8 and v % 2 ** c.get("model.levels") == 0,
        lambda c: f"an integer >= 8 divisible by 2**model.levels = {2 ** c.get('model.levels')}",
    )


@dataclasses.dataclass(frozen=True)
class SynthesisData:
    """The ``data`` section: procedural label maps and their photographs (data/label_maps.py)."""

    resolution: int = cs.setting(256, _side_rule(), "side of the label maps and images")
    batch_size: int = cs.setting(1, cs.batch_size(), "global batch of (label map, image) pairs")
    seed: int = cs.setting(0, cs.integer(minimum=0), "seed of the training pictures")


def _fdn_nib() -> NibConfig:
    """The paper's F-D-N-0.3 (section 3.2): f1(I) + f2(N), dynamic N(0, 0.3)."""
    return NibConfig(combine="feature", distribution="normal", noise_scale=0.3, stationary=False)


@dataclasses.dataclass(frozen=True)
class SynthesisModel:
    """The ``model`` section (models/semantic_synthesis.py)."""

    architecture: str = cs.setting(
        "pix2pix", cs.one_of(*ARCHITECTURES), "'pix2pix' (U-Net) or 'spade' (SPADE blocks)"
    )
    width: int = cs.setting(64, cs.integer(minimum=1), "generator channels at full resolution")
    levels: int = cs.setting(3, cs.integer(minimum=1), "Pix2Pix: encoder steps; SPADE: upsamplings")
    spade_hidden: int = cs.setting(
        0, cs.integer(minimum=0), "SPADE: channels of each module's shared layer; 0: width"
    )
    dropout: float = cs.setting(
        0.0,
        cs.Rule(
            lambda v, c: (
                isinstance(v, (int, float))
                and 0 <= v < 1
                and (v == 0 or c.get("model.architecture") == "pix2pix")
            ),
            "a number in [0, 1), and 0 unless model.architecture = 'pix2pix'",
        ),
        "Pix2Pix: dropout of the inner decoder levels in training (Pix2Pix: 0.5)",
    )
    first_layer: str = cs.setting(
        "nib",
        cs.one_of(*FIRST_LAYERS),
        "every layer that reads the label map: 'conv' (plain) or 'nib' (Noise Incentive Block)",
    )
    nib: NibConfig = cs.subsection(_fdn_nib, "the NIB, with first_layer = 'nib' (F-D-N-0.3)")
    discriminator_width: int = cs.setting(
        64, cs.integer(minimum=1), "channels of the discriminator's first convolution"
    )
    discriminator_layers: int = cs.setting(
        3, cs.integer(minimum=1), "stride-2 layers of the PatchGAN (3: 70×70 patches)"
    )
    discriminator_scales: int = cs.setting(
        1, cs.integer(minimum=1), "PatchGANs on the input downsampled 1, 2, 4, … times"
    )


@dataclasses.dataclass(frozen=True)
class SynthesisLoss:
    """The ``loss`` section (module docstring)."""

    adversarial: str = cs.setting(
        "non_saturating",
        cs.one_of(*ADVERSARIAL_LOSSES),
        "'non_saturating' (Pix2Pix's BCE), 'lsgan' or 'hinge' (SPADE)",
    )
    l1_weight: float = cs.setting(100.0, cs.number(minimum=0), "λ_L1 (Pix2Pix: 100)")
    feature_matching_weight: float = cs.setting(
        0.0, cs.number(minimum=0), "λ_FM of the discriminator feature matching (SPADE: 10)"
    )
    r1_gamma: float = cs.setting(0.0, cs.number(minimum=0), "R1 weight γ on real pairs (0: off)")
    r1_every: int = cs.setting(16, cs.integer(minimum=1), "discriminator steps between R1 steps")
    ema_decay: float = cs.setting(
        0.999,
        cs.fraction_below_one(),
        "decay of the generator's weight EMA (ramped as tasks/gan.py's ema_decay)",
    )


@dataclasses.dataclass(frozen=True)
class SynthesisEval:
    """The ``eval`` section: held-out label maps."""

    batch_size: int = cs.setting(32, cs.batch_size(), "global eval batch", resumable=True)
    num_batches: int = cs.setting(
        2, cs.integer(minimum=1), "batches of L1 / PSNR per evaluation", resumable=True
    )
    fid_batches: int = cs.setting(
        0,
        cs.integer(minimum=0),
        "eval batches of domain FID (real and generated images: fid_batches × batch_size, more "
        "than 128 for a full-rank covariance); 0: off",
        resumable=True,
    )
    metrics_every: int = cs.setting(
        0, cs.integer(minimum=0), "steps between domain FIDs; 0: at the end", resumable=True
    )
    domain_feature_steps: int = cs.setting(
        400, cs.integer(minimum=1), "training steps of the domain-FID feature network"
    )
    report_images: int = cs.setting(
        8, cs.integer(minimum=1), "held-out label maps in the report's samples.png", resumable=True
    )


SECTIONS = {
    "train": LoopConfig,
    "data": SynthesisData,
    "model": SynthesisModel,
    "loss": SynthesisLoss,
    "optimizer": GanOptimizer,
    "eval": SynthesisEval,
}

VARIANTS = ("plain", "nib", "plain_demo", "nib_demo")
"""Config-file arguments: the first layer, with ``_demo`` for the CPU size."""


def config_rules() -> dict[str, cs.Rule]:
    """Every key a semantic-synthesis config may hold, and what each allows."""
    return cs.experiment_rules(SECTIONS, task=cs.one_of("semantic_synthesis"))


def variant_from_arg(arg: str | None) -> tuple[str, bool]:
    """``(first_layer, demo)`` of a config-file argument (``pix2pix.py:nib_demo``); nothing
    means ``nib`` at the paper's size."""
    if arg in (None, ""):
        return "nib", False
    if arg not in VARIANTS:
        raise ValueError(f"config argument {arg!r} is unknown; allowed: {', '.join(VARIANTS)}")
    return ("conv" if arg.startswith("plain") else "nib"), arg.endswith("_demo")


def experiment_config(
    *, architecture: str = "pix2pix", first_layer: str = "nib", demo: bool = False
) -> Any:
    """Table 2's experiment for one architecture and first layer, on the procedural label maps.

    Paper sizes (256², the published recipes, module docstring): Pix2Pix U-Net of 7 levels below
    a full-resolution first layer (2² bottleneck), dropout 0.5, batch 1, 70×70 PatchGAN; SPADE
    from 8² (5 upsamplings), SPADE modules of 128 hidden channels, batch 16, two 4-layer
    discriminators. ``demo=True``: 32² pictures, width 16, batch 16, a few hundred steps on 2 CPU
    cores (``experiments/semantic_synthesis.py``), domain FID on 512 held-out images.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture={architecture!r}; allowed: {', '.join(ARCHITECTURES)}")
    pix2pix = architecture == "pix2pix"
    loop = LoopConfig(num_steps=200_000, log_every=100, eval_every=10_000, report_every=20_000)
    if pix2pix:
        model = SynthesisModel(
            architecture=architecture, first_layer=first_layer, levels=7, dropout=0.5
        )
        loss = SynthesisLoss()
        optimizer = GanOptimizer(beta1=0.5, beta2=0.999)
        data = SynthesisData(batch_size=1)
    else:
        model = SynthesisModel(
            architecture=architecture,
            first_layer=first_layer,
            levels=5,
            spade_hidden=128,
            discriminator_layers=4,
            discriminator_scales=2,
        )
        loss = SynthesisLoss(adversarial="hinge", l1_weight=0.0, feature_matching_weight=10.0)
        optimizer = GanOptimizer(
            generator_learning_rate=1e-4, discriminator_learning_rate=4e-4, beta1=0.0, beta2=0.9
        )
        data = SynthesisData(batch_size=16)
    eval_section = SynthesisEval(batch_size=32, num_batches=4, fid_batches=32)
    if demo:
        loop = LoopConfig(
            num_steps=600, log_every=50, eval_every=600, report_every=0, checkpoint_every=200
        )
        data = SynthesisData(resolution=32, batch_size=16)
        model = dataclasses.replace(
            model,
            width=16,
            levels=3,
            spade_hidden=0,
            dropout=0.0,
            discriminator_width=16,
            discriminator_layers=2,
        )
        optimizer = dataclasses.replace(
            optimizer, generator_learning_rate=4e-4, discriminator_learning_rate=4e-4
        )
        eval_section = SynthesisEval(batch_size=32, num_batches=4, fid_batches=16)
    sections = {
        "train": loop,
        "data": data,
        "model": model,
        "loss": loss,
        "optimizer": optimizer,
        "eval": eval_section,
    }
    return cs.config_dict(sections, task="semantic_synthesis")


def build(config: Mapping[str, Any]) -> SemanticSynthesisTask:
    """The task for a validated config (a plain nested dict)."""
    return SemanticSynthesisTask(config)


def adversarial_loss(kind: str, logits: jax.Array, real: bool, discriminator: bool) -> jax.Array:
    """The mean adversarial loss of patch logits: for the discriminator on real (``real``) or
    generated pairs, for the generator (``discriminator=False``) on generated pairs.

    non_saturating: D softplus(−l) / softplus(l), G softplus(−l) (Goodfellow et al. 2014);
    lsgan: D (l − 1)² / l², G (l − 1)² (Mao et al. 2017); hinge: D relu(1 − l) / relu(1 + l),
    G −l (Lim & Ye 2017, SPADE)."""
    if kind == "non_saturating":
        return jnp.mean(jax.nn.softplus(-logits if real or not discriminator else logits))
    if kind == "lsgan":
        return jnp.mean(jnp.square(logits - (1.0 if real or not discriminator else 0.0)))
    if kind == "hinge":
        if not discriminator:
            return -jnp.mean(logits)
        return jnp.mean(jax.nn.relu(1.0 - logits if real else 1.0 + logits))
    raise ValueError(f"adversarial loss {kind!r}; allowed: {', '.join(ADVERSARIAL_LOSSES)}")


def feature_matching_loss(
    fake: tuple[tuple[jax.Array, ...], ...], real: tuple[tuple[jax.Array, ...], ...]
) -> jax.Array:
    """pix2pixHD / SPADE feature matching: the mean over scales and layers of the L1 distance
    between the discriminator's hidden activations of generated and real pairs (real side
    constant)."""
    distances = [
        jnp.mean(jnp.abs(f - jax.lax.stop_gradient(r)))
        for fake_scale, real_scale in zip(fake, real, strict=True)
        for f, r in zip(fake_scale, real_scale, strict=True)
    ]
    return sum(distances) / len(distances)


class SemanticSynthesisTask(Task):
    """Steps, evaluation and report of semantic synthesis (module docstring)."""

    sections = SECTIONS

    def __init__(self, config: Mapping[str, Any]):
        self.config = config
        self.data = cs.read_section(SynthesisData, config["data"])
        self.model_config = cs.read_section(SynthesisModel, config["model"])
        self.loss = cs.read_section(SynthesisLoss, config["loss"])
        self.optimizer = cs.read_section(GanOptimizer, config["optimizer"])
        self.eval_config = cs.read_section(SynthesisEval, config["eval"])
        model = self.model_config
        fields = dict(
            width=model.width,
            levels=model.levels,
            first_layer=model.first_layer,
            nib=dataclasses.asdict(model.nib) if model.first_layer == "nib" else None,
        )
        if model.architecture == "pix2pix":
            fields["dropout"] = model.dropout
        else:
            fields["spade_hidden"] = model.spade_hidden
        self.generator = build_generator(model.architecture, **fields)
        self.discriminator = PatchDiscriminator(
            width=model.discriminator_width,
            num_layers=model.discriminator_layers,
            num_scales=model.discriminator_scales,
        )
        adam = dict(b1=self.optimizer.beta1, b2=self.optimizer.beta2, eps=self.optimizer.eps)
        self.generator_tx = optax.adam(self.optimizer.generator_learning_rate, **adam)
        self.discriminator_tx = optax.adam(self.optimizer.discriminator_learning_rate, **adam)
        self.num_eval_batches = self.eval_config.num_batches

    def keys_free_on_resume(self) -> set[str]:
        """The loop's resumable keys and ``train.num_steps`` (constant learning rates)."""
        return super().keys_free_on_resume() | {"train.num_steps"}

    # --- data -------------------------------------------------------------------------------
    def train_source(self, process_index: int, process_count: int) -> BatchSource:
        side = (self.data.resolution, self.data.resolution)
        return LabelMapBatches(
            self.data.batch_size, side, self.data.seed, process_index, process_count
        )

    def eval_source(self, process_index: int, process_count: int) -> BatchSource:
        side = (self.data.resolution, self.data.resolution)
        seed = self.data.seed + EVAL_SEED_OFFSET
        return LabelMapBatches(
            self.eval_config.batch_size, side, seed, process_index, process_count
        )

    # --- state ------------------------------------------------------------------------------
    def init(self, rng: jax.Array, example_batch: Mapping[str, Any]) -> GanState:
        generator_key, discriminator_key, noise_key, root_key = jax.random.split(rng, 4)
        side = example_batch["label"].shape[1:3]
        labels = jnp.zeros((1, *side, NUM_CLASSES), jnp.float32)
        variables = dict(self.generator.init({"params": generator_key, "noise": noise_key}, labels))
        generator = variables.pop("params")
        discriminator = self.discriminator.init(
            discriminator_key, jnp.zeros((1, *side, NUM_CLASSES + 3), jnp.float32)
        )["params"]
        return GanState(
            step=jnp.zeros((), jnp.int32),
            generator=generator,
            generator_stats=variables,  # the stationary NIB noise keys, if any
            generator_ema=generator,
            generator_opt=self.generator_tx.init(generator),
            discriminator=discriminator,
            discriminator_stats={},
            discriminator_opt=self.discriminator_tx.init(discriminator),
            rng=jax.random.key_data(root_key),
        )

    # --- networks ---------------------------------------------------------------------------
    @staticmethod
    def one_hot(labels: jax.Array) -> jax.Array:
        """Label maps (B, H, W) int → one-hot (B, H, W, K) float32."""
        return jax.nn.one_hot(labels, NUM_CLASSES, dtype=jnp.float32)

    def generate(
        self,
        params: Any,
        stats: Any,
        labels: jax.Array,
        positions: jax.Array,
        key: jax.Array,
        train: bool,
    ) -> jax.Array:
        """Images of the one-hot ``labels``; ``key`` seeds the NIB noise and dropout of the rows
        (each row's from fold_in(key, position))."""
        noise_key, dropout_key = jax.random.split(key)
        return self.generator.apply(
            {"params": params, **stats},
            labels,
            positions,
            train=train,
            rngs={"noise": noise_key, "dropout": dropout_key},
        )

    def discriminate(self, params: Any, labels: jax.Array, images: jax.Array):
        """Per-scale patch logits and hidden features of (label map, image) pairs."""
        return self.discriminator.apply(
            {"params": params}, jnp.concatenate([labels, images], axis=-1)
        )

    def sample(self, state: GanState, labels: jax.Array, positions: jax.Array) -> jax.Array:
        """The EMA generator's images of integer label maps (B, H, W), evaluation mode, the
        evaluation's fixed noise key."""
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), EVAL_NOISE_INDEX)
        return self.generate(
            state.generator_ema,
            state.generator_stats,
            self.one_hot(labels),
            positions,
            key,
            train=False,
        )

    # --- steps ------------------------------------------------------------------------------
    def _step_key(self, state: GanState, kind: str) -> jax.Array:
        return step_rngs(jax.random.wrap_key_data(state.rng), state.step, ("generator",), kind)[
            "generator"
        ]

    def _discriminator_step(self, kind: str, r1: bool):
        def step(state: GanState, batch: Mapping[str, jax.Array], parallel: ParallelContext):
            labels, reals = self.one_hot(batch["label"]), batch["image"]
            fakes = self.generate(
                state.generator,
                state.generator_stats,
                labels,
                batch["position"],
                self._step_key(state, kind),
                train=True,
            )
            fakes = jax.lax.stop_gradient(fakes)
            adversarial = self.loss.adversarial

            def loss_fn(params):
                real_logits, _ = self.discriminate(params, labels, reals)
                fake_logits, _ = self.discriminate(params, labels, fakes)
                real_loss = sum(
                    adversarial_loss(adversarial, logit, True, True) for logit in real_logits
                )
                fake_loss = sum(
                    adversarial_loss(adversarial, logit, False, True) for logit in fake_logits
                )
                loss = (real_loss + fake_loss) / len(real_logits)
                metrics = {
                    "discriminator_loss": loss,
                    "real_logit": jnp.mean(real_logits[0]),
                    "fake_logit": jnp.mean(fake_logits[0]),
                }
                if r1:

                    def row_logits(images):
                        logits, _ = self.discriminate(params, labels, images)
                        return sum(jnp.mean(logit, axis=(1, 2, 3)) for logit in logits)

                    penalty = r1_penalty(row_logits, reals)
                    metrics["r1_penalty"] = penalty
                    loss = loss + self.loss.r1_every * self.loss.r1_gamma / 2 * penalty
                return loss, metrics

            grads, metrics = jax.grad(loss_fn, has_aux=True)(state.discriminator)
            grads = cross_replica_mean(grads, parallel)
            updates, opt = self.discriminator_tx.update(
                grads, state.discriminator_opt, state.discriminator
            )
            new_state = state.replace(
                step=state.step + 1,
                discriminator=optax.apply_updates(state.discriminator, updates),
                discriminator_opt=opt,
            )
            return new_state, cross_replica_mean(metrics, parallel)

        return step

    def _generator_step(self, state: GanState, batch, parallel: ParallelContext):
        labels, reals = self.one_hot(batch["label"]), batch["image"]
        key = self._step_key(state, "generator")
        loss_config = self.loss

        def loss_fn(params):
            fakes = self.generate(
                params, state.generator_stats, labels, batch["position"], key, train=True
            )
            fake_logits, fake_features = self.discriminate(state.discriminator, labels, fakes)
            adversarial = sum(
                adversarial_loss(loss_config.adversarial, logit, True, False)
                for logit in fake_logits
            ) / len(fake_logits)
            l1 = jnp.mean(jnp.abs(fakes - reals))
            loss = adversarial + loss_config.l1_weight * l1
            metrics = {"generator_adversarial_loss": adversarial, "l1": l1}
            if loss_config.feature_matching_weight > 0:
                _, real_features = self.discriminate(state.discriminator, labels, reals)
                matching = feature_matching_loss(fake_features, real_features)
                loss = loss + loss_config.feature_matching_weight * matching
                metrics["feature_matching_loss"] = matching
            metrics["generator_loss"] = loss
            return loss, metrics

        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.generator)
        grads = cross_replica_mean(grads, parallel)
        updates, opt = self.generator_tx.update(grads, state.generator_opt, state.generator)
        generator = optax.apply_updates(state.generator, updates)
        decay = ema_decay(loss_config.ema_decay, state.step // 2)
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.generator_ema, generator)
        new_state = state.replace(
            step=state.step + 1, generator=generator, generator_ema=ema, generator_opt=opt
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
        """Even steps train the discriminator (with R1 every ``r1_every``-th of them when
        ``loss.r1_gamma`` > 0), odd steps the generator — the GAN task's schedule."""
        if step % 2:
            return "generator"
        if self.loss.r1_gamma > 0 and (step // 2) % self.loss.r1_every == 0:
            return "discriminator_r1"
        return "discriminator"

    # --- evaluation -------------------------------------------------------------------------
    def _eval_fakes(self, state: GanState, batch: Mapping[str, jax.Array]) -> jax.Array:
        return self.sample(state, batch["label"], batch["position"])

    def eval_step(
        self, state: GanState, batch: Mapping[str, jax.Array], parallel: ParallelContext
    ) -> dict[str, jax.Array]:
        """L1 and PSNR between the EMA generator's images of held-out label maps and their
        photographs (the eval source has no padding: means over equal shards)."""
        fakes = self._eval_fakes(state, batch)
        metrics = {
            "l1": jnp.mean(jnp.abs(fakes - batch["image"])),
            "psnr": jnp.mean(psnr(fakes, batch["image"])),
        }
        return cross_replica_mean(metrics, parallel)

    def evaluators(self) -> dict[str, Evaluator]:
        """``domain_fid`` with ``eval.fid_batches`` > 0 (module docstring)."""
        config = self.eval_config
        if not config.fid_batches:
            return {}
        from noise_research.metrics.label_map_features import label_map_feature_network

        network = label_map_feature_network(
            self.data.resolution, self.data.seed, config.domain_feature_steps
        )
        return {
            "domain_fid": domain_fid_evaluator(
                network.features_fn,
                fake_fn=self._eval_fakes,
                source=self.eval_source,
                num_batches=config.fid_batches,
                feature_dim=network.feature_dim,
                network=network.params,
                every=config.metrics_every,
            )
        }

    # --- report -----------------------------------------------------------------------------
    def report_batch(self) -> dict[str, np.ndarray]:
        """The report's held-out label maps and photographs (the first of the eval set)."""
        side = (self.data.resolution, self.data.resolution)
        source = LabelMapBatches(
            self.eval_config.report_images, side, self.data.seed + EVAL_SEED_OFFSET, 0, 1
        )
        return source.batch(0)

    def report(self, state: GanState, workdir: str, step: int) -> dict[str, float]:
        """``samples.png``: per held-out label map, the map (class colours), the real
        photograph and the EMA generator's image."""
        out = os.path.join(workdir, "report", f"step_{step:07d}")
        batch = self.report_batch()
        fakes = np.asarray(_jitted_sample(self)(state, batch["label"], batch["position"]))
        grid, titles = [], []
        for labels, real, fake in zip(batch["label"], batch["image"], fakes, strict=True):
            grid += [colour_label_map(labels), real, fake]
            titles += ["label map", "real", self.model_config.first_layer]
        save_image_grid(os.path.join(out, "samples.png"), grid, titles, ncols=6)
        return {}


@functools.lru_cache(maxsize=8)
def _jitted_sample(task: SemanticSynthesisTask):
    return jax.jit(task.sample)
