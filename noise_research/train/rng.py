"""Named PRNG streams for a training step.

Every random draw of a step comes from ``fold_in(root, step)``, so a restored run repeats the same
randomness. Under ``pmap`` the device index is folded in too, so dynamic noise differs per device;
under ``jit`` one global draw covers the global batch, which already differs per sample and
therefore per device. Stationary noise never comes from here: it is derived from keys stored in the
``'noise_keys'`` collection (see :mod:`noise_research.layers.nib`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax


def step_rngs(
    root: jax.Array,
    step: jax.Array,
    names: Sequence[str] = ("noise",),
    axis_name: str | None = None,
) -> dict[str, jax.Array]:
    """Returns one independent key per named stream for this step (and device, under pmap)."""
    step_key = jax.random.fold_in(root, step)
    if axis_name is not None:
        step_key = jax.random.fold_in(step_key, jax.lax.axis_index(axis_name))
    stream_keys = jax.random.split(step_key, len(names))
    return {name: stream_keys[i] for i, name in enumerate(names)}
