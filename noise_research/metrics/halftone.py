"""Halftone metrics: tone fidelity, structure, binarity, DCT low band and blue-noise spectra.

Convention: gray images and halftones are NHWC float arrays in [-1, 1] (halftones in {-1, +1}).

The jnp functions (`tone_blur`, `tone_psnr`, `ssim`, `fraction_binary`, `dct_low_frequency`) are
pure and jit-able: they run inside eval steps and the halftoning losses reuse `tone_blur` and
`dct_low_frequency`. The spectral figures (`radially_averaged_power_spectrum`, `anisotropy`,
`low_frequency_energy`) are host-side numpy, following Ulichney, "Digital Halftoning" (1987).
"""

from __future__ import annotations

import math

import chex
import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

# Peak-to-peak range of data in [-1, 1], the "MAX" of PSNR.
_PEAK_TO_PEAK = 2.0


TONE_BLUR_KERNEL_SIZE = 11
"""Side of the tone blur's kernel; with 'VALID' filtering an image loses 5 pixels on each side."""


def tone_blur(
    images: jax.Array, sigma: float = 2.0, kernel_size: int = TONE_BLUR_KERNEL_SIZE
) -> jax.Array:
    """Gaussian low-pass that models the eye's integration of halftone dots, without padding.

    DESIGN.md (NIB / halftoning): the tone loss is the MSE between the Gaussian-blurred halftone
    (kernel 11, σ = 2) and the gray image; this is that blur, shared by the loss and `tone_psnr`.
    Separable convolution via `dm_pix.gaussian_blur` with 'VALID' filtering, as in the authors'
    code: only pixels whose whole kernel lies inside the image are kept, so the output is
    (H − kernel_size + 1) × (W − kernel_size + 1) and no padding value (zero is mid-gray on
    [−1, 1]) leaks into the border.

    Args:
      images: (B, H, W, C) with H, W ≥ kernel_size.
      sigma: standard deviation of the Gaussian in pixels.
      kernel_size: side of the (odd) square kernel in pixels.

    Returns:
      (B, H − kernel_size + 1, W − kernel_size + 1, C) blurred images.
    """
    chex.assert_rank(images, 4)
    if min(images.shape[1:3]) < kernel_size:
        raise ValueError(
            f"images of shape {images.shape} are smaller than the tone blur's "
            f"{kernel_size}×{kernel_size} kernel; it filters without padding, so H and W must be "
            f">= {kernel_size}."
        )
    return dm_pix.gaussian_blur(images, sigma, kernel_size, padding="VALID")


def psnr(images: jax.Array, references: jax.Array) -> jax.Array:
    """(B,) PSNR in dB of images in [-1, 1] against references: 10 log10(2² / MSE), peak-to-peak 2
    (the PSNR of the same images on 0…255); identical images give +inf. The one PSNR of the
    project: the tone PSNR, the autoencoder's reconstruction, colour hiding and synthesis use it."""
    chex.assert_rank(images, 4)
    chex.assert_equal_shape([images, references])
    mean_squared_error = jnp.mean(jnp.square(images - references), axis=(1, 2, 3))
    return 10.0 * jnp.log10(_PEAK_TO_PEAK**2 / mean_squared_error)


def tone_psnr(halftone: jax.Array, gray: jax.Array) -> jax.Array:
    """Tone PSNR in dB between the blurred halftone and the blurred gray image.

    PSNR = 10 log10(2² / MSE), peak-to-peak 2 for data in [-1, 1]. Both images pass through
    `tone_blur` (DESIGN.md eval: "tone PSNR (blurred halftone vs gray)"): a halftone only
    reproduces tone after low-pass filtering, and blurring the gray as well compares the two at the
    same resolution, exactly as the tone loss does. The blur does not pad, so the MSE covers the
    pixels at least 5 from the border. Identical blurred images (e.g. a constant image that is
    already binary) give +inf.

    Args:
      halftone: (B, H, W, C) in [-1, 1], H and W >= 11.
      gray: (B, H, W, C) in [-1, 1], same shape.

    Returns:
      (B,) PSNR per image in dB.
    """
    chex.assert_rank(halftone, 4)
    chex.assert_equal_shape([halftone, gray])
    return psnr(tone_blur(halftone), tone_blur(gray))


