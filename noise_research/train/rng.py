"""Named PRNG streams for a training step.

Every random draw of a step comes from ``fold_in(fold_in(root, step), kind)``: the same key on every
device and process, repeated exactly after a restore. Draws that differ per example (dynamic noise,
the stability baseline's noise) fold each row's global position into that key
(:func:`noise_research.layers.noise_maps.example_keys`), so an example's noise is a function of the
example, not of the device, process or backend that computed it. Stationary noise never comes from
here: it is derived from keys stored in the ``'noise_keys'`` collection (see
:mod:`noise_research.layers.nib`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import jax


def kind_id(kind: str) -> int:
    """A stable 32-bit number for a step kind's name (CRC-32: adding kinds changes no other)."""
    return zlib.crc32(kind.encode())


def step_rngs(
    root: jax.Array, step: jax.Array, names: Sequence[str] = ("noise",), kind: str = "train"
) -> dict[str, jax.Array]:
    """One independent key per named stream for this step and step kind."""
    step_key = jax.random.fold_in(jax.random.fold_in(root, step), kind_id(kind))
    stream_keys = jax.random.split(step_key, len(names))
    return {name: stream_keys[i] for i, name in enumerate(names)}
