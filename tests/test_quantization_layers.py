"""Feature-quantization layers: eqs. 3–7 of the paper, their gradients, the Λ groups, DoReFa.

Test data comes from numpy and every jax computation is jitted: on 2 CPU cores, compiling each
eager jax op separately would dominate the run time.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noise_research.layers import (
    DoReFaConv,
    HyperPower,
    QuantizedConv,
    ScalableFloor,
    SignedPower,
    dorefa_activations,
    dorefa_binary_weights,
    exponent_penalty,
    scalable_floor,
    signed_power,
)
from noise_research.registry import get_block

RANDOM = np.random.default_rng(0)
INPUTS = RANDOM.standard_normal((2, 5, 5, 3)).astype(np.float32)
FD_STEP = 1e-6


def _init(module: nn.Module, inputs) -> dict:
    return jax.jit(module.init)(jax.random.key(0), inputs)


def _plus(tree, offset: float):
    """Every leaf of `tree` + offset, computed in numpy."""
    return jax.tree.map(lambda leaf: np.asarray(leaf) + np.float32(offset), tree)


def _away_from_zero(x: np.ndarray) -> np.ndarray:
    """Inputs with |x| ≥ 0.2, so ψ is smooth within the finite-difference step."""
    return np.where(x >= 0, x + 0.2, x - 0.2).astype(np.float32)


def _directional_fd_check(loss_fn, arguments) -> None:
    """Checks <∇loss, v> against the central difference (loss(a + hv) − loss(a − hv)) / 2h, in
    float64 (`jax.enable_x64`), for a random direction v over every array in `arguments`."""
    arguments = jax.tree.map(lambda a: np.asarray(a, np.float64), arguments)
    direction = jax.tree.map(lambda a: RANDOM.standard_normal(a.shape), arguments)

    @jax.jit
    def analytic_and_numeric(arguments, direction):
        gradient = jax.grad(loss_fn)(arguments)
        analytic = sum(
            jnp.vdot(g, v)
            for g, v in zip(jax.tree.leaves(gradient), jax.tree.leaves(direction), strict=True)
        )

        def shifted(sign):
            return loss_fn(jax.tree.map(lambda a, v: a + sign * FD_STEP * v, arguments, direction))

        return analytic, (shifted(1.0) - shifted(-1.0)) / (2 * FD_STEP)

    with jax.enable_x64(True):
        analytic, numeric = analytic_and_numeric(arguments, direction)
    np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-5, atol=1e-7)


# --- scalable floor (eq. 3) -------------------------------------------------------------------


def test_scalable_floor_values_and_straight_through_gradients():
    x = np.array([-1.26, -0.5, 0.0, 0.249, 0.25, 1.9], np.float32)
    beta = np.float32(4.0)
    x_gradient, beta_gradient = jax.jit(jax.grad(lambda a, b: scalable_floor(a, b).sum(), (0, 1)))(
        x, beta
    )
    floored = jax.jit(scalable_floor)(x, beta)
    np.testing.assert_allclose(floored, [-1.5, -0.5, 0.0, 0.0, 0.25, 1.75])
    np.testing.assert_array_equal(x_gradient, np.ones(6))  # the identity, not floor's zero
    np.testing.assert_allclose(beta_gradient, ((x - floored) / beta).sum(), rtol=1e-6)


def test_scalable_floor_module_fixed_shared_or_learnable_per_channel():
    fixed = ScalableFloor(beta_init=2.0)
    assert _init(fixed, INPUTS) == {}
    np.testing.assert_allclose(jax.jit(fixed.apply)({}, INPUTS), np.floor(2 * INPUTS) / 2)

    per_channel = ScalableFloor(beta_init=8.0, learnable=True, per_channel=True)
    np.testing.assert_allclose(np.exp(_init(per_channel, INPUTS)["params"]["log_beta"]), [8] * 3)
    variables = {"params": {"log_beta": np.log(np.array([1.0, 2.0, 4.0], np.float32))}}

    @jax.jit
    def outputs_and_input_gradient(variables, x):
        return per_channel.apply(variables, x), jax.grad(
            lambda a: per_channel.apply(variables, a).sum()
        )(x)

    outputs, input_gradient = outputs_and_input_gradient(variables, INPUTS)
    np.testing.assert_allclose(outputs[..., 2], np.floor(4 * INPUTS[..., 2]) / 4, rtol=1e-6)
    np.testing.assert_array_equal(input_gradient, np.ones(INPUTS.shape))
    with pytest.raises(ValueError, match="beta_init=0"):
        ScalableFloor(beta_init=0)


# --- signed power (eqs. 5–6) ------------------------------------------------------------------


def test_signed_power_forward_and_eq6_gradients_with_zero_at_zero():
    x = np.array([-4.0, -0.25, 0.0, 0.25, 4.0], np.float32)
    alpha = np.float32(-0.5)

    @jax.jit
    def values_and_gradients(x, alpha):
        return signed_power(x, alpha), jax.grad(lambda a, b: signed_power(a, b).sum(), (0, 1))(
            x, alpha
        )

    y, (x_gradient, alpha_gradient) = values_and_gradients(x, alpha)
    np.testing.assert_allclose(y, [-2.0, -0.5, 0.0, 0.5, 2.0], rtol=1e-6)
    nonzero = x != 0
    np.testing.assert_allclose(x_gradient[nonzero], ((alpha + 1) * y / x)[nonzero], rtol=1e-6)
    assert x_gradient[2] == 0.0  # eq. 6: "otherwise we assign a 0 to the gradients"
    expected_alpha_gradient = np.sum(y[nonzero] * np.log(np.abs(x[nonzero])))
    np.testing.assert_allclose(alpha_gradient, expected_alpha_gradient, rtol=1e-6)
    zero_gradients = values_and_gradients(np.zeros(5, np.float32), alpha)[1]
    assert not np.any(zero_gradients[0]) and zero_gradients[1] == 0.0


@pytest.mark.parametrize("alpha", [-0.7, 0.0, 1.0])
def test_signed_power_gradients_match_finite_differences(alpha):
    x = _away_from_zero(RANDOM.standard_normal((4, 6)))  # both signs
    weights = RANDOM.standard_normal((4, 6))

    def loss(arguments):
        return jnp.sum(weights * signed_power(arguments["x"], arguments["alpha"]))

    _directional_fd_check(loss, {"x": x, "alpha": np.full((6,), alpha)})


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_signed_power_is_finite_for_zero_tiny_negative_and_large_inputs(dtype):
    tiny = float(jnp.finfo(dtype).tiny)
    x = np.array([0.0, tiny, -tiny, 1e-30, -1e-30, 1e-3, -1e-3, -7.0, 1e3], np.float32)
    alphas = np.array([-0.99, -0.5, 0.0, 0.5, 1.0], np.float32)

    @jax.jit
    def values_and_gradients(x, alpha):
        x, alpha = x.astype(dtype), alpha.astype(dtype)
        values = signed_power(x, alpha)
        gradients = jax.grad(lambda a, b: signed_power(a, b).astype(jnp.float32).sum(), (0, 1))(
            x, alpha
        )
        return values, *gradients

    for alpha in alphas:
        values, x_gradient, alpha_gradient = values_and_gradients(x, alpha)
        assert values.dtype == dtype and x_gradient.dtype == dtype
        for array in (values, x_gradient, alpha_gradient):
            assert np.isfinite(np.asarray(array, np.float32)).all(), (dtype, alpha, array)
        assert x_gradient[0] == 0 and values[0] == 0


def test_signed_power_reduces_alpha_cotangent_over_broadcast_axes():
    x = _away_from_zero(RANDOM.standard_normal((2, 3, 4, 5)))
    alpha = np.linspace(-0.5, 0.5, 5, dtype=np.float32).reshape(1, 1, 5)  # a missing and 1-axes

    @jax.jit
    def broadcast_and_explicit_gradients(alpha):
        def loss(a):
            return jnp.sum(jnp.cos(signed_power(x, a)))

        return jax.grad(loss)(alpha), jax.grad(loss)(jnp.broadcast_to(alpha, x.shape))

    gradient, full_gradient = broadcast_and_explicit_gradients(alpha)
    chex.assert_shape(gradient, (1, 1, 5))
    np.testing.assert_allclose(gradient[0, 0], full_gradient.sum(axis=(0, 1, 2)), rtol=1e-5)
    with pytest.raises(ValueError, match="does not broadcast"):
        signed_power(x, np.zeros((3,), np.float32))


# --- SignedPower, HyperPower, penalties -------------------------------------------------------


def test_signed_power_module_returns_group_copies_starting_at_identity_and_sows_penalties():
    module = SignedPower(groups=3)
    variables = _init(module, INPUTS)
    chex.assert_shape(variables["params"]["alpha"], (3, 3))
    apply = jax.jit(module.apply, static_argnames="mutable")
    copies = apply(variables, INPUTS)
    chex.assert_shape(copies, (3, *INPUTS.shape))
    np.testing.assert_allclose(copies, np.broadcast_to(INPUTS, copies.shape))

    alpha = np.array([[0.5, -0.5, 0.0], [1.0, 0.0, -0.25], [0.0, 0.0, 0.0]], np.float32)
    copies, state = apply({"params": {"alpha": alpha}}, INPUTS, mutable=("penalties",))
    np.testing.assert_allclose(
        copies[1, ..., 0], np.sign(INPUTS[..., 0]) * INPUTS[..., 0] ** 2, rtol=1e-6
    )
    assert float(exponent_penalty(state["penalties"], l1_weight=1.0)) == pytest.approx(2.25)
    assert float(exponent_penalty(state["penalties"], l2_weight=1.0)) == pytest.approx(1.5625)
    assert float(exponent_penalty(state["penalties"], 0.1, 2.0)) == pytest.approx(3.35)
    with pytest.raises(ValueError, match="l1_weight=-1"):
        exponent_penalty(state["penalties"], l1_weight=-1)
    with pytest.raises(ValueError, match="groups=0"):
        SignedPower(groups=0)


def test_hyper_power_exponents_depend_on_channel_statistics():
    module = HyperPower(groups=2, hidden_features=8)
    variables = _init(module, INPUTS)
    apply = jax.jit(module.apply, static_argnames="mutable")
    copies = apply(variables, INPUTS)
    chex.assert_shape(copies, (2, *INPUTS.shape))
    np.testing.assert_allclose(copies, np.broadcast_to(INPUTS, copies.shape), rtol=1e-6)

    params = {**variables["params"], "exponents": _plus(variables["params"]["exponents"], 0.1)}
    scaled_inputs = INPUTS * np.array([1.0, 4.0], np.float32).reshape(2, 1, 1, 1)
    copies, state = apply({"params": params}, scaled_inputs, mutable=("penalties",))
    assert np.isfinite(copies).all()
    assert float(exponent_penalty(state["penalties"], l1_weight=1.0)) > 0
    # log|ψ(x)| / log|x| = α + 1: the two samples (different channel stds) get different α
    exponent_plus_one = np.log(np.abs(copies[0, :, 0, 0, 0])) / np.log(
        np.abs(scaled_inputs[:, 0, 0, 0])
    )
    assert abs(float(exponent_plus_one[0] - exponent_plus_one[1])) > 1e-3


def test_hyper_power_gradients_are_finite_on_a_constant_channel():
    """Channel 0 is exactly constant (as a 1×1 feature map or an all-zero ReLU channel is)."""
    module = HyperPower(groups=2, hidden_features=8)
    inputs = INPUTS.copy()
    inputs[..., 0] = 0.5
    variables = _init(module, inputs)
    params = {**variables["params"], "exponents": _plus(variables["params"]["exponents"], 0.1)}

    def loss(params, inputs):
        return jnp.sum(module.apply({"params": params}, inputs) ** 2)

    param_grads, input_grads = jax.grad(loss, argnums=(0, 1))(params, inputs)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(param_grads))
    assert np.isfinite(input_grads).all()
    assert np.abs(input_grads).max() > 0


@pytest.mark.parametrize("quantization", ["pow", "hpow", "sf_pow"])
def test_quantized_conv_gradients_match_finite_differences(quantization):
    # The floor is piecewise constant: for "sf_pow" a huge β makes τ the identity up to 1e-12, so
    # the finite difference sees the surrogate whose gradient the straight-through estimator uses.
    module = QuantizedConv(
        features=4, kernel_size=3, quantization=quantization, groups=2, floor_scale=1e12
    )
    inputs = _away_from_zero(INPUTS)
    params = _plus(_init(module, inputs)["params"], 0.1)
    weights = RANDOM.standard_normal((2, 5, 5, 4))

    def loss(arguments):
        outputs = module.apply({"params": arguments["params"]}, arguments["inputs"])
        return jnp.sum(weights * outputs)

    _directional_fd_check(loss, {"params": params, "inputs": inputs})


# --- QuantizedConv (eqs. 2 and 4 with Λ groups) ----------------------------------------------


@pytest.mark.parametrize("quantization", ["none", "sf", "pow", "sf_pow"])
def test_quantized_conv_with_one_group_equals_conv_of_transformed_input(quantization):
    module = QuantizedConv(features=6, kernel_size=(3, 2), quantization=quantization, strides=2)
    params = dict(_init(module, INPUTS)["params"])
    transformed = INPUTS
    if quantization in ("pow", "sf_pow"):
        params["power"] = {"alpha": np.array([[0.5, -0.5, 0.2]], np.float32)}
        transformed = np.sign(INPUTS) * np.abs(INPUTS) ** (1 + params["power"]["alpha"][0])
    if quantization in ("sf", "sf_pow"):
        transformed = np.floor(100 * transformed) / 100
    plain_conv = nn.Conv(6, (3, 2), strides=2, padding="SAME")
    expected = jax.jit(plain_conv.apply)({"params": params["conv"]}, transformed)
    outputs = jax.jit(module.apply)({"params": params}, INPUTS)
    chex.assert_shape(outputs, (2, 3, 3, 6))
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-5)


def test_quantized_conv_groups_convolve_their_own_transformed_copy():
    module = QuantizedConv(features=4, kernel_size=3, quantization="pow", groups=2)
    variables = _init(module, INPUTS)
    chex.assert_shape(variables["params"]["conv"]["kernel"], (3, 3, 3, 4))
    alpha = np.array([[0.5, 0.0, -0.5], [-0.3, 0.8, 0.1]], np.float32)
    params = {**variables["params"], "power": {"alpha": alpha}}
    outputs = jax.jit(module.apply)({"params": params}, INPUTS)
    kernel, bias = params["conv"]["kernel"], params["conv"]["bias"]
    plain_conv_apply = jax.jit(nn.Conv(2, (3, 3), padding="SAME").apply)
    for group in range(2):
        portion = slice(2 * group, 2 * group + 2)
        expected = plain_conv_apply(
            {"params": {"kernel": kernel[..., portion], "bias": bias[portion]}},
            np.sign(INPUTS) * np.abs(INPUTS) ** (1 + alpha[group]),
        )
        np.testing.assert_allclose(outputs[..., portion], expected, rtol=1e-4, atol=1e-5)


def test_quantized_conv_rejects_bad_arguments():
    with pytest.raises(ValueError, match="quantization='cubic'"):
        QuantizedConv(features=4, quantization="cubic")
    with pytest.raises(ValueError, match="groups=3 must divide features=4"):
        QuantizedConv(features=4, groups=3)
    with pytest.raises(ValueError, match="groups=2 with quantization='sf'"):
        QuantizedConv(features=4, quantization="sf", groups=2)


def _outputs_and_gradients(module: QuantizedConv, dtype, x):
    """The module's outputs and the gradients w.r.t. its params (all shifted by −0.9) and x."""
    x = x.astype(dtype)
    params = jax.tree.map(lambda p: p - 0.9, module.init(jax.random.key(0), x)["params"])

    def loss(p, a):
        return module.apply({"params": p}, a).astype(jnp.float32).sum()

    return module.apply({"params": params}, x), jax.grad(loss, (0, 1))(params, x)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_quantized_conv_outputs_and_gradients_are_finite(dtype):
    inputs = INPUTS.copy()
    inputs[0, 0, 0] = 0.0
    for quantization in ("hpow", "sf_pow"):  # "sf_pow" runs both the floor and the power
        module = QuantizedConv(features=4, quantization=quantization, dtype=dtype)
        outputs, gradients = jax.jit(functools.partial(_outputs_and_gradients, module, dtype))(
            inputs
        )  # for "sf_pow": α = −0.9
        assert outputs.dtype == dtype
        for array in [outputs, *jax.tree.leaves(gradients)]:
            assert np.isfinite(np.asarray(array, np.float32)).all(), quantization


