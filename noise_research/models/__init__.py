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
from noise_research.models.vit import VIT_SIZES, ViT, vit_places

__all__ = [
    "HALFTONE_MODELS",
    "VIT_SIZES",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "FIDInceptionV3",
    "HalftoneResNet",
    "HalftoneUNet",
    "ResNet",
    "ResidualBlock",
    "StyleGAN2Discriminator",
    "StyleGAN2Generator",
    "ViT",
    "build_halftone_model",
    "feature_sides",
    "load_fid_inception_variables",
    "resnet_places",
    "vit_places",
]
