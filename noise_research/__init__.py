"""noise_research: noise and quantization layers in deep networks (JAX/Flax linen)."""

__version__ = "0.1.0"
