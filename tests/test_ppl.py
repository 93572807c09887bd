"""Perceptual path length: paths, the pixel fallback against a closed form, the percentile filter,
chunk- and backend-independence, the evaluator, and the LPIPS-VGG16 port against the lpips package.

The LPIPS fixtures under ``tests/fixtures/`` come from ``make_lpips_fixtures.py`` (run by hand with
torch and lpips in a separate environment): the lpips package's own network with its calibrated
linear layers (``lpips_v0.1_vgg.pth``, a copy of the package's file) and a seeded random VGG16
trunk that ``lpips_random_weights.py`` regenerates here. The real ImageNet trunk cannot be checked
offline.
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noise_research.metrics import ppl
from noise_research.models import lpips
from noise_research.models.torch_weights import load_torch_state_dict
from noise_research.train.parallel import SINGLE_DEVICE, make_backend

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
sys.path.insert(0, FIXTURES)
from lpips_random_weights import random_state_dict  # noqa: E402

LPIPS_LINEAR_FILE = os.path.join(FIXTURES, "lpips_v0.1_vgg.pth")
LATENT_DIM = 6
IMAGE_SHAPE = (4, 4, 3)  # 48 outputs


def _identity_map(state, z):
    return z


def _linear_synthesis(state, latent, noise):
    """G(w) = A w + n, reshaped to (B, 4, 4, 3); n the pair's noise map (the same for both ends)."""
    images = jnp.dot(latent, state["A"].T, precision=jax.lax.Precision.HIGHEST)
    images = images.reshape(latent.shape[0], *IMAGE_SHAPE)
    return images if noise is None else images + noise["map"]


def _sample_noise(key):
    return {"map": jax.random.normal(key, IMAGE_SHAPE)}


def _linear_state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    scales = np.geomspace(0.1, 3.0, LATENT_DIM)  # anisotropic: paths differ a lot in length
    return {"A": (rng.normal(size=(48, LATENT_DIM)) * scales).astype(np.float32)}


def _numpy_filtered_mean(values: np.ndarray) -> tuple[float, int]:
    """StyleGAN's filter written with sorted indices: with n values, the 1st percentile of
    method 'lower' is sorted[floor(0.01(n−1))], the 99th of method 'higher' sorted[ceil(0.99(n−1))];
    the mean of everything from the one to the other (no ties among random floats)."""
    ordered = np.sort(np.asarray(values, np.float64))
    n = ordered.size
    low, high = int(np.floor(0.01 * (n - 1))), int(np.ceil(0.99 * (n - 1)))
    kept = ordered[low : high + 1]
    return float(kept.mean()), kept.size


# ---------------------------------------------------------------------------------------------
# Paths.


