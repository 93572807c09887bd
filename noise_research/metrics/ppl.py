"""Perceptual path length (PPL) of a generator, with LPIPS-VGG16 or a labelled pixel-space fallback.

PPL (Karras et al. 2019, "A style-based generator architecture for GANs", section 4.1; StyleGAN2,
Karras et al. 2020, which the gan-noise-injection paper's Table 1 and Figure 5 follow) measures
how much the image changes along short steps of a latent interpolation path. Per pair:

* z₀, z₁ ~ N(0, I) (dim z), t ~ U(0, 1) (``sampling='full'``) or t = 0 (``sampling='end'``, the
  path's end point z₀, an ordinary sample);
* ``space='z'``: the latents are ``ẑ_a = r·slerp(z₀, z₁; t)`` and ``ẑ_b = r·slerp(z₀, z₁; t + ε)``
  (:func:`slerp`), and the images ``G(map(ẑ))``;
* ``space='w'``: ``w₀ = map(z₀)``, ``w₁ = map(z₁)``, the latents are ``lerp(w₀, w₁; t)`` and
  ``lerp(w₀, w₁; t + ε)`` with ``lerp(a, b; t) = a + t·(b − a)``, and the images ``G(w)``;
* ε = 1e−4, and the value ``d(G(a), G(b)) / ε²``; the injected noise is **held fixed within a
  pair** (both images get the same maps, drawn once per pair by ``sample_noise``), as StyleGAN's
  code does by fixing its noise variables: a resampled noise would change the image by O(1);
* ``d`` is LPIPS-VGG16 v0.1 (:mod:`noise_research.models.lpips`, from the two user-given weights
  files) → the result is called ``ppl``; without those weights, ``d`` is the mean squared pixel
  difference ``mean((G(a) − G(b))²)`` over every entry of the [−1, 1] images → the result is called
  **``ppl_pixel``** (never ``ppl``: it is not comparable with published PPLs).

The summary is StyleGAN's outlier filter: the mean of the values between the 1st and the 99th
percentiles, ``lo = percentile(values, 1, method='lower')``, ``hi = percentile(values, 99,
method='higher')``, kept where ``lo ≤ value ≤ hi`` (:func:`summarize_path_lengths`).

Optional image steps, as StyleGAN's code: ``crop='faces'`` keeps rows [3H/8, 7H/8) and columns
[2W/8, 6W/8) (``c = H // 8``: its FFHQ face crop; the StyleGAN2 paper's PPL uses the whole image,
the default here); images larger than ``downsample_above`` (256) pixels on a side are box-averaged
by the integer factor ``H // 256``, so LPIPS sees at most 256².

What differs from StyleGAN's code:

* StyleGAN's slerp returns **unit** vectors, harmless for StyleGAN whose mapping network first
  normalises z; here the slerped point is scaled to ``r = latent_radius`` (default ``√dim z``, where
  N(0, I) concentrates), so that a generator without that normalisation (DCGAN) gets latents of
  typical norm. For a generator that normalises z the values are the same.
* Pair i is drawn from ``fold_in(PRNGKey(seed), i)`` alone (not a sequential stream), so the pairs
  do not depend on the batch size, the backend or the number of devices.
* The generator and LPIPS run with ``jax.default_matmul_precision('highest')`` by default
  (``matmul_precision``): ε² = 1e−8 amplifies any reduced-precision pass (TF32, bfloat16);
  StyleGAN2-ADA likewise disables TF32 for its metrics.
* ``sampling='end'`` is t = 0 as in StyleGAN's code (t ∈ {0, 1} would be the same distribution:
  z₀ and z₁ are exchangeable).

Precision: both images are float32 and 1e−4 apart in the latent, so one value carries a relative
rounding error of ~1e−3 (an ulp of the image over a difference ~1e−4 of it; StyleGAN's values
too), and XLA may round the same pair differently in batches of other sizes: values are
reproducible across batch sizes and backends to ~1e−3, their filtered mean far better.

Generator interface (pure, batched, BatchNorm in evaluation mode):

* ``map_fn(state, z) -> w``: z ``(B, dim z)`` → the latent ``synthesize_fn`` takes, of any shape
  ``(B, ...)`` (identity for DCGAN; StyleGAN2's mapping network, possibly broadcast to
  ``(B, num_ws, w_dim)``);
* ``synthesize_fn(state, latent, noise) -> images`` ``(B, H, W, C)`` in [−1, 1];
* ``sample_noise(key) -> noise`` of ONE sample (no batch axis), vmapped over the pairs, or None.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from noise_research.metrics.gan_geometry import PairBatches, SampleNoise
from noise_research.models.lpips import lpips_distance
from noise_research.tasks.base import Evaluator
from noise_research.train.parallel import ParallelContext, cross_replica_sum

PyTree = Any
MapFn = Callable[[PyTree, jax.Array], jax.Array]
"""``map_fn(state, z) -> latent``: z (B, dim z) → the latent of ``synthesize_fn`` (B, ...)."""
SynthesizeFn = Callable[[PyTree, jax.Array, PyTree], jax.Array]
"""``synthesize_fn(state, latent, noise) -> images`` (B, H, W, C) in [−1, 1]."""

EPSILON = 1e-4
"""The step along the path (StyleGAN's ``epsilon``); values are divided by ε²."""
NUM_PAIRS = 100_000
"""StyleGAN's number of sampled paths."""
LOWER_PERCENTILE = 1.0
UPPER_PERCENTILE = 99.0
DOWNSAMPLE_ABOVE = 256
"""Images larger than this (per side) are box-downsampled to it, as StyleGAN's code does."""
SPACES = ("z", "w")
SAMPLINGS = ("full", "end")
CROPS = (None, "faces")


# --------------------------------------------------------------------------------------------
# Paths.


def slerp(a: jax.Array, b: jax.Array, t: jax.Array) -> jax.Array:
    """Spherical interpolation of the directions of ``a`` and ``b`` (rows): a unit vector.

    With â = a/‖a‖, b̂ = b/‖b‖, θ = arccos(â·b̂) (â·b̂ clipped to [−1, 1]) and the unit vector
    ĉ = (b̂ − (â·b̂)â)/‖b̂ − (â·b̂)â‖ orthogonal to â in their plane:
    ``slerp(a, b; t) = â cos(tθ) + ĉ sin(tθ)``, renormalised (StyleGAN's ``slerp``). t = 0 gives
    â, t = 1 gives b̂; t outside [0, 1] continues along the great circle. Undefined when a and b
    are parallel (probability 0 for Gaussian samples).

    Args:
      a, b: (B, D).
      t: (B,) positions along the path.

    Returns:
      (B, D) unit vectors, in the dtype of ``a``.
    """
    chex.assert_rank([a, b, t], [2, 2, 1])
    chex.assert_equal_shape([a, b])
    chex.assert_equal_shape_prefix([a, t], 1)
    a = a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    b = b / jnp.linalg.norm(b, axis=-1, keepdims=True)
    cosine = jnp.clip(jnp.sum(a * b, axis=-1, keepdims=True), -1.0, 1.0)
    angle = t[:, None] * jnp.arccos(cosine)
    c = b - cosine * a
    c = c / jnp.linalg.norm(c, axis=-1, keepdims=True)
    out = a * jnp.cos(angle) + c * jnp.sin(angle)
    return out / jnp.linalg.norm(out, axis=-1, keepdims=True)


def lerp(a: jax.Array, b: jax.Array, t: jax.Array) -> jax.Array:
    """``a + t·(b − a)`` with t (B,) broadcast over the trailing axes of a, b (B, ...)."""
    chex.assert_equal_shape([a, b])
    chex.assert_rank(t, 1)
    chex.assert_equal_shape_prefix([a, t], 1)
    t = t.reshape(t.shape + (1,) * (a.ndim - 1)).astype(a.dtype)
    return a + t * (b - a)


def sample_path_pairs(
    key: jax.Array,
    positions: jax.Array,
    latent_dim: int,
    sampling: str = "end",
    sample_noise: SampleNoise | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, PyTree]:
    """The paths at ``positions``: z₀, z₁ ~ N(0, I), t, and the pair's noise.

    Pair i is drawn from ``fold_in(key, i)`` alone (vmapped over ``positions``), so a pair is the
    same whichever chunk or device computes it. t ~ U(0, 1) for ``sampling='full'``, t = 0 for
    ``'end'``.

    Args:
      key: the evaluation's PRNG key.
      positions: (B,) integer pair indices.
      latent_dim: dim z.
      sampling: 'full' or 'end'.
      sample_noise: one pair's injected noise from a key (no batch axis), or None.

    Returns:
      z₀ (B, dim z), z₁ (B, dim z), t (B,) float32, and the noise pytree with leaves (B, ...)
      (None when ``sample_noise`` is None).
    """
    chex.assert_rank(positions, 1)
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling={sampling!r}; allowed: {', '.join(SAMPLINGS)}")

    def one(position: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, PyTree]:
        z_key, t_key, noise_key = jax.random.split(jax.random.fold_in(key, position), 3)
        z0, z1 = jax.random.normal(z_key, (2, latent_dim), jnp.float32)
        if sampling == "full":
            t = jax.random.uniform(t_key, (), jnp.float32)
        else:
            t = jnp.zeros((), jnp.float32)
        noise = None if sample_noise is None else sample_noise(noise_key)
        return z0, z1, t, noise

    return jax.vmap(one)(positions)


def path_latents(
    map_fn: MapFn,
    state: PyTree,
    z0: jax.Array,
    z1: jax.Array,
    t: jax.Array,
    *,
    space: str = "w",
    epsilon: float = EPSILON,
    latent_radius: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The two latents of each pair that ``synthesize_fn`` gets (module docstring).

    ``space='z'``: ``map(r·slerp(z₀, z₁; t))`` and ``map(r·slerp(z₀, z₁; t + ε))``, r =
    ``latent_radius`` (default √dim z). ``space='w'``: ``lerp(w₀, w₁; t)`` and ``lerp(w₀, w₁;
    t + ε)``, ``w_i = map(z_i)``. ``map_fn`` is called once, on the 2B rows.

    Returns:
      latents_a, latents_b, each (B, ...) as ``map_fn`` returns them.
    """
    chex.assert_rank([z0, z1, t], [2, 2, 1])
    chex.assert_equal_shape([z0, z1])
    batch, latent_dim = z0.shape
    if space == "z":
        radius = math.sqrt(latent_dim) if latent_radius is None else latent_radius
        start = radius * slerp(z0, z1, t)
        end = radius * slerp(z0, z1, t + epsilon)
        latents = map_fn(state, jnp.concatenate([start, end], axis=0))
        chex.assert_axis_dimension(latents, 0, 2 * batch)
        return latents[:batch], latents[batch:]
    if space == "w":
        w = map_fn(state, jnp.concatenate([z0, z1], axis=0))
        chex.assert_axis_dimension(w, 0, 2 * batch)
        w0, w1 = w[:batch], w[batch:]
        return lerp(w0, w1, t), lerp(w0, w1, t + epsilon)
    raise ValueError(f"space={space!r}; allowed: {', '.join(SPACES)}")


# --------------------------------------------------------------------------------------------
# Images and distances.


def crop_faces(images: jax.Array) -> jax.Array:
    """StyleGAN's FFHQ crop: rows [3c, 7c) and columns [2c, 6c) of (B, H, W, C), c = H // 8 (W // 8
    for the columns)."""
    chex.assert_rank(images, 4)
    rows, cols = images.shape[1] // 8, images.shape[2] // 8
    return images[:, 3 * rows : 7 * rows, 2 * cols : 6 * cols]


def box_downsample(images: jax.Array, size: int = DOWNSAMPLE_ABOVE) -> jax.Array:
    """Images (B, H, W, C) larger than ``size`` per side → the mean of each ``f×f`` block, f =
    H // size (StyleGAN's "downsample to 256×256"); smaller images unchanged. H and W must then
    be multiples of ``size``."""
    chex.assert_rank(images, 4)
    batch, height, width, channels = images.shape
    if height <= size and width <= size:
        return images
    factor = height // size
    if height != factor * size or width % factor:
        raise ValueError(f"cannot box-downsample {height}×{width} images to {size} per side")
    blocks = images.reshape(batch, height // factor, factor, width // factor, factor, channels)
    return jnp.mean(blocks, axis=(2, 4))


def pixel_distance(images_a: jax.Array, images_b: jax.Array) -> jax.Array:
    """The pixel fallback's d: ``mean((a − b)²)`` over every entry of each image, (B,) float32."""
    chex.assert_equal_shape([images_a, images_b])
    difference = images_a.astype(jnp.float32) - images_b.astype(jnp.float32)
    return jnp.mean(jnp.square(difference).reshape(difference.shape[0], -1), axis=1)


def metric_name(lpips_variables: PyTree) -> str:
    """``'ppl'`` with LPIPS weights, ``'ppl_pixel'`` without (the pixel-space fallback)."""
    return "ppl_pixel" if lpips_variables is None else "ppl"


def _precision(matmul_precision: str | None) -> contextlib.AbstractContextManager:
    if matmul_precision is None:
        return contextlib.nullcontext()
    return jax.default_matmul_precision(matmul_precision)


def pair_path_lengths(
    map_fn: MapFn,
    synthesize_fn: SynthesizeFn,
    state: PyTree,
    z0: jax.Array,
    z1: jax.Array,
    t: jax.Array,
    noise: PyTree = None,
    *,
    lpips_variables: PyTree = None,
    space: str = "w",
    epsilon: float = EPSILON,
    latent_radius: float | None = None,
    crop: str | None = None,
    downsample_above: int = DOWNSAMPLE_ABOVE,
    matmul_precision: str | None = "highest",
) -> jax.Array:
    """``d(G(a), G(b)) / ε²`` per pair (module docstring); pure and jit-able.

    Both endpoints are synthesised in one call on 2B rows with the pair's noise repeated, so they
    see the same noise maps. ``d`` is LPIPS-VGG16 with ``lpips_variables`` (from
    :func:`noise_research.models.lpips.load_lpips_vgg16_variables`), else :func:`pixel_distance`.

    Args:
      map_fn, synthesize_fn: the generator (module docstring).
      state: their first argument (e.g. the train state with the EMA generator's variables).
      z0, z1: (B, dim z) path ends; t: (B,) positions.
      noise: a pytree of (B, ...) injected-noise maps, one per pair; or None.
      lpips_variables: LPIPS-VGG16 variables, or None for the pixel fallback.
      space: 'z' (slerp of z) or 'w' (lerp of map(z)).
      epsilon: the step ε.
      latent_radius: the norm of the slerped z (space 'z'); None: √dim z.
      crop: None or 'faces' (:func:`crop_faces`).
      downsample_above: box-downsample larger images to this size per side.
      matmul_precision: ``jax.default_matmul_precision`` while tracing; None: leave the default.

    Returns:
      (B,) float32 values.
    """
    if crop not in CROPS:
        raise ValueError(f"crop={crop!r}; allowed: None, 'faces'")
    batch = z0.shape[0]
    chex.assert_shape(t, (batch,))
    if noise is not None:
        chex.assert_tree_shape_prefix(noise, (batch,))
    with _precision(matmul_precision):
        latents_a, latents_b = path_latents(
            map_fn,
            state,
            z0,
            z1,
            t,
            space=space,
            epsilon=epsilon,
            latent_radius=latent_radius,
        )
        latents = jnp.concatenate([latents_a, latents_b], axis=0)
        both_noise = (
            None
            if noise is None
            else jax.tree.map(lambda n: jnp.concatenate([n, n], axis=0), noise)
        )
        images = synthesize_fn(state, latents, both_noise)
        chex.assert_rank(images, 4)
        chex.assert_axis_dimension(images, 0, 2 * batch)
        if crop == "faces":
            images = crop_faces(images)
        images = box_downsample(images, downsample_above)
        images_a, images_b = images[:batch], images[batch:]
        if lpips_variables is None:
            distances = pixel_distance(images_a, images_b)
        else:
            distances = lpips_distance(lpips_variables, images_a, images_b)
    chex.assert_shape(distances, (batch,))
    return distances.astype(jnp.float32) / jnp.float32(epsilon**2)


# --------------------------------------------------------------------------------------------
# Summary, plain function, evaluator.


def summarize_path_lengths(
    values: np.ndarray,
    name: str = "ppl",
    lower_percentile: float = LOWER_PERCENTILE,
    upper_percentile: float = UPPER_PERCENTILE,
) -> dict[str, float]:
    """StyleGAN's filtered mean of per-pair path lengths, in float64.

    ``lo = percentile(values, lower, method='lower')``, ``hi = percentile(values, upper,
    method='higher')`` (numpy's 'lower'/'higher' pick actual values: StyleGAN's
    ``interpolation='lower'/'higher'``); the result is the mean of the values with ``lo ≤ v ≤ hi``.

    Returns:
      ``{name: filtered mean, name_num_pairs: N, name_num_kept: count within the percentiles}``.
    """
    values = np.asarray(values, np.float64)
    chex.assert_rank(values, 1)
    if values.size == 0:
        raise ValueError("no path lengths to summarize")
    low = np.percentile(values, lower_percentile, method="lower")
    high = np.percentile(values, upper_percentile, method="higher")
    kept = values[(values >= low) & (values <= high)]
    return {
        name: float(np.mean(kept)),
        f"{name}_num_pairs": float(values.size),
        f"{name}_num_kept": float(kept.size),
    }


@functools.partial(
    jax.jit,
    static_argnames=(
        "map_fn",
        "synthesize_fn",
        "latent_dim",
        "sampling",
        "sample_noise",
        "space",
        "epsilon",
        "latent_radius",
        "crop",
        "downsample_above",
        "matmul_precision",
    ),
)
def _chunk_path_lengths(
    state: PyTree,
    network: PyTree,
    key: jax.Array,
    positions: jax.Array,
    *,
    map_fn: MapFn,
    synthesize_fn: SynthesizeFn,
    latent_dim: int,
    sampling: str,
    sample_noise: SampleNoise | None,
    space: str,
    epsilon: float,
    latent_radius: float | None,
    crop: str | None,
    downsample_above: int,
    matmul_precision: str | None,
) -> jax.Array:
    """One chunk of `ppl_values`, compiled once per generator and options (the functions are
    static, so the same ones reuse the compilation; state, weights and key are arguments)."""
    z0, z1, t, noise = sample_path_pairs(key, positions, latent_dim, sampling, sample_noise)
    return pair_path_lengths(
        map_fn,
        synthesize_fn,
        state,
        z0,
        z1,
        t,
        noise,
        lpips_variables=network,
        space=space,
        epsilon=epsilon,
        latent_radius=latent_radius,
        crop=crop,
        downsample_above=downsample_above,
        matmul_precision=matmul_precision,
    )


def ppl_values(
    map_fn: MapFn,
    synthesize_fn: SynthesizeFn,
    state: PyTree,
    key: jax.Array,
    latent_dim: int,
    *,
    num_pairs: int = NUM_PAIRS,
    lpips_variables: PyTree = None,
    space: str = "w",
    sampling: str = "end",
    sample_noise: SampleNoise | None = None,
    epsilon: float = EPSILON,
    latent_radius: float | None = None,
    crop: str | None = None,
    downsample_above: int = DOWNSAMPLE_ABOVE,
    matmul_precision: str | None = "highest",
    chunk_size: int = 64,
) -> np.ndarray:
    """The per-pair values ``d / ε²`` of ``num_pairs`` paths, pair i from ``fold_in(key, i)``.

    Computed ``chunk_size`` pairs at a time by one jitted function, ``state``,
    ``lpips_variables`` and ``key`` passed as arguments (not compiled in; the same functions and
    options reuse the compilation across calls); the last chunk is padded. The pairs
    do not depend on ``chunk_size`` (the values only up to float32 rounding). Arguments as
    :func:`pair_path_lengths` and :func:`sample_path_pairs`.

    Returns:
      (num_pairs,) float64 numpy array, pair i at index i.
    """
    if num_pairs < 1 or chunk_size < 1:
        raise ValueError(f"num_pairs={num_pairs} and chunk_size={chunk_size} must be >= 1")
    chunk_size = min(chunk_size, num_pairs)

    options = dict(
        map_fn=map_fn,
        synthesize_fn=synthesize_fn,
        latent_dim=latent_dim,
        sampling=sampling,
        sample_noise=sample_noise,
        space=space,
        epsilon=epsilon,
        latent_radius=latent_radius,
        crop=crop,
        downsample_above=downsample_above,
        matmul_precision=matmul_precision,
    )
    values = []
    for start in range(0, num_pairs, chunk_size):
        positions = jnp.arange(start, start + chunk_size, dtype=jnp.int32)
        chunk = _chunk_path_lengths(state, lpips_variables, key, positions, **options)
        values.append(np.asarray(chunk, np.float64))
    return np.concatenate(values)[:num_pairs]


def path_length_metrics(
    map_fn: MapFn,
    synthesize_fn: SynthesizeFn,
    state: PyTree,
    key: jax.Array,
    latent_dim: int,
    *,
    num_pairs: int = NUM_PAIRS,
    lpips_variables: PyTree = None,
    space: str = "w",
    sampling: str = "end",
    sample_noise: SampleNoise | None = None,
    epsilon: float = EPSILON,
    latent_radius: float | None = None,
    crop: str | None = None,
    downsample_above: int = DOWNSAMPLE_ABOVE,
    matmul_precision: str | None = "highest",
    chunk_size: int = 64,
) -> dict[str, float]:
    """:func:`ppl_values` then :func:`summarize_path_lengths`: ``{'ppl', 'ppl_num_pairs',
    'ppl_num_kept'}`` with ``lpips_variables``, ``{'ppl_pixel', ...}`` without."""
    values = ppl_values(
        map_fn,
        synthesize_fn,
        state,
        key,
        latent_dim,
        num_pairs=num_pairs,
        lpips_variables=lpips_variables,
        space=space,
        sampling=sampling,
        sample_noise=sample_noise,
        epsilon=epsilon,
        latent_radius=latent_radius,
        crop=crop,
        downsample_above=downsample_above,
        matmul_precision=matmul_precision,
        chunk_size=chunk_size,
    )
    return summarize_path_lengths(values, metric_name(lpips_variables))


def ppl_evaluator(
    map_fn: MapFn,
    synthesize_fn: SynthesizeFn,
    latent_dim: int,
    *,
    lpips_variables: PyTree = None,
    seed: int = 0,
    num_pairs: int = NUM_PAIRS,
    batch_size: int = 64,
    space: str = "w",
    sampling: str = "end",
    sample_noise: SampleNoise | None = None,
    epsilon: float = EPSILON,
    latent_radius: float | None = None,
    crop: str | None = None,
    downsample_above: int = DOWNSAMPLE_ABOVE,
    matmul_precision: str | None = "highest",
    every: int = 0,
) -> Evaluator:
    """PPL as an `Evaluator` of the train loop (tasks/base.py), as `condition_number_evaluator`.

    Contract: the loop feeds `PairBatches` (``'position'``, ``'mask'``) through ``update``, which
    draws each row's path from ``fold_in(PRNGKey(seed), position)`` (as :func:`ppl_values` with
    that key), computes its value with ``map_fn(state, ·)`` / ``synthesize_fn(state, ·, noise)``
    and scatters it into a (num_pairs,) accumulator, summed over shards (``cross_replica_sum``);
    padding rows are masked out. ``lpips_variables`` ride in the accumulator (``'network'``), so
    they reach the device as arguments, not as constants compiled into the step. ``finalize``
    returns :func:`summarize_path_lengths`' ``ppl`` (LPIPS) or ``ppl_pixel`` (no LPIPS weights)
    with ``_num_pairs`` and ``_num_kept``; the result equals :func:`path_length_metrics` with the
    same key, whatever the backend or device count.

    Args:
      map_fn, synthesize_fn: the generator (module docstring), BatchNorm in evaluation mode.
      latent_dim: dim z.
      lpips_variables: LPIPS-VGG16 variables, or None for the labelled pixel fallback.
      seed: the paths' seed (fixed across evaluations, so successive evaluations compare).
      num_pairs: paths per evaluation (StyleGAN: 100,000).
      batch_size: global pairs per batch; a multiple of the process count × local devices.
      space, sampling, sample_noise, epsilon, latent_radius, crop, downsample_above,
        matmul_precision: as in :func:`pair_path_lengths` / :func:`sample_path_pairs`.
      every: the evaluator's cadence in steps (0: at the end of training).
    """
    if space not in SPACES:
        raise ValueError(f"space={space!r}; allowed: {', '.join(SPACES)}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling={sampling!r}; allowed: {', '.join(SAMPLINGS)}")
    if crop not in CROPS:
        raise ValueError(f"crop={crop!r}; allowed: None, 'faces'")
    name = metric_name(lpips_variables)

    def source(process_index: int, process_count: int) -> PairBatches:
        return PairBatches(num_pairs, batch_size, process_index, process_count)

    def init() -> dict[str, Any]:
        return {
            "values": np.zeros((num_pairs,), np.float32),
            "count": np.zeros((), np.float32),
            "network": {} if lpips_variables is None else lpips_variables,
        }

    def update(
        state: PyTree,
        accumulator: PyTree,
        batch: Mapping[str, jax.Array],
        parallel: ParallelContext,
    ) -> PyTree:
        positions, mask = batch["position"], batch["mask"]
        chex.assert_rank(positions, 1)
        chex.assert_equal_shape([positions, mask])
        z0, z1, t, noise = sample_path_pairs(
            jax.random.PRNGKey(seed), positions, latent_dim, sampling, sample_noise
        )
        network = accumulator["network"]
        values = pair_path_lengths(
            map_fn,
            synthesize_fn,
            state,
            z0,
            z1,
            t,
            noise,
            lpips_variables=None if lpips_variables is None else network,
            space=space,
            epsilon=epsilon,
            latent_radius=latent_radius,
            crop=crop,
            downsample_above=downsample_above,
            matmul_precision=matmul_precision,
        )
        values = jnp.where(mask > 0, values, 0.0)
        contribution = cross_replica_sum(
            {
                "values": jnp.zeros((num_pairs,), jnp.float32)
                .at[positions]
                .add(values, mode="drop"),
                "count": jnp.sum(mask),
            },
            parallel,
        )
        return {
            "values": accumulator["values"] + contribution["values"],
            "count": accumulator["count"] + contribution["count"],
            "network": network,
        }

    def finalize(accumulator: PyTree) -> dict[str, float]:
        count = round(float(accumulator["count"]))
        if count != num_pairs:
            raise ValueError(f"the PPL evaluator saw {count} of {num_pairs} pairs")
        return summarize_path_lengths(np.asarray(accumulator["values"]), name)

    return Evaluator(
        source=source,
        num_batches=-(-num_pairs // batch_size),
        init=init,
        update=update,
        finalize=finalize,
        every=every,
    )
