"""The feature network of the coloured shapes' **domain FID**.

Without pytorch-fid's Inception-v3 weights (DESIGN.md, "FID / LPIPS weights") a GAN trained on the
embedded coloured shapes (:mod:`noise_research.data.shapes`) is scored, as MNIST GAN papers do, by
the Fréchet distance on the features of a small network trained on the same data. This module is
that network:

* :class:`ShapeFactorClassifier`: three stride-2 3×3 convolutions (32, 64, 128 channels) with leaky
  ReLUs, a global max pool (a factor is the presence of something somewhere), a dense 128-unit
  feature layer, and after its ReLU one linear head per generative factor of
  :data:`~noise_research.data.shapes.FACTOR_CLASSES` (background colour, number of shapes, and for
  each palette colour the kind of the shape of that colour: absent, disc or square) plus two
  training-only heads (:data:`AUXILIARY_CLASSES`: the numbers of discs and of squares). No
  normalisation layer: an image's features do not depend on the other images of its batch.
* :func:`shapes_feature_network`: trains it with Adam (:data:`LEARNING_RATE`) on the sum of the
  heads' cross-entropies, for ``steps`` (default 400) batches of ``batch_size`` (64) images of
  :class:`~noise_research.data.shapes.ShapeBatches` with ``seed`` (positions 0, 1, …; the first
  :data:`GEOMETRY_FIRST` of the steps train the colour-blind heads only), deterministic given its
  arguments and memoised in the process. The domain-FID features are the feature layer's 128
  pre-activation values: :meth:`DomainFeatureNetwork.features_fn` for
  :func:`~noise_research.metrics.fid.domain_fid_evaluator`, :func:`domain_fid_of_images` for host
  image arrays.

In a task, e.g.::

    network = shapes_feature_network(resolution)
    evaluator = domain_fid_evaluator(
        network.features_fn, network=network.params, feature_dim=network.feature_dim,
        fake_fn=..., source=..., num_batches=...,
    )  # results "domain_fid", "domain_fid_num_real", ...

**The numbers are "domain FID", not FID**: they depend on this network, its seed and its training
budget, and are comparable neither with published FIDs (Inception features) nor across
resolutions or feature-network seeds; only compare runs scored with the same network.

Measured at resolution 32 with the defaults (400 steps of 64 images, seed 0) on the project's
2-core VM while other jobs shared its cores: training takes 18–22 s (19 s of CPU time; about 3 s
of it compiling the step, 2 s drawing the images), held-out evaluation included. Its
held-out accuracy (:attr:`DomainFeatureNetwork.accuracy`, 1024 images of seed 1; the majority
class's share in brackets) is background 1.00 (0.16), shape_count 0.90 (0.51) and 0.92–0.96 for
the seven colours' shape kinds (0.77–0.80); seeds 1 and 2 give the same within 0.01–0.02. Domain
FID of 1024 against 1024 real images of another seed: 12.5; against 1024 real images 3×3 box
blurred: 284, without any square: 191, with shapes blended 25 % into the background: 243.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from noise_research.data.base import MAX_SEED, check_integer, check_seed
from noise_research.data.shapes import DISC, FACTOR_CLASSES, KIND_FACTORS, SQUARE, ShapeBatches
from noise_research.metrics.fid import domain_fid

PyTree = Any

FEATURE_DIM = 128
"""Width of the penultimate (feature) layer: the dimension of the domain-FID features."""

LEAKY_SLOPE = 0.2
"""Negative slope of the convolutions' leaky ReLUs (plain ReLUs learn the shapes' outlines, which
need edges between any two palette colours, much more slowly)."""

LEARNING_RATE = 3e-3
"""Adam's (constant) learning rate for :func:`shapes_feature_network`."""

GEOMETRY_FIRST = 0.5
"""Fraction of the training steps (the first ones) that train the colour-blind heads only
(``shape_count`` and :data:`AUXILIARY_CLASSES`): colours are learnt in a few dozen steps, and a
network that learns them first takes hundreds of steps more (or, for some seeds, more than the
whole budget) to tell discs from squares."""

AUXILIARY_CLASSES: dict[str, int] = {"disc_count": 3, "square_count": 3}
"""Training-only heads, after the factors' ones: the number of discs and of squares (0, 1, 2) in
the image, whatever their colours."""

COLOUR_BLIND_FACTORS = ("shape_count",)
"""The factors trained from the first step on (the others wait for :data:`GEOMETRY_FIRST`)."""

HELD_OUT_SIZE = 1024
"""Images of another seed on which :attr:`DomainFeatureNetwork.accuracy` is measured."""

FEATURE_BATCH_SIZE = 512
"""Images per jitted call in :func:`domain_fid_of_images` and the held-out evaluation."""


