"""Noise maps for the Noise Incentive Block (NIB paper, section 3.2, "What role is the noise map?").

The paper compares noise maps drawn from a normal distribution (its default, N(0, 0.3): DESIGN.md
reads this as standard deviation 0.3 on data in [−1, 1]), a uniform distribution U(−0.3, 0.3), an
impulse map of Bernoulli draws, and a "regular grid with alternative black and white lines" as the
control that breaks the non-periodicity condition (ii) of section 3.1.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax.typing import Dtype

NOISE_DISTRIBUTIONS = ("normal", "uniform", "bernoulli", "grid")
"""The distributions `sample_noise_map` accepts; "grid" is deterministic and needs no key."""


def validate_noise_distribution(distribution: str, scale: float) -> None:
    """Raises a `ValueError` naming the argument when `distribution` or `scale` is not allowed.

    `scale` is the standard deviation ("normal"), the half-width ("uniform"), the line amplitude
    ("grid"), all ≥ 0, or the probability P(1) ("bernoulli"), in [0, 1].
    """
    if distribution not in NOISE_DISTRIBUTIONS:
        raise ValueError(
            f"distribution={distribution!r} is not supported; allowed: {NOISE_DISTRIBUTIONS}."
        )
    if distribution == "bernoulli":
        if not 0.0 <= scale <= 1.0:
            raise ValueError(
                f"scale={scale!r} is the Bernoulli probability P(1) and must lie in [0, 1]."
            )
    elif scale < 0.0:
        raise ValueError(f"scale={scale!r} must be >= 0 for distribution={distribution!r}.")


def sample_noise_map(
    key: jax.Array | None,
    shape: Sequence[int],
    distribution: str = "normal",
    scale: float = 0.3,
    dtype: Dtype = jnp.float32,
) -> jax.Array:
    """Samples a noise map N of `shape` (NHWC or HWC) for the NIB.

    Args:
      key: a PRNG key; ignored (and may be None) for the deterministic "grid".
      shape: the map's shape. "grid" needs rank >= 3 (..., H, W, C): its lines run along W.
      distribution: "normal": N(0, scale²), i.e. the paper's N(0.0, 0.3) with std = scale;
        "uniform": U(−scale, scale); "bernoulli": values in {0, 1} with P(1) = scale (the impulse
        map B of section 3.2); "grid": rows h alternate +scale (even h) and −scale (odd h), the
        paper's regular-grid control, periodic with period 2 along H.
      scale: see `distribution`.
      dtype: the map's dtype.

    Returns:
      The noise map, of `shape` and `dtype`.
    """
    validate_noise_distribution(distribution, scale)
    shape = tuple(shape)
    if distribution == "grid":
        if len(shape) < 3:
            raise ValueError(
                f"shape={shape} has rank {len(shape)}; distribution='grid' needs rank >= 3 "
                "(..., H, W, C) to know which axis holds the rows."
            )
        row_signs = jnp.where(jnp.arange(shape[-3]) % 2 == 0, 1.0, -1.0)
        rows = (scale * row_signs).astype(dtype)[:, None, None]
        return jnp.broadcast_to(rows, shape)
    if key is None:
        raise ValueError(f"key=None: distribution={distribution!r} is random and needs a PRNG key.")
    if distribution == "normal":
        return (scale * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
    if distribution == "uniform":
        return jax.random.uniform(key, shape, jnp.float32, -scale, scale).astype(dtype)
    return jax.random.bernoulli(key, scale, shape).astype(dtype)


def pixel_keyed_noise_map(
    key: jax.Array,
    shape: Sequence[int],
    distribution: str = "normal",
    scale: float = 0.3,
    dtype: Dtype = jnp.float32,
) -> jax.Array:
    """An (H, W, C) noise map whose pixel (h, w) depends only on (key, h, w), not on H or W.

    Pixel (h, w) holds ``sample_noise_map(fold_in(fold_in(key, h), w), (C,), …)``, so the map of
    an h × w input is the top-left h × w crop of the map of any larger input: a stationary NIB
    trained on 64² crops sees the same noise on those pixels when it halftones a 1024² image
    (``jax.random.normal(key, (H, W, C))`` would draw an unrelated map for every input size). It
    costs about four times a plain draw of the same size (two hashes per pixel instead of one).
    The deterministic "grid" needs no key and is position-keyed by construction.
    """
    validate_noise_distribution(distribution, scale)
    if len(shape) != 3:
        raise ValueError(f"shape={tuple(shape)} must be (H, W, C) for a pixel-keyed map.")
    if distribution == "grid":
        return sample_noise_map(None, shape, "grid", scale, dtype)
    height, width, channels = shape

    def row(row_index: jax.Array) -> jax.Array:
        row_key = jax.random.fold_in(key, row_index)
        return jax.vmap(
            lambda column_index: sample_noise_map(
                jax.random.fold_in(row_key, column_index), (channels,), distribution, scale, dtype
            )
        )(jnp.arange(width))

    return jax.vmap(row)(jnp.arange(height))


def example_keys(key: jax.Array, positions: jax.Array) -> jax.Array:
    """One key per example, ``fold_in(key, position)``, for (B,) global positions.

    An example's draw is then a function of (key, its position in the global example stream): the
    same whichever device, process or backend computes it and wherever it sits in the local batch
    (DESIGN.md, "Rules that hold everywhere"). Positions are folded in as 32-bit numbers.
    """
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, positions)


def per_example(
    key: jax.Array, positions: jax.Array, sample: Callable[[jax.Array], jax.Array]
) -> jax.Array:
    """Stacks ``sample(example_key)`` over the examples: a (B, ...) draw, row i from position i."""
    return jax.vmap(sample)(example_keys(key, positions))
