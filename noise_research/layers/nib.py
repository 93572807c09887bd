"""The Noise Incentive Block (NIB paper, section 3): a first layer that cures flatness degradation.

A convolution of a constant input is constant (section 1), so a plain CNN maps flat regions to flat
outputs. The NIB perturbs the input I with a noise map N and re-assembles the two perturbed copies
in the feature domain, Ĩ = f1(I + N) + f2(I − N) (section 3.1), so the network never sees a flat
signal while the pair keeps all of I. Section 3.2 adds two paradigms: impulse, with a Bernoulli
map B, Ĩ = f1(I·B) + f2(I·(1 − B)); and feature-domain, Ĩ = f1(I) + f2(N).

PRNG policy (DESIGN.md, "Rules that hold everywhere"):
- stationary noise (the paper's default) comes from the raw key data stored in the non-trainable
  collection 'noise_keys' under 'stationary_noise_key', created at init from the 'params' rng. The
  map is broadcast over the batch: the same for every input, call, device and after a checkpoint
  restore. It needs no 'noise' rng. Its pixel (h, w) is a function of (key, h, w) alone
  (`pixel_keyed_noise_map`), so inputs of every size see crops of one map anchored at the top-left
  corner: the training crops' map is the top-left of the map a full-size image sees;
- dynamic noise draws a fresh (H, W, C) map per sample and call from the 'noise' rng stream, the
  map of row i from `fold_in(key, positions[i])` with each row's global position in the example
  stream: an example's map does not depend on the device or backend that computes it. Without
  positions, a row's index in the batch stands in for its position.
"""

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

from noise_research import config_schema as cs
from noise_research.layers.noise_maps import (
    NOISE_DISTRIBUTIONS,
    per_example,
    pixel_keyed_noise_map,
    sample_noise_map,
    validate_noise_distribution,
)
from noise_research.registry import register_block

NIB_COMBINES = ("symmetric", "impulse", "feature")
"""How the NIB perturbs its input: f1(I+N)+f2(I−N), f1(I·B)+f2(I·(1−B)) or f1(I)+f2(N)."""


@dataclasses.dataclass(frozen=True)
class NibConfig:
    """A config's ``model.nib`` section: the `NoiseIncentiveBlock` fields an experiment sets."""

    combine: str = cs.setting(
        "symmetric",
        cs.Rule(
            lambda v, c: (
                v in NIB_COMBINES
                and (v != "impulse" or c.get("model.nib.distribution") == "bernoulli")
            ),
            "one of 'symmetric', 'impulse', 'feature' ('impulse' needs "
            "model.nib.distribution='bernoulli')",
        ),
        "f1(I+N) + f2(I−N) ('symmetric'), f1(I·B) + f2(I·(1−B)) ('impulse'), f1(I) + f2(N)",
    )
    distribution: str = cs.setting(
        "normal",
        cs.one_of(*NOISE_DISTRIBUTIONS),
        "the noise map: 'normal', 'uniform', 'bernoulli', or the 'grid' control",
    )
    noise_scale: float = cs.setting(
        0.3,
        cs.Rule(
            lambda v, c: (
                cs.number(minimum=0).check(v, c)
                and (c.get("model.nib.distribution") != "bernoulli" or v <= 1)
            ),
            "a number >= 0 (a probability in [0, 1] for the 'bernoulli' distribution)",
        ),
        "std (normal), half-width (uniform), P(1) (bernoulli), line amplitude (grid)",
    )
    stationary: bool = cs.setting(
        True,
        cs.Rule(
            lambda v, c: isinstance(v, bool) and (v or c.get("model.nib.distribution") != "grid"),
            "True or False (the 'grid' control is a fixed pattern: True)",
        ),
        "one fixed map (the paper's S-) or a fresh map per example and step (D-)",
    )
    kernel_size: int = cs.setting(
        3,
        cs.Rule(lambda v, _: isinstance(v, int) and v >= 1 and v % 2 == 1, "an odd integer >= 1"),
        "spatial size of f1 and f2",
    )


