"""The StyleGAN2-style generator and residual discriminator: shapes and names, noise injection and
its noise sources, modulation/demodulation, the mapping's pixel norm, the FIR resampling, and the
minibatch standard deviation over the global batch under jit and pmap (8 simulated devices)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noise_research.models import StyleGAN2Discriminator, StyleGAN2Generator
from noise_research.models.stylegan2 import (
    TINY,
    TINY_CHANNELS,
    EqualizedDense,
    MappingNetwork,
    ModulatedConv,
    ToRGB,
    channels_at,
    minibatch_stddev,
    modulated_weights,
    num_ws,
    pixel_norm,
    synthesis_layer_names,
    update_w_avg,
    upsample_2x,
)
from noise_research.train.parallel import DATA_AXIS, ParallelContext

LATENT = TINY["latent_dim"]
DEVICES = 8


def _generator(injection: str = "euclidean", **kwargs) -> StyleGAN2Generator:
    """A tiny generator, 8² by default (three synthesis layers: quick eager calls)."""
    settings = {**TINY, **TINY_CHANNELS, "resolution": 8, "injection": injection, **kwargs}
    return StyleGAN2Generator(**settings)


def _init(generator: StyleGAN2Generator, batch: int = 2):
    z = jax.random.normal(jax.random.key(1), (batch, LATENT))
    return z, generator.init(jax.random.key(0), z, inject=False)


def _apply(module):
    """``module.apply``, eager: on these tiny models op-by-op dispatch (its kernels cached across
    tests) is several times faster than compiling each call signature with jit."""
    return module.apply


def _set_leaves(variables, leaf_name: str, value: float):
    """A copy of ``variables`` with every leaf called ``leaf_name`` set to ``value``."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.full_like(leaf, value) if path[-1].key == leaf_name else leaf,
        variables,
    )


# ---------------------------------------------------------------------------------------------
# Generator.


@pytest.mark.parametrize("resolution", [8, 16])
def test_generator_shapes_layer_names_noise_shapes_and_sown_features(resolution):
    generator = _generator(resolution=resolution)
    names = synthesis_layer_names(resolution)
    assert names[:3] == ("b4_conv", "b8_conv0", "b8_conv1") and len(names) == num_ws(resolution) - 1
    assert generator.num_ws == 2 * int(np.log2(resolution)) - 2
    sides = {name: int(name[1:].split("_")[0]) for name in names}  # 'b8_conv0' → 8
    assert generator.noise_shapes(3) == {name: (3, s, s, 1) for name, s in sides.items()}
    z, variables = _init(generator, batch=3)
    images, state = _apply(generator)(
        variables, z, rngs={"noise": jax.random.key(2)}, mutable=("intermediates",)
    )
    assert images.shape == (3, resolution, resolution, 3)
    features = state["intermediates"]
    assert sorted(features) == sorted(f"features_{n}" for n in names)
    for name, side in sides.items():
        channels = channels_at(side, **TINY_CHANNELS)
        assert features[f"features_{name}"][0].shape == (3, side, side, channels)
    # The two halves: synthesize(map(z)) is the generator, w broadcast = the same w per layer.
    apply = _apply(generator)
    w = apply(variables, z, method="map")
    assert w.shape == (3, TINY["w_dim"])
    ws = jnp.broadcast_to(w[:, None], (3, generator.num_ws, TINY["w_dim"]))
    np.testing.assert_allclose(apply(variables, ws, inject=False, method="synthesize"),
                               apply(variables, z, inject=False), rtol=1e-6, atol=1e-6)  # fmt: skip


def test_the_image_is_the_skip_sum_of_every_blocks_torgb():
    """rgb = upsample(toRGB_4(x_4)) + toRGB_8(x_8), each toRGB on its block's last features."""
    generator = _generator("none", resolution=16)
    z, variables = _init(generator)
    images, state = _apply(generator)(variables, z, mutable=("intermediates",))
    features = {k: v[0] for k, v in state["intermediates"].items()}
    w = _apply(generator)(variables, z, method="map")
    synthesis = variables["params"]["synthesis"]
    rgb = 0.0
    for side, last in ((4, "b4_conv"), (8, "b8_conv1"), (16, "b16_conv1")):
        to_rgb = ToRGB().apply(
            {"params": synthesis[f"b{side}_torgb"]}, features[f"features_{last}"], w
        )
        rgb = to_rgb if side == 4 else upsample_2x(rgb) + to_rgb
    np.testing.assert_allclose(images, rgb, rtol=1e-5, atol=1e-5)


