"""FID / KID: the distances in float64 against closed forms, the accumulating evaluators, the torch
weights reader, and the Inception-v3 port against pytorch-fid (seeded random weights).

The fixtures under ``tests/fixtures/`` come from ``make_fid_fixtures.py`` (run by hand with torch
and pytorch-fid in a separate environment). Only seeded random weights can be checked here: a real
FID with pytorch-fid's downloaded weights cannot be verified offline.
"""

from __future__ import annotations

import functools
import os
import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noise_research.data.base import BatchSource
from noise_research.metrics import fid
from noise_research.models import inception
from noise_research.models.torch_weights import TorchFileError, load_torch_state_dict
from noise_research.train.loop import to_numpy
from noise_research.train.parallel import SINGLE_DEVICE, make_backend

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
sys.path.insert(0, FIXTURES)
from fid_random_weights import random_state_dict  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Fréchet distance and KID (host, float64).


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    d = 64
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    var1, var2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    got = fid.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_frechet_distance_in_a_rotated_basis_and_of_identical_gaussians():
    """FID is invariant under a common rotation (the closed form still holds) and 0 for identical
    full-covariance Gaussians."""
    rng = np.random.default_rng(1)
    d = 32
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    var1, var2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    sigma1, sigma2 = q @ np.diag(var1) @ q.T, q @ np.diag(var2) @ q.T
    assert fid.frechet_distance(q @ mu1, sigma1, q @ mu2, sigma2) == pytest.approx(
        expected, rel=1e-8
    )
    a = rng.normal(size=(d, d))
    sigma = a @ a.T / d
    assert abs(fid.frechet_distance(mu1, sigma, mu1, sigma)) < 1e-9
    # One dimension: (μ1 − μ2)² + (s1 − s2)².
    assert fid.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


@pytest.mark.filterwarnings("ignore:Matrix is singular")
def test_frechet_distance_of_singular_covariances_stays_finite_and_close():
    """Rank-deficient covariances (fewer samples than dimensions): pytorch-fid's offset path."""
    d = 16
    sigma1 = np.diag(np.r_[np.ones(4), np.zeros(d - 4)])
    sigma2 = np.diag(np.r_[4.0 * np.ones(4), np.zeros(d - 4)])
    got = fid.frechet_distance(np.zeros(d), sigma1, np.zeros(d), sigma2)
    assert np.isfinite(got) and got == pytest.approx(4 * (1 + 4 - 2 * 2), abs=1e-4)