class ShapeFactorClassifier(nn.Module):
    """Conv classifier of the shapes' generative factors (module docstring).

    ``images`` (B, H, W, 3) in [−1, 1] → ``(features (B, feature_dim), logits)``: ``features`` the
    feature layer's pre-activations, ``logits`` a tuple of (B, classes) arrays, one per entry of
    ``num_classes`` (by default the factors' heads in `FACTOR_CLASSES` order, then the
    :data:`AUXILIARY_CLASSES` heads).
    """

    num_classes: tuple[int, ...] = (*FACTOR_CLASSES.values(), *AUXILIARY_CLASSES.values())
    widths: tuple[int, ...] = (32, 64, 128)
    feature_dim: int = FEATURE_DIM

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        chex.assert_rank(images, 4)
        x = images
        for width in self.widths:
            x = nn.leaky_relu(nn.Conv(width, (3, 3), strides=2)(x), LEAKY_SLOPE)
        features = nn.Dense(self.feature_dim, name="features")(x.max(axis=(1, 2)))
        logits = tuple(
            nn.Dense(classes, name=f"head_{index}")(nn.relu(features))
            for index, classes in enumerate(self.num_classes)
        )
        return features, logits


_MODEL = ShapeFactorClassifier()
_init = jax.jit(_MODEL.init)  # op by op, initialisation would take seconds


@jax.jit
def _features(params: PyTree, images: jax.Array) -> jax.Array:
    return _MODEL.apply({"params": params}, images)[0]


@jax.jit
def _predictions(params: PyTree, images: jax.Array) -> jax.Array:
    _, logits = _MODEL.apply({"params": params}, images)
    return jnp.stack([jnp.argmax(head, axis=-1) for head in logits[: len(FACTOR_CLASSES)]], axis=-1)


_KIND_COLUMNS = np.array([list(FACTOR_CLASSES).index(name) for name in KIND_FACTORS])

# 1 for the heads trained from the first step on, 0 for those that wait for GEOMETRY_FIRST.
_COLOUR_BLIND_HEADS = np.array(
    [name in COLOUR_BLIND_FACTORS for name in FACTOR_CLASSES] + [True] * len(AUXILIARY_CLASSES),
    np.float32,
)


def _targets(factors: jax.Array) -> jax.Array:
    """Factors (B, len(FACTOR_CLASSES)) followed by the auxiliary disc and square counts."""
    kinds = factors[:, _KIND_COLUMNS]
    counts = [jnp.sum(kinds == kind, axis=1, keepdims=True) for kind in (DISC, SQUARE)]
    return jnp.concatenate([factors, *counts], axis=1)


def _loss(
    params: PyTree, images: jax.Array, factors: jax.Array, colour_weight: jax.Array
) -> jax.Array:
    _, logits = _MODEL.apply({"params": params}, images)
    targets = _targets(factors)
    losses = jnp.stack(
        [
            optax.softmax_cross_entropy_with_integer_labels(head, targets[:, index]).mean()
            for index, head in enumerate(logits)
        ]
    )
    weights = _COLOUR_BLIND_HEADS + (1.0 - _COLOUR_BLIND_HEADS) * colour_weight
    return jnp.sum(weights * losses)


_OPTIMIZER = optax.adam(LEARNING_RATE)


@jax.jit
def _train_step(
    params: PyTree,
    opt_state: PyTree,
    images: jax.Array,
    factors: jax.Array,
    colour_weight: jax.Array,
) -> tuple[PyTree, PyTree, jax.Array]:
    loss, grads = jax.value_and_grad(_loss)(params, images, factors, colour_weight)
    updates, opt_state = _OPTIMIZER.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


@dataclasses.dataclass(frozen=True, eq=False)
class DomainFeatureNetwork:
    """A trained :class:`ShapeFactorClassifier` and its domain-FID feature function.

    Attributes:
      params: the network's Flax parameters.
      resolution: the side R of the images it was trained on and accepts.
      feature_dim: dimension of :meth:`features` (:data:`FEATURE_DIM`).
      accuracy: held-out accuracy per factor (``FACTOR_CLASSES``' names), on
        :data:`HELD_OUT_SIZE` images of another seed.
      seed, steps, batch_size: the training budget (:func:`shapes_feature_network`).
    """

    params: PyTree
    resolution: int
    feature_dim: int
    accuracy: dict[str, float]
    seed: int
    steps: int
    batch_size: int

    def _check_images(self, images: jax.Array) -> None:
        chex.assert_rank(images, 4)
        chex.assert_shape(images, (None, self.resolution, self.resolution, 3))

    def features(self, images: jax.Array) -> jax.Array:
        """Penultimate features (B, feature_dim) float32 of images (B, R, R, 3) in [−1, 1].

        Jit-able (the parameters are then constants of the program); each row depends only on
        its own image.
        """
        self._check_images(images)
        return _features(self.params, images)

    def features_fn(self, state: PyTree, images: jax.Array, network: PyTree) -> jax.Array:
        """:data:`~noise_research.metrics.fid.FeaturesFn` for
        :func:`~noise_research.metrics.fid.domain_fid_evaluator`: the features of ``images``
        (B, R, R, 3) in [−1, 1] under the parameters ``network`` (pass ``network=self.params``
        and ``feature_dim=self.feature_dim`` to the evaluator); ``state`` is unused."""
        del state
        self._check_images(images)
        return _MODEL.apply({"params": network}, images)[0]


