"""Positive-noise injection in the latent space (positive-noise paper, sections 3 and 4.1, 4.4).

Three noises a network's representations receive at one chosen layer:

* `LatentGaussianNoise`: ``x + σ·ε``, ε ~ N(0, 1) (eq. 16); the paper's eqs. 10–11 call it harmful;
* `LinearTransformNoise`: ``X + QX`` over the **batch** of representations, with the paper's
  ``Q = −αI + α·f(I)`` (eq. 17) or its "optimal" quality matrix (eq. 19); the paper's positive
  noise, whose mutual-information gain is ``−log|I + Q|`` (eq. 13), ``(k − 1)·log(k + 1)`` for
  the optimal Q (eq. 20);
* `SaltPepperNoise`: elements replaced by the representation's max or min with probability α
  (eq. 18); eq. 15 calls it harmful.

Every layer is applied when ``train or at_eval``: training only by default; the authors apply them
at evaluation too (DESIGN.md, "Positive noise"), which ``at_eval=True`` reproduces. The linear
transform mixes samples: with it on at evaluation a prediction depends on the other rows of its
batch (the leakage the issue's audit measures). It mixes every row it is given, padding rows
included: a caller must not feed it a padded partial batch.

PRNG policy (DESIGN.md, "Rules that hold everywhere"): the Gaussian and salt-and-pepper draws come
from the ``'noise'`` rng stream, row i from ``fold_in(key, positions[i])``
(`noise_maps.per_example`, as `noise_injection` and the dynamic NIB do), so a sample's noise is a
function of (key, its position) and not of the device, process or backend that computes it.
Without ``positions`` a row's index in the step's **global** batch stands in for its position
(`_global_row_positions`: ``shard_index · rows + i`` under pmap, ``i`` under jit, from the
layer's ``parallel`` context), so the draw is a function of (root key, step, global row index),
the same on 1 or 8 devices, under jit or pmap (the step's key comes from `train.rng.step_rngs`).
Pass the rows' positions in the example stream to make a draw independent of the row's place in
its batch too.

Parallelism: layers receive the step's `ParallelContext` as a ``parallel`` field, as
`stylegan2.StyleGAN2Discriminator` does; the default `SINGLE_DEVICE` is a plain call on the
global batch (and is right under jit, whose step sees the global batch).
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from noise_research.layers.noise_maps import per_example
from noise_research.registry import register_block
from noise_research.train.parallel import (
    SINGLE_DEVICE,
    ParallelContext,
    cross_replica_sum,
    roll_batch,
)

LINEAR_TRANSFORM_QS = ("shift", "optimal")
"""`LinearTransformNoise`'s quality matrices: the cyclic shift (eq. 17) or optimal Q (eq. 19)."""


# ----------------------------------------------------------------------------------------------
# The quality matrices as explicit k × k matrices (tests, reports, docs) and the eq. 20 bound.


def shift_q_matrix(k: int, alpha: float) -> np.ndarray:
    """Eq. 17's quality matrix ``Q = −αI + α·f(I)`` as a (k, k) float64 array.

    f is the paper's row cyclic shift that "moves row 1 to row 2, row 2 to row 3, and row k to
    row 1": ``f(I)[i, i−1] = 1`` (indices mod k), so ``(QX)_i = α(x_{i−1} − x_i)`` and
    ``((I + Q)X)_i = (1 − α)·x_i + α·x_{i−1}``: each row takes α of the row **before** it, row 0
    of the last row. ``det(I + Q) = (1 − α)^k − (−α)^k`` (the eigenvalues of f(I) are the k-th
    roots of unity): singular at α = 1/2 for even k.
    """
    _check_k(k)
    identity = np.eye(k)
    return -alpha * identity + alpha * np.roll(identity, 1, axis=0)