def ssim(halftone: jax.Array, gray: jax.Array) -> jax.Array:
    """Structural similarity (Wang et al. 2004) between halftone and gray, via `dm_pix.ssim`.

    Both are mapped from [-1, 1] to [0, 1] first (max_val 1, dm_pix defaults: 11×11 Gaussian
    window, σ 1.5, 'VALID' filtering, so H and W must be at least 11).

    Args:
      halftone: (B, H, W, C) in [-1, 1].
      gray: (B, H, W, C) in [-1, 1], same shape.

    Returns:
      (B,) mean SSIM per image.
    """
    chex.assert_rank(halftone, 4)
    chex.assert_equal_shape([halftone, gray])
    return dm_pix.ssim((halftone + 1.0) / 2.0, (gray + 1.0) / 2.0, max_val=1.0)


def fraction_binary(y: jax.Array, threshold: float = 0.9) -> jax.Array:
    """Fraction of pixels of a continuous output that are (nearly) binary, |y| ≥ threshold.

    Monitors the quantization loss `mean(||y| - 1|)` of DESIGN.md: it should approach 1 as the
    network learns to output ±1.

    Args:
      y: (B, H, W, C) network output, nominally in [-1, 1].
      threshold: Python float in (0, 1].

    Returns:
      (B,) fraction in [0, 1] per image.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1]; got {threshold!r}.")
    chex.assert_rank(y, 4)
    return jnp.mean(jnp.abs(y) >= threshold, axis=(1, 2, 3))


def _low_frequency_block_side(size: int, fraction: float) -> int:
    """ceil(fraction · size), robust to float noise such as 0.2 · 15 = 3.0000000000000004."""
    return max(1, math.ceil(round(fraction * size, 9)))


BLUE_NOISE_BLOCK_FRACTION = 50 / 256
"""The authors' low-frequency block: 50 of 256 coefficients per side (DESIGN.md)."""


def dct_low_frequency(images: jax.Array, fraction: float = BLUE_NOISE_BLOCK_FRACTION) -> jax.Array:
    """Top-left low-frequency block of the orthonormal 2-D DCT-II over H and W.

    DESIGN.md (NIB / halftoning): the blue-noise loss is an L1 distance on "the low-frequency block
    of an orthonormal 2-D DCT (top-left ~20% per side) between halftone and gray", computed on
    constant-gray images; the authors keep 50 of 256 coefficients per side. The block is
    ceil(fraction · H) × ceil(fraction · W).

    Args:
      images: (B, H, W, C).
      fraction: Python float in (0, 1], the share of each side kept.

    Returns:
      (B, ceil(fraction · H), ceil(fraction · W), C) DCT coefficients.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction!r}.")
    chex.assert_rank(images, 4)
    _, height, width, _ = images.shape
    coefficients = jax.scipy.fft.dctn(images, type=2, axes=(1, 2), norm="ortho")
    block_height = _low_frequency_block_side(height, fraction)
    block_width = _low_frequency_block_side(width, fraction)
    return coefficients[:, :block_height, :block_width, :]


# ---------------------------------------------------------------------------------------------
# Spectral figures (host-side numpy), Ulichney's blue-noise analysis.
# ---------------------------------------------------------------------------------------------

# Default cutoff of `low_frequency_energy`, in cycles/pixel. A fixed value keeps the figure
# comparable across gray levels; 0.1 lies below the principal frequency sqrt(g)/1 of Ulichney's
# blue noise for every tone g in [0.01, 0.99] (g the minority-pixel fraction), so a good halftone
# has almost no power under it.
DEFAULT_LOW_FREQUENCY_CUTOFF = 0.1


def _as_halftone_batch(halftones: np.ndarray) -> np.ndarray:
    """Validates (B, H, W, 1) halftones and returns them as a (B, H, W) float64 array."""
    halftones = np.asarray(halftones, dtype=np.float64)
    if halftones.ndim != 4 or halftones.shape[-1] != 1 or min(halftones.shape[1:3]) < 2:
        raise ValueError(
            f"halftones must have shape (B, H, W, 1) with H, W >= 2; got shape {halftones.shape}."
        )
    return halftones[..., 0]


def _mean_periodogram(halftones: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batch-averaged periodogram |FFT(x - mean x)|² / (H W) and the radial frequency of each bin.

    With this normalisation white noise of variance σ² has an expected periodogram of σ²
    everywhere (Parseval), so spectra are comparable across image sizes.
    """
    images = _as_halftone_batch(halftones)
    _, height, width = images.shape
    centered = images - images.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(centered)) ** 2 / (height * width)
    vertical_freqs = np.fft.fftfreq(height)[:, None]
    horizontal_freqs = np.fft.fftfreq(width)[None, :]
    radial_freqs = np.sqrt(vertical_freqs**2 + horizontal_freqs**2)
    return power.mean(axis=0), radial_freqs


