"""Euclidean and Riemannian noise injection against direct numpy computations of the paper's
equations, their noise sources (rng stream, explicit, off) and the per-sample normalisations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import unfreeze

from noise_research.layers import (
    EuclideanNoiseInjection,
    RiemannianNoiseInjection,
    semantic_map,
)

SHAPE = (3, 6, 5, 4)


def _features(seed: int = 0) -> np.ndarray:
    """Post-ReLU-like features whose samples differ in scale by 100×."""
    rng = np.random.default_rng(seed)
    scales = np.array([0.01, 1.0, 1.0])[:, None, None, None]
    return (np.abs(rng.normal(size=SHAPE)) * scales).astype(np.float32)


def _noise(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(*SHAPE[:3], 1)).astype(np.float32)


def _with_params(variables, **values):
    params = unfreeze(variables)["params"]
    params.update({name: jnp.asarray(value, jnp.float32) for name, value in values.items()})
    return {"params": params}


def _numpy_semantic_map(mu: np.ndarray) -> np.ndarray:
    """Eqs. 13–14 written out."""
    channel_sum = mu.astype(np.float64).sum(axis=-1)
    centred = channel_sum - channel_sum.mean(axis=(1, 2), keepdims=True)
    return centred / np.abs(centred).max(axis=(1, 2), keepdims=True)


def test_a_fresh_euclidean_layer_is_the_identity_whatever_its_noise():
    layer = EuclideanNoiseInjection()
    mu = _features()
    variables = layer.init({"params": jax.random.key(0)}, mu, noise=_noise())
    outputs = layer.apply(variables, mu, rngs={"noise": jax.random.key(3)})
    np.testing.assert_array_equal(outputs, mu)


def test_euclidean_layer_adds_r_times_per_pixel_noise_shared_over_channels():
    layer = EuclideanNoiseInjection()
    mu, noise = _features(), _noise()
    variables = _with_params(
        layer.init({"params": jax.random.key(0)}, mu, noise=noise), strength=0.7
    )
    outputs = np.asarray(layer.apply(variables, mu, noise=noise))
    np.testing.assert_allclose(outputs, mu + 0.7 * noise, rtol=1e-6)
    # Drawn from the rng: one value per pixel, the same in every channel, N(0, 1) scaled by r.
    drawn = np.asarray(layer.apply(variables, mu, rngs={"noise": jax.random.key(5)})) - mu
    np.testing.assert_allclose(drawn, np.broadcast_to(drawn[..., :1], drawn.shape), atol=1e-6)
    assert 0.3 < drawn[..., 0].std() / 0.7 < 1.7
    np.testing.assert_array_equal(layer.apply(variables, mu, inject=False), mu)


def test_noise_from_the_stream_is_keyed_by_position_not_by_batch_row():
    layer = EuclideanNoiseInjection(strength_init=1.0)
    mu = jnp.zeros(SHAPE)
    variables = layer.init({"params": jax.random.key(0)}, mu, inject=False)
    key = {"noise": jax.random.key(7)}
    whole = layer.apply(variables, mu, positions=jnp.array([10, 11, 12]), rngs=key)
    # Row 12 alone (as on another device) gets the noise it got in the whole batch.
    alone = layer.apply(variables, mu[:1], positions=jnp.array([12]), rngs=key)
    np.testing.assert_array_equal(alone[0], whole[2])
    assert not np.array_equal(whole[0], whole[1])


@pytest.mark.parametrize("layer", [EuclideanNoiseInjection(), RiemannianNoiseInjection()])
def test_without_a_noise_rng_the_layer_says_how_to_give_noise(layer):
    mu = _features()
    variables = layer.init({"params": jax.random.key(0)}, mu, inject=False)
    with pytest.raises(
        ValueError, match=r"rngs=\{'noise': key\}.*noise=\(B, H, W, 1\).*inject=False"
    ):
        layer.apply(variables, mu)


def test_semantic_map_is_centred_and_scaled_per_sample():
    mu = _features()
    s = np.asarray(semantic_map(jnp.asarray(mu)))
    np.testing.assert_allclose(s, _numpy_semantic_map(mu), atol=1e-5)
    np.testing.assert_allclose(s.mean(axis=(1, 2)), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.abs(s).max(axis=(1, 2)), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(semantic_map(jnp.ones(SHAPE)), 0.0)  # flat: no semantics


@pytest.mark.parametrize("norm", ["rms", "l2"])
def test_paper_rni_is_equations_13_to_17(norm):
    layer = RiemannianNoiseInjection(norm=norm)
    mu, noise = _features(), _noise()
    rng = np.random.default_rng(2)
    scale_map, bias_map = rng.uniform(0.5, 1.5, SHAPE[1:3]), rng.normal(0, 0.2, SHAPE[1:3])
    variables = _with_params(
        layer.init({"params": jax.random.key(0)}, mu, noise=noise),
        strength=1.3,
        blend=0.6,
        scale_map=scale_map,
        bias_map=bias_map,
    )
    outputs = np.asarray(layer.apply(variables, mu, noise=noise))
    s_d = scale_map * _numpy_semantic_map(mu) + bias_map  # eq. 15
    s_prime = 0.6 * s_d + 0.4  # eq. 16
    if norm == "rms":
        sigma = s_prime / np.sqrt(np.mean(s_prime**2, axis=(1, 2), keepdims=True))
    else:
        sigma = s_prime / np.sqrt(np.sum(s_prime**2, axis=(1, 2), keepdims=True))
    expected = 1.3 * sigma[..., None] * mu + 1.3 * sigma[..., None] * noise  # eq. 17
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-6)


def test_authors_rni_is_their_released_form():
    layer = RiemannianNoiseInjection(variant="authors")
    mu, noise = _features(), _noise()
    rng = np.random.default_rng(3)
    scale_map, bias_map = rng.uniform(0.5, 1.5, SHAPE[1:3]), rng.normal(0, 0.2, SHAPE[1:3])
    variables = _with_params(
        layer.init({"params": jax.random.key(0)}, mu, noise=noise),
        strength=0.4,
        blend=0.3,
        scale_map=scale_map,
        bias_map=bias_map,
    )
    outputs = np.asarray(layer.apply(variables, mu, noise=noise))
    s = scale_map * (_numpy_semantic_map(mu) + 1) / 2 + bias_map
    mask = 0.3 + 0.7 * s
    mask = mask / np.sqrt(np.mean(mask**2, axis=(1, 2), keepdims=True) + 1e-8)
    np.testing.assert_allclose(outputs, (mu + 0.4 * noise) * mask[..., None], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "layer, expected_norm",
    [
        (RiemannianNoiseInjection(variant="authors"), lambda m: np.mean(m**2, axis=(1, 2))),
        (RiemannianNoiseInjection(norm="rms"), lambda m: np.mean(m**2, axis=(1, 2))),
        (RiemannianNoiseInjection(norm="l2"), lambda m: np.sum(m**2, axis=(1, 2))),
    ],
)
def test_rni_modulation_is_normalised_per_sample(layer, expected_norm):
    """With the noise off the output is μ times the modulation map (mask or σ, times r = 1 for the
    paper form): its mean square (RMS forms) or squared ℓ2 norm is 1 for EVERY sample, here
    samples whose features differ 100× in scale."""
    mu = _features()
    variables = layer.init({"params": jax.random.key(0)}, mu, inject=False)
    variables = _with_params(
        variables, strength=1.0, scale_map=np.random.default_rng(4).uniform(0.5, 1.5, SHAPE[1:3])
    )
    modulation = np.asarray(layer.apply(variables, mu, inject=False))[..., 0] / mu[..., 0]
    np.testing.assert_allclose(expected_norm(modulation), 1.0, rtol=1e-4)


def test_paper_rni_l2_norm_shrinks_with_resolution_and_rms_does_not():
    """The docstring's warning: σ = s'/‖s'‖₂ has entries ~ 1/√(HW)."""
    for side in (8, 32):
        mu = jnp.asarray(np.abs(np.random.default_rng(side).normal(size=(1, side, side, 2))))
        for norm, expected in (("l2", 1.0 / side), ("rms", 1.0)):
            layer = RiemannianNoiseInjection(norm=norm)
            variables = layer.init({"params": jax.random.key(0)}, mu, inject=False)
            ratio = layer.apply(variables, mu, inject=False) / mu
            np.testing.assert_allclose(np.sqrt(np.mean(np.square(ratio))), expected, rtol=1e-3)


def test_rni_rejects_unknown_settings():
    mu = _features()
    for kwargs, message in [
        ({"variant": "tf"}, r"variant='tf'.*allowed: \('paper', 'authors'\)"),
        ({"norm": "max"}, r"norm='max'.*allowed: \('rms', 'l2'\)"),
        ({"variant": "authors", "norm": "l2"}, r"'authors' normalises by the RMS"),
    ]:
        with pytest.raises(ValueError, match=message):
            RiemannianNoiseInjection(**kwargs).init({"params": jax.random.key(0)}, mu, inject=False)