def _direct_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD² with k(a, b) = (a·b/d + 1)³, written out as explicit sums."""
    m, d = x.shape
    k = lambda a, b: (np.dot(a, b) / d + 1.0) ** 3
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return kxx / (m * (m - 1)) + kyy / (m * (m - 1)) - 2 * kxy / m**2


def test_kid_matches_a_direct_computation_and_grows_with_a_shift():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(40, 8))
    fake = rng.normal(size=(30, 8)) + 0.5
    mean, std = fid.kernel_distance(fake, real, num_subsets=4, subset_size=12, seed=3)
    # The same subsets: default_rng(seed), fake's rows then real's, each subset in turn.
    subsets = np.random.default_rng(3)
    values = []
    for _ in range(4):
        x = fake[subsets.choice(30, 12, replace=False)]
        y = real[subsets.choice(40, 12, replace=False)]
        values.append(_direct_mmd2(x, y))
    assert mean == pytest.approx(np.mean(values), rel=1e-10)
    assert std == pytest.approx(np.std(values), rel=1e-8)
    assert mean > 0.05


def test_kid_of_identical_feature_sets_is_near_zero_and_of_shifted_ones_positive():
    """The unbiased estimate is 0 in expectation for one distribution (subsets of one set, or two
    samples of it: within a few standard errors of 0) and clearly positive after a shift."""
    pool = np.random.default_rng(7).normal(size=(400, 8))
    other = np.random.default_rng(8).normal(size=(400, 8))
    shifted, _ = fid.kernel_distance(pool, other + 0.5, num_subsets=50, subset_size=50)
    assert shifted > 0.5
    for features in (pool, other):
        mean, std = fid.kernel_distance(pool, features, num_subsets=50, subset_size=50)
        assert abs(mean) < 4 * std / np.sqrt(50) and abs(mean) < 0.05 * shifted


# ---------------------------------------------------------------------------------------------
# Accumulated statistics and the evaluators.


def _padded_batches(seed: int, num_batches: int, rows: int, dim: int, offset: float = 0.0):
    """Batches of features with 1–3 padding rows each (mask 0, filled with garbage)."""
    rng = np.random.default_rng(seed)
    batches = []
    for b in range(num_batches):
        x = (rng.normal(size=(rows, dim)) * rng.uniform(0.5, 2.0, dim) + offset).astype(np.float32)
        mask = np.ones(rows, np.float32)
        mask[rows - 1 - (b % 3) :] = 0.0
        x[mask == 0] = 1e6  # padding must not count
        batches.append((x, mask))
    return batches


def _numpy_statistics(batches):
    rows = np.concatenate([x[m > 0] for x, m in batches]).astype(np.float64)
    return rows.mean(0), np.cov(rows, rowvar=False), rows.shape[0]


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_accumulated_statistics_equal_numpy_over_padded_batches(offset):
    """Float32 accumulation, even of features with a mean far from 0 (where a raw sum of outer
    products minus n·μμᵀ loses every digit), gives numpy's float64 mean and covariance."""
    batches = _padded_batches(0, num_batches=5, rows=16, dim=6, offset=offset)
    update = jax.jit(functools.partial(fid.update_feature_statistics, parallel=SINGLE_DEVICE))
    stats = fid.init_feature_statistics(6)
    for x, mask in batches:
        stats = update(stats, x, mask)
    mean, cov, count = fid.finalize_feature_statistics(jax.device_get(stats))
    want_mean, want_cov, want_count = _numpy_statistics(batches)
    assert count == want_count
    np.testing.assert_allclose(mean, want_mean, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(cov, want_cov, rtol=1e-4, atol=1e-4 * np.abs(want_cov).max())


def _identity_features(state, images, network):
    return images.reshape(images.shape[0], -1) * network["scale"]


def _shifted_fake(state, batch):
    return batch["image"] + state["shift"]


class _ListSource(BatchSource):
    def __init__(self, batches):
        self.batches = batches

    def batch(self, index):
        return self.batches[index]


def _evaluator_batches(num_batches=4, rows=8, dim=3):
    return [
        {"image": x.reshape(rows, 1, dim, 1), "mask": mask}
        for x, mask in _padded_batches(5, num_batches, rows, dim)
    ]


@pytest.mark.multidevice
@pytest.mark.parametrize("backend_name", ["jit", "pmap"])
def test_domain_fid_evaluator_matches_numpy_on_any_backend(backend_name):
    """The evaluator's update under the loop's backends (8 devices; pmap: cross-replica sums and
    gathers) gives the Fréchet and kernel distances of numpy's statistics of the unmasked rows."""
    batches = _evaluator_batches()
    evaluator = fid.domain_fid_evaluator(
        _identity_features,
        fake_fn=_shifted_fake,
        source=lambda index, count: _ListSource(batches),
        num_batches=len(batches),
        feature_dim=3,
        network={"scale": np.float32(2.0)},
        kid_capacity=64,
        kid_subsets=5,
        kid_subset_size=10,
    )
    backend = make_backend(backend_name)
    state = backend.put_state({"shift": np.float32(0.3)})
    update = backend.compile_accumulate(evaluator.update)
    accumulator = backend.put_state(evaluator.init())
    source = evaluator.source(0, 1)
    for i in range(evaluator.num_batches):
        accumulator = update(state, accumulator, backend.put_batch(source.batch(i)))
    result = evaluator.finalize(to_numpy(backend.host_state(accumulator)))

    real = np.concatenate([b["image"].reshape(8, 3)[b["mask"] > 0] for b in batches]) * 2.0
    fake = real + 0.6
    real64, fake64 = real.astype(np.float64), fake.astype(np.float64)
    assert set(result) == {
        "domain_fid",
        "domain_fid_num_real",
        "domain_fid_num_fake",
        "domain_kid_mean",
        "domain_kid_std",
    }
    assert result["domain_fid_num_real"] == result["domain_fid_num_fake"] == real.shape[0]
    assert result["domain_fid"] == pytest.approx(fid.domain_fid(real64, fake64), rel=1e-4)
    assert result["domain_fid"] == pytest.approx(3 * 0.6**2, rel=1e-4)  # a pure shift
    kid = fid.kernel_distance(fake64, real64, num_subsets=5, subset_size=10)
    assert (result["domain_kid_mean"], result["domain_kid_std"]) == pytest.approx(kid, rel=1e-4)


def test_only_inception_features_may_be_called_fid():
    with pytest.raises(ValueError, match="fid_evaluator"):
        fid.feature_distance_evaluator(
            name="fid",
            features_fn=_identity_features,
            fake_fn=_shifted_fake,
            source=lambda index, count: _ListSource([]),
            num_batches=1,
            feature_dim=3,
        )


# ---------------------------------------------------------------------------------------------
# The torch weights reader.


@pytest.mark.parametrize("filename", ["torch_legacy_tiny.pth", "torch_zip_tiny.pth"])
def test_torch_state_dict_reader_gives_torchs_values(filename):
    """Files written by ``torch.save`` (legacy, as pytorch-fid's weights, and zip): dtypes, shapes,
    strided views and offsets into shared storages as torch saved them."""
    state_dict = load_torch_state_dict(os.path.join(FIXTURES, filename))
    expected = np.load(os.path.join(FIXTURES, "torch_tiny_expected.npz"))
    assert set(state_dict) == {name.replace("__", ".") for name in expected.files}
    for name, value in state_dict.items():
        want = expected[name.replace(".", "__")]
        assert value.dtype == want.dtype and value.shape == want.shape, name
        np.testing.assert_array_equal(value, want)
    np.testing.assert_array_equal(state_dict["transposed"], np.arange(12.0).reshape(3, 4).T)
    np.testing.assert_array_equal(state_dict["row"], [4.0, 5.0, 6.0, 7.0])


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_torch_reader_refuses_code_and_damaged_files(tmp_path):
    with open(os.path.join(FIXTURES, "torch_legacy_tiny.pth"), "rb") as file:
        legacy = file.read()
    header = b"".join(
        pickle.dumps(value, protocol=2) for value in (0x1950A86A20F9469CFC6C, 1001, {})
    )
    evil = tmp_path / "evil.pth"
    evil.write_bytes(header + pickle.dumps(_Boom(), protocol=2))
    with pytest.raises(TorchFileError, match=r"refusing.*system|system.*refusing"):
        load_torch_state_dict(evil)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(legacy[:-10])
    with pytest.raises(TorchFileError, match="truncated"):
        load_torch_state_dict(truncated)
    with pytest.raises(FileNotFoundError):
        load_torch_state_dict(tmp_path / "absent.pth")


def test_a_missing_inception_file_names_the_path_the_key_and_where_it_lives(tmp_path):
    path = tmp_path / "pt_inception.pth"
    with pytest.raises(FileNotFoundError) as error:
        inception.load_fid_inception_variables(path, config_key="eval.fid.inception_weights")
    message = str(error.value)
    assert str(path) in message and "config.eval.fid.inception_weights" in message
    assert "~/.cache/torch/hub/checkpoints" in message and inception.FID_WEIGHTS_FILENAME in message


# ---------------------------------------------------------------------------------------------
# The Inception-v3 port.


@pytest.fixture(scope="module")
def pytorch_fid_fixture():
    data = np.load(os.path.join(FIXTURES, "fid_inception_random.npz"))
    shapes = {
        str(name): tuple(int(d) for d in str(shape).split(",")) if str(shape) else ()
        for name, shape in zip(data["state_dict_names"], data["state_dict_shapes"], strict=True)
    }
    return data, shapes


@pytest.fixture(scope="module")
def random_variables(pytorch_fid_fixture):
    """The port's variables with the fixture script's seeded random weights."""
    _, shapes = pytorch_fid_fixture
    return inception.variables_from_state_dict(random_state_dict(shapes))


def test_the_name_map_covers_pytorch_fids_state_dict(pytorch_fid_fixture):
    """Every entry of pytorch-fid's state_dict maps to a Flax variable of the same shape, except
    the classifier and BatchNorm's counters, which the features do not use."""
    _, shapes = pytorch_fid_fixture
    ours = inception.torch_state_dict_shapes()
    assert {name: shapes[name] for name in ours} == ours
    unused = set(shapes) - set(ours)
    assert unused and all(
        name.startswith("fc.") or name.endswith("num_batches_tracked") for name in unused
    )
    assert all(inception.flax_path(name) is None for name in unused)
    state_dict = random_state_dict(shapes)
    state_dict.pop("Mixed_6e.branch_pool.bn.running_var")
    with pytest.raises(ValueError, match="missing"):
        inception.variables_from_state_dict(state_dict)


def test_inception_port_matches_pytorch_fid_with_random_weights(
    pytorch_fid_fixture, random_variables
):
    """pytorch-fid's InceptionV3([3]) and the port, same seeded random weights, same two uint8
    images (37×331: the resize both enlarges and shrinks): the 2048-d features agree to a relative
    L2 error < 1e-5 (measured 1.3e-6, float32 on both sides) and an absolute error < 1e-4·max|f|.
    The two images' features differ by ~1.7e-2 relative: a wrong block is far outside tolerance."""
    data, _ = pytorch_fid_fixture
    features = np.asarray(
        jax.jit(inception.fid_inception_features)(random_variables, data["images"])
    )
    want = data["features"]
    assert features.shape == (2, inception.FID_FEATURE_DIM)
    assert np.linalg.norm(features - want) / np.linalg.norm(want) < 1e-5
    np.testing.assert_allclose(features, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_fid_evaluator_accumulates_inception_features_of_both_sets(
    pytorch_fid_fixture, random_variables
):
    """fid_evaluator's update runs the Inception on the real rows and on fake_fn's (here the rows
    reversed), the padding row excluded: each set's mean is pytorch-fid's feature of its one real
    row."""
    data, _ = pytorch_fid_fixture
    batch = {"image": data["images"], "mask": np.array([1, 0], np.int32)}
    evaluator = fid.fid_evaluator(
        random_variables,
        fake_fn=lambda state, batch: batch["image"][::-1],
        source=lambda index, count: _ListSource([batch]),
        num_batches=1,
    )
    update = jax.jit(functools.partial(evaluator.update, parallel=SINGLE_DEVICE))
    accumulator = jax.device_get(update({}, evaluator.init(), batch))
    want = data["features"]
    for name, row in (("real", 0), ("fake", 1)):
        assert float(accumulator[name]["count"]) == 1
        np.testing.assert_allclose(
            accumulator[name]["mean"], want[row], rtol=0, atol=1e-4 * np.abs(want).max()
        )


def _torch_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """torch's bilinear interpolation (align_corners=False, no antialias), pixel by pixel."""
    in_h, in_w = image.shape[:2]

    def source(dst: int, in_size: int, out_size: int) -> tuple[int, int, float]:
        src = max((dst + 0.5) * in_size / out_size - 0.5, 0.0)
        low = int(src)
        return low, min(low + 1, in_size - 1), src - low

    out = np.zeros((out_h, out_w, image.shape[2]))
    for i in range(out_h):
        y0, y1, ly = source(i, in_h, out_h)
        for j in range(out_w):
            x0, x1, lx = source(j, in_w, out_w)
            out[i, j] = (1 - ly) * ((1 - lx) * image[y0, x0] + lx * image[y0, x1]) + ly * (
                (1 - lx) * image[y1, x0] + lx * image[y1, x1]
            )
    return out


def test_resize_is_torchs_bilinear_without_antialiasing():
    rng = np.random.default_rng(4)
    image = rng.uniform(0, 255, (13, 40, 2))
    got = np.asarray(inception.resize_bilinear(jnp.asarray(image[None]), (29, 17)))[0]
    want = _torch_bilinear(image, 29, 17)  # taller (upsampled), narrower (downsampled)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
    antialiased = np.asarray(jax.image.resize(jnp.asarray(image), (29, 17, 2), "bilinear"))
    assert np.abs(antialiased - want).max() > 1.0  # what jax.image.resize would have given


def test_inspect_registers_the_fid_inception():
    from noise_research.registry import get_block

    module, example, rngs = get_block("fid_inception_v3")(None)
    assert isinstance(module, inception.FIDInceptionV3) and rngs == ()
    out = jax.eval_shape(lambda x: module.init_with_output(jax.random.key(0), x)[0], example)
    assert out.shape == (example.shape[0], inception.FID_FEATURE_DIM)
