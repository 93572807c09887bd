"""The generator–discriminator pair of each GAN architecture behind one interface.

The GAN task (``tasks/gan.py``) trains any pair through five functions, so that its losses,
regularisers, EMA, evaluators and report are written once:

* ``init(key, image_shape) -> PairVariables``: both players' parameters and their non-trained
  state (``generator_stats``: DCGAN's BatchNorm statistics, StyleGAN2's running mean of w and the
  path-length mean; ``discriminator_stats``: DCGAN's BatchNorm statistics, nothing for
  StyleGAN2).
* ``generate(params, stats, z, positions, keys, parallel) -> (images, new_stats)``: training-mode
  fakes (BatchNorm over the global batch; StyleGAN2's style mixing). ``keys``: ``'noise'`` (the
  injected noise, per row from ``fold_in(key, position)``) and ``'mixing'``.
* ``discriminate(params, stats, images, parallel, train) -> (logits, new_stats)``.
* ``sample(params, stats, z, noise, noise_key, inject) -> images``: evaluation mode (BatchNorm's
  running statistics), with the injected noise given, drawn, or switched off — what the metrics,
  the sample grids and the paper's Figure 1 use.
* ``noise_shapes(batch)``: the injected noise maps, keyed as the generator's ``noise`` argument.
* ``path_space``, ``path_map(params, z)``, ``path_synthesize(params, stats, latent, noise)``: the
  latent space in which perceptual path length interpolates (``metrics/ppl.py``): z for DCGAN
  (no mapping network), w for StyleGAN2 (as StyleGAN2 reports it).

`StyleGAN2Pair` also exposes ``mapped(...)`` (z → per-layer w with mixing) and ``synthesize``,
which the path-length regulariser differentiates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from noise_research.layers.noise_maps import per_example
from noise_research.models.dcgan import DCGANDiscriminator, DCGANGenerator
from noise_research.models.stylegan2 import (
    StyleGAN2Discriminator,
    StyleGAN2Generator,
    update_w_avg,
)
from noise_research.train.parallel import SINGLE_DEVICE, ParallelContext

PyTree = Any


@dataclasses.dataclass(frozen=True)
class PairVariables:
    """Freshly initialised parameters and non-trained state of both players."""

    generator: PyTree
    generator_stats: PyTree
    discriminator: PyTree
    discriminator_stats: PyTree


def _init_networks(pair: Any, key: jax.Array, image_shape: tuple[int, ...]) -> tuple[Any, Any]:
    """Both networks' variables (``pair.generator`` and its single-device discriminator) from
    one key, initialised on a single zero latent and a single zero image."""
    generator_key, discriminator_key = jax.random.split(key)
    z = jnp.zeros((1, pair.latent_dim))
    generator = pair.generator.init({"params": generator_key}, z, inject=False)
    discriminator = pair._discriminator(SINGLE_DEVICE).init(
        {"params": discriminator_key}, jnp.zeros((1, *image_shape))
    )
    return generator, discriminator


@dataclasses.dataclass(frozen=True)
class DCGANPair:
    """`DCGANGenerator` and `DCGANDiscriminator` (BatchNorm in both, over the global batch)."""

    generator_fields: Mapping[str, Any]
    discriminator_width: int
    latent_dim: int

    @property
    def generator(self) -> DCGANGenerator:
        """The single-device generator (evaluation mode needs no axis name)."""
        return DCGANGenerator(**self.generator_fields)

    def _generator(self, parallel: ParallelContext) -> DCGANGenerator:
        return DCGANGenerator(**self.generator_fields, axis_name=parallel.axis_name)

    def _discriminator(self, parallel: ParallelContext) -> DCGANDiscriminator:
        return DCGANDiscriminator(width=self.discriminator_width, axis_name=parallel.axis_name)

    def noise_shapes(self, batch: int) -> dict[Any, tuple[int, ...]]:
        return self.generator.noise_shapes(batch)

    def init(self, key: jax.Array, image_shape: tuple[int, ...]) -> PairVariables:
        generator, discriminator = _init_networks(self, key, image_shape)
        return PairVariables(
            generator["params"],
            generator["batch_stats"],
            discriminator["params"],
            discriminator["batch_stats"],
        )

    def generate(self, params, stats, z, positions, keys, parallel):
        images, updates = self._generator(parallel).apply(
            {"params": params, "batch_stats": stats},
            z,
            train=True,
            positions=positions,
            rngs={"noise": keys["noise"]},
            mutable=["batch_stats"],
        )
        return images, updates["batch_stats"]

    def discriminate(self, params, stats, images, parallel, train=True):
        variables = {"params": params, "batch_stats": stats}
        if not train:
            return self._discriminator(parallel).apply(variables, images), stats
        logits, updates = self._discriminator(parallel).apply(
            variables, images, train=True, mutable=["batch_stats"]
        )
        return logits, updates["batch_stats"]

    def sample(self, params, stats, z, noise=None, noise_key=None, inject=True):
        rngs = {} if noise_key is None else {"noise": noise_key}
        return self.generator.apply(
            {"params": params, "batch_stats": stats}, z, noise=noise, inject=inject, rngs=rngs
        )

    path_space = "z"

    def path_map(self, params, z):
        return z

    def path_synthesize(self, params, stats, z, noise):
        return self.sample(params, stats, z, noise)


@dataclasses.dataclass(frozen=True)
class StyleGAN2Pair:
    """`StyleGAN2Generator` and `StyleGAN2Discriminator` (no BatchNorm; the discriminator's
    minibatch standard deviation is over the global batch).

    Training-mode generation mixes styles as StyleGAN2 does: with probability ``style_mixing`` a
    row takes its w from a second latent at the layers from a crossover index drawn uniformly in
    [1, num_ws); the running mean of w (for truncation) follows the unmixed w of each generator
    step (`update_w_avg`)."""

    generator_fields: Mapping[str, Any]
    discriminator_fields: Mapping[str, Any]
    latent_dim: int
    style_mixing: float = 0.9

    @property
    def generator(self) -> StyleGAN2Generator:
        return StyleGAN2Generator(latent_dim=self.latent_dim, **self.generator_fields)

    def _discriminator(self, parallel: ParallelContext) -> StyleGAN2Discriminator:
        return StyleGAN2Discriminator(**self.discriminator_fields, parallel=parallel)

    def noise_shapes(self, batch: int) -> dict[Any, tuple[int, ...]]:
        return self.generator.noise_shapes(batch)

    def init(self, key: jax.Array, image_shape: tuple[int, ...]) -> PairVariables:
        generator, discriminator = _init_networks(self, key, image_shape)
        stats = {
            "w_avg": jnp.zeros((self.generator.w_dim,), jnp.float32),
            "path_length_mean": jnp.zeros((), jnp.float32),
        }
        return PairVariables(generator["params"], stats, discriminator["params"], {})

    def mapped(self, params, z, positions, mixing_key):
        """(ws (B, num_ws, w_dim) with style mixing, the unmixed w (B, w_dim))."""
        generator = self.generator
        w = generator.apply({"params": params}, z, method="map")
        ws = jnp.broadcast_to(w[:, None], (w.shape[0], generator.num_ws, w.shape[-1]))
        if self.style_mixing <= 0:
            return ws, w
        latent_key, crossover_key = jax.random.split(mixing_key)
        z_mix = per_example(latent_key, positions, lambda k: jax.random.normal(k, z.shape[1:]))
        w_mix = generator.apply({"params": params}, z_mix, method="map")

        def crossover(key: jax.Array) -> jax.Array:
            mix_key, layer_key = jax.random.split(key)
            layer = jax.random.randint(layer_key, (), 1, generator.num_ws)
            return jnp.where(
                jax.random.uniform(mix_key) < self.style_mixing, layer, generator.num_ws
            )

        cutoff = per_example(crossover_key, positions, crossover)
        layers = jnp.arange(generator.num_ws)[None, :, None]
        return jnp.where(layers < cutoff[:, None, None], w[:, None], w_mix[:, None]), w

    def synthesize(self, params, ws, positions, noise_key):
        return self.generator.apply(
            {"params": params},
            ws,
            positions=positions,
            rngs={"noise": noise_key},
            method="synthesize",
        )

    def generate(self, params, stats, z, positions, keys, parallel):
        ws, w = self.mapped(params, z, positions, keys["mixing"])
        images = self.synthesize(params, ws, positions, keys["noise"])
        new_stats = dict(stats, w_avg=update_w_avg(stats["w_avg"], w, parallel))
        return images, new_stats

    def discriminate(self, params, stats, images, parallel, train=True):
        return self._discriminator(parallel).apply({"params": params}, images), stats

    def sample(self, params, stats, z, noise=None, noise_key=None, inject=True):
        rngs = {} if noise_key is None else {"noise": noise_key}
        return self.generator.apply({"params": params}, z, noise=noise, inject=inject, rngs=rngs)

    path_space = "w"

    def path_map(self, params, z):
        return self.generator.apply({"params": params}, z, method="map")

    def path_synthesize(self, params, stats, w, noise):
        return self.generator.apply({"params": params}, w, noise=noise, method="synthesize")
