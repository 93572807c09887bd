"""Pure-functional Flax linen layers, one module per family (+ shared noise-map helpers)."""

from noise_research.layers.nib import NIB_COMBINES, NoiseIncentiveBlock
from noise_research.layers.noise_maps import NOISE_DISTRIBUTIONS, sample_noise_map

__all__ = ["NIB_COMBINES", "NOISE_DISTRIBUTIONS", "NoiseIncentiveBlock", "sample_noise_map"]
