"""StyleGAN2-style generator and residual discriminator (Karras et al. 2020, "config F" structure).

The gan-noise-injection paper's main model (section 5): StyleGAN2, whose per-layer noise input is
Euclidean noise injection (ENI, eq. 18), with the Riemannian form (RNI, eqs. 13–17) in its place.
Sized by ``resolution`` (a power of two ≥ 4) and the channel rule

    C(side) = max(1, min(channel_max, channel_base // side)),

so that config F at 256² (``channel_base=32768, channel_max=512``: 512 channels up to 64², 256 at
128², 128 at 256²) and a CPU model (e.g. ``resolution=16, channel_base=64, channel_max=8``) are one
constructor call each. Every weight uses the **equalized learning rate**: it is stored as
N(0, 1/λ²) and multiplied at run time by λ/√fan_in (λ the layer's lr multiplier; biases are stored
divided by λ and multiplied by λ), and every LeakyReLU(0.2) is followed by the gain √2.

Generator
---------
Mapping network (z → w): ``z ← z / √(mean_j z_j² + 1e-8)`` (pixel norm), then ``mapping_layers``
dense layers of ``w_dim`` units with LeakyReLU(0.2)·√2, λ = ``mapping_lr_mul`` = 0.01.
Truncation: ``w ← w̄ + ψ (w − w̄)`` with a given ``w_avg`` = w̄ (see `update_w_avg`).

Synthesis network (w → image), with ``num_ws(R) = 2 log2 R − 2`` style vectors (one w broadcast to
all of them, or a (B, num_ws, w_dim) array for style mixing):

* ``b4``: a learned 4 × 4 × C(4) constant (N(0, 1) init), one synthesis layer ``b4_conv``, toRGB.
* ``b<r>`` for r = 8, 16, …, R: synthesis layers ``b<r>_conv0`` (upsampling ×2) and
  ``b<r>_conv1``, toRGB; the image is ``rgb_r = upsample(rgb_{r/2}) + toRGB_r(x)`` (skip
  architecture). The output is that last sum, unbounded (no tanh), as in StyleGAN2.

A synthesis layer is StyleGAN2's: modulated 3 × 3 convolution → noise injection → bias →
LeakyReLU(0.2)·√2. The modulated convolution (section 2.2 of the StyleGAN2 paper):

    s = A(w) (an equalized affine layer, bias init 1),
    w'_{k,i,o} = s_i · W_{k,i,o} / √(C_in · K²)                    (modulation)
    w''_{k,i,o} = w'_{k,i,o} / √(Σ_{k,i} w'²_{k,i,o} + 1e-8)       (demodulation)

computed, as StyleGAN2's ``fused_modconv=False``, as ``(conv(x ⊙ s, W/√(C_in K²))) ⊙ d`` with
``d_o = 1/√(Σ_{k,i} s_i² W²_{k,i,o}/(C_in K²) + 1e-8)``: the same numbers as a per-sample
convolution with w'' (tested), without a per-sample weight tensor. `modulated_weights` gives w''
explicitly. toRGB is a 1 × 1 modulated convolution without demodulation, plus a bias.

The upsampling layer is the original's: a stride-2 transposed 3 × 3 convolution (written as a
convolution over the zero-dilated input: the transposed convolution up to a flip of the learned
kernel) followed by the [1, 3, 3, 1] FIR blur (gain 4), and the skip's image upsampling is the
same FIR filter (upfirdn2d, up = 2). Borders are zero-padded as in upfirdn2d.

Noise. The noise injection (``injection``) after each synthesis layer's convolution is
``'none'``, ``'euclidean'`` (`EuclideanNoiseInjection`: StyleGAN2's own per-pixel noise, learned
scalar strength initialised at 0) or ``'riemannian'`` (`RiemannianNoiseInjection`, form
``rni_variant``). ``inject_at`` restricts it to some resolutions. The injected noise is, as in the
DCGAN generator: a mapping **keyed by layer name** (``'b4_conv'``, ``'b8_conv0'``,
``'b8_conv1'``, …; `noise_shapes` gives each one's (B, side, side, 1) shape), held fixed; None,
drawn from the ``'noise'`` rng stream per layer and per sample (keyed by ``positions``); or
switched off with ``inject=False``. Each synthesis layer's output (after its activation) is sown as
``'intermediates'/'features_<layer name>'``.

Discriminator
-------------
StyleGAN2's 'resnet' discriminator: fromRGB (1 × 1 conv, LeakyReLU), then for r = R, …, 8 a
residual block ``b<r>``: ``y = conv3×3(x)`` (C(r) → C(r)), ``y = conv3×3_down(y)`` (C(r) → C(r/2);
[1, 3, 3, 1] blur then stride 2), ``t = conv1×1_down(x)`` (blur then stride 2, no bias, linear),
``x = (y + t)/√2``; then at 4 × 4 the minibatch standard deviation (`minibatch_stddev`), a 3 × 3
conv, a dense layer of C(4) units and a dense logit.

The minibatch standard deviation **mixes samples**. It is computed over the **global** batch, so
that jit (which sees the global batch) and pmap (which sees one device's rows) give the same
numbers for any device count: with ``mbstd_group_size`` = G the global batch of N rows is cut into
N/G groups as StyleGAN2 does (global row n belongs to group n mod N/G); under pmap every device
gathers the 4 × 4 features of the global batch (``lax.all_gather``, a few KiB) and keeps its own
rows' statistic. ``mbstd_group_size=None`` takes one group, the whole global batch, with the
cross-replica means of `noise_research.train.parallel` (no gather). Unlike the original (groups
within one GPU's minibatch), groups therefore never depend on how the batch is split over devices.
A row's logit depends on the other rows of its group: **do not feed the discriminator padding
rows** (a padded evaluation batch) in training — they would enter the real rows' statistics.

What differs from the original StyleGAN2
----------------------------------------
* Modulation is computed unfused (``fused_modconv=False`` form), the same numbers as grouped
  per-sample convolutions.
* The transposed convolution of the upsampling layer is not kernel-flipped (its weights are
  learned, so the function class is the same).
* The discriminator's minibatch std groups are formed over the global batch (above); its first
  dense layer has C(4) units (StyleGAN2-ADA's choice; config F's TF code uses C(2)).
* No conv clamping (ADA), no mixed precision; float32 throughout. Style mixing, the path-length
  regulariser, lazy R1 and the EMA of w̄ (`update_w_avg`) belong to the training task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from noise_research.layers.noise_injection import (
    RNI_VARIANTS,
    EuclideanNoiseInjection,
    RiemannianNoiseInjection,
)
from noise_research.models.dcgan import INJECTIONS
from noise_research.registry import register_block
from noise_research.train.parallel import SINGLE_DEVICE, ParallelContext, global_mean

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)
RESAMPLE_FILTER = (1.0, 3.0, 3.0, 1.0)
"""The separable FIR filter of StyleGAN2's up- and downsampling (upfirdn2d)."""
_EPS = 1e-8

