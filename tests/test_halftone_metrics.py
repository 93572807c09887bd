"""Tests for the halftone metrics (noise_research/metrics/halftone.py)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft
import scipy.ndimage
import skimage.metrics

from noise_research.classical import floyd_steinberg
from noise_research.metrics import (
    DEFAULT_LOW_FREQUENCY_CUTOFF,
    anisotropy,
    dct_low_frequency,
    fraction_binary,
    low_frequency_energy,
    radially_averaged_power_spectrum,
    ssim,
    tone_blur,
    tone_psnr,
)


def _white_noise(rng, white_probability, shape=(16, 64, 64, 1)):
    return np.where(rng.uniform(size=shape) < white_probability, 1.0, -1.0)


def test_tone_blur_is_the_truncated_gaussian_without_padding():
    images = np.random.default_rng(0).uniform(-1, 1, size=(2, 20, 24, 1)).astype(np.float32)
    blurred = tone_blur(jnp.asarray(images))
    chex.assert_shape(blurred, (2, 10, 14, 1))
    # Kernel 11 (radius 5) and sigma 2: scipy's truncate = 5 / 2; 'VALID' keeps the pixels at least
    # 5 from the border, where scipy's boundary mode does not matter.
    expected = np.stack(
        [
            scipy.ndimage.gaussian_filter(image[..., 0], sigma=2.0, truncate=2.5, mode="constant")
            for image in images
        ]
    )[:, 5:-5, 5:-5, None]
    np.testing.assert_allclose(blurred, expected, atol=1e-5)


def test_tone_blur_names_the_smallest_image_it_takes():
    with pytest.raises(ValueError, match=r"H and W must be >= 11"):
        tone_blur(jnp.zeros((1, 10, 32, 1)))


def test_tone_psnr_known_value_and_jit():
    # A constant offset o stays o under the unpadded blur (its weights sum to 1), so the PSNR is
    # 10 log10(2² / o²) exactly; with zero padding the border would pull the offset towards 0.
    gray = jnp.zeros((2, 16, 16, 1))
    offset = np.array([0.1, 0.2], dtype=np.float32)
    halftone = gray + offset[:, None, None, None]
    psnr = jax.jit(tone_psnr)(halftone, gray)
    chex.assert_shape(psnr, (2,))
    np.testing.assert_allclose(psnr, 10 * np.log10(4.0 / offset**2), rtol=1e-4)


def test_tone_psnr_of_identical_images_is_infinite():
    constant = jnp.ones((1, 12, 12, 1))
    assert np.isposinf(tone_psnr(constant, constant)).all()


def test_error_diffusion_reproduces_tone_better_than_thresholding():
    ramp = np.tile(np.linspace(-0.9, 0.9, 48, dtype=np.float32), (48, 1))[None, ..., None]
    thresholded = np.where(ramp > 0, 1.0, -1.0).astype(np.float32)
    psnr_diffused = tone_psnr(jnp.asarray(floyd_steinberg(ramp)), jnp.asarray(ramp))
    psnr_thresholded = tone_psnr(jnp.asarray(thresholded), jnp.asarray(ramp))
    assert psnr_diffused[0] > psnr_thresholded[0] + 5.0


def test_ssim_matches_scikit_image_on_the_unit_range():
    """Wang et al.'s SSIM as scikit-image computes it (11×11 Gaussian window of σ 1.5, population
    covariances, data range 1, borders cropped), after mapping [-1, 1] to [0, 1]."""
    gray = np.random.default_rng(1).uniform(-1, 1, size=(2, 16, 16, 1)).astype(np.float32)
    halftone = floyd_steinberg(gray)
    same = ssim(jnp.asarray(gray), jnp.asarray(gray))
    chex.assert_shape(same, (2,))
    np.testing.assert_allclose(same, 1.0, atol=1e-5)
    expected = [
        skimage.metrics.structural_similarity(
            (h[..., 0] + 1) / 2,
            (g[..., 0] + 1) / 2,
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        for h, g in zip(halftone, gray, strict=True)
    ]
    np.testing.assert_allclose(ssim(jnp.asarray(halftone), jnp.asarray(gray)), expected, rtol=1e-4)
    assert np.all(np.asarray(expected) < 0.9)


def test_fraction_binary_counts_pixels_at_or_above_threshold():
    y = jnp.array([1.0, -0.95, 0.9, 0.5, -0.1, 0.0, -1.0, 0.89]).reshape(2, 2, 2, 1)
    np.testing.assert_allclose(jax.jit(fraction_binary)(y), [0.75, 0.25])
    np.testing.assert_allclose(fraction_binary(y, threshold=1.0), [0.25, 0.25])
    with pytest.raises(ValueError, match="threshold"):
        fraction_binary(y, threshold=0.0)


@pytest.mark.parametrize(("height", "width", "block"), [(10, 10, (2, 2)), (15, 21, (3, 5))])
def test_dct_low_frequency_is_the_orthonormal_dct_block(height, width, block):
    images = np.random.default_rng(2).normal(size=(2, height, width, 3)).astype(np.float32)
    low = jax.jit(functools.partial(dct_low_frequency, fraction=0.2))(jnp.asarray(images))
    expected = scipy.fft.dctn(images, type=2, axes=(1, 2), norm="ortho")
    chex.assert_shape(low, (2, *block, 3))
    np.testing.assert_allclose(low, expected[:, : block[0], : block[1], :], atol=1e-4)


def test_dct_low_frequency_of_constant_image_is_only_dc():
    low = dct_low_frequency(jnp.full((1, 8, 8, 1), 0.5), fraction=0.5)
    expected = np.zeros((1, 4, 4, 1))
    expected[0, 0, 0, 0] = 0.5 * 8  # orthonormal DC = mean · sqrt(H · W)
    np.testing.assert_allclose(low, expected, atol=1e-5)
    with pytest.raises(ValueError, match="fraction"):
        dct_low_frequency(jnp.zeros((1, 8, 8, 1)), fraction=1.5)


@pytest.mark.parametrize("white_probability", [0.5, 0.25])
def test_white_noise_has_flat_raps_at_its_variance(white_probability):
    noise = _white_noise(np.random.default_rng(3), white_probability)
    freqs, raps = radially_averaged_power_spectrum(noise)
    np.testing.assert_allclose(freqs, np.arange(1, 33) / 64)
    variance = 1.0 - (2 * white_probability - 1) ** 2
    assert abs(raps.mean() / variance - 1.0) < 0.03
    assert np.all(np.abs(raps / variance - 1.0) < 0.3)


@pytest.mark.parametrize("cutoff", [0.05, 0.1, 0.25])
def test_white_noise_low_frequency_energy_is_the_area_fraction(cutoff):
    """White noise has the same expected power in every frequency bin, so the share of power
    below the cutoff is the share of the non-DC bins (k, m) / 64 of the 64 × 64 grid that lie
    strictly inside the circle of that radius (about π cutoff²)."""
    noise = _white_noise(np.random.default_rng(4), 0.5)
    rows, columns = np.meshgrid(np.arange(-32, 32), np.arange(-32, 32), indexing="ij")
    squared_radius = rows**2 + columns**2
    inside = np.count_nonzero((squared_radius > 0) & (squared_radius < (64 * cutoff) ** 2))
    area_fraction = inside / (64 * 64 - 1)
    assert abs(low_frequency_energy(noise, cutoff=cutoff) - area_fraction) < 0.15 * area_fraction


def test_default_low_frequency_cutoff_is_below_every_blue_noise_principal_frequency():
    """Ulichney: blue noise of minority-pixel fraction g has its power above the principal
    frequency sqrt(g) cycles/pixel; the default must stay below it for g down to 1 %, so that a
    good halftone of any tone in [0.01, 0.99] shows almost no power under it."""
    noise = _white_noise(np.random.default_rng(4), 0.5)
    assert 0.0 < DEFAULT_LOW_FREQUENCY_CUTOFF <= np.sqrt(0.01)
    assert low_frequency_energy(noise) == low_frequency_energy(
        noise, cutoff=DEFAULT_LOW_FREQUENCY_CUTOFF
    )


@pytest.mark.parametrize("tone", [0.0, -0.5])
def test_floyd_steinberg_is_bluer_than_white_noise(tone):
    gray = np.full((8, 64, 64, 1), tone, dtype=np.float32)
    noise = _white_noise(np.random.default_rng(5), (tone + 1) / 2, shape=gray.shape)
    assert low_frequency_energy(floyd_steinberg(gray)) < 0.1 * low_frequency_energy(noise)


def test_white_noise_anisotropy_is_near_the_reference_level():
    batch = 16
    freqs, anisotropy_db = anisotropy(_white_noise(np.random.default_rng(6), 0.5))
    assert freqs.shape == anisotropy_db.shape == (32,)
    reference_db = 10 * np.log10(1 / batch)
    assert abs(np.median(anisotropy_db) - reference_db) < 2.0


def test_anisotropy_of_a_checkerboard_is_nan_where_there_is_no_power():
    checkerboard = np.where(np.indices((16, 16)).sum(axis=0) % 2 == 0, 1.0, -1.0)
    freqs, anisotropy_db = anisotropy(checkerboard[None, ..., None])
    # All power sits at (0.5, 0.5), i.e. radius 0.707, outside every annulus up to 0.5.
    assert freqs.shape == (8,)
    assert np.all(np.isnan(anisotropy_db))


def test_spectra_reject_bad_input():
    with pytest.raises(ValueError, match="shape"):
        radially_averaged_power_spectrum(np.ones((8, 8)))
    assert np.isnan(low_frequency_energy(np.ones((1, 8, 8, 1))))  # constant: no texture
    with pytest.raises(ValueError, match="cutoff"):
        low_frequency_energy(np.ones((1, 8, 8, 1)), cutoff=0.7)