# --- DoReFa -----------------------------------------------------------------------------------


def test_dorefa_quantizers_levels_and_straight_through_gradients():
    x = np.array([-0.5, 0.01, 0.04, 0.5, 0.97, 1.5], np.float32)
    kernel = np.array([[-0.3, 0.1], [0.0, 0.6]], np.float32)

    @jax.jit
    def quantized_and_gradients(x, kernel):
        return (
            dorefa_activations(x, 4),
            jax.grad(lambda a: dorefa_activations(a, 4).sum())(x),
            dorefa_binary_weights(kernel),
            jax.grad(lambda k: (dorefa_binary_weights(k) * 2.0).sum())(kernel),
        )

    activations, activation_gradient, binary, kernel_gradient = quantized_and_gradients(x, kernel)
    np.testing.assert_allclose(activations * 15, [0, 0, 1, 8, 15, 15], atol=1e-5)
    np.testing.assert_array_equal(activation_gradient, [0, 1, 1, 1, 1, 0])  # clip's, STE round
    np.testing.assert_allclose(binary, [[-0.25, 0.25], [0.25, 0.25]])  # ±mean|W|
    np.testing.assert_array_equal(kernel_gradient, 2.0 * np.ones((2, 2)))


def test_dorefa_conv_is_conv_of_quantized_input_and_binary_kernel():
    module = DoReFaConv(features=4, kernel_size=3)
    inputs = 1 / (1 + np.exp(-INPUTS))
    params = _init(module, inputs)["params"]

    @jax.jit
    def outputs_expected_and_gradient(params, x):
        expected = nn.Conv(4, (3, 3)).apply(
            {"params": {**params, "kernel": dorefa_binary_weights(params["kernel"])}},
            dorefa_activations(x, 4),
        )
        gradient = jax.grad(lambda p: module.apply({"params": p}, x).sum())(params)
        return module.apply({"params": params}, x), expected, gradient

    outputs, expected, gradient = outputs_expected_and_gradient(params, inputs)
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(gradient["kernel"]).sum() > 0


