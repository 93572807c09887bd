"""Metrics: halftone quality and spectra (more families are added next to `halftone`)."""

from noise_research.metrics import halftone
from noise_research.metrics.halftone import (
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

__all__ = [
    "DEFAULT_LOW_FREQUENCY_CUTOFF",
    "anisotropy",
    "dct_low_frequency",
    "fraction_binary",
    "halftone",
    "low_frequency_energy",
    "radially_averaged_power_spectrum",
    "ssim",
    "tone_blur",
    "tone_psnr",
]