def test_synthesis_layer_i_takes_w_i_and_the_last_w_only_reaches_the_last_torgb():
    """StyleGAN2's ws layout: the i-th synthesis layer uses ws[i]; block r's toRGB uses the w of
    the next layer (ws[num_ws − 1] for the last)."""
    generator = _generator("none")  # 8²: b4_conv, b8_conv0, b8_conv1; num_ws = 4
    z, variables = _init(generator)
    apply = _apply(generator)
    w = apply(variables, z, method="map")
    ws = jnp.broadcast_to(w[:, None], (2, generator.num_ws, w.shape[-1]))

    def run(ws):
        images, state = apply(variables, ws, method="synthesize", mutable=("intermediates",))
        return images, [state["intermediates"][f"features_{n}"][0] for n in generator.layer_names]

    images, features = run(ws)
    for index in range(generator.num_ws):
        moved_images, moved = run(ws.at[:, index].add(1.0))
        changed = [not np.allclose(a, b, atol=1e-6) for a, b in zip(features, moved, strict=True)]
        assert changed == [i >= index for i in range(len(features))], index
        assert not np.allclose(moved_images, images, atol=1e-6)


def test_config_f_at_256_has_stylegan2s_widths():
    generator = StyleGAN2Generator(resolution=256)
    variables = jax.eval_shape(
        functools.partial(generator.init, inject=False), jax.random.key(0), jnp.zeros((1, 512))
    )
    synthesis = variables["params"]["synthesis"]
    assert synthesis["const"].shape == (4, 4, 512)
    assert synthesis["b128_conv1"]["conv"]["kernel"].shape == (3, 3, 256, 256)
    assert synthesis["b256_conv0"]["conv"]["kernel"].shape == (3, 3, 256, 128)
    assert generator.num_ws == 14 and len(generator.injected_layers) == 13
    assert len(variables["params"]["mapping"]) == 8


def test_a_fresh_euclidean_generator_is_the_same_weights_without_injection():
    """StyleGAN2's noise strengths start at 0: whatever noise is drawn, the output is that of
    ``inject=False`` and of the plain generator with the same weights."""
    euclidean = _generator("euclidean")
    z, variables = _init(euclidean)
    noisy = _apply(euclidean)(variables, z, rngs={"noise": jax.random.key(5)})
    np.testing.assert_array_equal(noisy, _apply(euclidean)(variables, z, inject=False))
    strip = lambda tree: {
        k: strip(v) if isinstance(v, dict) else v for k, v in tree.items() if k != "noise"
    }
    plain = _generator("none")
    np.testing.assert_array_equal(noisy, _apply(plain)(strip(variables), z))
    raised = _set_leaves(variables, "strength", 0.5)
    assert not np.allclose(noisy, _apply(euclidean)(raised, z, rngs={"noise": jax.random.key(5)}))


@pytest.mark.parametrize("injection", ["euclidean", "riemannian"])
def test_generator_noise_can_be_held_fixed_resampled_or_switched_off(injection):
    generator = _generator(injection)
    z, variables = _init(generator)
    variables = _set_leaves(variables, "strength", 0.5)  # both start at 0 (the authors' RNI too)
    apply = _apply(generator)
    shapes = generator.noise_shapes(2)
    fixed = {n: jax.random.normal(jax.random.key(i), s) for i, (n, s) in enumerate(shapes.items())}
    once = apply(variables, z, noise=fixed)
    np.testing.assert_array_equal(apply(variables, z, noise=fixed), once)
    drawn = [apply(variables, z, rngs={"noise": jax.random.key(k)}) for k in (1, 2)]
    assert not np.allclose(drawn[0], drawn[1])  # resampled noise changes the sample
    np.testing.assert_array_equal(drawn[0], apply(variables, z, rngs={"noise": jax.random.key(1)}))
    off = apply(variables, z, inject=False)
    zero = {name: jnp.zeros(shape) for name, shape in shapes.items()}
    np.testing.assert_allclose(off, apply(variables, z, noise=zero), atol=1e-6)
    assert not np.allclose(off, once)
    # A sample's drawn noise depends on its position, not on the rest of the batch.
    positions = jnp.array([7, 3])
    both = apply(variables, z, rngs={"noise": jax.random.key(1)}, positions=positions)
    alone = apply(variables, z[1:], rngs={"noise": jax.random.key(1)}, positions=positions[1:])
    np.testing.assert_allclose(both[1:], alone, atol=1e-5)


