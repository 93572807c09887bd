"""Networks that accept any layer at named places."""

from noise_research.models.dcgan import (
    DCGANDiscriminator,
    DCGANGenerator,
    feature_sides,
)
from noise_research.models.halftone import (
    HALFTONE_MODELS,
    HalftoneResNet,
    HalftoneUNet,
    build_halftone_model,
)
from noise_research.models.inception import FIDInceptionV3, load_fid_inception_variables
from noise_research.models.resnet import ResidualBlock, ResNet, resnet_places
from noise_research.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator

__all__ = [
    "HALFTONE_MODELS",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "FIDInceptionV3",
    "HalftoneResNet",
    "HalftoneUNet",
    "ResNet",
    "ResidualBlock",
    "StyleGAN2Discriminator",
    "StyleGAN2Generator",
    "build_halftone_model",
    "feature_sides",
    "load_fid_inception_variables",
    "resnet_places",
]
