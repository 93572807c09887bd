"""Pure-functional Flax linen layers, one module per family (+ shared noise-map helpers)."""

from noise_research.layers.nib import NIB_COMBINES, NoiseIncentiveBlock
from noise_research.layers.noise_injection import (
    RNI_VARIANTS,
    EuclideanNoiseInjection,
    RiemannianNoiseInjection,
    semantic_map,
)
from noise_research.layers.noise_maps import (
    NOISE_DISTRIBUTIONS,
    pixel_keyed_noise_map,
    sample_noise_map,
)
from noise_research.layers.quantization import (
    QUANTIZATIONS,
    DoReFaConv,
    HyperPower,
    QuantizedConv,
    ScalableFloor,
    SignedPower,
    dorefa_activations,
    dorefa_binary_weights,
    exponent_penalty,
    scalable_floor,
    signed_power,
)

__all__ = [
    "NIB_COMBINES",
    "NOISE_DISTRIBUTIONS",
    "QUANTIZATIONS",
    "RNI_VARIANTS",
    "DoReFaConv",
    "EuclideanNoiseInjection",
    "HyperPower",
    "NoiseIncentiveBlock",
    "QuantizedConv",
    "RiemannianNoiseInjection",
    "ScalableFloor",
    "SignedPower",
    "dorefa_activations",
    "dorefa_binary_weights",
    "exponent_penalty",
    "pixel_keyed_noise_map",
    "sample_noise_map",
    "scalable_floor",
    "semantic_map",
    "signed_power",
]
