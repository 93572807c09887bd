"""The invertible-grayscale model of Xia, Liu and Wong, "Invertible Grayscale" (SIGGRAPH Asia 2018,
ACM TOG 37(6):246), with or without a Noise Incentive Block (the NIB paper's section 4.2).

An encoder turns a colour image (B, H, W, 3) in [−1, 1] into one grayscale channel (B, H, W, 1)
through tanh; a decoder turns that grayscale back into colour (B, H, W, 3) through tanh. Colour
must survive in imperceptible texture of the gray. A plain encoder maps a flat colour region to
a flat gray (flatness degradation, NIB paper section 1 and Figure 7), so the texture cannot be
written there; a NIB first layer (`layers.nib`, S-N-0.3 by default) gives the encoder a
non-flat signal everywhere.

Layout (the authors' public TensorFlow code, MenghanXia/InvertibleGrayscale ``model.py``, read for
facts; their widths in brackets, ``width`` = 64):

* encoder: first layer (3×3 conv or NIB, linear) → ``encoder_blocks[0]`` residual blocks
  [2] at ``width`` (kept as skip 1) → stride-2 3×3 conv to 2·width, 3×3 conv + ReLU (skip 2) →
  stride-2 conv to 4·width, conv + ReLU → ``encoder_blocks[1]`` residual blocks [4] at
  4·width → ×2 nearest upsampling, two convs (ReLU on the second) to 2·width, + skip 2 → ×2,
  two convs to width, + skip 1 → ``encoder_blocks[2]`` residual blocks [2] → 3×3 conv to 1,
  tanh. A residual block is h + conv(ReLU(conv(h))).
* decoder: 3×3 conv to ``width`` (linear) → ``decoder_blocks`` residual blocks [8] → 3×3 conv
  to 4·width (linear) → 1×1 conv to 3, tanh.

How this differs from the authors' network: the CPU configs use width 16 and fewer residual
blocks (``encoder_blocks`` (1, 2, 1), ``decoder_blocks`` 3; the defaults here are the authors'
(2, 4, 2) and 8); convolutions have zero-initialised biases, the authors' have none (their
kernels' N(0, 0.02) init is kept; the NIB's own convolution keeps Flax's default init); H and W
must be divisible by 4.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.typing import Dtype

from noise_research.models.halftone import (
    FIRST_LAYERS,
    _first_layer,
    _validate_first_layer,
)
from noise_research.registry import register_block

UINT8_LEVELS = 256
"""The grayscale is stored as an 8-bit image: 256 levels k/127.5 − 1, k = 0 … 255, on [−1, 1]."""
KERNEL_INIT_STDDEV = 0.02
"""The authors' kernel init N(0, 0.02): the tanh outputs start near 0 instead of saturating."""
DOWNSAMPLING = 4
"""The encoder halves the image twice: H and W must be multiples of this."""


def uint8_levels(gray: jax.Array) -> jax.Array:
    """``gray`` in [−1, 1] rounded to the nearest of the 256 uint8 levels (what saving the
    grayscale as an 8-bit image does): round((g + 1)·127.5) clipped to 0 … 255, mapped back."""
    codes = jnp.clip(jnp.round((gray + 1.0) * 127.5), 0.0, UINT8_LEVELS - 1.0)
    return (codes / 127.5 - 1.0).astype(gray.dtype)


def straight_through_uint8(gray: jax.Array) -> jax.Array:
    """`uint8_levels` in the forward pass, the identity gradient in the backward pass."""
    return gray + jax.lax.stop_gradient(uint8_levels(gray) - gray)


def _residual_blocks(
    conv: Callable[..., nn.Module], hidden: jax.Array, count: int, name: str
) -> jax.Array:
    """``count`` blocks h ← h + conv(ReLU(conv(h))) at h's width (the authors' blocks: no
    activation after the sum)."""
    features = hidden.shape[-1]
    for block in range(count):
        residual = nn.relu(conv(features, name=f"{name}{block}_conv1")(hidden))
        hidden = hidden + conv(features, name=f"{name}{block}_conv2")(residual)
    return hidden


def _conv_factory(dtype: Dtype | None) -> Callable[..., nn.Module]:
    """3×3 'SAME' convolutions with the authors' N(0, 0.02) kernel init (zero biases)."""
    return functools.partial(
        nn.Conv,
        kernel_size=(3, 3),
        padding="SAME",
        kernel_init=nn.initializers.normal(KERNEL_INIT_STDDEV),
        dtype=dtype,
        param_dtype=jnp.float32,
    )


def _upsample(hidden: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(hidden, 2, axis=1), 2, axis=2)