def optimal_q_matrix(k: int) -> np.ndarray:
    """Eq. 19's optimal quality matrix ``diag(1/(k+1) − 1) + (1/(k+1))·1_{k×k}``, (k, k) float64.

    ``I + Q = (I + 1·1ᵀ)/(k + 1)``, so ``((I + Q)X)_i = (x_i + Σ_j x_j)/(k + 1)``: every row of
    I + Q sums to 1 and its diagonal 2/(k + 1) exceeds its off-diagonal 1/(k + 1) (eq. 14's
    constraints), and ``det(I + Q) = (k + 1)^{1−k}`` (matrix determinant lemma).
    """
    _check_k(k)
    return np.diag(np.full(k, 1.0 / (k + 1) - 1.0)) + np.full((k, k), 1.0 / (k + 1))


def optimal_q_mutual_information_bound(k: int) -> float:
    """Eq. 20: ``MI(T, Q_opt X) = (k − 1)·log(k + 1)`` nats for k samples.

    It is eq. 13's ``−log|I + Q|`` at the optimal Q, whose ``det(I + Q) = (k + 1)^{1−k}``.
    """
    _check_k(k)
    return (k - 1) * float(np.log(k + 1))


def _check_k(k: int) -> None:
    if int(k) != k or k < 1:
        raise ValueError(f"k={k!r} is the number of samples and must be a positive integer.")


# ----------------------------------------------------------------------------------------------
# Shared pieces of the layers.


def _is_applied(train: bool, at_eval: bool) -> bool:
    """A positive-noise layer acts in training, and at evaluation only when ``at_eval``."""
    return train or at_eval


def _check_representations(x: jax.Array) -> None:
    """The boundary check of every layer: a floating (B, ...) array with at least one row."""
    chex.assert_type(x, float)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x of shape {x.shape} has no rows on a leading batch axis.")


def _global_row_positions(rows: int, parallel: ParallelContext) -> jax.Array:
    """(rows,) int32 indices of this shard's rows in the step's global batch.

    ``shard_index · rows + arange(rows)``: under jit (one shard) ``arange(rows)``; under pmap the
    device's contiguous block. Both backends thus give every row the same index.
    """
    return parallel.shard_index() * rows + jnp.arange(rows, dtype=jnp.int32)


def _per_row_draw(
    module: nn.Module,
    x: jax.Array,
    positions: jax.Array | None,
    sampler: Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array],
    name: str,
) -> jax.Array:
    """``sampler(fold_in(key, position), x.shape[1:], float32)`` for every row, the key from
    ``'noise'``, positions defaulting to `_global_row_positions` under ``module.parallel``; sown
    as ``'intermediates'/name``."""
    if not module.has_rng("noise"):
        raise ValueError(
            f"{type(module).__name__} draws from the 'noise' rng stream: pass "
            "rngs={'noise': key} to apply (or call it with train=False and at_eval=False)."
        )
    rows = x.shape[0]
    if positions is None:
        positions = _global_row_positions(rows, module.parallel)
    chex.assert_shape(positions, (rows,))
    chex.assert_type(positions, int)
    draw = per_example(
        module.make_rng("noise"), positions, lambda key: sampler(key, x.shape[1:], jnp.float32)
    )
    module.sow("intermediates", name, draw)
    return draw


# ----------------------------------------------------------------------------------------------
# The layers.


class LatentGaussianNoise(nn.Module):
    """Latent Gaussian noise ``x + σ·ε``, ε ~ N(0, 1) elementwise (eq. 16; eqs. 9–11).

    ε is drawn in float32, one independent (x.shape[1:]) draw per row from
    ``fold_in(key, position)`` (module docstring), and sown as ``'intermediates'/'epsilon'``
    (read it with ``mutable=['intermediates']``). The output has x's dtype.

    Attributes:
      sigma: the noise's standard deviation σ ≥ 0 (the paper: 1, "standard normal").
      at_eval: also apply it when ``train=False`` (the authors do); else evaluation is the identity.
      parallel: the step's parallel context; only the default positions depend on it.
    """

    sigma: float
    at_eval: bool = False
    parallel: ParallelContext = SINGLE_DEVICE

    def __post_init__(self) -> None:
        if not self.sigma >= 0:
            raise ValueError(f"sigma={self.sigma!r} is a standard deviation and must be >= 0.")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, positions: jax.Array | None = None) -> jax.Array:
        """Maps (B, ...) representations to ``x + σ·ε`` (same shape and dtype), or x unchanged.

        `positions`: (B,) int global positions of the rows in the example stream (module
        docstring); None: their indices in the step's global batch.
        """
        _check_representations(x)
        if not _is_applied(train, self.at_eval):
            return x
        epsilon = _per_row_draw(self, x, positions, jax.random.normal, "epsilon")
        return (x.astype(jnp.float32) + self.sigma * epsilon).astype(x.dtype)