Array = jax.Array


# ----------------------------------------------------------------------------------------------
# Sizes and names.


def validate_resolution(resolution: int) -> None:
    """Raises a ValueError unless ``resolution`` is a power of two ≥ 4."""
    if not isinstance(resolution, int) or resolution < 4 or resolution & (resolution - 1):
        raise ValueError(f"resolution={resolution!r} must be a power of two >= 4 (4, 8, …, 256).")


def block_sides(resolution: int) -> tuple[int, ...]:
    """The synthesis blocks' sides 4, 8, …, ``resolution``."""
    validate_resolution(resolution)
    return tuple(2**k for k in range(2, int(math.log2(resolution)) + 1))


def channels_at(side: int, channel_base: int, channel_max: int) -> int:
    """C(side) = max(1, min(channel_max, channel_base // side)): the channels at resolution side."""
    return max(1, min(channel_max, channel_base // side))


def synthesis_layer_names(resolution: int) -> tuple[str, ...]:
    """The synthesis layers in order: ``'b4_conv'``, ``'b8_conv0'``, ``'b8_conv1'``, …"""
    names = []
    for side in block_sides(resolution):
        names += ["b4_conv"] if side == 4 else [f"b{side}_conv0", f"b{side}_conv1"]
    return tuple(names)


def layer_side(name: str) -> int:
    """The side of a synthesis layer's output, e.g. 8 for ``'b8_conv0'``."""
    return int(name[1:].split("_")[0])


def num_ws(resolution: int) -> int:
    """Style vectors the synthesis network takes: 2 log2(R) − 2 (each layer and each toRGB; the
    toRGB of block r shares its w with the first layer of block 2r, as in StyleGAN2)."""
    validate_resolution(resolution)
    return 2 * int(math.log2(resolution)) - 2


# ----------------------------------------------------------------------------------------------
# Building blocks.


def lrelu(x: Array) -> Array:
    """StyleGAN2's activation: LeakyReLU(0.2) · √2 (the gain keeps the signal's magnitude)."""
    return nn.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN


def pixel_norm(x: Array, eps: float = _EPS) -> Array:
    """``x / √(mean_j x_j² + eps)`` over the last axis: each row gets unit mean square."""
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def _fir(x: Array, *, up: int, down: int, pad: tuple[int, int]) -> Array:
    """upfirdn2d with the [1, 3, 3, 1] filter (normalised, gain up²), depthwise, on NHWC ``x``:
    zero-insertion by ``up``, zero padding ``pad`` (before, after) of each spatial axis, the FIR
    filter, decimation by ``down``. Lhs dilation does not append upfirdn2d's trailing zero row:
    with ``up=2`` the "after" pad is upfirdn2d's plus one (`upsample_2x`: upfirdn2d's (2, 1) is
    (2, 2) here)."""
    taps = np.asarray(RESAMPLE_FILTER, np.float32)
    kernel2d = np.outer(taps, taps) / np.sum(taps) ** 2 * up**2
    channels = x.shape[-1]
    kernel = jnp.asarray(np.tile(kernel2d[:, :, None, None], (1, 1, 1, channels)), x.dtype)
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(down, down),
        padding=(pad, pad),
        lhs_dilation=(up, up),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels,
    )


def upsample_2x(x: Array) -> Array:
    """(B, H, W, C) → (B, 2H, 2W, C): StyleGAN2's ``upsample_2d`` (upfirdn2d, up 2, pad (2, 1)):
    bilinear interpolation (half-pixel centres) in the interior, zero padding at the borders."""
    return _fir(x, up=2, down=1, pad=(2, 2))


class EqualizedDense(nn.Module):
    """Dense layer with equalized learning rate: ``y = x · (λ/√fan_in) W + λ b``.

    W is stored as N(0, 1/λ²) and b as ``bias_init / λ``, so the effective initial weights are
    N(0, 1/fan_in) and the effective bias ``bias_init``, while a learning rate η moves them at
    rate λη.

    Attributes:
      features: output units.
      lr_mul: λ, the learning-rate multiplier (0.01 in the mapping network).
      bias_init: the effective initial bias (1 in the style affines).
      use_bias: whether to add a bias.
      activation: whether to apply `lrelu` (LeakyReLU(0.2)·√2).
    """

    features: int
    lr_mul: float = 1.0
    bias_init: float = 0.0
    use_bias: bool = True
    activation: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """(…, fan_in) → (…, features)."""
        fan_in = x.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.normal(1.0 / self.lr_mul), (fan_in, self.features)
        )
        y = x @ (kernel * (self.lr_mul / math.sqrt(fan_in)))
        if self.use_bias:
            bias = self.param(
                "bias", nn.initializers.constant(self.bias_init / self.lr_mul), (self.features,)
            )
            y = y + bias * self.lr_mul
        return lrelu(y) if self.activation else y