def test_registered_blocks_build_and_run_at_the_requested_shape():
    for name in ("sf", "pow", "hpow", "sf_pow", "dorefa"):
        module, example_input, rng_names = get_block(name)((1, 6, 6, 2))
        assert rng_names == ()
        assert example_input.shape == (1, 6, 6, 2)
        if name == "dorefa":
            assert isinstance(module, DoReFaConv)
        else:
            assert module.quantization == name
        inputs = np.ones(example_input.shape, example_input.dtype)
        outputs = jax.jit(lambda x, m=module: m.apply(m.init(jax.random.key(0), x), x))(inputs)
        chex.assert_shape(outputs, (1, 6, 6, module.features))  # 'SAME' padding, stride 1


# --- precision: bfloat16 models (module docstring, "Precision") --------------------------------

# Every bfloat16 value in [2, 2.5): bfloat16's spacing there (2⁻⁶) is coarser than SF's 0.01 grid.
BF16_BETWEEN_2_AND_2_5 = 2.0 + np.arange(32, dtype=np.float32) / 64


def _difference_conv(quantization: str, compute_dtype, alpha=None):
    """A bfloat16 QuantizedConv whose 1×1 kernel computes f(channel 0) − f(channel 1), and its
    variables (exponents `alpha` per input channel for the power)."""
    module = QuantizedConv(
        features=1,
        kernel_size=1,
        quantization=quantization,
        use_bias=False,
        dtype=jnp.bfloat16,
        compute_dtype=compute_dtype,
    )
    inputs = jnp.zeros((1, 1, 32, 2), jnp.bfloat16)
    params = dict(_init(module, inputs)["params"])
    params["conv"] = {"kernel": np.array([1.0, -1.0], np.float32).reshape(1, 1, 2, 1)}
    if alpha is not None:
        params["power"] = {"alpha": np.asarray(alpha, np.float32).reshape(1, 2)}
    return jax.jit(functools.partial(module.apply, {"params": params}))


