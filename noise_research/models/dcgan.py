"""DCGAN generator and discriminator (Radford et al. 2016) with noise injection after each ReLU.

The gan-noise-injection paper's baseline (section 5; DESIGN.md): a DCGAN whose generator gets
Euclidean (eq. 18) or Riemannian (eqs. 13–17) noise injection after the ReLU of each feature map
at chosen resolutions (the authors: 4, 8, 16, 32), BatchNorm in both networks and N(0, 0.02)
initial weights.

Generator, ``resolution`` R ∈ {32, 64}: z → Dense → 4 × 4 × (R/8 · width) → BN → ReLU, then
stride-2 transposed 4 × 4 convolutions halving the channels and doubling the side (BN, ReLU)
until R/2, and a last stride-2 transposed convolution to R × R × 3 with tanh. The feature map at
side r (after its ReLU and its injection) is sown as ``'intermediates'/'features_r'`` so that the
geometry metrics can take "G up to layer r". The injected noise is a mapping ``{r: (B, r, r, 1)}``
(explicit, held fixed), None (drawn from the ``'noise'`` rng, keyed by ``positions``), or
switched off with ``inject=False``.

Discriminator: stride-2 4 × 4 convolutions doubling the channels from ``width`` (no BN on the
first, BN after the others, LeakyReLU 0.2) down to 4 × 4, then a dense logit.
"""

from __future__ import annotations

from collections.abc import Mapping

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from noise_research.layers.noise_injection import (
    RNI_VARIANTS,
    EuclideanNoiseInjection,
    RiemannianNoiseInjection,
)
from noise_research.registry import register_block

DCGAN_RESOLUTIONS = (32, 64)
INJECTIONS = ("none", "euclidean", "riemannian")
"""What the generator injects after its ReLUs: nothing, ENI (eq. 18) or RNI (eqs. 13–17)."""

dcgan_init = nn.initializers.normal(0.02)
"""N(0, 0.02), the DCGAN initialisation of every convolution and dense kernel."""


def _batch_norm(train: bool, axis_name: str | None) -> nn.BatchNorm:
    """BatchNorm with DCGAN's N(1, 0.02) scale init; statistics over the global batch
    (``axis_name`` under pmap)."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        axis_name=axis_name,
        scale_init=lambda key, shape, dtype=jnp.float32: (
            1.0 + 0.02 * jax.random.normal(key, shape, dtype)
        ),
    )


def feature_sides(resolution: int) -> tuple[int, ...]:
    """The sides of the generator's ReLU feature maps: 4, 8, …, resolution / 2."""
    if resolution not in DCGAN_RESOLUTIONS:
        raise ValueError(
            f"resolution={resolution!r} is not supported; allowed: {DCGAN_RESOLUTIONS}"
        )
    sides, side = [], 4
    while side < resolution:
        sides.append(side)
        side *= 2
    return tuple(sides)


