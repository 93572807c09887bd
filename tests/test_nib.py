"""Noise maps and the Noise Incentive Block: statistics, the PRNG policy, the fused convolution."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from noise_research.layers import NoiseIncentiveBlock, pixel_keyed_noise_map, sample_noise_map

MAP_SHAPE = (64, 64, 4)
BATCH = jnp.linspace(-1.0, 1.0, 2 * 6 * 6 * 1).reshape(2, 6, 6, 1)


def _init(block: NoiseIncentiveBlock, inputs: jax.Array = BATCH, seed: int = 0) -> dict:
    return block.init({"params": jax.random.key(seed)}, inputs)


def _apply_with_noise_map(block, variables, inputs=BATCH, noise_seed=None):
    """Runs the block and returns (outputs, the noise map it sowed)."""
    rngs = {} if noise_seed is None else {"noise": jax.random.key(noise_seed)}
    outputs, state = block.apply(variables, inputs, rngs=rngs, mutable=["intermediates"])
    return outputs, state["intermediates"]["noise_map"][0]


# --- pixel_keyed_noise_map --------------------------------------------------------------------


@pytest.mark.parametrize(
    "distribution, scale, mean, std",
    [
        ("normal", 0.3, 0.0, 0.3),
        ("uniform", 0.3, 0.0, 0.3 / np.sqrt(3.0)),
        ("bernoulli", 0.2, 0.2, 0.4),
    ],
)
def test_pixel_keyed_map_is_a_crop_of_any_larger_map_with_the_right_statistics(
    distribution, scale, mean, std
):
    key = jax.random.key(3)
    small = np.asarray(pixel_keyed_noise_map(key, (24, 40, 2), distribution, scale))
    large = np.asarray(pixel_keyed_noise_map(key, MAP_SHAPE, distribution, scale))
    np.testing.assert_array_equal(small, large[:24, :40, :2])
    assert np.abs(np.corrcoef(large[:-1, :, 0].ravel(), large[1:, :, 0].ravel())[0, 1]) < 0.05
    assert np.abs(np.corrcoef(large[..., 0].ravel(), large[..., 1].ravel())[0, 1]) < 0.05
    np.testing.assert_allclose(large.mean(), mean, atol=0.015)
    np.testing.assert_allclose(large.std(), std, rtol=0.03)


# --- sample_noise_map -------------------------------------------------------------------------


def test_normal_map_has_std_scale():
    noise = np.asarray(sample_noise_map(jax.random.key(0), MAP_SHAPE, "normal", 0.3))
    assert noise.shape == MAP_SHAPE and noise.dtype == np.float32
    assert abs(noise.mean()) < 0.01
    np.testing.assert_allclose(noise.std(), 0.3, rtol=0.03)


def test_uniform_map_spans_minus_scale_to_scale():
    noise = np.asarray(sample_noise_map(jax.random.key(1), MAP_SHAPE, "uniform", 0.3))
    assert noise.min() >= -0.3 and noise.max() <= 0.3
    assert noise.min() < -0.29 and noise.max() > 0.29
    assert abs(noise.mean()) < 0.01
    np.testing.assert_allclose(noise.std(), 0.3 / np.sqrt(3.0), rtol=0.03)


@pytest.mark.parametrize("probability", [0.2, 0.5])
def test_bernoulli_map_is_binary_with_frequency_p(probability):
    noise = np.asarray(sample_noise_map(jax.random.key(2), MAP_SHAPE, "bernoulli", probability))
    assert set(np.unique(noise)) <= {0.0, 1.0}
    np.testing.assert_allclose(noise.mean(), probability, atol=0.015)


def test_grid_alternates_rows_and_is_periodic_without_a_key():
    grid = np.asarray(sample_noise_map(None, (2, 6, 5, 3), "grid", 0.3, jnp.bfloat16))
    assert grid.dtype == jnp.bfloat16
    expected_rows = np.array([0.3, -0.3, 0.3, -0.3, 0.3, -0.3], np.float32)
    np.testing.assert_allclose(grid[0, :, 2, 1].astype(np.float32), expected_rows, rtol=1e-2)
    np.testing.assert_array_equal(grid[:, 2:], grid[:, :-2])  # period 2 along H
    np.testing.assert_array_equal(grid, np.broadcast_to(grid[:1, :, :1, :1], grid.shape))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distribution": "laplace"}, r"distribution='laplace'.*allowed.*'normal'"),
        ({"distribution": "normal", "scale": -0.1}, r"scale=-0.1 must be >= 0"),
        ({"distribution": "bernoulli", "scale": 1.5}, r"scale=1.5 .*\[0, 1\]"),
        ({"distribution": "grid", "shape": (4, 4)}, r"rank 2.*'grid' needs rank >= 3"),
        ({"distribution": "uniform", "key": None}, r"key=None.*needs a PRNG key"),
    ],
)
def test_sample_noise_map_rejects_bad_arguments(kwargs, message):
    arguments = {"key": jax.random.key(0), "shape": (4, 4, 1), "scale": 0.3} | kwargs
    with pytest.raises(ValueError, match=message):
        sample_noise_map(**arguments)


# --- PRNG policy --------------------------------------------------------------------------------


def test_stationary_key_lives_in_noise_keys_not_params():
    variables = _init(NoiseIncentiveBlock(features=4))
    key_data = variables["noise_keys"]["stationary_noise_key"]
    assert key_data.dtype == jnp.uint32
    assert "stationary_noise_key" not in jax.tree_util.keystr(variables["params"])
    assert set(variables["params"]) == {"fused_conv"}


def test_stationary_noise_is_shared_by_samples_calls_and_restores():
    block = NoiseIncentiveBlock(features=4)
    variables = _init(block)
    outputs, noise_map = _apply_with_noise_map(block, variables)
    np.testing.assert_array_equal(noise_map[0], noise_map[1])  # same map for every sample
    assert float(jnp.std(noise_map)) > 0.1  # and a real noise map, not zeros
    for noise_seed in (1, 2):  # a 'noise' rng, if given, does not change it
        outputs_again, noise_map_again = _apply_with_noise_map(
            block, variables, noise_seed=noise_seed
        )
        np.testing.assert_array_equal(noise_map_again, noise_map)
        np.testing.assert_array_equal(outputs_again, outputs)
    restored = serialization.from_bytes(
        jax.tree.map(jnp.zeros_like, variables), serialization.to_bytes(variables)
    )
    np.testing.assert_array_equal(_apply_with_noise_map(block, restored)[1], noise_map)
    other_init = _init(block, seed=1)  # a different init key gives a different stationary map
    assert not np.array_equal(_apply_with_noise_map(block, other_init)[1], noise_map)


def test_stationary_map_of_a_small_input_is_the_top_left_of_a_large_inputs_map():
    # A stationary NIB trained on crops sees, on a full-size image, the same noise where the crop
    # lay (the top-left corner): one map for every input size.
    block = NoiseIncentiveBlock(features=4)
    variables = _init(block)
    _, crop_map = _apply_with_noise_map(block, variables, jnp.zeros((1, 16, 12, 1)))
    _, full_map = _apply_with_noise_map(block, variables, jnp.zeros((1, 48, 40, 1)))
    np.testing.assert_array_equal(crop_map[0], full_map[0, :16, :12])


def test_dynamic_noise_differs_per_sample_and_key_and_needs_the_rng():
    block = NoiseIncentiveBlock(features=4, stationary=False)
    variables = _init(block)
    assert "noise_keys" not in variables
    _, noise_map = _apply_with_noise_map(block, variables, noise_seed=1)
    _, same_key_map = _apply_with_noise_map(block, variables, noise_seed=1)
    _, other_key_map = _apply_with_noise_map(block, variables, noise_seed=2)
    assert not np.allclose(noise_map[0], noise_map[1])
    np.testing.assert_array_equal(noise_map, same_key_map)
    assert not np.allclose(noise_map, other_key_map)
    with pytest.raises(ValueError, match=r"stationary=False.*rngs=\{'noise': key\}"):
        block.apply(variables, BATCH)


def test_grid_block_needs_no_key_and_no_rng():
    block = NoiseIncentiveBlock(features=4, distribution="grid")
    variables = _init(block)
    assert "noise_keys" not in variables
    _, noise_map = _apply_with_noise_map(block, variables)
    np.testing.assert_allclose(noise_map[1, :, 3, 0], 0.3 * np.array([1, -1, 1, -1, 1, -1]))


def test_dynamic_noise_map_of_a_row_is_keyed_by_its_position_not_its_row():
    block = NoiseIncentiveBlock(features=4, stationary=False)
    variables = _init(block)
    inputs = jnp.concatenate([BATCH, BATCH])
    rngs = {"noise": jax.random.key(1)}
    _, state = block.apply(
        variables, inputs, jnp.array([5, 9, 5, 7]), rngs=rngs, mutable=["intermediates"]
    )
    noise_map = state["intermediates"]["noise_map"][0]
    np.testing.assert_array_equal(noise_map[0], noise_map[2])  # same position, same map
    assert not np.allclose(noise_map[0], noise_map[1])
    _, swapped_state = block.apply(
        variables, inputs, jnp.array([9, 5, 7, 5]), rngs=rngs, mutable=["intermediates"]
    )
    swapped = swapped_state["intermediates"]["noise_map"][0]
    np.testing.assert_array_equal(swapped[0], noise_map[1])
    np.testing.assert_array_equal(swapped[1], noise_map[0])
    np.testing.assert_array_equal(swapped[2], noise_map[3])


@pytest.mark.multidevice
def test_noise_maps_are_a_function_of_the_example_not_the_device():
    """One key on every device and the rows' global positions: the batch split over 8 devices
    gets bit-for-bit the noise maps of the whole batch on one device, for both noise policies."""
    device_count = jax.device_count()
    inputs = jax.random.uniform(jax.random.key(6), (2 * device_count, 6, 6, 1), minval=-1)
    positions = 100 + jnp.arange(2 * device_count)
    key = jax.random.key(3)
    for stationary in (True, False):
        block = NoiseIncentiveBlock(features=4, stationary=stationary)
        variables = _init(block)

        def apply(v, x, p, b=block):
            outputs, state = b.apply(v, x, p, rngs={"noise": key}, mutable=["intermediates"])
            return outputs, state["intermediates"]["noise_map"][0]

        whole, whole_map = jax.jit(apply)(variables, inputs, positions)
        replicated = jax.tree.map(
            lambda leaf: jnp.broadcast_to(leaf, (device_count, *leaf.shape)), variables
        )
        per_device, per_device_map = jax.pmap(apply)(
            replicated,
            inputs.reshape(device_count, 2, 6, 6, 1),
            positions.reshape(device_count, 2),
        )
        np.testing.assert_array_equal(
            np.asarray(per_device_map).reshape(whole_map.shape), whole_map
        )
        np.testing.assert_allclose(
            np.asarray(per_device).reshape(whole.shape), whole, rtol=1e-5, atol=1e-6
        )
        assert np.array_equal(whole_map[0], whole_map[1]) == stationary


# --- the block ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected_pair"),
    [
        ({"combine": "symmetric"}, lambda image, noise: (image + noise, image - noise)),
        (
            {"combine": "impulse", "distribution": "bernoulli", "noise_scale": 0.5},
            lambda image, noise: (image * noise, image * (1 - noise)),
        ),
        ({"combine": "feature", "stationary": False}, lambda image, noise: (image, noise)),
        ({"combine": "symmetric", "distribution": "uniform"}, lambda i, n: (i + n, i - n)),
    ],
)
def test_fused_conv_equals_two_convs_with_the_kernel_halves(fields, expected_pair):
    inputs = jax.random.uniform(jax.random.key(4), (2, 7, 7, 3), minval=-1, maxval=1)
    block = NoiseIncentiveBlock(features=5, **fields)
    variables = block.init({"params": jax.random.key(0), "noise": jax.random.key(9)}, inputs)
    outputs, noise_map = _apply_with_noise_map(block, variables, inputs, noise_seed=9)
    chex.assert_shape(outputs, (2, 7, 7, 5))
    kernel = variables["params"]["fused_conv"]["kernel"]
    bias = variables["params"]["fused_conv"]["bias"]
    chex.assert_shape(kernel, (3, 3, 6, 5))
    single_conv = nn.Conv(5, (3, 3), padding="SAME", use_bias=False)
    first, second = expected_pair(inputs, noise_map)
    two_convs = (
        single_conv.apply({"params": {"kernel": kernel[:, :, :3]}}, first)
        + single_conv.apply({"params": {"kernel": kernel[:, :, 3:]}}, second)
        + bias
    )
    np.testing.assert_allclose(outputs, two_convs, rtol=1e-5, atol=1e-5)


def _identity_f1_f2(variables: dict, f1: float, f2: float) -> dict:
    """The block's variables with f1 = f1·identity and f2 = f2·identity (1×1 kernels, no bias)."""
    params = {
        "fused_conv": {"kernel": jnp.array([f1, f2]).reshape(1, 1, 2, 1), "bias": 0.0 * jnp.ones(1)}
    }
    return {**variables, "params": params}


