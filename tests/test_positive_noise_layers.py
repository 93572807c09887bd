"""The positive-noise layers against direct numpy computations of the paper's eqs. 16–20, their
evaluation switch, and their batch semantics under jit and pmap on 8 fake devices."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noise_research.layers import (
    LatentGaussianNoise,
    LinearTransformNoise,
    SaltPepperNoise,
    optimal_q_matrix,
    optimal_q_mutual_information_bound,
    shift_q_matrix,
)
from noise_research.train.parallel import DATA_AXIS, SINGLE_DEVICE, ParallelContext

KEY = jax.random.key(7)
DEVICES = 8
ROWS = 3  # per device
ALPHA = 0.4


def _representations(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("layer", "train", "draw"))
def _compiled_apply(layer, x, key, positions, train, draw):
    """Compiled once per (layer, train, draw, shapes): the tests' eager draws would be slow."""
    extra = {} if positions is None else {"positions": positions}
    if draw is None:
        return layer.apply({}, x, train, rngs={"noise": key}, **extra)
    y, state = layer.apply({}, x, train, rngs={"noise": key}, mutable=["intermediates"], **extra)
    return y, state["intermediates"][draw][0]


def _apply(layer, x, train=True, key=KEY, positions=None) -> np.ndarray:
    """``layer(x, train)``, its 'noise' stream from `key`."""
    return np.asarray(_compiled_apply(layer, x, key, positions, train=train, draw=None))


def _apply_and_draw(layer, x, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The output and the per-element draw the layer sowed as 'intermediates'/name."""
    y, drawn = _compiled_apply(layer, x, KEY, None, train=True, draw=name)
    return np.asarray(y), np.asarray(drawn)


def _linear(q: str, **fields) -> LinearTransformNoise:
    return LinearTransformNoise(alpha=ALPHA, q=q, **fields)


def _explicit_q(q: str, k: int) -> np.ndarray:
    return shift_q_matrix(k, ALPHA) if q == "shift" else optimal_q_matrix(k)


def _matrix_applied(matrix: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``(I + Q)X`` as a matrix product over the batch axis, every other axis flattened."""
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    return ((np.eye(len(matrix)) + matrix) @ flat).reshape(x.shape)


# ----------------------------------------------------------------------------------------------
# The quality matrices, their determinants and eq. 20.


def test_shift_q_is_eq_17_with_f_moving_row_1_to_row_2():
    # f(I) for k = 3: row 1 of I moves to row 2, row 2 to row 3, row 3 to row 1.
    f_of_identity = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)
    np.testing.assert_array_equal(shift_q_matrix(3, 0.25), -0.25 * np.eye(3) + 0.25 * f_of_identity)
    x = _representations((5, 2)).astype(np.float64)
    # (QX)_i = α(x_{i−1} − x_i): each row takes α of the row before it.
    np.testing.assert_allclose(shift_q_matrix(5, ALPHA) @ x, ALPHA * (np.roll(x, 1, axis=0) - x))


def test_optimal_q_is_eq_19_and_meets_eq_14s_constraints():
    third = 1.0 / 3.0
    np.testing.assert_allclose(optimal_q_matrix(2), [[third - 1 + third, third], [third, -third]])
    for k in range(2, 7):
        mixing = np.eye(k) + optimal_q_matrix(k)
        assert np.linalg.matrix_rank(mixing) == k
        np.testing.assert_allclose(np.abs(mixing).sum(axis=1), 1.0)  # ‖[I + Q]_i‖₁ = 1
        off_diagonal = mixing[~np.eye(k, dtype=bool)]
        assert np.all(np.diag(mixing)[:, None] >= off_diagonal.reshape(k, k - 1))