class LinearTransformNoise(nn.Module):
    """Linear-transform noise ``X + QX`` over the batch axis of representations (eqs. 12–13).

    X is the (k, ...) batch, one row per sample, k the **global** batch size; Q acts on the batch
    axis and every other axis rides along (a (k, d) array and (k, H, W, C) feature maps alike).

    * ``q='shift'`` (eq. 17): ``Q = −αI + α·f(I)``, f the paper's row cyclic shift that moves row 1
      to row 2, …, row k to row 1, so ``(QX)_i = α(x_{i−1} − x_i)`` and output row i is
      ``(1 − α)·x_i + α·x_{i−1}``: each row takes α of the row **before** it (row 0 of row k − 1),
      `roll_batch(x, 1)`. The authors' α is 0.4 (DESIGN.md).
    * ``q='optimal'`` (eq. 19): ``Q = diag(1/(k+1) − 1) + (1/(k+1))·1_{k×k}``, so
      ``(QX)_i = (Σ_j x_j)/(k + 1) − k·x_i/(k + 1)`` and output row i is
      ``(x_i + Σ_j x_j)/(k + 1)``, computed from the batch sum without a k × k matrix. α is unused.

    Over which rows: by default the global batch, the same under jit (the step sees the global
    array) and pmap (`roll_batch`'s ppermute, `cross_replica_sum` of the row sums) for any device
    count. ``per_device=True`` mixes only within each device's contiguous block of
    ``k / parallel.num_devices`` rows (k is then that block's size): the result depends on the
    device count, the same on both backends. `shift_q_matrix` and `optimal_q_matrix` give the
    explicit matrices. Computed in float32; the output has x's dtype. No randomness.

    Attributes:
      alpha: the shift's strength α in [0, 1] (eq. 14's ``[I+Q]_ii ≥ [I+Q]_ij`` holds for
        α ≤ 1/2; I + Q is singular at α = 1/2 for even k).
      q: 'shift' or 'optimal'.
      per_device: mix within each device's rows instead of the global batch.
      at_eval: also apply it when ``train=False`` (the authors do); else evaluation is the identity.
      parallel: the step's parallel context (axis name under pmap, device count).
    """

    alpha: float = 0.4
    q: str = "shift"
    per_device: bool = False
    at_eval: bool = False
    parallel: ParallelContext = SINGLE_DEVICE

    def __post_init__(self) -> None:
        if self.q not in LINEAR_TRANSFORM_QS:
            raise ValueError(f"q={self.q!r} is not supported; allowed: {LINEAR_TRANSFORM_QS}.")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha!r} is the shift's strength and must be in [0, 1].")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps a (k, ...) batch X to ``X + QX`` (same shape and dtype), or X unchanged."""
        _check_representations(x)
        if not _is_applied(train, self.at_eval):
            return x
        x32 = x.astype(jnp.float32)
        if self.q == "shift":
            previous_rows = roll_batch(x32, 1, self.parallel, per_device=self.per_device)
            mixed = x32 + self.alpha * (previous_rows - x32)
        else:
            mixed = self._optimal_q_output(x32)
        return mixed.astype(x.dtype)

    def _optimal_q_output(self, x: jax.Array) -> jax.Array:
        """``(I + Q_opt)X = (X + 1·Σ_j x_j)/(k + 1)``, over the global batch or each device's."""
        parallel = self.parallel
        if self.per_device and parallel.axis_name is None:
            blocks = x.reshape(parallel.num_devices, -1, *x.shape[1:])
            block_sums = jnp.sum(blocks, axis=1, keepdims=True)
            return ((blocks + block_sums) / (blocks.shape[1] + 1)).reshape(x.shape)
        total = jnp.sum(x, axis=0)
        k = x.shape[0]
        if not self.per_device:
            total = cross_replica_sum(total, parallel)
            k *= parallel.num_shards
        return (x + total) / (k + 1)