def test_injection_only_at_the_chosen_sides_and_a_missing_noise_map_is_named():
    generator = _generator("riemannian", resolution=16, inject_at=(8,))
    assert generator.injected_layers == ("b8_conv0", "b8_conv1")
    z = jnp.zeros((2, LATENT))
    variables = jax.eval_shape(
        functools.partial(generator.init, inject=False), jax.random.key(0), z
    )
    synthesis = variables["params"]["synthesis"]
    noisy = [name for name, layer in synthesis.items() if "noise" in getattr(layer, "keys", list)()]
    assert noisy == ["b8_conv0", "b8_conv1"]
    with pytest.raises(ValueError, match=r"no map for layers \['b8_conv1'\]"):
        partial_noise = {"b8_conv0": jnp.zeros((2, 8, 8, 1))}
        jax.eval_shape(functools.partial(generator.apply, noise=partial_noise), variables, z)
    with pytest.raises(ValueError, match=r"inject_at=\(32,\)"):
        _generator(inject_at=(32,))
    with pytest.raises(ValueError, match=r"resolution=12"):
        _generator(resolution=12)


def test_truncation_moves_w_towards_w_avg_and_w_avg_tracks_the_global_batch_mean():
    generator = _generator("none")
    z, variables = _init(generator, batch=4)
    apply = _apply(generator)
    w = apply(variables, z, method="map")
    w_avg = jnp.asarray(np.random.default_rng(0).normal(size=TINY["w_dim"]), jnp.float32)
    half = apply(variables, z, truncation_psi=0.5, w_avg=w_avg, method="map")
    np.testing.assert_allclose(half, w_avg + 0.5 * (w - w_avg), rtol=1e-6, atol=1e-6)
    images = apply(variables, z, truncation_psi=0.0, w_avg=w_avg)  # every sample is w̄'s image
    np.testing.assert_allclose(images, jnp.broadcast_to(images[:1], images.shape), atol=1e-6)
    with pytest.raises(ValueError, match="needs w_avg"):
        generator.apply(variables, z, truncation_psi=0.7)
    updated = update_w_avg(w_avg, w, beta=0.9)
    mean = np.asarray(w).mean(axis=0)
    np.testing.assert_allclose(updated, mean + 0.9 * (np.asarray(w_avg) - mean), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Mapping network, equalized learning rate, modulation.


def test_pixel_norm_and_the_mapping_is_invariant_to_the_scale_of_z():
    z = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32) * np.arange(1, 6)[:, None]
    expected = z / np.sqrt(np.mean(z.astype(np.float64) ** 2, axis=1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(pixel_norm(jnp.asarray(z)), expected, rtol=1e-5)
    np.testing.assert_allclose(np.mean(np.square(pixel_norm(jnp.asarray(z))), axis=1), 1, rtol=1e-5)
    mapping = MappingNetwork(w_dim=8, num_layers=3, lr_mul=0.01)
    variables = mapping.init(jax.random.key(0), jnp.asarray(z))
    out = mapping.apply(variables, jnp.asarray(z))
    np.testing.assert_allclose(mapping.apply(variables, 7.0 * jnp.asarray(z)), out, rtol=1e-5)
    assert not np.allclose(mapping.apply(variables, jnp.asarray(z)[::-1]), out)
    # Equalized lr with λ = 0.01: stored N(0, 1/λ²), effective N(0, 1/fan_in).
    kernel = np.asarray(variables["params"]["dense0"]["kernel"])
    assert 70 < kernel.std() < 130


def test_equalized_dense_has_the_effective_weights_and_bias():
    layer = EqualizedDense(5, lr_mul=0.1, bias_init=1.0)
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    params = layer.init(jax.random.key(0), x)["params"]
    expected = x @ (np.asarray(params["kernel"]) * 0.1 / 2.0) + 1.0
    np.testing.assert_allclose(layer.apply({"params": params}, x), expected, rtol=1e-5, atol=1e-6)


def _modconv_inputs(batch=2, side=16, cin=5):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(batch, side, side, cin)).astype(np.float32)
    w = rng.normal(size=(batch, 6)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(w)


def test_demodulated_weights_have_unit_norm_per_output_channel_as_numpy_computes():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(3, 3, 5, 7)).astype(np.float32) / np.sqrt(45)
    styles = rng.normal(size=(4, 5)).astype(np.float32) * 3
    modulated = weight[None] * styles[:, None, None, :, None]
    expected = (
        modulated
        / np.sqrt((modulated.astype(np.float64) ** 2).sum(axis=(1, 2, 3)) + 1e-8)[
            :, None, None, None, :
        ]
    )
    got = np.asarray(modulated_weights(jnp.asarray(weight), jnp.asarray(styles)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.sqrt((got**2).sum(axis=(1, 2, 3))), 1.0, rtol=1e-5)
    plain = modulated_weights(jnp.asarray(weight), jnp.asarray(styles), demodulate=False)
    np.testing.assert_allclose(plain, modulated, rtol=1e-6)


@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv_equals_a_per_sample_convolution_with_the_modulated_weights(demodulate):
    """The unfused form ``conv(x ⊙ s, W) ⊙ d`` against each sample convolved with its own w''."""
    x, w = _modconv_inputs()
    layer = ModulatedConv(7, 3, demodulate=demodulate)
    params = layer.init(jax.random.key(0), x, w)["params"]
    styles = EqualizedDense(5, bias_init=1.0).apply({"params": params["affine"]}, w)
    weights = modulated_weights(params["kernel"] / np.sqrt(5 * 9), styles, demodulate)
    per_sample = jax.vmap(
        lambda xi, wi: jax.lax.conv_general_dilated(
            xi[None], wi, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )[0]
    )(x, weights)
    np.testing.assert_allclose(layer.apply({"params": params}, x, w), per_sample, atol=1e-4)


def test_demodulated_output_has_unit_variance_per_output_channel_on_white_input():
    """E[y_o²] = Σ_{k,i} w''² E[x²] = 1 for i.i.d. unit-variance input: the scale demodulation
    restores, whatever the style (here styles of magnitude ~10)."""
    x = jax.random.normal(jax.random.key(0), (2, 64, 64, 8))
    w = 10.0 * jax.random.normal(jax.random.key(1), (2, 6))
    layer = ModulatedConv(4, 3)
    variables = layer.init(jax.random.key(2), x, w)
    y = np.asarray(layer.apply(variables, x, w))[:, 1:-1, 1:-1]  # zero padding at the border
    np.testing.assert_allclose(y.std(axis=(1, 2)), 1.0, rtol=0.12)
    undemodulated = ModulatedConv(4, 3, demodulate=False).apply(variables, x, w)
    assert np.asarray(undemodulated).std() > 3.0  # the scale demodulation removed


def test_fir_upsampling_is_bilinear_in_the_interior_and_the_upsampling_conv_keeps_constants():
    ramp = jnp.broadcast_to(jnp.arange(8.0)[None, None, :, None], (1, 8, 8, 2))
    up = np.asarray(upsample_2x(ramp))
    assert up.shape == (1, 16, 16, 2)
    # Half-pixel centres: output column j samples input position (j − 0.5)/2.
    np.testing.assert_allclose(up[0, 4, 2:-2, 0], (np.arange(2, 14) - 0.5) / 2, atol=1e-5)
    np.testing.assert_allclose(up[0, 2:-2, 5, 1], (5 - 0.5) / 2, atol=1e-5)
    # Transposed conv + blur: a constant image gives the stride-1 conv's value in the interior.
    x = jnp.full((2, 8, 8, 5), 0.7)
    w = jax.random.normal(jax.random.key(0), (2, 6))
    upsampling, plain = ModulatedConv(3, 3, up=True), ModulatedConv(3, 3)
    variables = upsampling.init(jax.random.key(1), x, w)
    y_up = np.asarray(upsampling.apply(variables, x, w))
    y = np.asarray(plain.apply(variables, x, w))
    assert y_up.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(
        y_up[:, 3:-3, 3:-3], np.broadcast_to(y[:, 4:5, 4:5], (2, 10, 10, 3)), rtol=1e-5
    )


# ---------------------------------------------------------------------------------------------
# Discriminator and the minibatch standard deviation.


def _numpy_mbstd(x: np.ndarray, group_size: int | None, num_features: int) -> np.ndarray:
    """StyleGAN2's minibatch std written out: row n is in group n mod M, M = N / G."""
    n, h, w, c = x.shape
    groups = n if group_size is None else min(group_size, n)
    m = n // groups
    x64 = x.astype(np.float64).reshape(n, h, w, num_features, c // num_features)
    stat = np.zeros((n, num_features))
    for group in range(m):
        members = x64[group::m]
        sigma = np.sqrt(members.var(axis=0) + 1e-8)  # population variance over the group
        stat[group::m] = sigma.mean(axis=(0, 1, 3))
    maps = np.broadcast_to(stat[:, None, None, :], (n, h, w, num_features))
    return np.concatenate([x, maps], axis=-1)


@pytest.mark.parametrize("group_size, num_features", [(None, 1), (4, 1), (2, 2), (32, 1)])
def test_minibatch_stddev_equals_the_numpy_computation_on_the_global_batch(
    group_size, num_features
):
    x = np.random.default_rng(0).normal(size=(16, 4, 4, 6)).astype(np.float32) * 2 + 1
    got = jax.jit(functools.partial(minibatch_stddev, group_size=group_size,
                                    num_features=num_features))(x)  # fmt: skip
    np.testing.assert_allclose(got, _numpy_mbstd(x, group_size, num_features), rtol=1e-5)


def test_minibatch_stddev_rejects_a_batch_its_groups_do_not_divide():
    with pytest.raises(ValueError, match="groups of 4"):
        minibatch_stddev(jnp.zeros((6, 4, 4, 2)), group_size=4)


@pytest.mark.parametrize("resolution", [8, 16])
def test_discriminator_gives_one_logit_per_image_and_mixes_only_its_groups(resolution):
    discriminator = StyleGAN2Discriminator(**TINY_CHANNELS, mbstd_group_size=4)
    images = jax.random.normal(jax.random.key(0), (8, resolution, resolution, 3))
    variables = discriminator.init(jax.random.key(1), images)
    apply = discriminator.apply
    logits = np.asarray(apply(variables, images))
    assert logits.shape == (8,)
    # N = 8, G = 4: M = 2 groups, row n in group n mod 2. Changing row 3 moves rows 1, 5, 7 too.
    changed = np.asarray(apply(variables, images.at[3].multiply(3.0)))
    moved = ~np.isclose(changed, logits, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(moved, np.arange(8) % 2 == 1)


def _pmap_and_jit_discriminator(group_size: int | None):
    """Logits and parameter gradients of mean(logits) over a global batch of 16 (2 rows on each
    of 8 devices under pmap), under pmap and under a single-device jit."""
    images = jax.random.normal(jax.random.key(0), (DEVICES * 2, 16, 16, 3))
    jit_d = StyleGAN2Discriminator(
        **TINY_CHANNELS, mbstd_group_size=group_size, parallel=ParallelContext(None, 1, DEVICES)
    )
    pmap_d = StyleGAN2Discriminator(
        **TINY_CHANNELS,
        mbstd_group_size=group_size,
        parallel=ParallelContext(DATA_AXIS, DEVICES, DEVICES),
    )
    variables = jit_d.init(jax.random.key(1), images)

    def jit_step(variables, images):
        loss = lambda v: jnp.mean(jit_d.apply(v, images))
        return jit_d.apply(variables, images), jax.grad(loss)(variables)

    def pmap_step(variables, images):
        loss = lambda v: jnp.mean(pmap_d.apply(v, images))
        grads = jax.lax.pmean(jax.grad(loss)(variables), DATA_AXIS)
        return pmap_d.apply(variables, images), grads

    jit_logits, jit_grads = jax.jit(jit_step)(variables, images)
    per_device = images.reshape(DEVICES, 2, *images.shape[1:])
    pmap_logits, pmap_grads = jax.pmap(pmap_step, axis_name=DATA_AXIS, in_axes=(None, 0))(
        variables, per_device
    )
    return (
        np.asarray(jit_logits),
        np.asarray(pmap_logits).reshape(-1),
        jit_grads,
        jax.tree.map(lambda g: np.asarray(g)[0], pmap_grads),
    )


@pytest.mark.multidevice
@pytest.mark.parametrize("group_size", [4, None])
def test_discriminator_gives_the_same_logits_and_gradients_under_pmap_as_under_jit(group_size):
    """Groups of 4 rows n ≡ m (mod 4) span 4 devices: the minibatch std gathers the global batch."""
    jit_logits, pmap_logits, jit_grads, pmap_grads = _pmap_and_jit_discriminator(group_size)
    np.testing.assert_allclose(pmap_logits, jit_logits, rtol=1e-5, atol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), pmap_grads, jit_grads
    )