class DCGANGenerator(nn.Module):
    """z (B, latent_dim) → images (B, R, R, 3) in [−1, 1] (see the module docstring).

    Attributes:
      resolution: R, 32 or 64.
      width: channels of the last feature map (R/2 side); side r has width · R / (2r).
      injection: 'none', 'euclidean' or 'riemannian'.
      inject_at: sides of the feature maps that get injection (a subset of `feature_sides`).
      rni_variant: the RNI form, 'paper' or 'authors' (see `RiemannianNoiseInjection`).
      axis_name: the pmap axis for BatchNorm statistics (None under jit).
    """

    resolution: int = 32
    width: int = 64
    injection: str = "none"
    inject_at: tuple[int, ...] = (4, 8, 16, 32)
    rni_variant: str = "authors"
    axis_name: str | None = None

    def __post_init__(self) -> None:
        feature_sides(self.resolution)  # validates the resolution
        if self.injection not in INJECTIONS:
            raise ValueError(
                f"injection={self.injection!r} is not supported; allowed: {INJECTIONS}"
            )
        if self.rni_variant not in RNI_VARIANTS:
            raise ValueError(
                f"rni_variant={self.rni_variant!r} is not supported; allowed: {RNI_VARIANTS}"
            )
        if self.width < 1:
            raise ValueError(f"width={self.width!r} must be a positive integer.")
        super().__post_init__()

    @property
    def injected_sides(self) -> tuple[int, ...]:
        """The feature sides that get noise (none without injection)."""
        if self.injection == "none":
            return ()
        return tuple(side for side in feature_sides(self.resolution) if side in self.inject_at)

    def _inject(
        self,
        features: jax.Array,
        side: int,
        noise: Mapping[int, jax.Array] | None,
        positions: jax.Array | None,
        inject: bool,
    ) -> jax.Array:
        if side not in self.injected_sides:
            return features
        layer_noise = None if noise is None else noise[side]
        name = f"injection_{side}"
        if self.injection == "euclidean":
            layer = EuclideanNoiseInjection(name=name)
        else:
            layer = RiemannianNoiseInjection(variant=self.rni_variant, name=name)
        return layer(features, noise=layer_noise, positions=positions, inject=inject)

    @nn.compact
    def __call__(
        self,
        z: jax.Array,
        train: bool = False,
        noise: Mapping[int, jax.Array] | None = None,
        positions: jax.Array | None = None,
        inject: bool = True,
    ) -> jax.Array:
        chex.assert_rank(z, 2)
        sides = feature_sides(self.resolution)
        channels = self.width * self.resolution // 8
        x = nn.Dense(4 * 4 * channels, kernel_init=dcgan_init, name="project")(z)
        x = x.reshape(z.shape[0], 4, 4, channels)
        for index, side in enumerate(sides):
            if index > 0:
                channels //= 2
                x = nn.ConvTranspose(
                    channels,
                    (4, 4),
                    strides=(2, 2),
                    padding="SAME",
                    kernel_init=dcgan_init,
                    use_bias=False,
                    name=f"up_{side}",
                )(x)
            x = nn.relu(_batch_norm(train, self.axis_name)(x))
            x = self._inject(x, side, noise, positions, inject)
            self.sow("intermediates", f"features_{side}", x)
        x = nn.ConvTranspose(
            3, (4, 4), strides=(2, 2), padding="SAME", kernel_init=dcgan_init, name="to_rgb"
        )(x)
        return jnp.tanh(x)

    def noise_shapes(self, batch: int) -> dict[int, tuple[int, int, int, int]]:
        """The shape of each injected noise map for a batch of ``batch`` latents."""
        return {side: (batch, side, side, 1) for side in self.injected_sides}


class DCGANDiscriminator(nn.Module):
    """images (B, R, R, 3) → logits (B,) (see the module docstring)."""

    width: int = 64
    axis_name: str | None = None

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        chex.assert_rank(images, 4)
        resolution = images.shape[1]
        if resolution not in DCGAN_RESOLUTIONS or images.shape[2] != resolution:
            raise ValueError(
                f"images of shape {images.shape}: the DCGAN discriminator takes square "
                f"{DCGAN_RESOLUTIONS} images"
            )
        x, channels, side = images, self.width, resolution
        first = True
        while side > 4:
            x = nn.Conv(
                channels,
                (4, 4),
                strides=(2, 2),
                padding="SAME",
                kernel_init=dcgan_init,
                use_bias=first,
            )(x)
            if not first:
                x = _batch_norm(train, self.axis_name)(x)
            x = nn.leaky_relu(x, 0.2)
            first, channels, side = False, channels * 2, side // 2
        return nn.Dense(1, kernel_init=dcgan_init, name="logit")(x.reshape(x.shape[0], -1))[:, 0]


class _EvalModeDiscriminator(nn.Module):
    """`DCGANDiscriminator(images, train=False)` with the one-argument call of `inspect`."""

    discriminator: DCGANDiscriminator

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.discriminator(images, train=False)


class _EvalModeGenerator(nn.Module):
    """`DCGANGenerator(z, train=False)` with the one-argument call that `inspect` expects."""

    generator: DCGANGenerator

    def __call__(self, z: jax.Array) -> jax.Array:
        return self.generator(z, train=False)


def _generator_block_factory(injection: str):
    """A registry factory for a width-8 32² DCGAN generator in evaluation mode; input (2, 100)."""

    def factory(shape: tuple[int, ...] | None):
        module = _EvalModeGenerator(DCGANGenerator(width=8, injection=injection))
        rngs = () if injection == "none" else ("noise",)
        return module, jax.ShapeDtypeStruct(shape or (2, 100), jnp.float32), rngs

    return factory


register_block("dcgan_generator", _generator_block_factory("none"))
register_block(
    "dcgan_discriminator",
    lambda shape: (
        _EvalModeDiscriminator(DCGANDiscriminator(width=8)),
        jax.ShapeDtypeStruct(shape or (2, 32, 32, 3), jnp.float32),
        (),
    ),
)
register_block("dcgan_generator_eni", _generator_block_factory("euclidean"))
register_block("dcgan_generator_rni", _generator_block_factory("riemannian"))