class GrayscaleEncoder(nn.Module):
    """Colour (B, H, W, 3) in [−1, 1] → grayscale (B, H, W, 1) float32 in (−1, 1) (tanh); see the
    module docstring for the layout. ``positions``: the rows' global positions, for a
    dynamic-noise NIB."""

    width: int = 64
    first_layer: str = "conv"
    nib: Mapping[str, Any] | None = None
    encoder_blocks: Sequence[int] = (2, 4, 2)
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, colour: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        chex.assert_rank(colour, 4)
        chex.assert_axis_dimension(colour, 3, 3)
        if colour.shape[1] % DOWNSAMPLING or colour.shape[2] % DOWNSAMPLING:
            raise ValueError(
                f"colour images of shape {colour.shape}: H and W must be multiples of "
                f"{DOWNSAMPLING} (the encoder halves them twice)."
            )
        conv = _conv_factory(self.dtype)
        width = self.width
        hidden = _first_layer(width, self.first_layer, self.nib, self.dtype, colour, positions)
        skip_full = _residual_blocks(conv, hidden, self.encoder_blocks[0], "start_block")
        hidden = conv(2 * width, strides=(2, 2), name="down1_conv1")(skip_full)
        skip_half = nn.relu(conv(2 * width, name="down1_conv2")(hidden))
        hidden = conv(4 * width, strides=(2, 2), name="down2_conv1")(skip_half)
        hidden = nn.relu(conv(4 * width, name="down2_conv2")(hidden))
        hidden = _residual_blocks(conv, hidden, self.encoder_blocks[1], "middle_block")
        hidden = conv(2 * width, name="up1_conv1")(_upsample(hidden))
        hidden = nn.relu(conv(2 * width, name="up1_conv2")(hidden)) + skip_half
        hidden = conv(width, name="up2_conv1")(_upsample(hidden))
        hidden = nn.relu(conv(width, name="up2_conv2")(hidden)) + skip_full
        hidden = _residual_blocks(conv, hidden, self.encoder_blocks[2], "end_block")
        gray = jnp.tanh(conv(1, name="gray_conv")(hidden)).astype(jnp.float32)
        chex.assert_shape(gray, (*colour.shape[:3], 1))
        return gray


class ColourDecoder(nn.Module):
    """Grayscale (B, H, W, 1) in [−1, 1] → colour (B, H, W, 3) float32 in (−1, 1) (tanh)."""

    width: int = 64
    decoder_blocks: int = 8
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, gray: jax.Array) -> jax.Array:
        chex.assert_rank(gray, 4)
        chex.assert_axis_dimension(gray, 3, 1)
        conv = _conv_factory(self.dtype)
        hidden = conv(self.width, name="in_conv")(gray)
        hidden = _residual_blocks(conv, hidden, self.decoder_blocks, "block")
        hidden = conv(4 * self.width, name="wide_conv")(hidden)
        colour = jnp.tanh(conv(3, kernel_size=(1, 1), name="colour_conv")(hidden)).astype(
            jnp.float32
        )
        chex.assert_shape(colour, (*gray.shape[:3], 3))
        return colour


class InvertibleGrayscale(nn.Module):
    """Encoder and decoder of the invertible grayscale (module docstring).

    ``__call__(colour, positions, quantize)`` returns ``(gray, restored)``: the encoder's
    continuous gray and the decoder's colour from it, or, with ``quantize=True``, from the gray
    rounded to the 256 uint8 levels (`straight_through_uint8`: the stored 8-bit image in the
    forward pass, the identity gradient). ``encode`` and ``decode`` run one half
    (``model.apply(variables, x, method="encode")``).

    Attributes:
      width: channels at full resolution (the authors' 64).
      first_layer: the encoder's first layer, "conv" (plain) or "nib" (Noise Incentive Block).
      nib: keyword arguments of the `NoiseIncentiveBlock` (not features/dtype), with "nib" only.
      encoder_blocks: residual blocks at the start, the middle (¼ resolution) and the end of
        the encoder (the authors' (2, 4, 2)).
      decoder_blocks: residual blocks of the decoder (the authors' 8).
      dtype: compute dtype (None: float32); params are float32.
    """

    width: int = 64
    first_layer: str = "conv"
    nib: Mapping[str, Any] | None = None
    encoder_blocks: Sequence[int] = (2, 4, 2)
    decoder_blocks: int = 8
    dtype: Dtype | None = None

    def __post_init__(self) -> None:
        _validate_first_layer(self.width, self.first_layer, self.nib)
        if len(self.encoder_blocks) != 3 or any(b < 0 for b in self.encoder_blocks):
            raise ValueError(
                f"encoder_blocks={self.encoder_blocks!r} must be three counts >= 0 (start, "
                "middle, end)."
            )
        if self.decoder_blocks < 0:
            raise ValueError(f"decoder_blocks={self.decoder_blocks!r} must be >= 0.")
        super().__post_init__()

    def setup(self) -> None:
        self.encoder = GrayscaleEncoder(
            width=self.width,
            first_layer=self.first_layer,
            nib=self.nib,
            encoder_blocks=tuple(self.encoder_blocks),
            dtype=self.dtype,
        )
        self.decoder = ColourDecoder(
            width=self.width, decoder_blocks=self.decoder_blocks, dtype=self.dtype
        )

    def encode(self, colour: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        return self.encoder(colour, positions)

    def decode(self, gray: jax.Array) -> jax.Array:
        return self.decoder(gray)

    def __call__(
        self, colour: jax.Array, positions: jax.Array | None = None, quantize: bool = False
    ) -> tuple[jax.Array, jax.Array]:
        gray = self.encoder(colour, positions)
        stored = straight_through_uint8(gray) if quantize else gray
        return gray, self.decoder(stored)


def _invertible_grayscale_factory(first_layer: str):
    """A registry factory for the CPU-sized model (width 16, blocks (1, 2, 1) and 3) with
    ``first_layer`` 'nib' (stationary N(0, 0.3)) or 'conv'; default input (1, 64, 64, 3)."""
    assert first_layer in FIRST_LAYERS

    def factory(shape: tuple[int, ...] | None):
        module = InvertibleGrayscale(
            width=16, first_layer=first_layer, encoder_blocks=(1, 2, 1), decoder_blocks=3
        )
        return module, jax.ShapeDtypeStruct(shape or (1, 64, 64, 3), jnp.float32), ()

    return factory


register_block("invertible_grayscale", _invertible_grayscale_factory("nib"))
register_block("invertible_grayscale_plain", _invertible_grayscale_factory("conv"))
