"""Halftoning ResNet and U-Net: flatness degradation and the NIB cure, receptive fields, fields."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noise_research.models import HalftoneResNet, HalftoneUNet, build_halftone_model


def _random_variables(model, images, seed: int = 0):
    """The model's variables with LeCun-normal kernels, zero biases and random noise keys.

    Same structure, shapes and dtypes as `model.init` (taken from `jax.eval_shape`), filled with
    numpy: flax's eager init compiles every op once per kernel shape, ≈20 s for the U-Net on 2
    CPU cores, and these tests need random weights, not flax's initialisers.
    """
    rng = np.random.default_rng(seed)

    def fill(leaf: jax.ShapeDtypeStruct) -> jax.Array:
        if leaf.dtype == jnp.uint32:  # stationary noise key data
            return jnp.asarray(rng.integers(0, 2**32, leaf.shape, dtype=np.uint32))
        if len(leaf.shape) == 1:  # bias
            return jnp.zeros(leaf.shape, leaf.dtype)
        fan_in = np.prod(leaf.shape[:-1])
        return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)

    return jax.tree.map(fill, jax.eval_shape(model.init, jax.random.key(0), images))


def _receptive_field_sides(model, size: int, positions) -> np.ndarray:
    """Per output pixel (p, p), the (rows, cols) extent of input pixels with a nonzero gradient.

    Uses a batch of 2 random inputs and counts a pixel if either sample's gradient is nonzero, so
    a ReLU that happens to be off for one sample does not shrink the measured extent.
    """
    images = jax.random.uniform(jax.random.key(1), (2, size, size, 1), minval=-1.0, maxval=1.0)
    variables = _random_variables(model, images)
    positions = jnp.asarray(positions)

    @jax.jit
    def input_gradients(images):
        outputs, pullback = jax.vjp(lambda x: model.apply(variables, x), images)
        one_hot = jnp.zeros((len(positions), *outputs.shape))
        one_hot = one_hot.at[jnp.arange(len(positions)), :, positions, positions, 0].set(1.0)
        return jax.vmap(lambda cotangent: pullback(cotangent)[0])(one_hot)

    depends = np.asarray(jnp.abs(input_gradients(images)).max(axis=(1, 4)) > 0)  # (P, H, W)
    sides = []
    for mask in depends:
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        assert rows.min() > 0 and rows.max() < size - 1, (
            "extent touches the border: input too small"
        )
        sides.append((rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))
    return np.array(sides)


# --- flatness degradation (NIB paper, sections 1 and 3.2) ---------------------------------------


def test_plain_resnet_is_flat_on_flat_input_and_nib_resnet_is_not():
    constant_gray = jnp.full((1, 48, 48, 1), 0.2)
    plain = HalftoneResNet(width=8)
    radius = (plain.receptive_field - 1) // 2
    interior = (0, slice(radius, 48 - radius), slice(radius, 48 - radius), 0)
    plain_outputs = jax.jit(plain.apply)(
        plain.init(jax.random.key(0), constant_gray), constant_gray
    )
    plain_interior = np.asarray(plain_outputs[interior])
    assert plain_interior.size >= 16  # pixels whose whole receptive field is inside the image
    np.testing.assert_allclose(plain_interior, plain_interior[0, 0], rtol=0, atol=1e-6)
    assert float(jnp.std(plain_outputs)) > 1e-3  # only the zero-padded borders vary

    for nib in ({}, {"stationary": False}):
        nib_model = HalftoneResNet(width=8, first_layer="nib", nib=nib)
        rngs = {"params": jax.random.key(0), "noise": jax.random.key(3)}
        nib_outputs = jax.jit(nib_model.apply)(
            nib_model.init(rngs, constant_gray), constant_gray, rngs={"noise": rngs["noise"]}
        )
        assert float(jnp.std(nib_outputs[interior])) > 0.05, nib


# --- receptive fields ---------------------------------------------------------------------------


def test_resnet_receptive_field_is_45_as_documented():
    model = HalftoneResNet(width=4)
    assert model.receptive_field == 45
    sides = _receptive_field_sides(model, 49, [24])
    np.testing.assert_array_equal(sides, [[45, 45]])
    assert HalftoneResNet(num_blocks=2).receptive_field == 13


@pytest.mark.parametrize(("levels", "expected_range"), [(3, (92, 100)), (4, (188, 204))])
def test_unet_receptive_field_range_matches_measurement(levels, expected_range):
    model = HalftoneUNet(width=4, levels=levels)
    assert model.receptive_field_range == expected_range
    assert model.receptive_field == expected_range[1]
    period = 2**levels
    size = {3: 112, 4: 224}[levels]
    sides = _receptive_field_sides(model, size, range(size // 2, size // 2 + period))
    np.testing.assert_array_equal(sides[:, 0], sides[:, 1])
    assert (sides.min(), sides.max()) == expected_range


# --- fields, shapes, dtypes ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet", "unet"])
@pytest.mark.parametrize("first_layer", ["conv", "nib"])
def test_models_map_gray_to_tanh_map_of_same_shape(name, first_layer):
    images = jax.random.uniform(jax.random.key(2), (2, 16, 16, 1), minval=-1.0, maxval=1.0)
    model = build_halftone_model(name, width=4, first_layer=first_layer, dtype=jnp.bfloat16)
    variables = _random_variables(model, images)
    outputs = jax.jit(model.apply)(variables, images)
    chex.assert_shape(outputs, images.shape)
    assert outputs.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(outputs))) <= 1.0
    chex.assert_trees_all_equal_dtypes(
        variables["params"], jax.tree.map(jnp.float32, variables["params"])
    )
    assert ("noise_keys" in variables) == (first_layer == "nib")


def test_dynamic_nib_model_needs_the_noise_rng():
    model = HalftoneResNet(width=4, num_blocks=1, first_layer="nib", nib={"stationary": False})
    images = jnp.zeros((1, 8, 8, 1))
    variables = model.init(jax.random.key(0), images)
    assert "noise_keys" not in variables
    model.apply(variables, images, rngs={"noise": jax.random.key(1)})
    with pytest.raises(ValueError, match="'noise'"):
        model.apply(variables, images)


def test_build_halftone_model_returns_the_named_class():
    assert isinstance(build_halftone_model("resnet", num_blocks=3), HalftoneResNet)
    assert build_halftone_model("unet", levels=2).levels == 2
    with pytest.raises(ValueError, match=r"name='vgg'.*allowed.*'resnet', 'unet'"):
        build_halftone_model("vgg")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"first_layer": "dense"}, r"first_layer='dense'.*allowed.*'conv', 'nib'"),
        ({"nib": {"stationary": False}}, r"nib=.*first_layer='conv'"),
        ({"first_layer": "nib", "nib": {"features": 8}}, r"sets \['features'\]"),
        ({"first_layer": "nib", "nib": {"combine": "impulse"}}, r"combine='impulse'"),
        ({"width": 0}, r"width=0"),
    ],
)
def test_models_reject_bad_fields(fields, message):
    for model_class in (HalftoneResNet, HalftoneUNet):
        with pytest.raises(ValueError, match=message):
            model_class(**fields)


def test_unet_rejects_sizes_not_divisible_by_two_to_the_levels():
    model = HalftoneUNet(width=4, levels=2)
    with pytest.raises(ValueError, match=r"divisible by 2\*\*levels = 4"):
        model.init(jax.random.key(0), jnp.zeros((1, 10, 12, 1)))
    with pytest.raises(AssertionError):  # one gray channel only
        model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
