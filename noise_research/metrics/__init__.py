"""Metrics: halftone quality and spectra (more families are added next to `halftone`)."""

from noise_research.metrics import domain_features, fid, gan_geometry, halftone, ppl
from noise_research.metrics.domain_features import (
    DomainFeatureNetwork,
    domain_fid_of_images,
    shapes_feature_network,
    train_shapes_feature_network,
)
from noise_research.metrics.fid import (
    domain_fid_evaluator,
    fid_evaluator,
    frechet_distance,
    kernel_distance,
)
from noise_research.metrics.gan_geometry import (
    condition_metrics,
    condition_number_evaluator,
    condition_numbers,
    intermediate_features,
    jacobian_spectrum,
    layer_spectra,
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
from noise_research.metrics.ppl import (
    path_length_metrics,
    ppl_evaluator,
    ppl_values,
    summarize_path_lengths,
)

__all__ = [
    "DEFAULT_LOW_FREQUENCY_CUTOFF",
    "DomainFeatureNetwork",
    "anisotropy",
    "condition_metrics",
    "condition_number_evaluator",
    "condition_numbers",
    "dct_low_frequency",
    "domain_features",
    "domain_fid_evaluator",
    "domain_fid_of_images",
    "fid",
    "fid_evaluator",
    "fraction_binary",
    "frechet_distance",
    "gan_geometry",
    "halftone",
    "intermediate_features",
    "jacobian_spectrum",
    "kernel_distance",
    "layer_spectra",
    "low_frequency_energy",
    "path_length_metrics",
    "ppl",
    "ppl_evaluator",
    "ppl_values",
    "radially_averaged_power_spectrum",
    "shapes_feature_network",
    "ssim",
    "summarize_path_lengths",
    "tone_blur",
    "tone_psnr",
    "train_shapes_feature_network",
]