class SaltPepperNoise(nn.Module):
    """Latent salt-and-pepper noise (eq. 18; eq. 15): elements replaced by the sample's extremes.

    Per element a uniform p ~ U[0, 1) is drawn; following eq. 18 literally, the element becomes
    ``max(X)`` ("salt") if ``p < α/2``, ``min(X)`` ("pepper") if ``p > 1 − α/2``, and keeps its
    value otherwise (the case eq. 18 leaves implicit): probability α/2 each, α in all. X is "the
    representation of an image" (section 4.1), so max and min are taken **per sample**, over all
    of a row's non-batch axes (every position and channel): the layer does not mix samples.

    p is drawn per row from ``fold_in(key, position)`` (module docstring) and sown as
    ``'intermediates'/'p'``. The output has x's dtype; its gradient flows to the kept elements and
    to the extremes' arguments.

    Attributes:
      alpha: the probability α in [0, 1) (section 4.1) that an element is replaced.
      at_eval: also apply it when ``train=False`` (the authors do); else evaluation is the identity.
      parallel: the step's parallel context; only the default positions depend on it.
    """

    alpha: float
    at_eval: bool = False
    parallel: ParallelContext = SINGLE_DEVICE

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"alpha={self.alpha!r} is a probability and must be in [0, 1).")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, positions: jax.Array | None = None) -> jax.Array:
        """Maps (B, ...) representations to their salt-and-pepper version, or x unchanged.

        `positions`: as `LatentGaussianNoise`'s.
        """
        _check_representations(x)
        if not _is_applied(train, self.at_eval):
            return x
        p = _per_row_draw(self, x, positions, jax.random.uniform, "p")
        sample_axes = tuple(range(1, x.ndim))
        salt = jnp.max(x, axis=sample_axes, keepdims=True)
        pepper = jnp.min(x, axis=sample_axes, keepdims=True)
        half = self.alpha / 2
        return jnp.where(p < half, salt, jnp.where(p > 1.0 - half, pepper, x))


# ----------------------------------------------------------------------------------------------
# Inspectable blocks (`python -m noise_research.inspect`), traced in training mode.


class _TrainingModeLayer(nn.Module):
    """``layer(x, train=True)`` with the one-argument call that `inspect` expects."""

    layer: nn.Module

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.layer(x, train=True)


def _positive_noise_block_factory(make_layer: Callable[[], nn.Module], rng_names: tuple[str, ...]):
    """A registry factory for a positive-noise layer; default input (4, 8, 8, 4) features."""

    def factory(shape: tuple[int, ...] | None):
        example_input = jax.ShapeDtypeStruct(shape or (4, 8, 8, 4), jnp.float32)
        return _TrainingModeLayer(make_layer()), example_input, rng_names

    return factory


register_block(
    "latent_gaussian_noise",
    _positive_noise_block_factory(lambda: LatentGaussianNoise(sigma=1.0), ("noise",)),
)
register_block("linear_transform_noise", _positive_noise_block_factory(LinearTransformNoise, ()))
register_block(
    "linear_transform_noise_optimal_q",
    _positive_noise_block_factory(lambda: LinearTransformNoise(q="optimal"), ()),
)
register_block(
    "salt_pepper_noise",
    _positive_noise_block_factory(lambda: SaltPepperNoise(alpha=0.1), ("noise",)),
)
