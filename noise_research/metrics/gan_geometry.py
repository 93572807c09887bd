"""Geometry of a GAN generator: condition numbers (MC, TTMC) and Jacobian rank per layer.

The gan-noise-injection paper (section 3 and "Numerical stability" in section 5) measures two
things about a generator G : z ↦ x, both implemented here for any pure JAX function.

**Condition numbers (eq. 19, Table 2).** C(f) = limsup_{‖Δx‖→0} (‖f(x) − f(x + Δx)‖ / ‖f(x)‖) /
(‖Δx‖ / ‖x‖). The paper samples 50,000 pairs (z, Δz), z ~ N(0, I), Δz ~ N(0, 1e-4), computes

    cond = (‖G(z + Δz) − G(z)‖ / ‖G(z)‖) / (‖Δz‖ / ‖z‖)

per pair, and reports its mean (**MC**) and the mean of the largest 1000 (**TTMC**, "top thousand
mean condition"). Here:

* 1e-4 is the **variance** of Δz (the N(μ, σ²) convention, as in DESIGN.md "perturb z by
  ε ~ N(0, 1e-4)"): each entry of Δz has standard deviation 1e-2, so ‖Δz‖/‖z‖ ≈ 1e-2 whatever
  dim z. Pass ``perturbation_variance`` to change it. In float32, the difference G(z + Δz) − G(z)
  has a relative error of about eps·‖G‖/‖ΔG‖ = 1.2e-7 / (cond · ‖Δz‖/‖z‖) ≈ 1e-5 / cond: below
  1e-3 for cond > 0.01, far below the spread between pairs (enable x64 for float64 throughout).
* The injected noise is **held fixed within a pair** (DESIGN.md, RNI notes): G(z) and G(z + Δz)
  see the same noise maps, drawn once per pair by ``sample_noise``; otherwise the ratio measures
  the noise, not the generator (a resampled ε changes the output by O(1), not O(Δz)).
* ‖·‖ is the ℓ2 norm over every entry of z, Δz and of one generated image.
* TTMC is the mean of the ``top_k`` largest values; by default ``top_k = round(top_fraction · N)``
  with ``top_fraction = 0.02``, the paper's 1000 of 50,000, so that a smaller sample keeps the same
  tail. The maximum is reported too (DESIGN.md: "mean, max and mean of the top 1000").
* Pair i is drawn from ``fold_in(key, i)`` alone, so the values do not depend on the chunk size,
  the number of devices or the batch a pair falls in: deterministic given the key.

**Jacobian rank (Lemmas 1–2, section 3).** By Sard's theorem (Lemma 1) the generated manifold has
intrinsic dimension rank(J_z G) at almost every z, at most min(dim z, dim x). By Lemma 2 the rank of
F^k = f^1 ∘ ⋯ ∘ f^k, "G up to layer k", does not grow with k: rank(J F^s) ≤ rank(J F^t) for
s ≥ t. With the injected noise held fixed, G(·, ε) is such a composition, so w.r.t. z alone every
layer's rank is at most dim z, for every variant (none, ENI, RNI); w.r.t. the concatenation
(z, ε) a layer after an injection point has new inputs, and its rank can exceed dim z: the paper's
way out of the "adversarial dimension trap" (section 4). `jacobian_spectrum` computes the
Jacobian by autodiff (forward mode when the input is smaller than the output, reverse mode
otherwise), its singular values in float64 (numpy), and the numerical rank with numpy's
``matrix_rank`` tolerance, σ_max · max(m, n) · eps (eps of the Jacobian's dtype, float32 unless
x64 is on), or ``rtol · σ_max`` when a relative tolerance is given. `layer_spectra` does it for
every layer of a generator at once, from a function returning a dict name → feature map
(`intermediate_features` turns Flax's ``capture_intermediates`` / ``sow`` trees into one).

BatchNorm: the generator given to every function here must be in **evaluation mode**
(``use_running_average=True``, no ``mutable`` batch statistics); in training mode a sample's
output depends on the other samples of the batch, so neither the pairs nor the Jacobians of one
sample would mean anything.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from noise_research.tasks.base import Evaluator
from noise_research.train.parallel import ParallelContext, cross_replica_sum

PyTree = Any
Generate = Callable[[jax.Array, PyTree], jax.Array]
"""``generate(z, noise) -> images``: z (B, latent_dim), noise a pytree of (B, ...) maps or None,
images (B, ...); pure, batched, BatchNorm in evaluation mode."""
SampleNoise = Callable[[jax.Array], PyTree]
"""``sample_noise(key) -> noise`` of ONE sample (no batch axis), e.g. ``{'noise_8': (8, 8, 1)}``;
it is vmapped over pairs, so ``generate`` receives the batched (B, ...) pytree."""

PERTURBATION_VARIANCE = 1e-4
"""Variance of each entry of Δz (the paper's Δx ~ N(0, 1e-4)): standard deviation 1e-2."""
TOP_FRACTION = 0.02
"""TTMC's share of the pairs: the paper's top 1000 of 50,000."""
NUM_PAIRS = 50_000
"""The paper's number of (z, Δz) pairs."""


# --------------------------------------------------------------------------------------------
# Condition numbers (eq. 19, Table 2)
# --------------------------------------------------------------------------------------------


def sample_pairs(
    key: jax.Array,
    positions: jax.Array,
    latent_dim: int,
    sample_noise: SampleNoise | None = None,
    perturbation_variance: float = PERTURBATION_VARIANCE,
) -> tuple[jax.Array, jax.Array, PyTree]:
    """The pairs at ``positions``: z ~ N(0, I), Δz ~ N(0, perturbation_variance·I), and the noise.

    Pair i is drawn from ``fold_in(key, i)`` alone (vmapped over ``positions``), so a pair is the
    same whichever chunk or device computes it.

    Args:
      key: the evaluation's PRNG key.
      positions: (B,) integer pair indices.
      latent_dim: dim z.
      sample_noise: one pair's injected noise from a key (no batch axis), or None (no noise).
      perturbation_variance: variance of each entry of Δz (standard deviation its square root).

    Returns:
      z (B, latent_dim), Δz (B, latent_dim) float32, and the noise pytree with leaves (B, ...)
      (None when ``sample_noise`` is None).
    """
    chex.assert_rank(positions, 1)
    std = math.sqrt(perturbation_variance)

    def one(position: jax.Array) -> tuple[jax.Array, jax.Array, PyTree]:
        z_key, delta_key, noise_key = jax.random.split(jax.random.fold_in(key, position), 3)
        z = jax.random.normal(z_key, (latent_dim,), jnp.float32)
        delta = std * jax.random.normal(delta_key, (latent_dim,), jnp.float32)
        noise = None if sample_noise is None else sample_noise(noise_key)
        return z, delta, noise

    return jax.vmap(one)(positions)


def pair_condition_numbers(
    generate: Generate, z: jax.Array, delta: jax.Array, noise: PyTree = None
) -> jax.Array:
    """cond = (‖G(z + Δz) − G(z)‖ / ‖G(z)‖) / (‖Δz‖ / ‖z‖) per pair, the noise held fixed.

    Both G(z) and G(z + Δz) are computed with the same ``noise`` (eq. 19 at a finite Δz, the
    paper's Table 2 protocol). Pure and jit-able.

    Args:
      generate: ``generate(z, noise) -> images`` (B, ...), BatchNorm in evaluation mode.
      z: (B, latent_dim) points.
      delta: (B, latent_dim) perturbations.
      noise: a pytree of (B, ...) injected-noise maps, the same for both calls; or None.

    Returns:
      (B,) float32 condition numbers (inf where G(z) = 0).
    """
    chex.assert_rank(z, 2)
    chex.assert_equal_shape([z, delta])
    batch = z.shape[0]
    if noise is not None:
        chex.assert_tree_shape_prefix(noise, (batch,))
    images = generate(z, noise)
    perturbed = generate(z + delta, noise)
    chex.assert_equal_shape([images, perturbed])
    chex.assert_axis_dimension(images, 0, batch)

    def norms(x: jax.Array) -> jax.Array:
        return jnp.sqrt(jnp.sum(jnp.square(x.reshape(batch, -1).astype(jnp.float32)), axis=1))

    output_change = norms(perturbed.astype(jnp.float32) - images.astype(jnp.float32))
    return (output_change / norms(images)) / (norms(delta) / norms(z))


def condition_numbers(
    generate: Generate,
    key: jax.Array,
    num_pairs: int,
    latent_dim: int,
    *,
    sample_noise: SampleNoise | None = None,
    perturbation_variance: float = PERTURBATION_VARIANCE,
    chunk_size: int = 1024,
) -> np.ndarray:
    """The per-pair condition numbers of ``num_pairs`` pairs (Table 2 protocol; module docstring).

    Pairs are computed ``chunk_size`` at a time by one jitted function (the last chunk padded), so
    memory is bounded; the pairs do not depend on ``chunk_size`` (the values only up to float32
    rounding, as XLA may fuse another batch size differently).

    Args:
      generate: ``generate(z, noise) -> images``, pure, batched, BatchNorm in evaluation mode (e.g.
        ``lambda z, noise: model.apply(variables, z, noise=noise, train=False)``).
      key: PRNG key; pair i comes from ``fold_in(key, i)``.
      num_pairs: how many pairs (the paper: 50,000).
      latent_dim: dim z.
      sample_noise: ``key -> noise`` of one sample (no batch axis), held fixed within its pair;
        None for a generator without injected noise (``generate`` then gets ``noise=None``).
      perturbation_variance: variance of each entry of Δz (default 1e-4: std 1e-2).
      chunk_size: pairs per compiled call.

    Returns:
      (num_pairs,) float64 numpy array, pair i at index i.
    """
    if num_pairs < 1 or chunk_size < 1:
        raise ValueError(f"num_pairs={num_pairs} and chunk_size={chunk_size} must be >= 1")
    chunk_size = min(chunk_size, num_pairs)

    @jax.jit
    def chunk(positions: jax.Array) -> jax.Array:
        z, delta, noise = sample_pairs(
            key, positions, latent_dim, sample_noise, perturbation_variance
        )
        return pair_condition_numbers(generate, z, delta, noise)

    values = []
    for start in range(0, num_pairs, chunk_size):
        positions = jnp.arange(start, start + chunk_size, dtype=jnp.int32)
        values.append(np.asarray(chunk(positions), np.float64))
    return np.concatenate(values)[:num_pairs]


def _top_count(num_pairs: int, top_fraction: float, top_k: int | None) -> int:
    if top_k is None:
        if not 0 < top_fraction <= 1:
            raise ValueError(f"top_fraction={top_fraction} must be in (0, 1]")
        top_k = round(top_fraction * num_pairs)
    return int(min(max(top_k, 1), num_pairs))


def summarize_condition_numbers(
    values: np.ndarray, *, top_fraction: float = TOP_FRACTION, top_k: int | None = None
) -> dict[str, float]:
    """MC, TTMC and the maximum of per-pair condition numbers (Table 2).

    Args:
      values: (N,) condition numbers.
      top_fraction: TTMC averages the largest ``round(top_fraction · N)`` values (at least 1);
        default 0.02, the paper's 1000 of 50,000.
      top_k: an explicit count instead (e.g. 1000 as in the paper).

    Returns:
      ``{'mc', 'ttmc', 'max', 'top_k', 'num_pairs'}`` as floats.
    """
    values = np.asarray(values, np.float64)
    chex.assert_rank(values, 1)
    count = _top_count(values.size, top_fraction, top_k)
    top = np.sort(values)[::-1][:count]
    return {
        "mc": float(np.mean(values)),
        "ttmc": float(np.mean(top)),
        "max": float(top[0]),
        "top_k": float(count),
        "num_pairs": float(values.size),
    }


def condition_metrics(
    generate: Generate,
    key: jax.Array,
    latent_dim: int,
    *,
    num_pairs: int = NUM_PAIRS,
    sample_noise: SampleNoise | None = None,
    perturbation_variance: float = PERTURBATION_VARIANCE,
    top_fraction: float = TOP_FRACTION,
    top_k: int | None = None,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """`condition_numbers` then `summarize_condition_numbers`: the call a task's report makes.

    Returns ``{'mc', 'ttmc', 'max', 'top_k', 'num_pairs'}``; see those two functions.
    """
    values = condition_numbers(
        generate,
        key,
        num_pairs,
        latent_dim,
        sample_noise=sample_noise,
        perturbation_variance=perturbation_variance,
        chunk_size=chunk_size,
    )
    return summarize_condition_numbers(values, top_fraction=top_fraction, top_k=top_k)


@dataclasses.dataclass(frozen=True)
class PairBatches:
    """A `BatchSource` of pair indices for `condition_number_evaluator`.

    ``batch(step)`` is this process's rows of global batch ``step``: ``'position'`` (int32 pair
    indices ``step·B + …``) and ``'mask'`` (float32, 0 on the padding rows past ``num_pairs``).
    """

    num_pairs: int
    global_batch_size: int
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self) -> None:
        if self.global_batch_size % self.process_count:
            raise ValueError(
                f"global_batch_size={self.global_batch_size} does not divide by "
                f"process_count={self.process_count}"
            )

    @property
    def num_batches(self) -> int:
        return -(-self.num_pairs // self.global_batch_size)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        rows = self.global_batch_size // self.process_count
        first = step * self.global_batch_size + self.process_index * rows
        positions = np.arange(first, first + rows, dtype=np.int32)
        return {"position": positions, "mask": (positions < self.num_pairs).astype(np.float32)}


def condition_number_evaluator(
    generate: Callable[[PyTree, jax.Array, PyTree], jax.Array],
    latent_dim: int,
    *,
    seed: int = 0,
    num_pairs: int = NUM_PAIRS,
    batch_size: int = 1000,
    sample_noise: SampleNoise | None = None,
    perturbation_variance: float = PERTURBATION_VARIANCE,
    top_fraction: float = TOP_FRACTION,
    top_k: int | None = None,
    every: int = 0,
) -> Evaluator:
    """The Table 2 condition numbers as an `Evaluator` of the train loop (tasks/base.py).

    Contract: the loop feeds `PairBatches` (``'position'``, ``'mask'``) through ``update``, which
    draws each row's pair from ``fold_in(PRNGKey(seed), position)`` (as `condition_numbers` with
    that key), computes its condition number with ``generate(state, z, noise)`` and scatters it
    into a (num_pairs,) accumulator, summed over shards (``cross_replica_sum``); padding rows are
    masked out. ``finalize`` returns `summarize_condition_numbers`' ``mc``, ``ttmc``, ``max``,
    ``top_k``, ``num_pairs``. The result equals ``condition_metrics`` with the same key, whatever
    the backend or device count.

    Args:
      generate: ``(state, z, noise) -> images`` with BatchNorm in evaluation mode (e.g. the EMA
        generator's ``apply(..., train=False)``); z (B, latent_dim), noise a (B, ...) pytree.
      latent_dim: dim z.
      seed: the pairs' seed (fixed across evaluations, so successive evaluations compare).
      num_pairs: pairs per evaluation (accumulated as a (num_pairs,) float32 array).
      batch_size: global pairs per batch; a multiple of the process count × local devices.
      sample_noise, perturbation_variance, top_fraction, top_k: as in `condition_metrics`.
      every: the evaluator's cadence in steps (0: at the end of training).
    """

    def source(process_index: int, process_count: int) -> PairBatches:
        return PairBatches(num_pairs, batch_size, process_index, process_count)

    def init() -> dict[str, np.ndarray]:
        return {
            "values": np.zeros((num_pairs,), np.float32),
            "count": np.zeros((), np.float32),
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
        z, delta, noise = sample_pairs(
            jax.random.PRNGKey(seed), positions, latent_dim, sample_noise, perturbation_variance
        )
        values = pair_condition_numbers(lambda z, n: generate(state, z, n), z, delta, noise)
        values = jnp.where(mask > 0, values, 0.0)
        contribution = {
            "values": jnp.zeros((num_pairs,), jnp.float32).at[positions].add(values, mode="drop"),
            "count": jnp.sum(mask),
        }
        contribution = cross_replica_sum(contribution, parallel)
        return jax.tree.map(jnp.add, accumulator, contribution)

    def finalize(accumulator: PyTree) -> dict[str, float]:
        count = round(float(accumulator["count"]))
        if count != num_pairs:
            raise ValueError(f"the condition-number evaluator saw {count} of {num_pairs} pairs")
        return summarize_condition_numbers(
            np.asarray(accumulator["values"]), top_fraction=top_fraction, top_k=top_k
        )

    return Evaluator(
        source=source,
        num_batches=-(-num_pairs // batch_size),
        init=init,
        update=update,
        finalize=finalize,
        every=every,
    )


# --------------------------------------------------------------------------------------------
# Jacobian rank and spectrum (Lemmas 1–2)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JacobianSpectrum:
    """The singular values and numerical rank of one Jacobian J (m outputs × n inputs).

    Attributes:
      rank: number of singular values above ``tolerance``.
      singular_values: all min(m, n) singular values, float64, descending.
      tolerance: the threshold used (see `numerical_rank`).
      shape: (m, n).
    """

    rank: int
    singular_values: np.ndarray
    tolerance: float
    shape: tuple[int, int]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: rank, tolerance, shape and the spectrum as a list."""
        return {
            "rank": self.rank,
            "tolerance": self.tolerance,
            "shape": list(self.shape),
            "singular_values": [float(s) for s in self.singular_values],
        }


def numerical_rank(
    singular_values: np.ndarray,
    shape: tuple[int, int],
    dtype: Any = np.float32,
    rtol: float | None = None,
) -> tuple[int, float]:
    """The rank of a matrix from its singular values, and the tolerance used.

    Default tolerance: numpy.linalg.matrix_rank's, ``σ_max · max(m, n) · eps`` with eps the
    machine epsilon of ``dtype``, the precision the matrix was computed in (float32: 1.19e-7).
    With ``rtol``: ``rtol · σ_max``, for matrices known only to a coarser precision.

    Returns:
      (rank, tolerance).
    """
    singular_values = np.asarray(singular_values, np.float64)
    sigma_max = float(singular_values.max()) if singular_values.size else 0.0
    if rtol is None:
        tolerance = sigma_max * max(shape) * float(jnp.finfo(dtype).eps)  # bfloat16 too
    else:
        tolerance = sigma_max * float(rtol)
    return int(np.sum(singular_values > tolerance)), tolerance


def jacobian_matrix(f: Callable[[PyTree], PyTree], inputs: PyTree, mode: str = "auto") -> jax.Array:
    """The Jacobian of ``f`` at ``inputs`` as an (m, n) matrix of flattened output × input.

    Inputs and outputs may be pytrees (e.g. ``(z, noise)``, or a dict of feature maps): both are
    flattened with ``ravel_pytree`` (leaves in key order). Autodiff: ``mode='fwd'`` (jacfwd, n
    JVPs), ``'rev'`` (jacrev, m VJPs) or ``'auto'``: forward when n ≤ m, the cheaper one.
    """
    flat_inputs, unravel = ravel_pytree(inputs)
    output_size = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(jax.eval_shape(f, inputs)))

    def flat_f(x: jax.Array) -> jax.Array:
        return ravel_pytree(f(unravel(x)))[0]

    if mode == "auto":
        mode = "fwd" if flat_inputs.size <= output_size else "rev"
    if mode not in ("fwd", "rev"):
        raise ValueError(f"mode={mode!r}: allowed 'auto', 'fwd', 'rev'")
    jac = (jax.jacfwd if mode == "fwd" else jax.jacrev)(flat_f)
    matrix = jax.jit(jac)(flat_inputs)
    chex.assert_shape(matrix, (output_size, flat_inputs.size))
    return matrix


def spectrum_of(matrix: np.ndarray | jax.Array, rtol: float | None = None) -> JacobianSpectrum:
    """Singular values (numpy SVD in float64) and `numerical_rank` of an (m, n) matrix."""
    chex.assert_rank(matrix, 2)
    dtype = matrix.dtype
    singular_values = np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)
    rank, tolerance = numerical_rank(singular_values, matrix.shape, dtype, rtol)
    return JacobianSpectrum(rank, singular_values, tolerance, tuple(matrix.shape))


def jacobian_spectrum(
    f: Callable[[PyTree], PyTree],
    inputs: PyTree,
    *,
    rtol: float | None = None,
    mode: str = "auto",
) -> JacobianSpectrum:
    """Rank and singular values of J f at ``inputs`` (Lemma 1: the image's intrinsic dimension).

    For the Jacobian w.r.t. z with the noise fixed: ``jacobian_spectrum(lambda z: g(z, noise), z)``;
    w.r.t. the concatenation (z, noise): ``jacobian_spectrum(lambda x: g(*x), (z, noise))``.
    One sample, no batch axis: wrap a batched Flax model as
    ``lambda z: model.apply(variables, z[None], ..., train=False)[0]`` (BatchNorm in eval mode).

    Args:
      f: pure function of ``inputs`` to any pytree of features.
      inputs: the point (any pytree of float arrays).
      rtol: relative tolerance; None: numpy's ``σ_max · max(m, n) · eps`` (`numerical_rank`).
      mode: 'auto', 'fwd' or 'rev' (`jacobian_matrix`).
    """
    return spectrum_of(jacobian_matrix(f, inputs, mode), rtol)


def layer_spectra(
    features: Callable[[jax.Array, PyTree], Mapping[str, jax.Array]],
    z: jax.Array,
    noise: PyTree = None,
    *,
    rtol: float | None = None,
    mode: str = "auto",
) -> dict[str, dict[str, JacobianSpectrum]]:
    """Rank and spectrum of "G up to layer k" for every layer k, w.r.t. z and w.r.t. (z, noise).

    ``features(z, noise)`` returns a dict name → feature map of one sample, in depth order (e.g.
    `intermediate_features` of a Flax model's ``capture_intermediates``); the result keeps that
    order (read while tracing: a dict that passed through a JAX transform comes back key-sorted).
    One autodiff pass gives every layer's rows of the Jacobian at once. Lemma 2: w.r.t. z the
    ranks do not grow with depth and are at most dim z; w.r.t. (z, noise) a layer after an
    injection point may exceed dim z.

    Args:
      features: pure ``(z, noise) -> {name: array}``; BatchNorm in evaluation mode.
      z: one latent point (any shape; flattened).
      noise: the injected noise of that sample, held fixed for the 'z' Jacobian; None: no noise
        (only 'z' is reported).
      rtol, mode: as in `jacobian_spectrum`.

    Returns:
      ``{name: {'z': JacobianSpectrum, 'z_noise': JacobianSpectrum}}`` in ``features``' order
      ('z_noise' only when ``noise`` is given).

    Cost: one (Σ_k m_k) × n Jacobian per 'z' / 'z_noise' (n = dim z, or dim z + the noise
    pixels), e.g. a 32² DCGAN with noise at 4, 8, 16: 3072 image rows × 436 columns plus the
    feature maps' rows; each layer's block goes through a float64 SVD.
    """
    names: list[str] = []

    def record_names(z: jax.Array, noise: PyTree) -> Mapping[str, jax.Array]:
        out = features(z, noise)
        names.extend(out)  # the dict's own order: JAX transforms return dicts key-sorted
        return out

    shapes = jax.eval_shape(record_names, z, noise)
    wrt: dict[str, tuple[Callable[[PyTree], Mapping[str, jax.Array]], PyTree]] = {
        "z": (lambda x: features(x, noise), z)
    }
    if noise is not None:
        wrt["z_noise"] = (lambda x: features(*x), (z, noise))
    result: dict[str, dict[str, JacobianSpectrum]] = {name: {} for name in names}
    for label, (f, inputs) in wrt.items():
        matrix = np.asarray(jacobian_matrix(lambda x, f=f: [f(x)[n] for n in names], inputs, mode))
        start = 0
        for name in names:
            size = math.prod(shapes[name].shape)
            result[name][label] = spectrum_of(matrix[start : start + size], rtol)
            start += size
    return result


def intermediate_features(intermediates: Mapping[str, Any]) -> dict[str, jax.Array]:
    """A Flax ``intermediates`` collection as a flat dict ``'path/to/module' → array``.

    Flax's ``capture_intermediates=True`` (or a filter) and ``self.sow('intermediates', name, x)``
    store tuples under nested module names, e.g. ``{'block_8': {'__call__': (x,)}}``. The
    ``'__call__'`` level is dropped, a tuple of one value is that value, a longer tuple gives
    ``name/0``, ``name/1``, …; the root module's own output (``capture_intermediates``) is
    ``'output'``. Order: the collection's (the modules' call order for
    ``capture_intermediates``), which is the depth order `layer_spectra` reports in.

    Usage with a generator (BatchNorm in evaluation mode)::

        def features(z, noise):
            _, state = model.apply(variables, z[None], noise=noise, train=False,
                                   capture_intermediates=True, mutable=['intermediates'])
            return intermediate_features(state['intermediates'])
    """
    flat: dict[str, jax.Array] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, path if key == "__call__" else (*path, str(key)))
        elif isinstance(node, tuple | list):
            if len(node) == 1:
                walk(node[0], path)
            else:
                for i, value in enumerate(node):
                    walk(value, (*path, str(i)))
        else:
            flat["/".join(path) if path else "output"] = node

    walk(intermediates, ())
    return flat
