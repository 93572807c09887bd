"""Condition numbers (eq. 19, Table 2) and Jacobian rank per layer (Lemmas 1–2) against closed forms
and direct numpy computations: linear maps, known low-rank maps, fixed noise, a 2-layer network."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noise_research.layers import EuclideanNoiseInjection
from noise_research.metrics.gan_geometry import (
    condition_metrics,
    condition_number_evaluator,
    condition_numbers,
    intermediate_features,
    jacobian_spectrum,
    layer_spectra,
    pair_condition_numbers,
    sample_pairs,
    summarize_condition_numbers,
)
from noise_research.train.parallel import SINGLE_DEVICE, make_backend

DIAGONAL = np.array([1.0, 10.0, 3.0, 0.5], np.float32)  # A = diag(a): κ(A) = 20


def _linear(a: np.ndarray):
    matrix = jnp.asarray(a)
    return lambda z, noise: z @ matrix.T


def _numpy_conditions(a: np.ndarray, z, delta, noise=None) -> np.ndarray:
    """(‖AΔ‖/‖Az + n‖)/(‖Δ‖/‖z‖) in float64, the noise n the same in both outputs."""
    a, z, delta = (np.asarray(x, np.float64) for x in (a, z, delta))
    images = z @ a.T + (0.0 if noise is None else np.asarray(noise, np.float64))
    change = (z + delta) @ a.T - z @ a.T
    return (np.linalg.norm(change, axis=1) / np.linalg.norm(images, axis=1)) / (
        np.linalg.norm(delta, axis=1) / np.linalg.norm(z, axis=1)
    )


# ------------------------------------------------------------------ condition numbers


def test_single_pair_of_a_linear_map_has_its_analytic_condition_number():
    a = np.diag(DIAGONAL)
    # z along e1 (gain 1), Δ along e2 (gain 10): cond = (10·0.01 / 1) / (0.01 / 1) = 10.
    z = jnp.array([[1.0, 0.0, 0.0, 0.0]])
    delta = jnp.array([[0.0, 1e-2, 0.0, 0.0]])
    np.testing.assert_allclose(pair_condition_numbers(_linear(a), z, delta), [10.0], rtol=1e-5)
    # The reverse pair: cond = (1·0.01 / 10) / (0.01 / 1) = 0.1.
    np.testing.assert_allclose(
        pair_condition_numbers(_linear(a), delta * 100, z * 1e-2), [0.1], rtol=1e-5
    )
    rng = np.random.default_rng(0)
    z, delta = rng.normal(size=(5, 4)), 1e-2 * rng.normal(size=(5, 4))
    np.testing.assert_allclose(
        pair_condition_numbers(_linear(a), jnp.asarray(z, jnp.float32), jnp.asarray(delta)),
        _numpy_conditions(a, z, delta),
        rtol=1e-4,
    )


def test_pairs_are_standard_normal_with_perturbation_variance_1e_4():
    z, delta, noise = sample_pairs(jax.random.PRNGKey(0), jnp.arange(4000), 16)
    assert noise is None and z.shape == delta.shape == (4000, 16)
    np.testing.assert_allclose(np.std(z), 1.0, rtol=0.02)
    np.testing.assert_allclose(np.std(delta), 1e-2, rtol=0.02)  # variance 1e-4, std 1e-2
    assert abs(float(np.mean(z))) < 0.01 and abs(float(np.mean(delta))) < 1e-4
    # Independent draws: z and Δz uncorrelated, pairs differ.
    assert abs(np.corrcoef(np.ravel(z), np.ravel(delta))[0, 1]) < 0.02
    _, small, _ = sample_pairs(jax.random.PRNGKey(0), jnp.arange(10), 16, None, 1e-6)
    np.testing.assert_allclose(small, delta[:10] / 10, rtol=1e-5)
    # The noise has a key of its own: independent of z and Δz, the same z and Δz as without it.
    z2, delta2, noise = sample_pairs(
        jax.random.PRNGKey(0), jnp.arange(4000), 16, lambda k: jax.random.normal(k, (16,))
    )
    np.testing.assert_array_equal(z2, z)
    np.testing.assert_array_equal(delta2, delta)
    assert noise.shape == (4000, 16)
    assert abs(np.corrcoef(np.ravel(z), np.ravel(noise))[0, 1]) < 0.02
    assert abs(np.corrcoef(np.ravel(delta), np.ravel(noise))[0, 1]) < 0.02


def test_mc_ttmc_and_max_of_a_linear_map_match_numpy_on_the_same_pairs():
    a = np.diag(DIAGONAL)
    key, num_pairs = jax.random.PRNGKey(3), 3000
    values = condition_numbers(_linear(a), key, num_pairs, 4, chunk_size=512)  # last chunk padded
    z, delta, _ = sample_pairs(key, jnp.arange(num_pairs), 4)
    expected = _numpy_conditions(a, z, delta)
    np.testing.assert_allclose(values, expected, rtol=1e-4)
    summary = summarize_condition_numbers(values)
    top = np.sort(expected)[::-1][:60]  # the default 2 %: 60 of 3000
    assert summary["top_k"] == 60 and summary["num_pairs"] == num_pairs
    np.testing.assert_allclose(summary["mc"], np.mean(expected), rtol=1e-4)
    np.testing.assert_allclose(summary["ttmc"], np.mean(top), rtol=1e-4)
    np.testing.assert_allclose(summary["max"], top[0], rtol=1e-4)
    assert summary["mc"] < summary["ttmc"] <= summary["max"]
    # Every ratio lies in [1/κ, κ], κ = σ_max/σ_min = 20; the worst of 3000 random pairs comes near.
    kappa = DIAGONAL.max() / DIAGONAL.min()
    assert values.min() >= 1 / kappa * (1 - 1e-4) and values.max() <= kappa * (1 + 1e-4)
    assert values.max() > 0.5 * kappa
    metrics = condition_metrics(_linear(a), key, 4, num_pairs=num_pairs)  # 1 chunk of 1024 + pad
    assert metrics == pytest.approx(summary, rel=1e-5)


def test_condition_numbers_are_deterministic_and_chunk_free():
    a = np.diag(DIAGONAL)
    key = jax.random.PRNGKey(1)
    base = condition_numbers(_linear(a), key, 100, 4, chunk_size=100)
    np.testing.assert_array_equal(base, condition_numbers(_linear(a), key, 100, 4, chunk_size=100))
    np.testing.assert_allclose(
        base, condition_numbers(_linear(a), key, 100, 4, chunk_size=7), rtol=1e-6
    )
    other = condition_numbers(_linear(a), jax.random.PRNGKey(2), 100, 4)
    assert not np.allclose(base, other)


def test_top_count_is_a_fraction_or_an_explicit_count():
    values = np.arange(1.0, 101.0)
    summary = summarize_condition_numbers(values)  # 2 % of 100: the top 2
    assert summary == {"mc": 50.5, "ttmc": 99.5, "max": 100.0, "top_k": 2.0, "num_pairs": 100.0}
    assert summarize_condition_numbers(values, top_k=10)["ttmc"] == 95.5
    assert summarize_condition_numbers(values, top_fraction=0.2)["ttmc"] == 90.5
    assert summarize_condition_numbers(values, top_fraction=1e-6)["ttmc"] == 100.0  # at least 1


NOISE_SCALE = 0.5


def _noisy_linear(a: np.ndarray):
    """g(z, n) = Az + n['pixel'] + mean(n['map']): noise a pytree of two (B, ...) leaves."""
    matrix = jnp.asarray(a)
    return lambda z, n: z @ matrix.T + n["pixel"] + jnp.mean(n["map"], axis=(1, 2, 3))[:, None]


def _sample_noise(key):
    pixel_key, map_key = jax.random.split(key)
    return {
        "pixel": NOISE_SCALE * jax.random.normal(pixel_key, (4,)),
        "map": jax.random.normal(map_key, (2, 2, 1)),
    }


def test_injected_noise_is_held_fixed_within_a_pair():
    a = np.diag(DIAGONAL)
    key, num_pairs = jax.random.PRNGKey(4), 500
    values = condition_numbers(
        _noisy_linear(a), key, num_pairs, 4, sample_noise=_sample_noise, chunk_size=128
    )
    z, delta, noise = sample_pairs(key, jnp.arange(num_pairs), 4, _sample_noise)
    assert noise["pixel"].shape == (num_pairs, 4) and noise["map"].shape == (num_pairs, 2, 2, 1)
    offset = noise["pixel"] + np.mean(noise["map"], axis=(1, 2, 3))[:, None]
    # With the noise fixed, G(z + Δz) − G(z) = AΔz: the linear map's ratio over ‖Az + n‖.
    # (float32: relative error ≈ 1e-5/cond, see the module docstring.)
    np.testing.assert_allclose(values, _numpy_conditions(a, z, delta, offset), rtol=1e-3)
    # Resampling the noise for G(z + Δz) would give ratios ~25× larger: what the test guards.
    _, _, other = sample_pairs(jax.random.PRNGKey(5), jnp.arange(num_pairs), 4, _sample_noise)
    calls = []

    def resampling(z_, n):  # G(z) with the pair's noise, G(z + Δz) with another draw
        calls.append(z_)
        return _noisy_linear(a)(z_, n if len(calls) == 1 else other)

    resampled = pair_condition_numbers(resampling, z, delta, noise)
    assert len(calls) == 2
    assert np.median(resampled) > 10 * np.median(values)


@pytest.mark.parametrize("backend_name", ["jit", "pmap"])
def test_evaluator_gives_condition_metrics_under_both_backends(backend_name):
    a = np.diag(DIAGONAL)
    seed, num_pairs, latent = 7, 250, 4
    expected = condition_metrics(
        _noisy_linear(a),
        jax.random.PRNGKey(seed),
        latent,
        num_pairs=num_pairs,
        sample_noise=_sample_noise,
    )
    evaluator = condition_number_evaluator(
        lambda state, z, n: _noisy_linear(state["A"])(z, n),
        latent,
        seed=seed,
        num_pairs=num_pairs,
        batch_size=64,  # 4 batches, the last one 6 rows of padding
        sample_noise=_sample_noise,
    )
    backend = make_backend(backend_name, jax.devices()[:2])
    accumulate = backend.compile_accumulate(evaluator.update)
    state = backend.put_state({"A": a})
    source = evaluator.source(0, 1)
    accumulator = backend.put_state(evaluator.init())
    assert evaluator.num_batches == 4
    for i in range(evaluator.num_batches):
        accumulator = accumulate(state, accumulator, backend.put_batch(source.batch(i)))
    result = evaluator.finalize(jax.tree.map(np.asarray, backend.host_state(accumulator)))
    assert result.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(result[name], expected[name], rtol=1e-5, err_msg=name)


def test_evaluator_ignores_masked_rows_whatever_their_position():
    a = np.diag(DIAGONAL)
    evaluator = condition_number_evaluator(
        lambda state, z, n: _linear(state)(z, n), 4, seed=0, num_pairs=3, batch_size=3
    )
    batch = {"position": jnp.array([0, 1, 1]), "mask": jnp.array([1.0, 1.0, 0.0])}
    accumulator = evaluator.update(a, evaluator.init(), batch, SINGLE_DEVICE)
    batch = {"position": jnp.array([2, 0, 5]), "mask": jnp.array([1.0, 0.0, 0.0])}
    accumulator = evaluator.update(a, accumulator, batch, SINGLE_DEVICE)
    expected = condition_numbers(_linear(a), jax.random.PRNGKey(0), 3, 4)
    np.testing.assert_allclose(accumulator["values"], expected, rtol=1e-4)  # float32
    assert evaluator.finalize(accumulator)["num_pairs"] == 3
    with pytest.raises(ValueError, match="saw 2 of 3 pairs"):
        evaluator.finalize({**accumulator, "count": np.float32(2)})


# ------------------------------------------------------------------ Jacobian rank and spectrum


def _low_rank(m: int, n: int, r: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(m, r)) @ rng.normal(size=(r, n))).astype(np.float32)


def test_rank_and_spectrum_of_a_low_rank_linear_map():
    a = _low_rank(30, 8, 3)
    z = jnp.asarray(np.random.default_rng(1).normal(size=8), jnp.float32)
    spectrum = jacobian_spectrum(lambda x: jnp.asarray(a) @ x, z)
    assert spectrum.rank == 3 and spectrum.shape == (30, 8)
    expected = np.linalg.svd(a.astype(np.float64), compute_uv=False)
    assert spectrum.singular_values.dtype == np.float64 and spectrum.singular_values.shape == (8,)
    np.testing.assert_allclose(spectrum.singular_values[:3], expected[:3], rtol=1e-5)
    assert np.all(spectrum.singular_values[3:] <= spectrum.tolerance)
    assert spectrum.tolerance == pytest.approx(expected[0] * 30 * np.finfo(np.float32).eps, 1e-5)
    assert spectrum.as_dict()["rank"] == 3


@pytest.mark.parametrize("mode", ["auto", "fwd", "rev"])
def test_rank_of_a_nonlinear_map_of_known_rank(mode):
    # tanh(UVᵀz): J = diag(1 − tanh²)·UVᵀ, the diagonal invertible, so rank J = rank UVᵀ = 4.
    a = jnp.asarray(_low_rank(20, 10, 4, seed=2) / 4)
    z = jnp.asarray(np.random.default_rng(3).normal(size=10), jnp.float32)
    spectrum = jacobian_spectrum(lambda x: jnp.tanh(a @ x), z, mode=mode)
    assert spectrum.rank == 4
    jac = np.diag(1 - np.tanh(np.asarray(a @ z, np.float64)) ** 2) @ np.asarray(a, np.float64)
    expected = np.linalg.svd(jac, compute_uv=False)
    np.testing.assert_allclose(spectrum.singular_values[:4], expected[:4], rtol=1e-4)
    # A wide map (n > m, reverse mode under 'auto') of full row rank.
    wide = jnp.asarray(np.random.default_rng(4).normal(size=(3, 12)), jnp.float32)
    wide_spectrum = jacobian_spectrum(lambda x: jnp.tanh(wide @ x), jnp.ones(12) * 0.1, mode=mode)
    assert wide_spectrum.rank == 3 and wide_spectrum.shape == (3, 12)


def test_default_tolerance_is_numpys_and_rtol_is_relative():
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    r, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    sigma = 5 * np.array([1.0, 1e-1, 1e-2, 1e-5, 1e-10, 0.0])
    a = jnp.asarray(q @ np.diag(sigma) @ r.T, jnp.float32)
    spectrum = jacobian_spectrum(lambda x: a @ x, jnp.ones(6))
    # max(m, n)·eps·σ_max = 6·1.19e-7·5 ≈ 4e-6: 5e-5 is kept, 5e-10 is float32 round-off.
    assert spectrum.rank == 4 == np.linalg.matrix_rank(np.asarray(a))
    assert spectrum.tolerance == pytest.approx(6 * np.finfo(np.float32).eps * 5.0, rel=1e-4)
    # rtol = 0.02 of σ_max = 5: the threshold is 0.1, so only 5 and 0.5 count.
    relative = jacobian_spectrum(lambda x: a @ x, jnp.ones(6), rtol=2e-2)
    assert relative.rank == 2 and relative.tolerance == pytest.approx(0.1, rel=1e-4)
    np.testing.assert_allclose(relative.singular_values, spectrum.singular_values)


def test_rank_wrt_z_is_at_most_dim_z_and_wrt_z_and_noise_can_exceed_it():
    rng = np.random.default_rng(6)
    w = jnp.asarray(rng.normal(size=(20, 3)), jnp.float32)
    c = jnp.asarray(rng.normal(size=(20, 10)), jnp.float32)
    generator = lambda z, n: jnp.tanh(w @ z) + c @ n
    z = jnp.asarray(rng.normal(size=3), jnp.float32)
    noise = jnp.asarray(rng.normal(size=10), jnp.float32)
    assert jacobian_spectrum(lambda x: generator(x, noise), z).rank == 3
    joint = jacobian_spectrum(lambda x: generator(*x), (z, noise))
    assert joint.shape == (20, 13) and joint.rank == 13


def _two_layer(seed: int = 7):
    """h1 = tanh(W1 z) + n1 (W1: 8×5, rank 5), h2 = tanh(W2 h1) + n2 (W2: 12×8, rank 2)."""
    rng = np.random.default_rng(seed)
    w1 = jnp.asarray(rng.normal(size=(8, 5)) / 2, jnp.float32)
    w2 = jnp.asarray(_low_rank(12, 8, 2, seed=seed) / 4)

    def features(z, noise):
        h1 = jnp.tanh(w1 @ z) + (0.0 if noise is None else noise["n1"])
        h2 = jnp.tanh(w2 @ h1) + (0.0 if noise is None else noise["n2"])
        return {"h1": h1, "h2": h2}

    return features, w1, w2


def test_layer_ranks_do_not_grow_with_depth_wrt_z_and_grow_with_noise():
    features, w1, w2 = _two_layer()
    rng = np.random.default_rng(8)
    z = jnp.asarray(rng.normal(size=5), jnp.float32)
    noise = {
        "n1": jnp.asarray(rng.normal(size=8), jnp.float32),
        "n2": jnp.asarray(rng.normal(size=12), jnp.float32),
    }
    spectra = layer_spectra(features, z, noise)
    assert list(spectra) == ["h1", "h2"]
    assert {k: v["z"].rank for k, v in spectra.items()} == {"h1": 5, "h2": 2}
    assert spectra["h1"]["z"].shape == (8, 5) and spectra["h2"]["z_noise"].shape == (12, 25)
    # W.r.t. (z, n1, n2): h1 depends on z and n1 (rank 8), h2 on everything, + I on n2 (rank 12).
    assert {k: v["z_noise"].rank for k, v in spectra.items()} == {"h1": 8, "h2": 12}
    # Each layer's rows are its own: h2's spectrum w.r.t. z is that of its analytic Jacobian.
    h1 = np.asarray(features(z, noise)["h1"], np.float64)
    d1 = np.diag(1 - np.tanh(np.asarray(w1, np.float64) @ np.asarray(z, np.float64)) ** 2)
    d2 = np.diag(1 - np.tanh(np.asarray(w2, np.float64) @ h1) ** 2)
    jac = d2 @ np.asarray(w2, np.float64) @ d1 @ np.asarray(w1, np.float64)
    np.testing.assert_allclose(
        spectra["h2"]["z"].singular_values[:2], np.linalg.svd(jac, compute_uv=False)[:2], rtol=1e-4
    )
    without_noise = layer_spectra(features, z)
    assert [v["z"].rank for v in without_noise.values()] == [5, 2]
    assert all(v.keys() == {"z"} for v in without_noise.values())


class _TinyGenerator(nn.Module):
    """z (B, 4) → Dense → (4, 4, 2) → ReLU → ENI → 3×3 conv → tanh: (B, 4, 4, 3)."""

    @nn.compact
    def __call__(self, z, noise):
        x = nn.Dense(32)(z).reshape(z.shape[0], 4, 4, 2)
        x = EuclideanNoiseInjection(strength_init=1.0)(nn.relu(x) + 0.5, noise=noise)
        return jnp.tanh(nn.Conv(3, (3, 3))(x))


def test_layer_spectra_of_a_flax_generator_from_its_captured_intermediates():
    model = _TinyGenerator()
    z = jax.random.normal(jax.random.PRNGKey(0), (4,))
    noise = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 1))
    variables = model.init(jax.random.PRNGKey(2), z[None], noise[None])

    def features(z, noise):
        _, state = model.apply(
            variables, z[None], noise[None], capture_intermediates=True, mutable=["intermediates"]
        )
        return intermediate_features(state["intermediates"])

    spectra = layer_spectra(features, z, noise)
    assert list(spectra) == ["Dense_0", "EuclideanNoiseInjection_0", "Conv_0", "output"]
    assert spectra["Conv_0"]["z"].shape == (48, 4)
    assert all(v["z"].rank <= 4 for v in spectra.values())  # at most dim z, every layer
    assert spectra["Dense_0"]["z"].rank == 4
    # The 16 noise pixels enter after the ReLU: the rank w.r.t. (z, noise) exceeds dim z.
    assert spectra["EuclideanNoiseInjection_0"]["z_noise"].rank > 4
    assert spectra["output"]["z_noise"].rank > 4


def test_intermediate_features_flattens_flax_collections():
    tree = {
        "block": {"__call__": (jnp.zeros(2),), "inner": {"__call__": (jnp.ones(1), jnp.ones(3))}},
        "sown": (jnp.zeros(4),),
        "__call__": (jnp.zeros(5),),
    }
    flat = intermediate_features(tree)
    assert list(flat) == ["block", "block/inner/0", "block/inner/1", "sown", "output"]
    assert flat["block/inner/1"].shape == (3,)


def test_dcgan_generator_geometry_with_its_sown_features_and_fixed_noise():
    """The calls a GAN report makes, on a tiny DCGAN (BatchNorm in evaluation mode, RNI)."""
    from noise_research.models.dcgan import DCGANGenerator

    latent = 3
    model = DCGANGenerator(
        resolution=32, width=2, injection="riemannian", rni_variant="paper", inject_at=(4, 8)
    )
    shapes = model.noise_shapes(1)
    z = jax.random.normal(jax.random.PRNGKey(0), (latent,))
    noise = {
        side: jax.random.normal(jax.random.PRNGKey(side), shape[1:])
        for side, shape in shapes.items()
    }
    variables = jax.jit(model.init)(
        jax.random.PRNGKey(1), z[None], noise={s: n[None] for s, n in noise.items()}
    )

    def features(z, noise):
        images, state = model.apply(
            variables,
            z[None],
            train=False,
            noise={s: n[None] for s, n in noise.items()},
            mutable=["intermediates"],
        )
        return {**intermediate_features(state["intermediates"]), "images": images}

    spectra = layer_spectra(features, z, noise)
    assert list(spectra) == ["features_4", "features_8", "features_16", "images"]
    ranks_z = [v["z"].rank for v in spectra.values()]
    assert all(rank <= latent for rank in ranks_z) and ranks_z == sorted(ranks_z, reverse=True)
    # The 16 + 64 noise pixels at sides 4 and 8 raise the rank w.r.t. (z, noise) past dim z.
    assert spectra["images"]["z_noise"].shape == (32 * 32 * 3, latent + 16 + 64)
    assert spectra["features_4"]["z_noise"].rank > latent
    assert spectra["images"]["z_noise"].rank > spectra["features_4"]["z_noise"].rank

    def sample_noise(key):
        keys = jax.random.split(key, len(shapes))
        pairs = zip(keys, shapes.items(), strict=True)
        return {side: jax.random.normal(k, shape[1:]) for k, (side, shape) in pairs}

    metrics = condition_metrics(
        lambda z, n: model.apply(variables, z, train=False, noise=n),
        jax.random.PRNGKey(2),
        latent,
        num_pairs=64,
        sample_noise=sample_noise,
    )
    assert (
        metrics["top_k"] == 1 and np.isfinite(metrics["mc"]) and 0 < metrics["mc"] <= metrics["max"]
    )