def _held_out_accuracy(params: PyTree, resolution: int, seed: int) -> dict[str, float]:
    held_out = ShapeBatches(
        HELD_OUT_SIZE, (resolution, resolution), seed, 0, 1, factors=True
    ).batch(0)
    predictions = np.concatenate(
        [
            np.asarray(_predictions(params, held_out["image"][start : start + FEATURE_BATCH_SIZE]))
            for start in range(0, HELD_OUT_SIZE, FEATURE_BATCH_SIZE)
        ]
    )
    correct = (predictions == held_out["factors"]).mean(axis=0)
    return {name: float(value) for name, value in zip(FACTOR_CLASSES, correct, strict=True)}


def train_shapes_feature_network(
    resolution: int, *, seed: int = 0, steps: int = 400, batch_size: int = 64
) -> DomainFeatureNetwork:
    """Trains the domain-FID feature network of the coloured shapes at ``resolution``² (module
    docstring); :func:`shapes_feature_network` is the memoised version.

    A :class:`ShapeFactorClassifier` initialised from ``jax.random.key(seed)``, trained with Adam
    for ``steps`` batches of ``batch_size`` ``ShapeBatches(seed=seed)`` images (the same on every
    process), its held-out accuracy measured on :data:`HELD_OUT_SIZE` images of seed ``seed + 1``.
    Deterministic in its arguments.
    """
    resolution = check_integer(resolution, "resolution", 8)
    seed = check_seed(seed)
    steps = check_integer(steps, "steps", 1)
    batch_size = check_integer(batch_size, "batch_size", 1)
    size = (resolution, resolution)
    source = ShapeBatches(batch_size, size, seed, process_index=0, process_count=1, factors=True)
    params = _init(jax.random.key(seed), jnp.zeros((1, *size, 3), jnp.float32))["params"]
    opt_state = _OPTIMIZER.init(params)
    geometry_steps = int(GEOMETRY_FIRST * steps)
    for step in range(steps):
        batch = source.batch(step)
        colour_weight = np.float32(step >= geometry_steps)
        params, opt_state, _ = _train_step(
            params, opt_state, batch["image"], batch["factors"], colour_weight
        )
    params = jax.device_get(params)
    return DomainFeatureNetwork(
        params=params,
        resolution=resolution,
        feature_dim=FEATURE_DIM,
        accuracy=_held_out_accuracy(params, resolution, (seed + 1) % (MAX_SEED + 1)),
        seed=seed,
        steps=steps,
        batch_size=batch_size,
    )


def shapes_feature_network(
    resolution: int, *, seed: int = 0, steps: int = 400, batch_size: int = 64
) -> DomainFeatureNetwork:
    """The domain-FID feature network of the coloured shapes at ``resolution``²:
    :func:`train_shapes_feature_network`, memoised in the process (``functools.cache``; the same
    arguments, however passed, give the same object)."""
    return _memoised_network(resolution, seed, steps, batch_size)


@functools.cache
def _memoised_network(
    resolution: int, seed: int, steps: int, batch_size: int
) -> DomainFeatureNetwork:
    return train_shapes_feature_network(resolution, seed=seed, steps=steps, batch_size=batch_size)


def domain_fid_of_images(
    network: DomainFeatureNetwork, real_images: np.ndarray, fake_images: np.ndarray
) -> float:
    """**Domain FID** (not FID) between two host image sets (n, R, R, 3) in [−1, 1]:
    :func:`~noise_research.metrics.fid.domain_fid` of their ``network`` features. Each set needs
    more images than ``network.feature_dim`` for a full-rank covariance."""

    def features(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float32)
        chex.assert_shape(images, (None, network.resolution, network.resolution, 3))
        return np.concatenate(
            [
                np.asarray(network.features(images[start : start + FEATURE_BATCH_SIZE]))
                for start in range(0, images.shape[0], FEATURE_BATCH_SIZE)
            ]
        )

    return domain_fid(features(real_images), features(fake_images))
