"""Fréchet distance (FID), kernel distance (KID) and their accumulating evaluators.

* :func:`frechet_distance`: ``‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2})`` between two Gaussians, in
  float64 with ``scipy.linalg.sqrtm`` exactly as pytorch-fid's ``calculate_frechet_distance``
  (Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local Nash
  equilibrium"): a non-finite square root (a singular product) is retried with ``1e-6·I`` added to
  both covariances, and an imaginary part is dropped when the diagonal's is below 1e-3 (an error
  otherwise).
* :func:`kernel_distance`: the unbiased MMD² with the cubic polynomial kernel
  ``k(x, y) = (x·y/d + 1)³``, averaged over random subsets (Bińkowski et al. 2018, "Demystifying
  MMD GANs"; subsets as in clean-fid / StyleGAN2-ADA: 100 subsets of at most 1000 rows, drawn
  without replacement); mean and standard deviation over the subsets.
* Feature statistics accumulated on device over many batches (count, mean and centred sum of
  outer products, merged batch by batch with Chan et al.'s pairwise update so that float32 keeps
  the covariance accurate even for features with a large mean), masked rows (``"mask"`` 0) not
  counted, cross-replica under pmap: :func:`init_feature_statistics`,
  :func:`update_feature_statistics`, :func:`finalize_feature_statistics`.
* Evaluators (:class:`noise_research.tasks.base.Evaluator`) that a task wires:
  :func:`fid_evaluator` (FID/KID on pytorch-fid's Inception-v3 pool3 features — only with its
  weights) and :func:`domain_fid_evaluator` (the same distances on the features of any network the
  user gives, e.g. a small classifier trained on the task's own data: always labelled **domain
  FID** / domain KID, never "FID", because the numbers are not comparable with published FIDs).

Real-weight FID cannot be verified offline here: the Inception port is checked against pytorch-fid
with seeded random weights only (``tests/test_fid.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from noise_research.data.base import BatchSource
from noise_research.tasks.base import Evaluator
from noise_research.train.parallel import ParallelContext, cross_replica_sum

PyTree = Any
Batch = dict[str, Any]
FeaturesFn = Callable[[PyTree, jax.Array, PyTree], jax.Array]
FakeFn = Callable[[PyTree, Batch], jax.Array]

SINGULAR_OFFSET = 1e-6  # pytorch-fid's eps
IMAGINARY_TOLERANCE = 1e-3  # pytorch-fid's atol on the diagonal's imaginary part
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


# ---------------------------------------------------------------------------------------------
# Distances (host, float64).


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = SINGULAR_OFFSET,
) -> float:
    """The Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``, in float64.

    ``d² = ‖μ₁ − μ₂‖² + Tr(Σ₁) + Tr(Σ₂) − 2 Tr((Σ₁Σ₂)^{1/2})`` (Dowson & Landau 1982; FID of Heusel
    et al. 2017), computed as pytorch-fid's ``calculate_frechet_distance``: ``scipy.linalg.sqrtm``
    of ``Σ₁Σ₂``; if that is not finite (a singular product), ``eps·I`` is added to both covariances
    and the root recomputed; a complex root whose diagonal has an imaginary part above 1e-3 is a
    ``ValueError``, a smaller one is dropped.
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"mismatched statistics: means {mu1.shape} and {mu2.shape}, covariances "
            f"{sigma1.shape} and {sigma2.shape}"
        )
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAGINARY_TOLERANCE):
            raise ValueError(
                f"the square root of Σ₁Σ₂ has an imaginary component of "
                f"{np.max(np.abs(covmean.imag)):.3g}"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel ``k(x, y) = (x·y/d + 1)³`` for all rows of ``x`` and ``y`` (d: feature dim)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD² estimate between samples ``x`` and ``y`` of equal size m with
    :func:`polynomial_kernel` (Bińkowski et al. 2018, eq. 3 of Gretton et al. 2012):
    ``Σ_{i≠j} k(x_i, x_j)/(m(m−1)) + Σ_{i≠j} k(y_i, y_j)/(m(m−1)) − 2 Σ_{i,j} k(x_i, y_j)/m²``."""
    m = x.shape[0]
    if y.shape[0] != m or m < 2:
        raise ValueError(f"need two samples of equal size >= 2; got {x.shape[0]} and {y.shape[0]}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.sum() / (m * m))


def kernel_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    num_subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: the mean and standard deviation over ``num_subsets`` random subsets of
    :func:`mmd2_unbiased` (cubic polynomial kernel), in float64 (Bińkowski et al. 2018; subsets as
    clean-fid's ``kernel_distance``: each of ``m = min(n₁, n₂, subset_size)`` rows of either set,
    drawn without replacement, from ``np.random.default_rng(seed)``)."""
    features1 = np.asarray(features1, np.float64)
    features2 = np.asarray(features2, np.float64)
    if features1.ndim != 2 or features2.ndim != 2 or features1.shape[1] != features2.shape[1]:
        raise ValueError(f"feature sets must be (n, d) alike: {features1.shape}, {features2.shape}")
    m = min(features1.shape[0], features2.shape[0], subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 feature rows in each set; got {m}")
    rng = np.random.default_rng(seed)
    values = [
        mmd2_unbiased(
            features1[rng.choice(features1.shape[0], m, replace=False)],
            features2[rng.choice(features2.shape[0], m, replace=False)],
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


# ---------------------------------------------------------------------------------------------
# Accumulated feature statistics (device, pure, jit/pmap-able).


def accumulator_dtype() -> np.dtype:
    """float64 where ``jax_enable_x64`` is on, float32 otherwise."""
    return np.dtype(np.float64) if jax.config.jax_enable_x64 else np.dtype(np.float32)


def init_feature_statistics(dim: int) -> dict[str, np.ndarray]:
    """The empty statistics of ``dim``-d features: ``count`` (rows), ``mean``, ``m2`` (the centred
    sum of outer products ``Σ (x − μ)(x − μ)ᵀ``), host arrays in :func:`accumulator_dtype`."""
    dtype = accumulator_dtype()
    return {
        "count": np.zeros((), dtype),
        "mean": np.zeros((dim,), dtype),
        "m2": np.zeros((dim, dim), dtype),
    }


def update_feature_statistics(
    stats: Mapping[str, jax.Array],
    features: jax.Array,
    mask: jax.Array | None,
    parallel: ParallelContext,
) -> dict[str, jax.Array]:
    """Adds the rows of ``features`` ``(B, D)`` whose ``mask`` is nonzero (all when None).

    The batch's count, mean and centred outer-product sum are summed over replicas
    (:func:`cross_replica_sum`: the batch is then the global one on any backend) and merged into
    the running ones with Chan, Golub & LeVeque's pairwise update
    (``δ = μ_b − μ_a; μ = μ_a + δ·n_b/n; M2 = M2_a + M2_b + δδᵀ·n_a·n_b/n``), so nothing subtracts
    two large sums (float32 keeps the covariance to ~1e-6 relative). Matrix products run at full
    precision. Pure and jit-able; the result is identical on every replica.
    """
    dtype = stats["mean"].dtype
    x = features.astype(dtype)
    weight = jnp.ones(x.shape[:1], dtype) if mask is None else (mask > 0).astype(dtype)
    batch_count = cross_replica_sum(jnp.sum(weight), parallel)
    batch_sum = cross_replica_sum(weight @ x, parallel)
    batch_mean = batch_sum / jnp.maximum(batch_count, 1.0)
    centred = x - batch_mean
    batch_m2 = cross_replica_sum(
        jnp.dot((centred * weight[:, None]).T, centred, precision=jax.lax.Precision.HIGHEST),
        parallel,
    )
    count = stats["count"] + batch_count
    delta = batch_mean - stats["mean"]
    share = batch_count / jnp.maximum(count, 1.0)
    return {
        "count": count,
        "mean": stats["mean"] + delta * share,
        "m2": stats["m2"] + batch_m2 + jnp.outer(delta, delta) * (stats["count"] * share),
    }


def finalize_feature_statistics(stats: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, int]:
    """``(mean, covariance, count)`` in float64; the covariance is unbiased (``M2/(n − 1)``, as
    ``np.cov`` in pytorch-fid). Fewer than 2 rows is a ``ValueError``."""
    count = round(float(np.asarray(stats["count"])))
    if count < 2:
        raise ValueError(f"feature statistics need at least 2 rows; got {count}")
    mean = np.asarray(stats["mean"], np.float64)
    cov = np.asarray(stats["m2"], np.float64) / (count - 1)
    return mean, (cov + cov.T) / 2.0, count


def init_feature_buffer(capacity: int, dim: int) -> dict[str, np.ndarray]:
    """Room for the first ``capacity`` feature rows (KID needs the features, not moments): the
    ``rows`` buffer, their ``valid`` flags (the mask) and the next row's ``offset``."""
    return {
        "rows": np.zeros((capacity, dim), np.float32),
        "valid": np.zeros((capacity,), np.bool_),
        "offset": np.zeros((), np.int32),
    }


def update_feature_buffer(
    buffer: Mapping[str, jax.Array],
    features: jax.Array,
    mask: jax.Array | None,
    parallel: ParallelContext,
) -> dict[str, jax.Array]:
    """Writes the global batch's rows (gathered over replicas under pmap) at ``offset``; rows past
    the capacity are dropped; masked rows are written with ``valid`` False."""
    valid = jnp.ones(features.shape[:1], jnp.bool_) if mask is None else mask > 0
    features = features.astype(jnp.float32)
    if parallel.axis_name is not None:
        features = jax.lax.all_gather(features, parallel.axis_name, tiled=True)
        valid = jax.lax.all_gather(valid, parallel.axis_name, tiled=True)
    index = buffer["offset"] + jnp.arange(features.shape[0], dtype=jnp.int32)
    return {
        "rows": buffer["rows"].at[index].set(features, mode="drop"),
        "valid": buffer["valid"].at[index].set(valid, mode="drop"),
        "offset": buffer["offset"] + features.shape[0],
    }


def buffered_features(buffer: Mapping[str, Any]) -> np.ndarray:
    """The valid rows of a feature buffer, on the host."""
    return np.asarray(buffer["rows"])[np.asarray(buffer["valid"], bool)]


# ---------------------------------------------------------------------------------------------
# Evaluators.


def feature_distance_evaluator(
    *,
    name: str,
    features_fn: FeaturesFn,
    fake_fn: FakeFn,
    source: Callable[[int, int], BatchSource],
    num_batches: int,
    feature_dim: int,
    network: PyTree = None,
    real_key: str = "image",
    kid_capacity: int = 0,
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: int = KID_SUBSET_SIZE,
    kid_seed: int = 0,
    every: int = 0,
) -> Evaluator:
    """An :class:`~noise_research.tasks.base.Evaluator` of the Fréchet distance (and optionally the
    kernel distance) between real and generated images in the feature space of ``features_fn``.

    Use :func:`fid_evaluator` (Inception features: "fid") or :func:`domain_fid_evaluator` (any
    other network: "domain_fid"); this builder refuses the names ``fid``/``kid``.

    The contract:

    * ``source(process_index, process_count)`` gives batches ``0 … num_batches − 1``; each carries
      real images ``batch[real_key]`` ``(B, H, W, C)``, ``"mask"`` (padding rows 0: they count for
      neither set) and whatever ``fake_fn`` needs (e.g. ``"position"``, from which the latents and
      the dynamic noise of each row are drawn, so the generated set does not depend on the device
      count).
    * ``fake_fn(state, batch) -> images``: the generated images of the batch's rows, shaped and
      scaled like the real ones (for :func:`fid_evaluator`: [0, 255], see
      :func:`to_uint8_range`). Pure and jit-able; under pmap it sees this device's rows.
    * ``features_fn(state, images, network) -> (B, feature_dim)``: ``network`` is the pytree given
      here (e.g. Inception's weights), carried inside the accumulator so large weights reach the
      device as arguments, not as constants compiled into the step.

    Both sets are accumulated in one pass (the real statistics are recomputed each evaluation: they
    are cheap next to the generator's and keep the evaluator stateless). ``finalize`` returns
    ``{name: distance, name_num_real, name_num_fake}`` and, with ``kid_capacity`` > 0, the KID of
    the first ``kid_capacity`` rows of each set as ``{kid_name}_mean`` / ``_std`` (``kid`` for
    "fid", ``domain_kid`` for "domain_fid"), kept on device as float32
    ``(kid_capacity, feature_dim)`` buffers.
    """
    if name in ("fid", "kid"):
        raise ValueError(
            f"name={name!r} is reserved for Inception features: use fid_evaluator, or "
            "domain_fid_evaluator for another network's features"
        )
    return _distance_evaluator(
        name=name,
        features_fn=features_fn,
        fake_fn=fake_fn,
        source=source,
        num_batches=num_batches,
        feature_dim=feature_dim,
        network=network,
        real_key=real_key,
        kid_capacity=kid_capacity,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        kid_seed=kid_seed,
        every=every,
    )


def _kid_name(name: str) -> str:
    return name[: -len("fid")] + "kid" if name.endswith("fid") else f"{name}_kid"


def _distance_evaluator(
    *,
    name: str,
    features_fn: FeaturesFn,
    fake_fn: FakeFn,
    source: Callable[[int, int], BatchSource],
    num_batches: int,
    feature_dim: int,
    network: PyTree,
    real_key: str,
    kid_capacity: int,
    kid_subsets: int,
    kid_subset_size: int,
    kid_seed: int,
    every: int,
) -> Evaluator:
    kid_name = _kid_name(name)

    def init() -> PyTree:
        accumulator = {
            "real": init_feature_statistics(feature_dim),
            "fake": init_feature_statistics(feature_dim),
            "network": network,
        }
        if kid_capacity:
            accumulator["real_rows"] = init_feature_buffer(kid_capacity, feature_dim)
            accumulator["fake_rows"] = init_feature_buffer(kid_capacity, feature_dim)
        return accumulator

    def update(
        state: PyTree, accumulator: PyTree, batch: Batch, parallel: ParallelContext
    ) -> PyTree:
        mask = batch.get("mask")
        net = accumulator["network"]
        real = features_fn(state, batch[real_key], net)
        fake = features_fn(state, fake_fn(state, batch), net)
        new = dict(accumulator)
        new["real"] = update_feature_statistics(accumulator["real"], real, mask, parallel)
        new["fake"] = update_feature_statistics(accumulator["fake"], fake, mask, parallel)
        if kid_capacity:
            new["real_rows"] = update_feature_buffer(accumulator["real_rows"], real, mask, parallel)
            new["fake_rows"] = update_feature_buffer(accumulator["fake_rows"], fake, mask, parallel)
        return new

    def finalize(accumulator: PyTree) -> dict[str, float]:
        mu_real, sigma_real, n_real = finalize_feature_statistics(accumulator["real"])
        mu_fake, sigma_fake, n_fake = finalize_feature_statistics(accumulator["fake"])
        result = {
            name: frechet_distance(mu_fake, sigma_fake, mu_real, sigma_real),
            f"{name}_num_real": float(n_real),
            f"{name}_num_fake": float(n_fake),
        }
        if kid_capacity:
            mean, std = kernel_distance(
                buffered_features(accumulator["fake_rows"]),
                buffered_features(accumulator["real_rows"]),
                kid_subsets,
                kid_subset_size,
                kid_seed,
            )
            result[f"{kid_name}_mean"], result[f"{kid_name}_std"] = mean, std
        return result

    return Evaluator(source, num_batches, init, update, finalize, every)


def to_uint8_range(images: jax.Array) -> jax.Array:
    """Generator output in [−1, 1] → float32 in [0, 255] rounded to integers, as the image would
    be after saving it as a PNG (what pytorch-fid reads)."""
    return jnp.round(jnp.clip((images.astype(jnp.float32) + 1.0) * 127.5, 0.0, 255.0))


def fid_evaluator(
    inception_variables: PyTree,
    *,
    fake_fn: FakeFn,
    source: Callable[[int, int], BatchSource],
    num_batches: int,
    real_key: str = "image",
    kid_capacity: int = 0,
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: int = KID_SUBSET_SIZE,
    kid_seed: int = 0,
    every: int = 0,
) -> Evaluator:
    """FID (Heusel et al. 2017) and optionally KID (Bińkowski et al. 2018) on pytorch-fid's
    Inception-v3 pool3 features (:class:`noise_research.models.inception.FIDInceptionV3`).

    ``inception_variables``: from
    :func:`noise_research.models.inception.load_fid_inception_variables` (pytorch-fid's
    ``pt_inception-2015-12-05-6726825d.pth``). Real and generated images are ``(B, H, W, 1 or 3)``
    in [0, 255] (uint8 or float; :func:`to_uint8_range` for a generator's [−1, 1] output), resized
    to 299² as pytorch-fid does. Results: ``fid``, ``fid_num_real``, ``fid_num_fake`` and
    ``kid_mean``, ``kid_std``. The contract is :func:`feature_distance_evaluator`'s. Published FIDs
    use 50,000 generated images against the full training set; fewer samples bias FID upwards.
    """
    from noise_research.models.inception import FID_FEATURE_DIM, fid_inception_features

    return _distance_evaluator(
        name="fid",
        features_fn=lambda state, images, network: fid_inception_features(network, images),
        fake_fn=fake_fn,
        source=source,
        num_batches=num_batches,
        feature_dim=FID_FEATURE_DIM,
        network=inception_variables,
        real_key=real_key,
        kid_capacity=kid_capacity,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        kid_seed=kid_seed,
        every=every,
    )


def domain_fid_evaluator(
    features_fn: FeaturesFn,
    *,
    fake_fn: FakeFn,
    source: Callable[[int, int], BatchSource],
    num_batches: int,
    feature_dim: int,
    network: PyTree = None,
    real_key: str = "image",
    kid_capacity: int = 0,
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: int = KID_SUBSET_SIZE,
    kid_seed: int = 0,
    every: int = 0,
) -> Evaluator:
    """**Domain FID** (and domain KID): the Fréchet (and kernel) distance computed as FID is, but
    on the features of a network the user gives — e.g. a small classifier trained on the task's
    own data, as MNIST GAN papers do when no Inception applies. It is not FID and is not comparable
    with published FIDs; its results are labelled ``domain_fid``, ``domain_fid_num_real``,
    ``domain_fid_num_fake``, ``domain_kid_mean``, ``domain_kid_std``. ``features_fn(state, images,
    network) -> (B, feature_dim)``; the contract is :func:`feature_distance_evaluator`'s."""
    return feature_distance_evaluator(
        name="domain_fid",
        features_fn=features_fn,
        fake_fn=fake_fn,
        source=source,
        num_batches=num_batches,
        feature_dim=feature_dim,
        network=network,
        real_key=real_key,
        kid_capacity=kid_capacity,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        kid_seed=kid_seed,
        every=every,
    )


def domain_fid(real_features: np.ndarray, fake_features: np.ndarray) -> float:
    """**Domain FID** of two host feature sets ``(n, d)`` from a user-given network (not FID: see
    :func:`domain_fid_evaluator`): :func:`frechet_distance` of their means and unbiased
    covariances, in float64."""
    real = np.asarray(real_features, np.float64)
    fake = np.asarray(fake_features, np.float64)
    return frechet_distance(
        fake.mean(0), np.cov(fake, rowvar=False), real.mean(0), np.cov(real, rowvar=False)
    )
