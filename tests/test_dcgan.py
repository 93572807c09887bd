"""The DCGAN generator and discriminator: shapes, init, noise injection and its noise sources."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noise_research.models import DCGANDiscriminator, DCGANGenerator, feature_sides

LATENT = 16


def _init(generator: DCGANGenerator, batch: int = 2):
    z = jax.random.normal(jax.random.key(1), (batch, LATENT))
    variables = generator.init({"params": jax.random.key(0)}, z, inject=False)
    return z, variables


@pytest.mark.parametrize("resolution, sides", [(32, (4, 8, 16)), (64, (4, 8, 16, 32))])
def test_generator_maps_latents_to_images_and_sows_each_feature_map(resolution, sides):
    generator = DCGANGenerator(resolution=resolution, width=4, injection="riemannian")
    assert feature_sides(resolution) == sides and generator.injected_sides == sides
    z, variables = _init(generator)
    images, state = generator.apply(
        variables, z, rngs={"noise": jax.random.key(2)}, mutable=["intermediates"]
    )
    assert images.shape == (2, resolution, resolution, 3)
    assert float(jnp.max(jnp.abs(images))) <= 1.0
    features = state["intermediates"]
    assert sorted(features) == sorted(f"features_{side}" for side in sides)
    for side in sides:
        channels = 4 * resolution // (2 * side)
        assert features[f"features_{side}"][0].shape == (2, side, side, channels)


def test_dcgan_initialisation_is_normal_0_02():
    generator = DCGANGenerator(resolution=64, width=16)
    _, variables = _init(generator)
    kernel = np.asarray(variables["params"]["up_16"]["kernel"])
    np.testing.assert_allclose(kernel.std(), 0.02, rtol=0.05)
    assert abs(kernel.mean()) < 0.002


def test_a_fresh_euclidean_generator_computes_the_plain_generator():
    """ENI starts at r = 0: whatever noise is drawn, the output is that of the same weights
    without injection."""
    plain = DCGANGenerator(width=4)
    euclidean = DCGANGenerator(width=4, injection="euclidean")
    z, variables = _init(euclidean)
    noisy = euclidean.apply(variables, z, rngs={"noise": jax.random.key(5)})
    params = {k: v for k, v in variables["params"].items() if not k.startswith("injection")}
    plain_output = plain.apply({**variables, "params": params}, z)
    np.testing.assert_array_equal(noisy, plain_output)


def test_generator_noise_can_be_held_fixed_resampled_or_switched_off():
    generator = DCGANGenerator(width=4, injection="riemannian")
    z, variables = _init(generator)
    params = dict(variables["params"])  # noise strengths start at 0 (the authors' RNI): raise them
    for side in generator.injected_sides:
        params[f"injection_{side}"] = {**params[f"injection_{side}"], "strength": jnp.array(0.5)}
    variables = {**variables, "params": params}
    fixed = {
        side: jax.random.normal(jax.random.key(side), shape)
        for side, shape in generator.noise_shapes(2).items()
    }
    once = generator.apply(variables, z, noise=fixed)
    np.testing.assert_array_equal(generator.apply(variables, z, noise=fixed), once)
    drawn = [generator.apply(variables, z, rngs={"noise": jax.random.key(k)}) for k in (1, 2)]
    assert not np.allclose(drawn[0], drawn[1])  # resampled noise changes the sample
    off = generator.apply(variables, z, inject=False)
    zero = {side: jnp.zeros(shape) for side, shape in generator.noise_shapes(2).items()}
    np.testing.assert_allclose(off, generator.apply(variables, z, noise=zero), atol=1e-6)
    assert not np.allclose(off, once)


def test_injection_only_at_the_chosen_sides():
    generator = DCGANGenerator(width=4, injection="euclidean", inject_at=(8,))
    _, variables = _init(generator)
    assert [k for k in variables["params"] if k.startswith("injection")] == ["injection_8"]
    assert generator.noise_shapes(3) == {8: (3, 8, 8, 1)}


def test_discriminator_gives_one_logit_per_image_with_batch_norm_state():
    discriminator = DCGANDiscriminator(width=4)
    images = jax.random.uniform(jax.random.key(0), (3, 32, 32, 3), minval=-1, maxval=1)
    variables = discriminator.init({"params": jax.random.key(1)}, images, train=False)
    logits, updates = discriminator.apply(variables, images, train=True, mutable=["batch_stats"])
    assert logits.shape == (3,)
    assert set(updates["batch_stats"]) == {"BatchNorm_0", "BatchNorm_1"}  # not on the first conv
    with pytest.raises(ValueError, match=r"square \(32, 64\) images"):
        discriminator.apply(variables, jnp.zeros((1, 16, 16, 3)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"resolution": 48}, r"resolution=48.*allowed: \(32, 64\)"),
        ({"injection": "gaussian"}, r"injection='gaussian'.*'none', 'euclidean', 'riemannian'"),
        ({"rni_variant": "tf"}, r"rni_variant='tf'"),
    ],
)
def test_generator_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DCGANGenerator(**kwargs)
