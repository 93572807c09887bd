"""Networks that accept any layer at named places."""

from noise_research.models.autoencoder import AUTOENCODER_FIRST_LAYERS, ConvAutoencoder
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
from noise_research.models.invertible_grayscale import InvertibleGrayscale
from noise_research.models.resnet import ResidualBlock, ResNet, resnet_places
from noise_research.models.semantic_synthesis import (
    PatchDiscriminator,
    Pix2PixGenerator,
    SpadeGenerator,
)
from noise_research.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from noise_research.models.vit import VIT_SIZES, ViT, vit_places

__all__ = [
    "AUTOENCODER_FIRST_LAYERS",
    "HALFTONE_MODELS",
    "VIT_SIZES",
    "ConvAutoencoder",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "FIDInceptionV3",
    "HalftoneResNet",
    "HalftoneUNet",
    "InvertibleGrayscale",
    "PatchDiscriminator",
    "Pix2PixGenerator",
    "ResNet",
    "ResidualBlock",
    "SpadeGenerator",
    "StyleGAN2Discriminator",
    "StyleGAN2Generator",
    "ViT",
    "build_halftone_model",
    "feature_sides",
    "load_fid_inception_variables",
    "resnet_places",
    "vit_places",
]