def _annuli(halftones: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Periodogram values grouped in annuli of integer radius k = 1 .. N // 2, N = min(H, W).

    Returns (freqs, power, masks): freqs[k - 1] = k / N cycles/pixel and masks[k - 1] selects the
    bins whose radial frequency rounds to k / N.
    """
    power, radial_freqs = _mean_periodogram(halftones)
    side = min(power.shape)
    radius = np.rint(radial_freqs * side).astype(np.int64)
    radii = np.arange(1, side // 2 + 1)
    return radii / side, power, [radius == k for k in radii]


def radially_averaged_power_spectrum(halftones: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ulichney's radially averaged power spectrum (RAPS) of a batch of halftones.

    The periodogram of each mean-removed halftone, averaged over the batch, then over annuli of
    integer radius k = 1 .. N // 2 (N = min(H, W)); DC (k = 0) is left out as it is zero by
    construction. White noise of variance σ² has a flat RAPS at σ²; blue noise has little power at
    low frequency and a peak near the principal frequency.

    Args:
      halftones: (B, H, W, 1) values in {-1, +1} (any real values work).

    Returns:
      (freqs, raps): (N // 2,) frequencies k / N in cycles/pixel in (0, 0.5], and the mean power
      on each annulus.
    """
    freqs, power, masks = _annuli(halftones)
    return freqs, np.array([power[mask].mean() for mask in masks])


def anisotropy(halftones: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ulichney's anisotropy: variance of the spectrum over each annulus / squared annulus mean, dB.

    Low anisotropy means a radially symmetric spectrum. For K averaged periodograms of white noise
    the expected value is 10 log10(1 / K) dB, the usual reference level. An annulus without power
    (common for periodic halftones, e.g. a checkerboard) has undefined anisotropy: NaN; one with
    uniform power gives -inf.

    Args:
      halftones: (B, H, W, 1) values in {-1, +1}.

    Returns:
      (freqs, anisotropy_db): (N // 2,) frequencies in cycles/pixel and anisotropy in dB.
    """
    freqs, power, masks = _annuli(halftones)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.array([power[mask].var() / power[mask].mean() ** 2 for mask in masks])
        return freqs, 10.0 * np.log10(ratio)


def low_frequency_energy(
    halftones: np.ndarray, cutoff: float = DEFAULT_LOW_FREQUENCY_CUTOFF
) -> float:
    """Share of non-DC power below a radial frequency: the blue-noise figure (lower is bluer).

    Computed on the full 2-D batch-averaged periodogram: sum of the power at radial frequencies
    0 < f < cutoff over the sum at all f > 0. White noise gives the area fraction ≈ π cutoff²
    (0.031 for the default 0.1 cycles/pixel, see `DEFAULT_LOW_FREQUENCY_CUTOFF`).

    Args:
      halftones: (B, H, W, 1) values in {-1, +1}.
      cutoff: radial frequency in cycles/pixel, in (0, 0.5].

    Returns:
      The fraction in [0, 1]; NaN when every halftone is constant (no texture at all — what a
      plain CNN returns for a flat input, the flatness degradation the NIB paper describes).
    """
    if not 0.0 < cutoff <= 0.5:
        raise ValueError(f"cutoff must be in (0, 0.5] cycles/pixel; got {cutoff!r}.")
    power, radial_freqs = _mean_periodogram(halftones)
    non_dc = radial_freqs > 0
    total_power = power[non_dc].sum()
    if total_power <= 0.0:
        return float("nan")
    return float(power[non_dc & (radial_freqs < cutoff)].sum() / total_power)