def test_in_bfloat16_sf_is_not_a_floor_beyond_1_28_unless_computed_in_float32():
    x = BF16_BETWEEN_2_AND_2_5
    assert np.array_equal(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32), x)
    # The quantizer alone, in bfloat16: 100x rounds to an integer first, the floor does nothing.
    in_bf16 = jax.jit(scalable_floor)(jnp.asarray(x, jnp.bfloat16), 100.0)
    np.testing.assert_array_equal(np.asarray(in_bf16, np.float32), x)
    # In the model: channel 0 = x, channel 1 = 2 (on the 0.01 grid), output τ(x) − τ(2).
    inputs = jnp.asarray(np.stack([x, np.full_like(x, 2.0)], -1)[None, None], jnp.bfloat16)
    as_model = _difference_conv("sf", None)(inputs)
    in_float32 = _difference_conv("sf", jnp.float32)(inputs)
    assert as_model.dtype == in_float32.dtype == jnp.bfloat16  # the model's dtype either way
    as_model, in_float32 = (np.asarray(o, np.float32)[0, 0, :, 0] for o in (as_model, in_float32))
    np.testing.assert_array_equal(as_model, x - 2.0)  # no quantization at all
    floored = np.floor(np.float64(x) * 100) / 100 - 2.0  # eq. 3 on the exact 0.01 grid
    np.testing.assert_allclose(in_float32, floored, rtol=2**-8, atol=1e-6)
    assert np.mean(in_float32 - (x - 2.0)) < -0.004  # the floor's bias, mean −0.005


