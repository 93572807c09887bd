"""The batch helpers give the same numbers under jit (global batch) and pmap (per-device rows)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noise_research.train.parallel import (
    DATA_AXIS,
    ParallelContext,
    cross_replica_sum,
    global_mean,
    roll_batch,
)

DEVICES = 8
ROWS = 3  # per device


def _global_batch() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(DEVICES * ROWS, 5)).astype(np.float32)


def _under_pmap(fn, x: np.ndarray) -> np.ndarray:
    parallel = ParallelContext(DATA_AXIS, DEVICES, DEVICES)
    per_device = x.reshape(DEVICES, ROWS, *x.shape[1:])
    out = jax.pmap(functools.partial(fn, parallel=parallel), axis_name=DATA_AXIS)(per_device)
    return np.asarray(out).reshape(-1, *np.shape(out)[2:])


def _under_jit(fn, x: np.ndarray) -> np.ndarray:
    return np.asarray(jax.jit(functools.partial(fn, parallel=ParallelContext(None, 1, DEVICES)))(x))


@pytest.mark.multidevice
@pytest.mark.parametrize("shift", [1, -1, 2, ROWS, ROWS + 1, 2 * ROWS * DEVICES + 1, -ROWS - 2])
def test_roll_over_the_global_batch_is_bit_identical_under_jit_and_pmap(shift):
    x = _global_batch()
    expected = np.roll(x, shift, axis=0)  # row i is x[i − shift]
    roll = lambda rows, parallel: roll_batch(rows, shift, parallel)
    np.testing.assert_array_equal(_under_jit(roll, x), expected)
    np.testing.assert_array_equal(_under_pmap(roll, x), expected)


@pytest.mark.multidevice
def test_per_device_roll_stays_within_each_device_on_both_backends():
    x = _global_batch()
    expected = np.roll(x.reshape(DEVICES, ROWS, -1), 1, axis=1).reshape(x.shape)
    roll = lambda rows, parallel: roll_batch(rows, 1, parallel, per_device=True)
    np.testing.assert_array_equal(_under_jit(roll, x), expected)
    np.testing.assert_array_equal(_under_pmap(roll, x), expected)
    assert not np.array_equal(expected, np.roll(x, 1, axis=0))


@pytest.mark.multidevice
def test_global_mean_and_sum_are_over_the_global_batch():
    x = _global_batch()
    mean = lambda rows, parallel: global_mean(rows, parallel)[None]
    np.testing.assert_allclose(_under_jit(mean, x)[0], x.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(_under_pmap(mean, x)[0], x.mean(axis=0), rtol=1e-6)
    total = lambda rows, parallel: cross_replica_sum(jnp.sum(rows, axis=0), parallel)[None]
    np.testing.assert_allclose(_under_pmap(total, x)[0], x.sum(axis=0), rtol=1e-5)


@pytest.mark.multidevice
def test_shard_index_is_the_device_position_under_pmap_and_zero_under_jit():
    index = lambda rows, parallel: jnp.broadcast_to(parallel.shard_index(), rows.shape[:1])
    x = _global_batch()
    np.testing.assert_array_equal(_under_pmap(index, x), np.repeat(np.arange(DEVICES), ROWS))
    np.testing.assert_array_equal(_under_jit(index, x), np.zeros(DEVICES * ROWS))