@pytest.mark.parametrize("k", range(2, 7))
def test_optimal_q_determinant_and_eq_20_bound(k):
    """det(I + Q_opt) = det((I + 1·1ᵀ)/(k + 1)) = (k + 1)/(k + 1)^k = (k + 1)^{1−k}; eq. 13's
    MI = −log|I + Q| is then (k − 1)·log(k + 1), eq. 20."""
    mixing = np.eye(k) + optimal_q_matrix(k)
    np.testing.assert_allclose(np.linalg.det(mixing), (k + 1.0) ** (1 - k), rtol=1e-10)
    sign, log_det = np.linalg.slogdet(mixing)
    assert sign == 1.0
    np.testing.assert_allclose(optimal_q_mutual_information_bound(k), -log_det, rtol=1e-10)


def test_eq_20_values_and_growth_with_k():
    np.testing.assert_allclose(optimal_q_mutual_information_bound(1), 0.0)
    np.testing.assert_allclose(optimal_q_mutual_information_bound(2), np.log(3.0))
    np.testing.assert_allclose(optimal_q_mutual_information_bound(4), 3 * np.log(5.0))
    bounds = [optimal_q_mutual_information_bound(k) for k in range(1, 10)]
    assert np.all(np.diff(bounds) > 0)
    with pytest.raises(ValueError, match="k=0"):
        optimal_q_mutual_information_bound(0)


@pytest.mark.parametrize("k", range(2, 7))
@pytest.mark.parametrize("alpha", [0.1, ALPHA, 0.5])
def test_shift_q_determinant_closed_form(k, alpha):
    """f(I)'s eigenvalues are the k-th roots of unity ω, so det(I + Q) = Π_ω(1 − α + αω)
    = (1 − α)^k − (−α)^k: singular at α = 1/2 for even k."""
    closed_form = (1 - alpha) ** k - (-alpha) ** k
    np.testing.assert_allclose(
        np.linalg.det(np.eye(k) + shift_q_matrix(k, alpha)), closed_form, atol=1e-12
    )


def test_eq_20_bounds_the_shift_q_for_odd_k_but_not_for_even_k():
    """For odd k the shift's MI is at most (k − 1)·log 2 < (k − 1)·log(k + 1). For even k its
    determinant (1 − α)^k − α^k → 0 as α → 1/2 within eq. 14's constraints, so its MI exceeds
    eq. 20's "upper boundary": the paper's optimum does not hold there (k = 2, α = 0.45)."""
    for k in (3, 5):
        for alpha in np.linspace(0.0, 0.5, 11):
            mixing = np.eye(k) + shift_q_matrix(k, alpha)
            assert -np.linalg.slogdet(mixing)[1] < optimal_q_mutual_information_bound(k)
    mixing = np.eye(2) + shift_q_matrix(2, 0.45)
    assert -np.linalg.slogdet(mixing)[1] > optimal_q_mutual_information_bound(2)


# ----------------------------------------------------------------------------------------------
# The layers' formulas.


@pytest.mark.parametrize("q", ["shift", "optimal"])
@pytest.mark.parametrize("shape", [(6, 5), (6, 3, 4, 2)], ids=["k_by_d", "nhwc"])
def test_linear_transform_is_the_explicit_matrix_product(q, shape):
    x = _representations(shape)
    expected = _matrix_applied(_explicit_q(q, shape[0]), x)
    np.testing.assert_allclose(_apply(_linear(q), x), expected, rtol=1e-5, atol=1e-6)


