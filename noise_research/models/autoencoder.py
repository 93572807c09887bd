"""The convolutional autoencoder of the NIB paper's contamination test (section 3.3, "Does NIB
contaminate data?", Figure 5).

"we employ NIB into an auto-encoder model that reconstructs the input from a learned latent
representation. For comparison, we build a naive baseline that adds white noise to the input
data. The rationale is that if the NIB contaminates the input data, the reconstruction accuracy
will be affected consequently." The paper measures 47.95 dB (plain), 35.54 dB (additive noise) and
48.56 dB (NIB).

The three first layers (`AUTOENCODER_FIRST_LAYERS`):

* ``'conv'``: a plain 3×3 convolution (the paper's "Autoencoder", Figure 5 (a));
* ``'noise'``: additive white noise, then that 3×3 convolution: conv(I + N), N ~ N(0, σ²) drawn
  fresh per row and call from the ``'noise'`` rng keyed by the row's global position
  (`layers.positive_noise.LatentGaussianNoise`), the paper's naive baseline (b). The noise is part
  of the model, so it acts at evaluation too (with the eval key);
* ``'nib'``: a Noise Incentive Block f1(I + N) + f2(I − N) (`layers.nib.NoiseIncentiveBlock`, by
  default the paper's S-N-0.3), (c).

The plain and NIB first layers are `models.halftone._first_layer`; the additive-noise one puts the
noise in front of its plain convolution.

**Why the latent is not a tight bottleneck** (the issue's first trap): the contamination test
measures what a first layer destroys, so nothing else may cap the reconstruction. A narrow latent
limits all three variants to the same PSNR (the bottleneck's error dominates, the noise's does not
show), which cannot tell contamination apart. The paper's plain autoencoder reaches 47.95 dB, an
RMS error of 0.008 on [−1, 1] (one grey level of 255): its latent loses almost nothing. Here the
encoder halves the resolution once (a mild downsampling, so the latent is a learned
representation, not the image) and keeps `latent_channels` channels: the latent holds
``latent_channels / 4`` numbers per input pixel of a gray image (`latent_ratio`), 2 by default,
enough to hold the image exactly; the plain model is then limited by training alone. There is no
skip connection: the decoder sees only the latent, and everything the network sees went through
the first layer.

Layout (3×3 convs, ReLU between): first layer (width) → conv (width) → stride-2 conv
(2·width) → conv to the latent (latent_channels, linear) | decoder: conv (2·width) →
2×2 stride-2 transposed conv (width) → conv (width) → conv to the image's channels (linear
output, no tanh, so ±1 pixels are reachable). Params are float32; `dtype` is the compute dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

from noise_research.layers.positive_noise import LatentGaussianNoise
from noise_research.models.halftone import _first_layer, _validate_first_layer
from noise_research.registry import register_block

AUTOENCODER_FIRST_LAYERS = ("conv", "noise", "nib")
"""Plain 3×3 conv, additive white noise before it (the naive baseline), or a NIB."""

DOWNSAMPLING = 2
"""The encoder halves H and W once: inputs must have even sides."""


def _validate(
    width: int, latent_channels: int, first_layer: str, nib: Mapping[str, Any] | None, sigma: float
) -> None:
    if first_layer not in AUTOENCODER_FIRST_LAYERS:
        raise ValueError(
            f"first_layer={first_layer!r} is not supported; allowed: {AUTOENCODER_FIRST_LAYERS}."
        )
    # 'noise' is conv(I + N): no NIB settings, then the plain layer's checks.
    if nib is not None and first_layer == "noise":
        raise ValueError(f"nib={dict(nib)!r} is given but first_layer='noise'; drop nib.")
    _validate_first_layer(width, "conv" if first_layer == "noise" else first_layer, nib)
    if latent_channels < 1:
        raise ValueError(f"latent_channels={latent_channels!r} must be a positive integer.")
    if not sigma >= 0:
        raise ValueError(f"noise_scale={sigma!r} is a standard deviation and must be >= 0.")


class ConvAutoencoder(nn.Module):
    """Encoder to a latent at half resolution, decoder back (module docstring).

    Attributes:
      width: channels of the first layer (the encoder's stride-2 conv has twice as many).
      latent_channels: channels of the latent (H/2 × W/2); 8 holds 2 numbers per gray pixel.
      first_layer: 'conv', 'noise' (conv(I + N), fresh N per row and call) or 'nib'.
      nib: keyword arguments of the `NoiseIncentiveBlock` (not features/dtype), 'nib' only.
      noise_scale: the additive noise's standard deviation σ ('noise' only; the paper's 0.3).
      dtype: compute dtype (None: float32); params are float32.
    """

    width: int = 64
    latent_channels: int = 8
    first_layer: str = "conv"
    nib: Mapping[str, Any] | None = None
    noise_scale: float = 0.3
    dtype: Dtype | None = None

    def __post_init__(self) -> None:
        _validate(self.width, self.latent_channels, self.first_layer, self.nib, self.noise_scale)
        super().__post_init__()

    def latent_ratio(self, image_channels: int = 1) -> float:
        """Numbers the latent holds per input number: latent_channels / (4 · image_channels)."""
        return self.latent_channels / (DOWNSAMPLING**2 * image_channels)

    def _conv(self, features: int, name: str, **kwargs: Any) -> nn.Conv:
        return nn.Conv(
            features,
            (3, 3),
            padding="SAME",
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name=name,
            **kwargs,
        )

    @nn.compact
    def __call__(self, images: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """Maps (B, H, W, C) images in [−1, 1] (H, W even) to their (B, H, W, C) float32
        reconstructions; `positions`: the rows' (B,) global positions, which key the dynamic
        noise of 'noise' (and of a dynamic NIB); None: the rows' indices."""
        chex.assert_rank(images, 4)
        if images.shape[1] % DOWNSAMPLING or images.shape[2] % DOWNSAMPLING:
            raise ValueError(
                f"images of shape {images.shape}: H and W must be even (the encoder halves them)."
            )
        latent = self._encode(images, positions)
        outputs = self._decode(latent, images.shape[-1])
        chex.assert_equal_shape((outputs, images))
        return outputs

    def _encode(self, images: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """(B, H, W, C) images → the (B, H/2, W/2, latent_channels) latent (a part of the
        compact ``__call__``; read the latent with ``capture_intermediates``: 'latent_conv')."""
        perturbed = images
        first_layer = self.first_layer
        if first_layer == "noise":
            # The naive baseline: I + N, part of the model (train=True: it acts at evaluation).
            noise = LatentGaussianNoise(sigma=self.noise_scale, at_eval=True, name="input_noise")
            perturbed, first_layer = noise(images, train=True, positions=positions), "conv"
        hidden = nn.relu(
            _first_layer(self.width, first_layer, self.nib, self.dtype, perturbed, positions)
        )
        hidden = nn.relu(self._conv(self.width, "encoder_conv")(hidden))
        hidden = nn.relu(
            self._conv(2 * self.width, "encoder_down", strides=(DOWNSAMPLING, DOWNSAMPLING))(hidden)
        )
        latent = self._conv(self.latent_channels, "latent_conv")(hidden)
        chex.assert_shape(
            latent,
            (
                images.shape[0],
                images.shape[1] // DOWNSAMPLING,
                images.shape[2] // DOWNSAMPLING,
                self.latent_channels,
            ),
        )
        return latent

    def _decode(self, latent: jax.Array, image_channels: int) -> jax.Array:
        """The (B, H/2, W/2, latent_channels) latent → (B, H, W, image_channels) float32."""
        hidden = nn.relu(self._conv(2 * self.width, "decoder_conv")(latent))
        up = nn.ConvTranspose(
            self.width,
            (DOWNSAMPLING, DOWNSAMPLING),
            strides=(DOWNSAMPLING, DOWNSAMPLING),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="decoder_up",
        )
        hidden = nn.relu(up(hidden))
        hidden = nn.relu(self._conv(self.width, "decoder_conv2")(hidden))
        return self._conv(image_channels, "output_conv")(hidden).astype(jnp.float32)


def _autoencoder_block_factory(first_layer: str):
    """A registry factory for the autoencoder at width 64 with ``first_layer``; default input
    (1, 64, 64, 1); 'noise' needs the 'noise' rng."""

    def factory(shape: tuple[int, ...] | None):
        module = ConvAutoencoder(first_layer=first_layer)
        example_input = jax.ShapeDtypeStruct(shape or (1, 64, 64, 1), jnp.float32)
        return module, example_input, ("noise",) if first_layer == "noise" else ()

    return factory


register_block("autoencoder_plain", _autoencoder_block_factory("conv"))
register_block("autoencoder_noise", _autoencoder_block_factory("noise"))
register_block("autoencoder_nib", _autoencoder_block_factory("nib"))