class NoiseIncentiveBlock(nn.Module):
    """Ĩ = f1(P1) + f2(P2) for the perturbed pair (P1, P2) that `combine` selects (section 3).

    f1 and f2 are `kernel_size`² convolutions with bias. They are computed as ONE fused convolution
    over the channel concatenation [P1, P2]: its kernel is the two kernels stacked along the input
    channels and its bias is b1 + b2, so conv([P1, P2]) = f1(P1) + f2(P2) exactly, with one kernel
    launch instead of two plus an add (this keeps the NIB's overhead small on accelerators).

    Attributes:
      features: output channels of f1 and f2.
      combine: "symmetric" (paper default): P = (I + N, I − N); "impulse": P = (I·B, I·(1 − B)),
        needs distribution="bernoulli" (B ∈ {0, 1}, P(1) = noise_scale); "feature": P = (I, N).
      distribution: the noise map's distribution, see `sample_noise_map`.
      noise_scale: std ("normal", default N(0, 0.3)), half-width ("uniform"), P(1)
        ("bernoulli") or line amplitude ("grid").
      stationary: True: one fixed map from the key in 'noise_keys' (paper default, S-N-0.3);
        False: a fresh map per sample and call from the 'noise' rng (the paper's D-N-0.3).
        The "grid" control is deterministic and must stay stationary.
      kernel_size: spatial size of f1 and f2 (odd, so the receptive field stays centred).
      use_bias: whether f1 and f2 have biases.
      dtype: compute dtype (None: from the input and params); the noise is sampled in float32.
      param_dtype: dtype of the kernel and bias.
    """

    features: int
    combine: str = "symmetric"
    distribution: str = "normal"
    noise_scale: float = 0.3
    stationary: bool = True
    kernel_size: int = 3
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        if self.features < 1:
            raise ValueError(f"features={self.features!r} must be a positive integer.")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={self.kernel_size!r} must be a positive odd integer.")
        if self.combine not in NIB_COMBINES:
            raise ValueError(f"combine={self.combine!r} is not supported; allowed: {NIB_COMBINES}.")
        validate_noise_distribution(self.distribution, self.noise_scale)
        if self.combine == "impulse" and self.distribution != "bernoulli":
            raise ValueError(
                f"combine='impulse' with distribution={self.distribution!r}: the impulse "
                "paradigm f1(I·B) + f2(I·(1−B)) needs a {0, 1} map B; use distribution='bernoulli'."
            )
        if self.distribution == "grid" and not self.stationary:
            raise ValueError(
                "stationary=False with distribution='grid': the regular grid is deterministic, "
                "it cannot be redrawn per call; use stationary=True."
            )
        super().__post_init__()

    def _noise_map(
        self, batch_shape: tuple[int, int, int, int], positions: jax.Array | None
    ) -> jax.Array:
        """The (B, H, W, C) float32 noise map for an input of `batch_shape`, per the PRNG policy."""
        image_shape = batch_shape[1:]
        if self.distribution == "grid":
            image_noise = sample_noise_map(None, image_shape, "grid", self.noise_scale)
            return jnp.broadcast_to(image_noise, batch_shape)
        if self.stationary:
            stationary_noise_key = self.variable(
                "noise_keys",
                "stationary_noise_key",
                lambda: jax.random.key_data(self.make_rng("params")),
            )
            image_noise = pixel_keyed_noise_map(
                jax.random.wrap_key_data(stationary_noise_key.value),
                image_shape,
                self.distribution,
                self.noise_scale,
            )
            return jnp.broadcast_to(image_noise, batch_shape)
        if not self.has_rng("noise") and not self.is_initializing():
            raise ValueError(
                "NoiseIncentiveBlock(stationary=False) draws a fresh noise map on every call from "
                "the 'noise' rng stream: pass rngs={'noise': key} to apply."
            )
        if positions is None:
            positions = jnp.arange(batch_shape[0])
        return per_example(
            self.make_rng("noise"),
            positions,
            lambda key: sample_noise_map(key, image_shape, self.distribution, self.noise_scale),
        )

    @nn.compact
    def __call__(self, inputs: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """Maps (B, H, W, C) inputs to (B, H, W, features); sows the noise map as
        'intermediates'/'noise_map' (read it with `mutable=['intermediates']`).

        `positions`: (B,) global positions of the rows, for dynamic noise (see the module
        docstring); stationary and grid maps ignore them.
        """
        chex.assert_rank(inputs, 4)
        if positions is not None:
            chex.assert_shape(positions, (inputs.shape[0],))
        compute_dtype = inputs.dtype if self.dtype is None else self.dtype
        images = inputs.astype(compute_dtype)
        noise_map = self._noise_map(inputs.shape, positions).astype(compute_dtype)
        self.sow("intermediates", "noise_map", noise_map)
        if self.combine == "symmetric":
            perturbed_pair = (images + noise_map, images - noise_map)
        elif self.combine == "impulse":
            perturbed_pair = (images * noise_map, images * (1 - noise_map))
        else:
            perturbed_pair = (images, noise_map)
        fused_f1_f2 = nn.Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            padding="SAME",
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="fused_conv",
        )
        outputs = fused_f1_f2(jnp.concatenate(perturbed_pair, axis=-1))
        chex.assert_shape(outputs, (*inputs.shape[:3], self.features))
        return outputs


def _nib_block_factory(**nib_fields):
    """A registry factory for a 16-feature NIB with `nib_fields`; default input (1, 32, 32, 1)."""

    def factory(shape: tuple[int, ...] | None):
        module = NoiseIncentiveBlock(features=16, **nib_fields)
        example_input = jax.ShapeDtypeStruct(shape or (1, 32, 32, 1), jnp.float32)
        return module, example_input, () if module.stationary else ("noise",)

    return factory


# The noise-injection groups of the paper's Figure 4 (S-N-0.3, grid, D-N-0.3, D-B-0.5, F-D-N-0.3).
register_block("nib", _nib_block_factory())
register_block("nib_grid", _nib_block_factory(distribution="grid"))
register_block("nib_dynamic", _nib_block_factory(stationary=False))
register_block(
    "nib_impulse",
    _nib_block_factory(
        combine="impulse", distribution="bernoulli", noise_scale=0.5, stationary=False
    ),
)
register_block("nib_feature", _nib_block_factory(combine="feature", stationary=False))