def test_linear_transform_keeps_bfloat16_and_rejects_integers():
    x = _representations((4, 3))
    y = _apply(_linear("shift"), x.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(y.astype(np.float32), _apply(_linear("shift"), x), atol=0.05)
    with pytest.raises(AssertionError):
        _apply(_linear("shift"), np.arange(4, dtype=np.int32))
    with pytest.raises(ValueError, match="q='mean'"):
        LinearTransformNoise(q="mean")


def test_gaussian_noise_is_x_plus_sigma_standard_normal():
    layer = LatentGaussianNoise(sigma=0.5)
    x = _representations((64, 16, 16, 4))
    y, epsilon = _apply_and_draw(layer, x, "epsilon")
    np.testing.assert_allclose(y, x + 0.5 * epsilon, rtol=1e-6, atol=1e-6)
    # ε ~ N(0, 1): 65536 draws put the mean within 0.016 (4 s.e.) and the std within 1%.
    assert abs(epsilon.mean()) < 0.016
    assert abs(epsilon.std() - 1.0) < 0.01
    assert abs(np.mean(np.abs(epsilon) < 1.0) - 0.6827) < 0.01
    # Independent rows: no two samples share their noise.
    assert abs(np.corrcoef(epsilon[0].ravel(), epsilon[1].ravel())[0, 1]) < 0.1


def test_gaussian_noise_is_keyed_by_each_rows_position():
    """A row's noise is a function of (key, its position): reordering the batch with its
    positions reorders the output, a sub-batch gets the same rows, and without positions a row's
    index stands in."""
    layer = LatentGaussianNoise(sigma=1.0)
    x = _representations((6, 4))
    positions = np.array([11, 3, 40, 7, 0, 25], np.int32)
    y = _apply(layer, x, positions=positions)
    order = np.array([4, 2, 0, 5, 1, 3])
    np.testing.assert_array_equal(_apply(layer, x[order], positions=positions[order]), y[order])
    np.testing.assert_array_equal(_apply(layer, x[2:4], positions=positions[2:4]), y[2:4])
    np.testing.assert_array_equal(_apply(layer, x), _apply(layer, x, positions=np.arange(6)))
    assert not np.array_equal(_apply(layer, x, key=jax.random.key(8)), _apply(layer, x))


def test_salt_and_pepper_follows_eq_18_with_per_sample_extremes():
    alpha = 0.2
    # Samples of very different scales: a batch-wide max or min would be wrong for most rows.
    scales = np.geomspace(0.01, 100.0, 16).astype(np.float32)[:, None, None, None]
    x = _representations((16, 16, 16, 4)) * scales
    y, p = _apply_and_draw(SaltPepperNoise(alpha=alpha), x, "p")
    sample_max = x.max(axis=(1, 2, 3), keepdims=True)
    sample_min = x.min(axis=(1, 2, 3), keepdims=True)
    salt, pepper = p < alpha / 2, p > 1 - alpha / 2
    expected = np.where(salt, sample_max, np.where(pepper, sample_min, x))
    np.testing.assert_array_equal(y, expected)
    changed = y != x
    # 16384 elements: each of salt and pepper within 0.01 (> 4 s.e.) of α/2.
    assert abs(changed.mean() - alpha) < 0.01
    assert abs(salt.mean() - alpha / 2) < 0.01 and abs(pepper.mean() - alpha / 2) < 0.01
    is_extreme = (y == sample_max) | (y == sample_min)
    assert np.all(is_extreme[changed])
    np.testing.assert_array_equal(y[~changed], x[~changed])
    # Only a sample's own max (min) drawn as salt (pepper) is replaced without changing.
    unseen = (salt | pepper) & ~changed
    np.testing.assert_array_equal(y[unseen], x[unseen])
    assert np.all(((x == sample_max) | (x == sample_min))[unseen])


def test_salt_and_pepper_rejects_a_probability_of_one():
    with pytest.raises(ValueError, match=r"alpha=1\.0"):
        SaltPepperNoise(alpha=1.0)


# ----------------------------------------------------------------------------------------------
# The evaluation switch.

LAYERS = {
    "gaussian": lambda at_eval: LatentGaussianNoise(sigma=1.0, at_eval=at_eval),
    "shift": lambda at_eval: _linear("shift", at_eval=at_eval),
    "optimal": lambda at_eval: _linear("optimal", at_eval=at_eval),
    "salt_pepper": lambda at_eval: SaltPepperNoise(alpha=0.3, at_eval=at_eval),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_evaluation_is_the_identity_unless_at_eval(name):
    x = _representations((4, 3, 3, 2))
    make = LAYERS[name]
    # Off at evaluation by default: x unchanged, and no 'noise' rng needed.
    np.testing.assert_array_equal(np.asarray(make(False).apply({}, x, False)), x)  # eager
    trained = _apply(make(False), x, train=True)
    assert not np.allclose(trained, x)
    # at_eval=True: evaluation applies exactly what training does.
    np.testing.assert_array_equal(_apply(make(True), x, train=False), trained)


def test_random_layers_ask_for_the_noise_stream():
    with pytest.raises(ValueError, match="'noise' rng stream"):
        LatentGaussianNoise(sigma=1.0).apply({}, np.zeros((2, 3), np.float32), True)


# ----------------------------------------------------------------------------------------------
# jit and pmap on 8 fake devices: global by default, per-device on request.


def _global_batch() -> np.ndarray:
    return _representations((DEVICES * ROWS, 2, 2, 3), seed=1)


def _under_pmap(make_layer, x: np.ndarray) -> np.ndarray:
    """The layer under `jax.pmap` over 8 devices (ROWS rows each), the key replicated."""
    layer = make_layer(ParallelContext(DATA_AXIS, DEVICES, DEVICES))
    per_device = x.reshape(DEVICES, ROWS, *x.shape[1:])
    run = lambda rows, key: layer.apply({}, rows, True, rngs={"noise": key})
    out = jax.pmap(run, axis_name=DATA_AXIS, in_axes=(0, None))(per_device, KEY)
    return np.asarray(out).reshape(x.shape)


def _under_jit(make_layer, x: np.ndarray) -> np.ndarray:
    """The layer under `jax.jit` on the global batch, its context saying 8 devices."""
    return _apply(make_layer(ParallelContext(None, 1, DEVICES)), x)


PARALLEL_LAYERS = {
    "gaussian": lambda parallel, **_: LatentGaussianNoise(sigma=1.0, parallel=parallel),
    "salt_pepper": lambda parallel, **_: SaltPepperNoise(alpha=0.3, parallel=parallel),
    "shift": lambda parallel, **fields: _linear("shift", parallel=parallel, **fields),
    "optimal": lambda parallel, **fields: _linear("optimal", parallel=parallel, **fields),
}


@pytest.mark.multidevice
@pytest.mark.parametrize("name", sorted(PARALLEL_LAYERS))
def test_every_layer_gives_the_single_device_rows_under_jit_and_pmap(name):
    """The shift rolls, and the optimal Q sums, over the global batch; the random layers key
    each row by its global index, so no two devices draw the same noise."""
    make_layer = PARALLEL_LAYERS[name]
    x = _global_batch()
    expected = _apply(make_layer(SINGLE_DEVICE), x)
    under_jit, under_pmap = _under_jit(make_layer, x), _under_pmap(make_layer, x)
    np.testing.assert_allclose(under_jit, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(under_pmap, expected, rtol=1e-6, atol=1e-6)
    if name != "optimal":  # no reduction over rows: the compiled backends agree to the bit
        np.testing.assert_array_equal(under_pmap, under_jit)


@pytest.mark.multidevice
@pytest.mark.parametrize("q", ["shift", "optimal"])
def test_per_device_mixing_stays_within_each_devices_rows_on_both_backends(q):
    make_layer = functools.partial(PARALLEL_LAYERS[q], per_device=True)
    x = _global_batch()
    block_diagonal = np.kron(np.eye(DEVICES), _explicit_q(q, ROWS))
    expected = _matrix_applied(block_diagonal, x)
    np.testing.assert_allclose(_under_jit(make_layer, x), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_under_pmap(make_layer, x), expected, rtol=1e-5, atol=1e-6)
    global_rows = _matrix_applied(_explicit_q(q, DEVICES * ROWS), x)
    assert not np.allclose(expected, global_rows, atol=1e-3)