def test_in_bfloat16_a_small_pow_exponent_is_the_identity_unless_computed_in_float32():
    x = BF16_BETWEEN_2_AND_2_5
    inputs = jnp.asarray(np.stack([x, x], -1)[None, None], jnp.bfloat16)
    alpha = [0.003, 0.0]  # ψ(x, 0.003) − ψ(x, 0) = x^1.003 − x
    as_model = _difference_conv("pow", None, alpha)(inputs)
    in_float32 = _difference_conv("pow", jnp.float32, alpha)(inputs)
    as_model, in_float32 = (np.asarray(o, np.float32)[0, 0, :, 0] for o in (as_model, in_float32))
    np.testing.assert_array_equal(as_model, 0.0)  # α + 1 = 1.003 rounds to 1 in bfloat16
    expected = np.float64(x) ** 1.003 - x  # 0.0042 … 0.0069
    np.testing.assert_allclose(in_float32, expected, rtol=2**-7)


@pytest.mark.parametrize("quantization", ["none", "sf", "pow", "hpow", "sf_pow", "dorefa"])
def test_float32_compute_is_a_no_op_in_a_float32_model(quantization):
    common = dict(features=4, kernel_size=3, dtype=jnp.float32)
    if quantization == "dorefa":
        plain, upcast = DoReFaConv(**common), DoReFaConv(**common, compute_dtype=jnp.float32)
    else:
        plain = QuantizedConv(**common, quantization=quantization)
        upcast = QuantizedConv(**common, quantization=quantization, compute_dtype=jnp.float32)
    variables = _init(plain, INPUTS)
    np.testing.assert_array_equal(
        jax.jit(plain.apply)(variables, INPUTS), jax.jit(upcast.apply)(variables, INPUTS)
    )
