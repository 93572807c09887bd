"""The feature network of the label-map photographs' **domain FID** (semantic synthesis).

The GAN issue's domain FID (``metrics/domain_features.py``) scores images by the Fréchet distance
on the features of a small network trained on the procedural data's known factors. Its network
knows the coloured shapes, not these pictures: it never saw a texture, so it would score a
generator that paints flat segments in the right mean colours as good as one that draws the
textures. This module trains **the same kind of network** — :class:`~noise_research.metrics.
domain_features.ShapeFactorClassifier` (three stride-2 convolutions, global max pool, a 128-unit
feature layer, one head per factor), imported, not copied — on the paired photographs of
:mod:`noise_research.data.label_maps`, with one head per texture factor of
:data:`~noise_research.data.label_maps.FACTOR_CLASSES` (sky tint, ground grain size, road with or
without lane markings, window spacing, foliage colour, stripe orientation; "absent" for a class
that is not in the picture). To tell grain sizes, window spacings and stripe orientations apart
its features must see texture inside flat label segments — what the NIB paper's FID measures on
Cityscapes and what a flatness-degraded generator lacks.

The numbers are **domain FID**, not FID: comparable only between runs scored with the same
network (resolution, seed, steps), never with the paper's Cityscapes FIDs.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from noise_research.data.base import MAX_SEED, check_integer, check_seed
from noise_research.data.label_maps import FACTOR_CLASSES, LabelMapBatches
from noise_research.metrics.domain_features import (
    FEATURE_DIM,
    HELD_OUT_SIZE,
    LEARNING_RATE,
    DomainFeatureNetwork,
    ShapeFactorClassifier,
)

PyTree = Any

MODEL = ShapeFactorClassifier(num_classes=tuple(FACTOR_CLASSES.values()))
"""The factor classifier of the label-map photographs (one head per texture factor)."""
_OPTIMIZER = optax.adam(LEARNING_RATE)


def _loss(params: PyTree, images: jax.Array, factors: jax.Array) -> jax.Array:
    _, logits = MODEL.apply({"params": params}, images)
    return sum(
        optax.softmax_cross_entropy_with_integer_labels(head, factors[:, index]).mean()
        for index, head in enumerate(logits)
    )


@jax.jit
def _train_step(params: PyTree, opt_state: PyTree, images: jax.Array, factors: jax.Array):
    grads = jax.grad(_loss)(params, images, factors)
    updates, opt_state = _OPTIMIZER.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


@jax.jit
def _predictions(params: PyTree, images: jax.Array) -> jax.Array:
    _, logits = MODEL.apply({"params": params}, images)
    return jnp.stack([jnp.argmax(head, axis=-1) for head in logits], axis=-1)


class LabelMapFeatureNetwork(DomainFeatureNetwork):
    """A trained factor classifier of the label-map photographs: the GAN issue's
    :class:`~noise_research.metrics.domain_features.DomainFeatureNetwork` (its attributes; the
    accuracy is per `FACTOR_CLASSES` texture factor) with this module's heads."""

    def features(self, images: jax.Array) -> jax.Array:
        """The feature layer (B, feature_dim) of images (B, R, R, 3) in [−1, 1]."""
        return self.features_fn(None, images, self.params)

    def features_fn(self, state: PyTree, images: jax.Array, network: PyTree) -> jax.Array:
        """:data:`~noise_research.metrics.fid.FeaturesFn` for
        :func:`~noise_research.metrics.fid.domain_fid_evaluator` (pass ``network=self.params``);
        ``state`` is unused."""
        del state
        self._check_images(images)
        return MODEL.apply({"params": network}, images)[0]


def train_label_map_feature_network(
    resolution: int, *, seed: int = 0, steps: int = 400, batch_size: int = 64
) -> LabelMapFeatureNetwork:
    """Trains the classifier with Adam on the sum of its heads' cross-entropies for ``steps``
    batches of ``LabelMapBatches(seed=seed)`` photographs at ``resolution``² (positions 0, 1, …);
    deterministic in its arguments. :func:`label_map_feature_network` memoises it."""
    resolution = check_integer(resolution, "resolution", 8)
    seed, steps = check_seed(seed), check_integer(steps, "steps", 1)
    size = (resolution, resolution)
    source = LabelMapBatches(check_integer(batch_size, "batch_size", 1), size, seed, 0, 1)
    params = jax.jit(MODEL.init)(jax.random.key(seed), jnp.zeros((1, *size, 3)))["params"]
    opt_state = _OPTIMIZER.init(params)
    for step in range(steps):
        batch = source.batch(step)
        params, opt_state = _train_step(params, opt_state, batch["image"], batch["factors"])
    params = jax.device_get(params)
    held_out = LabelMapBatches(HELD_OUT_SIZE, size, (seed + 1) % (MAX_SEED + 1), 0, 1)
    batch = held_out.batch(0)
    correct = np.asarray(_predictions(params, batch["image"])) == batch["factors"]
    accuracy = {name: float(c) for name, c in zip(FACTOR_CLASSES, correct.mean(0), strict=True)}
    return LabelMapFeatureNetwork(
        params=params,
        resolution=resolution,
        feature_dim=FEATURE_DIM,
        accuracy=accuracy,
        seed=seed,
        steps=steps,
        batch_size=batch_size,
    )


@functools.cache
def label_map_feature_network(
    resolution: int, seed: int = 0, steps: int = 400, batch_size: int = 64
) -> LabelMapFeatureNetwork:
    """:func:`train_label_map_feature_network`, memoised in the process."""
    return train_label_map_feature_network(
        resolution, seed=seed, steps=steps, batch_size=batch_size
    )
