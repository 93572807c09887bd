"""Noise injection in GAN generators (gan-noise-injection paper, section 4): ENI and RNI.

A generator layer's features μ = DCNN(x) get noise ε ~ N(0, 1), one value per pixel shared by all
channels (StyleGAN2's convention), scaled by learnable parameters:

* `EuclideanNoiseInjection` (eq. 18, StyleGAN2): ``o = μ + r·ε`` with a learnable scalar r;
* `RiemannianNoiseInjection` (RNI, eqs. 13–17): the noise and the features are modulated by a
  spatial map σ derived from μ itself, so the injected variance follows the local semantics.

The noise ε comes from one of three places, so that a generator can be called with its noise held
fixed (condition numbers, sample grids), resampled, or switched off:

* ``noise=None`` (default): drawn from the ``'noise'`` rng stream, row i from
  ``fold_in(key, positions[i])`` (`noise_maps.per_example`), so a sample's noise does not depend
  on the device or backend that computes it (DESIGN.md, "Rules that hold everywhere");
* ``noise=array``: the given (B, H, W, 1) map, e.g. one drawn once and reused;
* ``inject=False``: ε = 0, the layer's deterministic part only.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from noise_research.layers.noise_maps import per_example
from noise_research.registry import register_block

RNI_VARIANTS = ("paper", "authors")
"""`RiemannianNoiseInjection` forms: the paper's eqs. 13–17, or the authors' released code."""
RNI_NORMS = ("rms", "l2")
"""How the paper form normalises s': by its root mean square (resolution-free) or its ℓ2 norm."""
_EPS = 1e-8


def injected_noise(
    module: nn.Module,
    features: jax.Array,
    noise: jax.Array | None,
    positions: jax.Array | None,
    inject: bool,
) -> jax.Array:
    """The (B, H, W, 1) float32 noise ε a noise-injection layer adds (see the module docstring)."""
    batch, height, width, _ = features.shape
    shape = (batch, height, width, 1)
    if not inject:
        return jnp.zeros(shape, jnp.float32)
    if noise is not None:
        chex.assert_shape(noise, shape)
        return noise.astype(jnp.float32)
    if not module.has_rng("noise"):
        raise ValueError(
            f"{type(module).__name__} draws its noise from the 'noise' rng stream: pass "
            "rngs={'noise': key} to apply, an explicit noise=(B, H, W, 1) array, or inject=False."
        )
    if positions is None:
        positions = jnp.arange(batch)
    chex.assert_shape(positions, (batch,))
    return per_example(
        module.make_rng("noise"),
        positions,
        lambda key: jax.random.normal(key, shape[1:], jnp.float32),
    )


class EuclideanNoiseInjection(nn.Module):
    """Euclidean noise injection (ENI, eq. 18; StyleGAN2's noise input): ``o = μ + r·ε``.

    r is a learnable scalar, initialised at ``strength_init`` = 0 as in StyleGAN2, so a fresh
    layer is the identity whatever its noise. The paper reads this as RNI with T(μ) the identity:
    the same noise ball everywhere on the feature manifold, a globally Euclidean geometry.

    Attributes:
      strength_init: the initial r.
      dtype: compute dtype (None: the features'); ε is drawn in float32.
    """

    strength_init: float = 0.0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(
        self,
        features: jax.Array,
        noise: jax.Array | None = None,
        positions: jax.Array | None = None,
        inject: bool = True,
    ) -> jax.Array:
        """Maps (B, H, W, C) features μ to μ + r·ε, same shape."""
        chex.assert_rank(features, 4)
        dtype = features.dtype if self.dtype is None else self.dtype
        strength = self.param("strength", nn.initializers.constant(self.strength_init), ())
        epsilon = injected_noise(self, features, noise, positions, inject)
        return features.astype(dtype) + (strength * epsilon).astype(dtype)


def semantic_map(features: jax.Array) -> jax.Array:
    """Eqs. 13–14: the channel sum μ̃ of (B, H, W, C) features, minus its spatial mean, divided by
    its largest magnitude: a (B, H, W) map in [−1, 1] per sample (0 where μ̃ is flat)."""
    channel_sum = jnp.sum(features.astype(jnp.float32), axis=-1)
    centred = channel_sum - jnp.mean(channel_sum, axis=(1, 2), keepdims=True)
    peak = jnp.max(jnp.abs(centred), axis=(1, 2), keepdims=True)
    return centred / jnp.maximum(peak, _EPS)


