"""Classical halftoning references (error diffusion, ordered dithering)."""

from noise_research.classical.dithering import (
    CLASSICAL_HALFTONERS,
    FLOYD_STEINBERG_WEIGHTS,
    OSTROMOUKHOV_COEFFICIENTS,
    bayer_matrix,
    floyd_steinberg,
    ordered_dither,
    ostromoukhov,
)

__all__ = [
    "CLASSICAL_HALFTONERS",
    "FLOYD_STEINBERG_WEIGHTS",
    "OSTROMOUKHOV_COEFFICIENTS",
    "bayer_matrix",
    "floyd_steinberg",
    "ordered_dither",
    "ostromoukhov",
]
