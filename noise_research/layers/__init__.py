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
from noise_research.layers.positive_noise import (
    LINEAR_TRANSFORM_QS,
    LatentGaussianNoise,
    LinearTransformNoise,
    SaltPepperNoise,
    optimal_q_matrix,
    optimal_q_mutual_information_bound,
    shift_q_matrix,
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
    "LINEAR_TRANSFORM_QS",
    "NIB_COMBINES",
    "NOISE_DISTRIBUTIONS",
    "QUANTIZATIONS",
    "RNI_VARIANTS",
    "DoReFaConv",
    "EuclideanNoiseInjection",
    "HyperPower",
    "LatentGaussianNoise",
    "LinearTransformNoise",
    "NoiseIncentiveBlock",
    "QuantizedConv",
    "RiemannianNoiseInjection",
    "SaltPepperNoise",
    "ScalableFloor",
    "SignedPower",
    "dorefa_activations",
    "dorefa_binary_weights",
    "exponent_penalty",
    "optimal_q_matrix",
    "optimal_q_mutual_information_bound",
    "pixel_keyed_noise_map",
    "sample_noise_map",
    "scalable_floor",
    "semantic_map",
    "shift_q_matrix",
    "signed_power",
]