def test_slerp_is_the_great_circle_interpolation_of_numpy():
    """Against Shoemake's form (sin((1−t)θ) â + sin(tθ) b̂) / sin θ in float64, including t = 0, 1
    and a step past the end."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 5, 7))
    t = np.array([0.0, 1.0, 0.3, 0.75, 1.0 + 1e-4])
    a_hat = a / np.linalg.norm(a, axis=1, keepdims=True)
    b_hat = b / np.linalg.norm(b, axis=1, keepdims=True)
    theta = np.arccos(np.sum(a_hat * b_hat, axis=1, keepdims=True))
    t_col = t[:, None]
    want = (np.sin((1 - t_col) * theta) * a_hat + np.sin(t_col * theta) * b_hat) / np.sin(theta)
    got = np.asarray(ppl.slerp(jnp.asarray(a), jnp.asarray(b), jnp.asarray(t, jnp.float32)))
    np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_allclose(got[0], a_hat[0], atol=1e-6)
    np.testing.assert_allclose(got[1], b_hat[1], atol=1e-6)


def test_paths_are_drawn_per_position_and_their_ends_are_epsilon_apart():
    """Pair i depends on i alone; 'full' draws t ~ U(0, 1), 'end' t = 0; in w the ends are
    lerp(t) and lerp(t + ε), ε(w₁ − w₀) apart; in z they lie on the sphere of radius √dim z,
    ε·θ apart along its great circle (θ the angle between z₀ and z₁)."""

    @jax.jit
    def paths(positions):
        z0, z1, t, noise = ppl.sample_path_pairs(
            jax.random.PRNGKey(3), positions, LATENT_DIM, "full", _sample_noise
        )
        latents = {
            space: ppl.path_latents(_identity_map, None, z0, z1, t, space=space)
            for space in ("w", "z")
        }
        ends = ppl.slerp(z0, z1, jnp.zeros_like(t)), ppl.slerp(z0, z1, jnp.ones_like(t))
        return (z0, z1, t, noise), latents, ends

    all_pairs, latents, (slerp0, slerp1) = paths(jnp.arange(8))
    order = np.array([5, 0, 7, 1, 2, 6, 3, 4])
    shuffled_pairs, _, _ = paths(jnp.asarray(order, jnp.int32))
    for whole, part in zip(
        jax.tree.leaves(all_pairs), jax.tree.leaves(shuffled_pairs), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(whole)[order], part)
    z0, z1, t = (np.asarray(x, np.float64) for x in all_pairs[:3])
    assert np.all((t >= 0) & (t < 1)) and np.ptp(t) > 0.3
    end_sampling = jax.jit(ppl.sample_path_pairs, static_argnums=(2, 3))
    _, _, t_end, _ = end_sampling(jax.random.PRNGKey(3), jnp.arange(8), LATENT_DIM, "end")
    assert np.all(np.asarray(t_end) == 0)  # StyleGAN's 'end': t = 0

    start, end = latents["w"]
    np.testing.assert_allclose(start, z0 + t[:, None] * (z1 - z0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(end - start, 1e-4 * (z1 - z0), rtol=1e-2, atol=1e-7)
    start, end = latents["z"]
    radius = np.sqrt(LATENT_DIM)
    np.testing.assert_allclose(np.linalg.norm(start, axis=1), radius, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(end, axis=1), radius, rtol=1e-6)
    np.testing.assert_allclose(slerp0, z0 / np.linalg.norm(z0, axis=1, keepdims=True), atol=1e-6)
    angle = np.arccos(np.sum(np.asarray(slerp0) * np.asarray(slerp1), axis=1))
    np.testing.assert_allclose(
        np.linalg.norm(end - start, axis=1), radius * 1e-4 * angle, rtol=2e-2
    )


# ---------------------------------------------------------------------------------------------
# Pixel PPL against the closed form; the filter.


def test_pixel_ppl_of_a_linear_generator_in_w_is_its_closed_form():
    """G(w) = A w + n (n the pair's noise, the same at both ends) in w space: (G(b) − G(a))/ε =
    A(w₁ − w₀) exactly, so each value is ‖A(w₁ − w₀)‖² / 48 whatever t; the summary is the
    filtered mean of those. float32 (the ends 1e−4 apart) leaves ~1e−3 relative noise."""
    state = _linear_state()
    key = jax.random.PRNGKey(11)
    num_pairs = 300
    arguments = dict(num_pairs=num_pairs, space="w", sampling="full", sample_noise=_sample_noise)
    values = ppl.ppl_values(
        _identity_map, _linear_synthesis, state, key, LATENT_DIM, chunk_size=128, **arguments
    )
    z0, z1, _, _ = ppl.sample_path_pairs(key, jnp.arange(num_pairs), LATENT_DIM)
    difference = np.asarray(z1, np.float64) - np.asarray(z0, np.float64)
    expected = np.sum((difference @ state["A"].astype(np.float64).T) ** 2, axis=1) / 48
    assert values.shape == (num_pairs,) and np.ptp(np.log(expected)) > 3
    np.testing.assert_allclose(values, expected, rtol=1e-2)
    assert np.median(np.abs(values / expected - 1)) < 2e-3

    metrics = ppl.summarize_path_lengths(values, ppl.metric_name(None))
    mean, kept = _numpy_filtered_mean(expected)
    assert set(metrics) == {"ppl_pixel", "ppl_pixel_num_pairs", "ppl_pixel_num_kept"}
    assert metrics["ppl_pixel"] == pytest.approx(mean, rel=2e-3)
    assert metrics["ppl_pixel_num_kept"] == kept == num_pairs - 4
    assert metrics["ppl_pixel_num_pairs"] == num_pairs
    assert abs(np.mean(expected) / mean - 1) > 0.01  # the filter matters on these pairs


def test_the_summary_is_the_mean_between_the_1st_and_99th_percentiles():
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.lognormal(size=247), [1e3, 2e3, 1e-6]])
    rng.shuffle(values)
    summary = ppl.summarize_path_lengths(values, name="ppl")
    mean, kept = _numpy_filtered_mean(values)
    assert summary == {
        "ppl": pytest.approx(mean, rel=1e-12),
        "ppl_num_pairs": 250.0,
        "ppl_num_kept": float(kept),
    }
    assert kept == 246  # the 2 smallest and 2 largest of 250 go


def _tanh_synthesis(state, latent, noise):
    """A nonlinear generator: tanh(A w + n)."""
    return jnp.tanh(_linear_synthesis(state, latent, noise))


REFERENCE_SEED, REFERENCE_PAIRS = 2, 40
REFERENCE_OPTIONS = dict(space="z", sampling="full", sample_noise=_sample_noise)


@functools.cache
def _reference_values() -> np.ndarray:
    """`ppl_values` of the nonlinear generator in z space with noise, one chunk of 40 (computed
    once: the chunk-size and evaluator tests compare with it)."""
    return ppl.ppl_values(
        _identity_map,
        _tanh_synthesis,
        _linear_state(1),
        jax.random.PRNGKey(REFERENCE_SEED),
        LATENT_DIM,
        num_pairs=REFERENCE_PAIRS,
        chunk_size=REFERENCE_PAIRS,
        **REFERENCE_OPTIONS,
    )


def test_values_are_deterministic_and_do_not_depend_on_the_chunk_size():
    """Chunks of 7 (the last one padded) and one chunk of 40 give the same pairs, so the same
    values up to float32 rounding (XLA may round a batch of 14 rows and one of 80 differently by an
    ulp, which 1/ε amplifies to ~1e−3 of a value; another pairing would change them by O(1))."""

    def compute(function):
        return function(
            _identity_map,
            _tanh_synthesis,
            _linear_state(1),
            jax.random.PRNGKey(REFERENCE_SEED),
            LATENT_DIM,
            num_pairs=REFERENCE_PAIRS,
            chunk_size=7,
            **REFERENCE_OPTIONS,
        )

    small, large = compute(ppl.ppl_values), _reference_values()
    np.testing.assert_array_equal(compute(ppl.ppl_values), small)  # deterministic
    assert np.ptp(np.log(small)) > 1
    np.testing.assert_allclose(small, large, rtol=1e-2)
    assert np.median(np.abs(small / large - 1)) < 1e-4
    assert compute(ppl.path_length_metrics) == ppl.summarize_path_lengths(small, "ppl_pixel")


# ---------------------------------------------------------------------------------------------
# The evaluator.


@pytest.mark.multidevice
@pytest.mark.parametrize("backend_name", ["jit", "pmap"])
def test_evaluator_gives_path_length_metrics_under_both_backends(backend_name):
    """The evaluator under jit and under pmap on 2 devices (3 batches of 16, the last with 8 rows
    of padding) gives `ppl_values` on the same pairs, and their summary."""
    expected = ppl.summarize_path_lengths(_reference_values(), "ppl_pixel")
    evaluator = ppl.ppl_evaluator(
        _identity_map,
        _tanh_synthesis,
        LATENT_DIM,
        seed=REFERENCE_SEED,
        num_pairs=REFERENCE_PAIRS,
        batch_size=16,
        **REFERENCE_OPTIONS,
    )
    backend = make_backend(backend_name, jax.devices()[:2])
    accumulate = backend.compile_accumulate(evaluator.update)
    device_state = backend.put_state(_linear_state(1))
    source = evaluator.source(0, 1)
    accumulator = backend.put_state(evaluator.init())
    assert evaluator.num_batches == 3
    for i in range(evaluator.num_batches):
        accumulator = accumulate(device_state, accumulator, backend.put_batch(source.batch(i)))
    accumulator = jax.tree.map(np.asarray, backend.host_state(accumulator))
    np.testing.assert_allclose(accumulator["values"], _reference_values(), rtol=1e-2)
    result = evaluator.finalize(accumulator)
    assert result.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(result[name], expected[name], rtol=1e-3, err_msg=name)


def test_evaluator_ignores_masked_rows_whatever_their_position():
    state = _linear_state(3)
    evaluator = ppl.ppl_evaluator(
        _identity_map, _linear_synthesis, LATENT_DIM, seed=0, num_pairs=3, batch_size=3
    )
    update = jax.jit(functools.partial(evaluator.update, parallel=SINGLE_DEVICE))
    accumulator = evaluator.init()
    batch = {"position": jnp.array([0, 1, 1]), "mask": jnp.array([1.0, 1.0, 0.0])}
    accumulator = update(state, accumulator, batch)
    batch = {"position": jnp.array([2, 0, 5]), "mask": jnp.array([1.0, 0.0, 0.0])}
    accumulator = jax.device_get(update(state, accumulator, batch))
    z0, z1, _, _ = jax.jit(ppl.sample_path_pairs, static_argnums=2)(
        jax.random.PRNGKey(0), jnp.arange(3), LATENT_DIM
    )
    difference = np.asarray(z1, np.float64) - np.asarray(z0, np.float64)
    expected = np.sum((difference @ state["A"].astype(np.float64).T) ** 2, axis=1) / 48
    np.testing.assert_allclose(accumulator["values"], expected, rtol=1e-2)  # the closed form
    assert evaluator.finalize(accumulator)["ppl_pixel_num_pairs"] == 3
    with pytest.raises(ValueError, match="saw 2 of 3 pairs"):
        evaluator.finalize({**accumulator, "count": np.float32(2)})


def test_image_steps_crop_and_downsample_as_stylegan():
    images = jnp.arange(2 * 16 * 16 * 3, dtype=jnp.float32).reshape(2, 16, 16, 3)
    np.testing.assert_array_equal(ppl.crop_faces(images), images[:, 6:14, 4:12])
    large = jax.random.normal(jax.random.PRNGKey(0), (1, 512, 512, 3))
    want = np.asarray(large).reshape(1, 256, 2, 256, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(ppl.box_downsample(large), want, rtol=1e-6, atol=1e-6)
    assert ppl.box_downsample(images) is images

    # A generator that only changes outside the face crop: its cropped PPL is 0.
    outside = np.ones((16, 16, 3), np.float32)
    outside[6:14, 4:12] = 0.0

    def synthesize(state, latent, noise):
        return latent[:, :1, None, None] * outside

    @jax.jit
    def values(z0, z1, t):
        return [
            ppl.pair_path_lengths(_identity_map, synthesize, None, z0, z1, t, crop=crop)
            for crop in (None, "faces")
        ]

    whole, cropped = values(jnp.zeros((2, 3)), jnp.ones((2, 3)), jnp.array([0.0, 0.5]))
    np.testing.assert_allclose(whole, np.mean(outside), rtol=1e-2)  # ‖(w₁ − w₀)₀·outside‖²/768
    np.testing.assert_array_equal(cropped, 0.0)


# ---------------------------------------------------------------------------------------------
# LPIPS-VGG16.


@pytest.fixture(scope="module")
def lpips_fixture():
    data = np.load(os.path.join(FIXTURES, "lpips_vgg_random.npz"))
    shapes = {
        str(name): tuple(int(d) for d in str(shape).split(","))
        for name, shape in zip(data["vgg16_names"], data["vgg16_shapes"], strict=True)
    }
    return data, shapes


@pytest.fixture(scope="module")
def lpips_variables(lpips_fixture):
    """The port with the fixture's seeded random trunk and lpips' real linear layers, the latter
    read from the package's own file by the project's torch reader."""
    _, shapes = lpips_fixture
    return lpips.lpips_variables_from_state_dicts(
        random_state_dict(shapes), load_torch_state_dict(LPIPS_LINEAR_FILE)
    )


@jax.jit
def _lpips_per_layer(variables, images_a, images_b):
    return lpips.LPIPSVGG16().apply(variables, images_a, images_b, per_layer=True)


def test_the_name_maps_cover_torchvisions_vgg16_and_lpips_file(lpips_fixture):
    _, shapes = lpips_fixture
    assert shapes == lpips.vgg16_state_dict_shapes()
    linear = load_torch_state_dict(LPIPS_LINEAR_FILE)
    assert {k: v.shape for k, v in linear.items()} == lpips.lpips_linear_state_dict_shapes()
    trunk = random_state_dict(shapes)
    trunk["classifier.0.weight"] = np.zeros((2, 2), np.float32)  # torchvision's head: ignored
    lpips.lpips_variables_from_state_dicts(trunk, linear)
    trunk.pop("features.26.bias")
    with pytest.raises(ValueError, match=r"missing \['features.26.bias'\]"):
        lpips.lpips_variables_from_state_dicts(trunk, linear)


@pytest.mark.parametrize("side", [32, 64])
def test_lpips_port_matches_the_lpips_package(lpips_fixture, lpips_variables, side):
    """lpips.LPIPS(net='vgg', v0.1), same weights, three image pairs (independent noise; a smooth
    image and a perturbed copy; a one-pixel shift): the distances agree with the package's float64
    forward to < 1e-5 relative (measured 4e-7), each layer's term to 1e-5 of the distance. The
    pairs' distances span 3 decades, so a wrong layer is far outside tolerance."""
    data, _ = lpips_fixture
    images_a, images_b = data[f"images_a_{side}"], data[f"images_b_{side}"]
    per_layer = np.asarray(_lpips_per_layer(lpips_variables, images_a, images_b))
    distances = per_layer.sum(axis=1)
    want = data[f"distance_float64_{side}"]
    np.testing.assert_allclose(distances, want, rtol=1e-5)
    np.testing.assert_allclose(
        per_layer, data[f"per_layer_float64_{side}"], rtol=1e-5, atol=1e-6 * want.min()
    )
    # Identical images are 0 apart; the distance is symmetric.
    same = np.asarray(_lpips_per_layer(lpips_variables, images_a, images_a)).sum(axis=1)
    np.testing.assert_allclose(same, 0.0, atol=1e-9)
    swapped = np.asarray(_lpips_per_layer(lpips_variables, images_b, images_a)).sum(axis=1)
    np.testing.assert_allclose(swapped, distances, rtol=1e-6)


def test_ppl_with_lpips_is_the_lpips_distance_of_the_path_ends_over_epsilon_squared(
    lpips_variables,
):
    """The evaluator with LPIPS weights reports 'ppl': each value is lpips(G(a), G(b)) / ε² for
    the pair's ends, G a 32×32 generator with noise (a smooth image plus 0.1 × the noise map)."""

    def synthesize(state, latent, noise):
        coarse = jnp.tanh(jnp.dot(latent, state["A"].T, precision="highest"))
        images = jax.image.resize(
            coarse.reshape(-1, 4, 4, 3), (latent.shape[0], 32, 32, 3), "linear"
        )
        return images + 0.1 * noise["map"]

    def sample_noise(key):
        return {"map": jax.random.normal(key, (32, 32, 3))}

    state = _linear_state(4)
    options = dict(space="z", sampling="full", sample_noise=sample_noise)
    evaluator = ppl.ppl_evaluator(
        _identity_map,
        synthesize,
        LATENT_DIM,
        lpips_variables=lpips_variables,
        seed=9,
        num_pairs=3,
        batch_size=3,
        **options,
    )
    update = jax.jit(functools.partial(evaluator.update, parallel=SINGLE_DEVICE))
    accumulator = update(state, evaluator.init(), {"position": jnp.arange(3), "mask": jnp.ones(3)})
    result = evaluator.finalize(jax.device_get(accumulator))
    assert set(result) == {"ppl", "ppl_num_pairs", "ppl_num_kept"} and result["ppl_num_pairs"] == 3

    z0, z1, t, noise = ppl.sample_path_pairs(
        jax.random.PRNGKey(9), jnp.arange(3), LATENT_DIM, "full", sample_noise
    )
    start, end = ppl.path_latents(_identity_map, state, z0, z1, t, space="z")
    with jax.default_matmul_precision("highest"):
        images_a, images_b = synthesize(state, start, noise), synthesize(state, end, noise)
    distances = np.asarray(_lpips_per_layer(lpips_variables, images_a, images_b)).sum(axis=1)
    np.testing.assert_allclose(accumulator["values"], distances / 1e-8, rtol=1e-2)
    assert np.all(accumulator["values"] > 0)


def test_missing_or_wrong_lpips_weights_files_are_named(tmp_path):
    vgg16 = tmp_path / "vgg16-397923af.pth"
    with pytest.raises(FileNotFoundError) as error:
        lpips.load_lpips_vgg16_variables(vgg16, LPIPS_LINEAR_FILE, "eval.ppl.vgg16_weights")
    message = str(error.value)
    assert str(vgg16) in message and "config.eval.ppl.vgg16_weights" in message
    assert "~/.cache/torch/hub/checkpoints" in message and lpips.VGG16_WEIGHTS_FILENAME in message

    absent = tmp_path / "vgg.pth"
    with pytest.raises(FileNotFoundError) as error:
        lpips.load_lpips_vgg16_variables(LPIPS_LINEAR_FILE, absent, lpips_config_key="ppl.lin")
    message = str(error.value)
    assert str(absent) in message and "config.ppl.lin" in message
    assert "pip install lpips" in message and "weights/v0.1/vgg.pth" in message

    # lpips' file where torchvision's belongs: the error names both keys and what each must be.
    with pytest.raises(ValueError) as error:
        lpips.load_lpips_vgg16_variables(LPIPS_LINEAR_FILE, LPIPS_LINEAR_FILE)
    message = str(error.value)
    assert "config.ppl.vgg16_weights" in message and LPIPS_LINEAR_FILE in message
    assert "missing ['features.0.bias'" in message and lpips.VGG16_WEIGHTS_FILENAME in message


def test_inspect_registers_lpips():
    from noise_research.registry import get_block

    module, example, rngs = get_block("lpips_vgg16")(None)
    assert rngs == () and example.shape == (2, 32, 32, 3)
    out = jax.eval_shape(lambda x: module.init_with_output(jax.random.key(0), x)[0], example)
    assert out.shape == (1,)