class RiemannianNoiseInjection(nn.Module):
    """Riemannian noise injection (RNI, eqs. 13–17): noise shaped by the features' own semantics.

    ``variant='paper'`` (eqs. 13–17):
      s = semantic_map(μ) (channel sum, minus its spatial mean, over its max magnitude, eqs. 13–14);
      s_d = A ⊙ s + b with learned (H, W) maps A (init 1) and b (init 0) (eq. 15);
      s' = α·s_d + (1 − α)·1 with a learned scalar α (init 0.5), σ = s' / ‖s'‖ (eq. 16);
      o = r·σ ⊙ μ + r·σ ⊙ ε (eq. 17), r a learned scalar.
      The paper's ‖s'‖₂ over the H·W map makes σ ~ 1/√(HW): at 32² it shrinks μ 32-fold, more at
      every larger layer. ``norm='rms'`` (default) divides by √(mean(s'²) + 1e-8) instead, the
      authors' normalisation, so σ ≈ 1 at every resolution; ``norm='l2'`` is the literal
      equation. In this form r also scales μ: r = 0 zeroes the layer, so r starts at
      ``strength_init`` = 1 (o = σ ⊙ (μ + ε) at init, not the identity: ε enters at full scale).
    ``variant='authors'`` (the authors' TensorFlow StyleGAN2 fork, DESIGN.md):
      s = (semantic_map(μ) + 1) / 2 in [0, 1], then s ⊙ w + b with learned (H, W) maps w (init 1),
      b (init 0); mask = α + (1 − α)·s (α init 0.5: α weighs the all-ones map, where the paper's
      α weighs s_d); mask /= √(mean_HW(mask²) + 1e-8); o = (μ + r·ε) ⊙ mask with r, the noise
      strength, initialised at ``strength_init`` = 0 as StyleGAN2's. Only the noise is scaled by
      r; μ is modulated by the mask alone.

    The (H, W) maps fix the resolution the layer is built for. Computed in float32.

    Attributes:
      variant: 'paper' or 'authors'.
      norm: 'rms' or 'l2' ('paper' only; the authors' code uses the RMS).
      strength_init: initial r; None: 1 for 'paper', 0 for 'authors'.
      blend_init: initial α.
    """

    variant: str = "paper"
    norm: str = "rms"
    strength_init: float | None = None
    blend_init: float = 0.5

    def __post_init__(self) -> None:
        if self.variant not in RNI_VARIANTS:
            raise ValueError(f"variant={self.variant!r} is not supported; allowed: {RNI_VARIANTS}.")
        if self.norm not in RNI_NORMS:
            raise ValueError(f"norm={self.norm!r} is not supported; allowed: {RNI_NORMS}.")
        if self.variant == "authors" and self.norm != "rms":
            raise ValueError("variant='authors' normalises by the RMS; norm='l2' is the paper's.")
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        features: jax.Array,
        noise: jax.Array | None = None,
        positions: jax.Array | None = None,
        inject: bool = True,
    ) -> jax.Array:
        """Maps (B, H, W, C) features μ to the injected output o, same shape and dtype."""
        chex.assert_rank(features, 4)
        _, height, width, _ = features.shape
        default_strength = 1.0 if self.variant == "paper" else 0.0
        strength_init = default_strength if self.strength_init is None else self.strength_init
        strength = self.param("strength", nn.initializers.constant(strength_init), ())
        blend = self.param("blend", nn.initializers.constant(self.blend_init), ())
        scale_map = self.param("scale_map", nn.initializers.ones, (height, width))
        bias_map = self.param("bias_map", nn.initializers.zeros, (height, width))
        epsilon = injected_noise(self, features, noise, positions, inject)
        mu = features.astype(jnp.float32)
        s = semantic_map(mu)
        if self.variant == "paper":
            s_prime = blend * (scale_map * s + bias_map) + (1.0 - blend)
            if self.norm == "rms":
                sigma = s_prime * jax.lax.rsqrt(
                    jnp.mean(jnp.square(s_prime), axis=(1, 2), keepdims=True) + _EPS
                )
            else:
                sigma = s_prime / jnp.sqrt(
                    jnp.sum(jnp.square(s_prime), axis=(1, 2), keepdims=True) + _EPS
                )
            output = strength * sigma[..., None] * (mu + epsilon)
        else:
            mask = blend + (1.0 - blend) * (scale_map * (s + 1.0) / 2.0 + bias_map)
            mask = mask * jax.lax.rsqrt(
                jnp.mean(jnp.square(mask), axis=(1, 2), keepdims=True) + _EPS
            )
            output = (mu + strength * epsilon) * mask[..., None]
        return output.astype(features.dtype)


def _injection_block_factory(make_layer):
    """A registry factory for a noise-injection layer; default input (2, 8, 8, 4) features."""

    def factory(shape: tuple[int, ...] | None):
        return make_layer(), jax.ShapeDtypeStruct(shape or (2, 8, 8, 4), jnp.float32), ("noise",)

    return factory


register_block("eni", _injection_block_factory(lambda: EuclideanNoiseInjection(strength_init=0.1)))
register_block("rni", _injection_block_factory(RiemannianNoiseInjection))
register_block(
    "rni_authors",
    _injection_block_factory(
        lambda: RiemannianNoiseInjection(variant="authors", strength_init=0.1)
    ),
)
