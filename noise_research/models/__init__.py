"""Networks that accept any layer at named places."""

from noise_research.models.halftone import (
    HALFTONE_MODELS,
    HalftoneResNet,
    HalftoneUNet,
    build_halftone_model,
)

__all__ = ["HALFTONE_MODELS", "HalftoneResNet", "HalftoneUNet", "build_halftone_model"]