@pytest.mark.parametrize(
    "fields", [{}, {"combine": "impulse", "distribution": "bernoulli", "noise_scale": 0.5}]
)
def test_the_perturbed_pair_keeps_all_of_the_input_and_each_half_is_perturbed(fields):
    """With f1 = f2 = identity the pair sums back to the input (2I for I ± N, I for I·B and
    I·(1−B)) whatever the map; with f2 = 0 one perturbed copy alone differs from the input."""
    inputs = jax.random.uniform(jax.random.key(5), (1, 8, 8, 1), minval=-1, maxval=1)
    block = NoiseIncentiveBlock(features=1, kernel_size=1, **fields)
    variables = _init(block, inputs)
    whole = block.apply(_identity_f1_f2(variables, 1.0, 1.0), inputs)
    expected_sum = inputs if fields else 2 * inputs
    np.testing.assert_allclose(whole, expected_sum, atol=1e-6)
    first_half = block.apply(_identity_f1_f2(variables, 1.0, 0.0), inputs)
    assert (
        float(jnp.mean(jnp.abs(first_half - (expected_sum / 2 if not fields else inputs)))) > 0.05
    )
    _, noise_map = _apply_with_noise_map(block, variables, inputs)
    if fields:
        assert set(np.unique(noise_map)) == {0.0, 1.0}


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.dtype("bfloat16")])  # type or dtype object
def test_bfloat16_compute_keeps_float32_params(dtype):
    block = NoiseIncentiveBlock(features=3, dtype=dtype, kernel_size=5)
    variables = _init(block)
    outputs, noise_map = _apply_with_noise_map(block, variables)
    assert outputs.dtype == jnp.bfloat16 and outputs.shape == (2, 6, 6, 3)
    assert noise_map.dtype == jnp.bfloat16
    assert variables["params"]["fused_conv"]["kernel"].shape == (5, 5, 2, 3)
    assert variables["params"]["fused_conv"]["kernel"].dtype == jnp.float32


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"combine": "sum"}, r"combine='sum'.*allowed.*'symmetric'"),
        ({"combine": "impulse"}, r"combine='impulse' with distribution='normal'.*'bernoulli'"),
        ({"distribution": "grid", "stationary": False}, r"stationary=False with.*'grid'"),
        ({"distribution": "cauchy"}, r"distribution='cauchy'.*allowed"),
        ({"noise_scale": -1.0}, r"scale=-1.0 must be >= 0"),
        ({"kernel_size": 2}, r"kernel_size=2 must be a positive odd integer"),
        ({"features": 0}, r"features=0 must be a positive integer"),
    ],
)
def test_block_rejects_bad_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        NoiseIncentiveBlock(**({"features": 4} | fields))