class EqualizedConv(nn.Module):
    """Convolution with equalized learning rate (weights N(0, 1) scaled by 1/√(C_in K²)), 'same'
    size or, with ``down``, StyleGAN2's downsampling convolution: [1, 3, 3, 1] blur, then the
    convolution with stride 2 (upfirdn2d's ``conv_downsample_2d`` pads).

    Attributes:
      features: output channels.
      kernel_size: K (odd).
      down: whether to downsample by 2.
      use_bias: whether to add a bias (init 0).
      activation: whether to apply `lrelu`.
    """

    features: int
    kernel_size: int = 3
    down: bool = False
    use_bias: bool = True
    activation: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """(B, H, W, C_in) → (B, H, W, features), or (B, H/2, W/2, features) with ``down``."""
        chex.assert_rank(x, 4)
        k, fan_in = self.kernel_size, x.shape[-1] * self.kernel_size**2
        kernel = self.param(
            "kernel", nn.initializers.normal(1.0), (k, k, x.shape[-1], self.features)
        )
        kernel = kernel / math.sqrt(fan_in)
        if self.down:
            pad = 2 + (k - 1)  # upfirdn2d: (filter taps − down) + (K − 1)
            x = _fir(x, up=1, down=1, pad=((pad + 1) // 2, pad // 2))
            strides, padding = (2, 2), "VALID"
        else:
            strides, padding = (1, 1), "SAME"
        y = jax.lax.conv_general_dilated(
            x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return lrelu(y) if self.activation else y


def modulated_weights(weight: Array, styles: Array, demodulate: bool = True) -> Array:
    """The per-sample weights of a modulated convolution (StyleGAN2, eqs. 1–3).

    Args:
      weight: (K, K, C_in, C_out) effective weights W (already scaled by 1/√(C_in K²)).
      styles: (B, C_in) styles s.
      demodulate: whether to divide by each output channel's ℓ2 norm.

    Returns:
      (B, K, K, C_in, C_out): ``w' = s_i W_{k,i,o}``, and with ``demodulate``
      ``w'' = w' / √(Σ_{k,i} w'² + 1e-8)`` (unit ℓ2 norm per sample and output channel).
    """
    chex.assert_rank(weight, 4)
    chex.assert_shape(styles, (None, weight.shape[2]))
    modulated = weight[None] * styles[:, None, None, :, None]
    if demodulate:
        modulated = modulated * jax.lax.rsqrt(
            jnp.sum(jnp.square(modulated), axis=(1, 2, 3), keepdims=True) + _EPS
        )
    return modulated


class ModulatedConv(nn.Module):
    """StyleGAN2's modulated convolution with an affine style from w (see the module docstring).

    Computes ``conv(x ⊙ s, W) ⊙ d`` (d = 1 without demodulation), equal to the convolution of each
    sample with its `modulated_weights`. With ``up`` the input is first upsampled: the stride-2
    transposed convolution (over the zero-dilated input) and the [1, 3, 3, 1] FIR blur.

    Attributes:
      features: output channels.
      kernel_size: K (odd).
      demodulate: whether to demodulate (False in toRGB).
      up: whether to upsample by 2.
    """

    features: int
    kernel_size: int = 3
    demodulate: bool = True
    up: bool = False

    @nn.compact
    def __call__(self, x: Array, w: Array) -> Array:
        """(B, H, W, C_in), w (B, w_dim) → (B, H', W', features), H' = 2H with ``up``."""
        chex.assert_rank(x, 4)
        chex.assert_rank(w, 2)
        chex.assert_equal(x.shape[0], w.shape[0])
        k, channels_in = self.kernel_size, x.shape[-1]
        styles = EqualizedDense(channels_in, bias_init=1.0, name="affine")(w)
        kernel = self.param(
            "kernel", nn.initializers.normal(1.0), (k, k, channels_in, self.features)
        )
        weight = kernel / math.sqrt(channels_in * k * k)
        x = x * styles[:, None, None, :].astype(x.dtype)
        if self.up:
            # Transposed conv, stride 2: output (H − 1)·2 + K, then the FIR blur to 2H
            # (upfirdn2d's upsample_conv_2d pads: (taps − 2) − (K − 1) = 3 − K, plus up − 1 = 1).
            y = jax.lax.conv_general_dilated(
                x,
                weight,
                (1, 1),
                ((k - 1, k - 1), (k - 1, k - 1)),
                lhs_dilation=(2, 2),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
            pad = 4 - 2 - (k - 1)
            y = _fir(y, up=1, down=1, pad=((pad + 1) // 2 + 1, pad // 2 + 1))
            y = y * 4.0  # the blur's upsampling gain up² (the transposed conv's zeros)
        else:
            y = jax.lax.conv_general_dilated(
                x, weight, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        if self.demodulate:
            demod = jax.lax.rsqrt(
                jnp.einsum("bi,klio->bo", jnp.square(styles), jnp.square(weight)) + _EPS
            )
            y = y * demod[:, None, None, :].astype(y.dtype)
        return y


class SynthesisLayer(nn.Module):
    """Modulated 3 × 3 conv (optionally upsampling) → noise injection → bias → LeakyReLU·√2.

    Attributes:
      features: output channels.
      up: whether the convolution upsamples by 2.
      injection: 'none', 'euclidean' or 'riemannian' (no noise sublayer for 'none').
      rni_variant: the RNI form ('paper' or 'authors').
    """

    features: int
    up: bool = False
    injection: str = "euclidean"
    rni_variant: str = "authors"

    @nn.compact
    def __call__(
        self,
        x: Array,
        w: Array,
        noise: Array | None = None,
        positions: Array | None = None,
        inject: bool = True,
    ) -> Array:
        """(B, H, W, C_in), w (B, w_dim) → (B, H', W', features); noise (B, H', W', 1) or None."""
        x = ModulatedConv(self.features, 3, demodulate=True, up=self.up, name="conv")(x, w)
        if self.injection == "euclidean":
            x = EuclideanNoiseInjection(name="noise")(
                x, noise=noise, positions=positions, inject=inject
            )
        elif self.injection == "riemannian":
            x = RiemannianNoiseInjection(variant=self.rni_variant, name="noise")(
                x, noise=noise, positions=positions, inject=inject
            )
        return lrelu(x + self.param("bias", nn.initializers.zeros, (self.features,)))


class ToRGB(nn.Module):
    """A 1 × 1 modulated convolution without demodulation to 3 channels, plus a bias."""

    channels: int = 3

    @nn.compact
    def __call__(self, x: Array, w: Array) -> Array:
        """(B, H, W, C), w (B, w_dim) → (B, H, W, channels)."""
        y = ModulatedConv(self.channels, 1, demodulate=False, name="conv")(x, w)
        return y + self.param("bias", nn.initializers.zeros, (self.channels,))


# ----------------------------------------------------------------------------------------------
# Generator.


def _validate_generator(module: StyleGAN2Generator | SynthesisNetwork) -> None:
    validate_resolution(module.resolution)
    if module.injection not in INJECTIONS:
        raise ValueError(f"injection={module.injection!r} is not supported; allowed: {INJECTIONS}")
    if module.rni_variant not in RNI_VARIANTS:
        raise ValueError(
            f"rni_variant={module.rni_variant!r} is not supported; allowed: {RNI_VARIANTS}"
        )
    if module.channel_base < 1 or module.channel_max < 1:
        raise ValueError(
            f"channel_base={module.channel_base!r} and channel_max={module.channel_max!r} must "
            "be positive integers."
        )
    if module.inject_at is not None:
        unknown = sorted(set(module.inject_at) - set(block_sides(module.resolution)))
        if unknown:
            raise ValueError(
                f"inject_at={module.inject_at!r}: sides {unknown} are not synthesis sides "
                f"{block_sides(module.resolution)}."
            )


def _injected_layers(
    resolution: int, injection: str, inject_at: tuple[int, ...] | None
) -> tuple[str, ...]:
    if injection == "none":
        return ()
    names = synthesis_layer_names(resolution)
    return tuple(n for n in names if inject_at is None or layer_side(n) in inject_at)


class MappingNetwork(nn.Module):
    """z (B, latent_dim) → w (B, w_dim): pixel norm, then ``num_layers`` equalized dense layers
    with LeakyReLU(0.2)·√2 and lr multiplier ``lr_mul``.

    Attributes:
      w_dim: the width of every layer and of w.
      num_layers: the dense layers (8 in StyleGAN2).
      lr_mul: λ (0.01 in StyleGAN2).
    """

    w_dim: int = 512
    num_layers: int = 8
    lr_mul: float = 0.01

    @nn.compact
    def __call__(self, z: Array) -> Array:
        chex.assert_rank(z, 2)
        x = pixel_norm(z.astype(jnp.float32))
        for index in range(self.num_layers):
            x = EqualizedDense(
                self.w_dim, lr_mul=self.lr_mul, activation=True, name=f"dense{index}"
            )(x)
        return x


class SynthesisNetwork(nn.Module):
    """ws (B, num_ws, w_dim) → (images (B, R, R, 3), {layer name: its output features}).

    Attributes: as `StyleGAN2Generator`'s synthesis part.
    """

    resolution: int = 256
    channel_base: int = 32768
    channel_max: int = 512
    injection: str = "euclidean"
    inject_at: tuple[int, ...] | None = None
    rni_variant: str = "authors"

    def __post_init__(self) -> None:
        _validate_generator(self)
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        ws: Array,
        noise: Mapping[str, Array] | None = None,
        positions: Array | None = None,
        inject: bool = True,
    ) -> tuple[Array, dict[str, Array]]:
        chex.assert_shape(ws, (None, num_ws(self.resolution), None))
        batch = ws.shape[0]
        injected = _injected_layers(self.resolution, self.injection, self.inject_at)
        if noise is not None:
            missing = sorted(set(injected) - set(noise))
            if missing:
                raise ValueError(
                    f"noise has no map for layers {missing}; give every layer of "
                    f"noise_shapes(batch): {list(injected)}."
                )

        def layer(x: Array, name: str, w_index: int, up: bool) -> Array:
            side = layer_side(name)
            on = name in injected
            return SynthesisLayer(
                channels_at(side, self.channel_base, self.channel_max),
                up=up,
                injection=self.injection if on else "none",
                rni_variant=self.rni_variant,
                name=name,
            )(
                x,
                ws[:, w_index],
                noise=None if noise is None or not on else noise[name],
                positions=positions,
                inject=inject,
            )

        features: dict[str, Array] = {}
        const = self.param(
            "const",
            nn.initializers.normal(1.0),
            (4, 4, channels_at(4, self.channel_base, self.channel_max)),
        )
        x = jnp.broadcast_to(const[None], (batch, *const.shape))
        x = features["b4_conv"] = layer(x, "b4_conv", 0, up=False)
        rgb = ToRGB(name="b4_torgb")(x, ws[:, 1])
        for side in block_sides(self.resolution)[1:]:
            first = 2 * int(math.log2(side)) - 5  # ws index of this block's conv0
            x = features[f"b{side}_conv0"] = layer(x, f"b{side}_conv0", first, up=True)
            x = features[f"b{side}_conv1"] = layer(x, f"b{side}_conv1", first + 1, up=False)
            rgb = upsample_2x(rgb) + ToRGB(name=f"b{side}_torgb")(x, ws[:, first + 2])
        chex.assert_shape(rgb, (batch, self.resolution, self.resolution, 3))
        return rgb, features


class StyleGAN2Generator(nn.Module):
    """z (B, latent_dim) → images (B, R, R, 3) (see the module docstring).

    Parameters are ``{'mapping': …, 'synthesis': …}``. Methods: ``__call__`` (z → image), `map`
    (z → w), `synthesize` (w → image; the path-length regulariser differentiates it w.r.t. w).

    Attributes:
      resolution: R, a power of two ≥ 4.
      latent_dim: dimension of z.
      w_dim: dimension of w (and of every mapping layer).
      mapping_layers: dense layers of the mapping network (8 in StyleGAN2).
      mapping_lr_mul: the mapping network's learning-rate multiplier λ (0.01).
      channel_base, channel_max: C(side) = max(1, min(channel_max, channel_base // side)).
      injection: 'none', 'euclidean' (StyleGAN2's own) or 'riemannian'.
      inject_at: sides whose layers get noise (None: every layer).
      rni_variant: the RNI form, 'paper' or 'authors' (see `RiemannianNoiseInjection`).
    """

    resolution: int = 256
    latent_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    mapping_lr_mul: float = 0.01
    channel_base: int = 32768
    channel_max: int = 512
    injection: str = "euclidean"
    inject_at: tuple[int, ...] | None = None
    rni_variant: str = "authors"

    def __post_init__(self) -> None:
        _validate_generator(self)
        super().__post_init__()

    def setup(self) -> None:
        self.mapping = MappingNetwork(self.w_dim, self.mapping_layers, self.mapping_lr_mul)
        self.synthesis = SynthesisNetwork(
            self.resolution,
            self.channel_base,
            self.channel_max,
            self.injection,
            self.inject_at,
            self.rni_variant,
        )

    @property
    def num_ws(self) -> int:
        """Style vectors `synthesize` takes: 2 log2(R) − 2."""
        return num_ws(self.resolution)

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Every synthesis layer, in order (``'b4_conv'``, ``'b8_conv0'``, …)."""
        return synthesis_layer_names(self.resolution)

    @property
    def injected_layers(self) -> tuple[str, ...]:
        """The synthesis layers that get noise (none without injection): the noise keys."""
        return _injected_layers(self.resolution, self.injection, self.inject_at)

    def noise_shapes(self, batch: int) -> dict[str, tuple[int, int, int, int]]:
        """The shape (batch, side, side, 1) of each injected layer's noise map, keyed by name."""
        return {
            name: (batch, layer_side(name), layer_side(name), 1) for name in self.injected_layers
        }

    def map(self, z: Array, truncation_psi: float = 1.0, w_avg: Array | None = None) -> Array:
        """z (B, latent_dim) → w (B, w_dim); with ``w_avg`` truncated: w̄ + ψ (w − w̄)."""
        chex.assert_shape(z, (None, self.latent_dim))
        w = self.mapping(z)
        if w_avg is None:
            if not (isinstance(truncation_psi, int | float) and truncation_psi == 1.0):
                raise ValueError("truncation_psi != 1 needs w_avg (the running mean of w).")
            return w
        chex.assert_shape(w_avg, (self.w_dim,))
        return w_avg + truncation_psi * (w - w_avg)

    def synthesize(
        self,
        w: Array,
        noise: Mapping[str, Array] | None = None,
        positions: Array | None = None,
        inject: bool = True,
    ) -> Array:
        """w (B, w_dim) (broadcast to every layer) or ws (B, num_ws, w_dim) → (B, R, R, 3).

        Sows each synthesis layer's output as ``'intermediates'/'features_<layer name>'``."""
        if w.ndim == 2:
            chex.assert_shape(w, (None, self.w_dim))
            w = jnp.broadcast_to(w[:, None], (w.shape[0], self.num_ws, self.w_dim))
        chex.assert_shape(w, (None, self.num_ws, self.w_dim))
        images, features = self.synthesis(w, noise=noise, positions=positions, inject=inject)
        for name, value in features.items():
            self.sow("intermediates", f"features_{name}", value)
        return images

    def __call__(
        self,
        z: Array,
        train: bool = False,
        noise: Mapping[str, Array] | None = None,
        positions: Array | None = None,
        inject: bool = True,
        truncation_psi: float = 1.0,
        w_avg: Array | None = None,
    ) -> Array:
        """z (B, latent_dim) → images (B, R, R, 3). ``train`` is unused (no BatchNorm): it is
        accepted for the generators' common call."""
        del train
        w = self.map(z, truncation_psi, w_avg)
        return self.synthesize(w, noise=noise, positions=positions, inject=inject)


def update_w_avg(
    w_avg: Array, w: Array, parallel: ParallelContext = SINGLE_DEVICE, beta: float = 0.995
) -> Array:
    """StyleGAN2's running mean of w for truncation: ``w̄ ← mean(w) + β (w̄ − mean(w))``, the mean
    over the global batch (the same under jit and pmap)."""
    batch_mean = global_mean(w, parallel)
    return batch_mean + beta * (w_avg - batch_mean)


# ----------------------------------------------------------------------------------------------
# Discriminator.


def _gather_global_batch(x: Array, parallel: ParallelContext) -> Array:
    """The global batch's rows in global order: ``x`` under jit, an all-gather under pmap."""
    if parallel.axis_name is None:
        return x
    return jax.lax.all_gather(x, parallel.axis_name, axis=0, tiled=True)


def minibatch_stddev(
    x: Array,
    group_size: int | None = 4,
    num_features: int = 1,
    parallel: ParallelContext = SINGLE_DEVICE,
    eps: float = _EPS,
) -> Array:
    """StyleGAN2's minibatch standard deviation, over the global batch: (B, H, W, C) → (B, H, W,
    C + num_features).

    With N the global batch, G = min(group_size, N) (N must divide by G) and M = N / G, global row
    n belongs to group n mod M (StyleGAN2's reshape (G, M, …)). For each group and feature f (the
    channels cut into ``num_features`` slices of C / F):

        σ = √(mean_g (x_g − mean_g x_g)² + eps)  per pixel and channel,
        stat_f = mean over H, W and the channels of slice f of σ,

    appended as F constant channels to every row of the group. ``group_size=None``: one group, the
    whole global batch, from cross-replica means. Under pmap (``parallel.axis_name`` set) a group
    may span devices: the rows are all-gathered, so every backend and device count gives the same
    numbers.
    """
    chex.assert_rank(x, 4)
    rows, height, width, channels = x.shape
    if channels % num_features:
        raise ValueError(f"{channels} channels do not split into num_features={num_features}.")
    slices = (num_features, channels // num_features)
    x32 = x.astype(jnp.float32)
    if group_size is None:
        mean = global_mean(x32, parallel)
        variance = global_mean(jnp.square(x32 - mean), parallel)
        sigma = jnp.sqrt(variance + eps).reshape(height, width, *slices)
        stat = jnp.broadcast_to(jnp.mean(sigma, axis=(0, 1, 3)), (rows, num_features))
    else:
        full = _gather_global_batch(x32, parallel)
        total = full.shape[0]
        groups = min(group_size, total)
        if total % groups:
            raise ValueError(
                f"the global batch of {total} rows does not split into minibatch-std groups of "
                f"{groups}: pick a batch size divisible by mbstd_group_size={group_size}."
            )
        y = full.reshape(groups, total // groups, height, width, *slices)
        y = y - jnp.mean(y, axis=0)
        sigma = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + eps)  # (M, H, W, F, C/F)
        per_group = jnp.mean(sigma, axis=(1, 2, 4))  # (M, F)
        every_row = jnp.tile(per_group, (groups, 1))  # global row n → group n mod M
        stat = jax.lax.dynamic_slice_in_dim(every_row, parallel.shard_index() * rows, rows)
    maps = jnp.broadcast_to(stat[:, None, None, :], (rows, height, width, num_features))
    return jnp.concatenate([x, maps.astype(x.dtype)], axis=-1)


class DiscriminatorBlock(nn.Module):
    """StyleGAN2's residual block: ``(conv3×3_down(conv3×3(x)) + conv1×1_down(x)) / √2``.

    Attributes:
      channels: C(r), the first convolution's width.
      out_channels: C(r/2), the output's width.
    """

    channels: int
    out_channels: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """(B, r, r, C_in) → (B, r/2, r/2, out_channels)."""
        skip = EqualizedConv(self.out_channels, 1, down=True, use_bias=False, name="skip")(x)
        x = EqualizedConv(self.channels, 3, activation=True, name="conv0")(x)
        x = EqualizedConv(self.out_channels, 3, down=True, activation=True, name="conv1")(x)
        return (x + skip) * (1.0 / math.sqrt(2.0))


class StyleGAN2Discriminator(nn.Module):
    """images (B, R, R, 3) → logits (B,): StyleGAN2's residual discriminator (module docstring).

    R is read from the images (a power of two ≥ 4).

    Attributes:
      channel_base, channel_max: C(side) = max(1, min(channel_max, channel_base // side)).
      mbstd_group_size: G of the minibatch std (StyleGAN2: 4); None: the whole global batch.
      mbstd_features: F, the minibatch std's channels (StyleGAN2: 1).
      parallel: where the discriminator runs; the minibatch std reduces over
        ``parallel.axis_name`` under pmap (pass the step's `ParallelContext`).
    """

    channel_base: int = 32768
    channel_max: int = 512
    mbstd_group_size: int | None = 4
    mbstd_features: int = 1
    parallel: ParallelContext = SINGLE_DEVICE

    @nn.compact
    def __call__(self, images: Array, train: bool = False) -> Array:
        """``train`` is unused (no BatchNorm); accepted for the discriminators' common call.
        Never feed padding rows: they enter the minibatch std of the real rows."""
        del train
        chex.assert_rank(images, 4)
        resolution = images.shape[1]
        if images.shape[2] != resolution:
            raise ValueError(f"images of shape {images.shape}: the discriminator takes squares.")
        validate_resolution(resolution)
        width = lambda side: channels_at(side, self.channel_base, self.channel_max)
        x = EqualizedConv(width(resolution), 1, activation=True, name="fromrgb")(images)
        for side in block_sides(resolution)[:0:-1]:
            x = DiscriminatorBlock(width(side), width(side // 2), name=f"b{side}")(x)
        x = minibatch_stddev(x, self.mbstd_group_size, self.mbstd_features, self.parallel)
        x = EqualizedConv(width(4), 3, activation=True, name="b4_conv")(x)
        x = EqualizedDense(width(4), activation=True, name="b4_dense")(x.reshape(x.shape[0], -1))
        return EqualizedDense(1, name="logit")(x)[:, 0]


# ----------------------------------------------------------------------------------------------
# Inspectable blocks (`python -m noise_research.inspect`).

TINY = {"resolution": 16, "latent_dim": 8, "w_dim": 8, "mapping_layers": 2}
TINY_CHANNELS = {"channel_base": 64, "channel_max": 8}


class _OneArgGenerator(nn.Module):
    """`StyleGAN2Generator(z)` with the one-argument call that `inspect` expects."""

    generator: StyleGAN2Generator

    def __call__(self, z: Array) -> Array:
        return self.generator(z)


def _generator_block_factory(injection: str):
    """A registry factory for a tiny 16² generator (8 channels at most); input (2, 8)."""

    def factory(shape: tuple[int, ...] | None):
        module = _OneArgGenerator(StyleGAN2Generator(**TINY, **TINY_CHANNELS, injection=injection))
        rngs = () if injection == "none" else ("noise",)
        return module, jax.ShapeDtypeStruct(shape or (2, TINY["latent_dim"]), jnp.float32), rngs

    return factory


register_block("stylegan2_generator", _generator_block_factory("none"))
register_block("stylegan2_generator_eni", _generator_block_factory("euclidean"))
register_block("stylegan2_generator_rni", _generator_block_factory("riemannian"))
register_block(
    "stylegan2_discriminator",
    lambda shape: (
        StyleGAN2Discriminator(**TINY_CHANNELS),
        jax.ShapeDtypeStruct(shape or (4, 16, 16, 3), jnp.float32),
        (),
    ),
)
