"""Metrics: halftone quality and spectra (more families are added next to `halftone`)."""

from noise_research.metrics import fid, halftone
from noise_research.metrics.fid import (
    domain_fid_evaluator,
    fid_evaluator,
    frechet_distance,
    kernel_distance,
)
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
    "domain_fid_evaluator",
    "fid",
    "fid_evaluator",
    "fraction_binary",
    "frechet_distance",
    "halftone",
    "kernel_distance",
    "low_frequency_energy",
    "radially_averaged_power_spectrum",
    "ssim",
    "tone_blur",
    "tone_psnr",
]
