"""Semantic image synthesis networks (NIB paper, section 4.1): a Pix2Pix-style U-Net and a
SPADE-style generator, with or without Noise Incentive Blocks, and a label-conditioned PatchGAN.

The generators map a one-hot label map (B, H, W, K) (flat segments) to an RGB image (B, H, W, 3)
in [−1, 1]; the NIB paper plugs NIBs into both ("Pix2Pix+NIB", "SPADE+NIB", Table 2):

* :class:`Pix2PixGenerator` (Isola et al. 2017): no z. A full-resolution first layer — a plain
  3×3 convolution or a :class:`~noise_research.layers.nib.NoiseIncentiveBlock`, through
  ``models/halftone.py``'s `_first_layer` — then ``levels`` encoder steps (4×4 stride-2
  convolutions, instance norm but at the innermost, leaky ReLU 0.2), a decoder of 4×4 stride-2
  transposed convolutions (instance norm, optional dropout, ReLU) with a skip from the encoder at
  every resolution, and a 3×3 convolution to RGB with tanh. Pix2Pix's first layer is a 4×4 stride-2
  convolution; here the first layer keeps the full resolution so that the NIB perturbs the label
  map itself, as the paper's "NIB as the first layer". Pix2Pix's BatchNorm at batch 1 is an
  instance norm: instance norm is used, so a row never depends on the other rows of its batch.
* :class:`SpadeGenerator` (Park et al. 2019, the variant without the image encoder): the label map
  sampled (nearest) to H/2^levels is read by a 3×3 convolution (SPADE's ``fc``), then a SPADE
  residual block at that size and, ``levels`` times, ×2 nearest upsampling and a SPADE residual
  block, then leaky ReLU, a 3×3 convolution to RGB and tanh. A SPADE module (:class:`SpadeNorm`) is
  a parameter-free instance norm (SPADE's synchronized BatchNorm, per sample here) modulated by
  ``γ(m)``, ``β(m)``: two 3×3 convolutions of a shared ReLU(3×3 conv(m)) of the label map m at the
  features' size. **Where the NIB goes**: every convolution that reads the label map — the shared
  convolution of every SPADE module and the initial ``fc`` — is the model's first layer (plain or
  NIB): the label map enters the network there, each time flat, so each entry is a "first layer".
* :class:`PatchDiscriminator` (Pix2Pix's PatchGAN, multi-scale as pix2pixHD/SPADE): the label map
  and the image concatenated on channels, ``num_layers`` 4×4 stride-2 convolutions (the first
  without norm, then instance norm; leaky ReLU 0.2), a 4×4 stride-1 convolution with norm and a
  4×4 stride-1 convolution to one logit per patch; with ``num_scales`` > 1 the same kind of network
  again on the input 3×3-average-pooled by 2 per scale. It returns every scale's logits and
  intermediate features (SPADE's feature-matching loss).

No layer mixes rows (no BatchNorm, per-row dropout and NIB noise keyed by the rows' global
positions), so a step gives the same numbers on any number of devices under jit or pmap.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from noise_research.data.label_maps import NUM_CLASSES
from noise_research.layers.noise_maps import per_example
from noise_research.models.halftone import _first_layer, _validate_first_layer
from noise_research.registry import register_block

LEAKY_SLOPE = 0.2
ARCHITECTURES = ("pix2pix", "spade")
_conv = functools.partial(nn.Conv, padding="SAME")


def _instance_norm(name: str | None = None, affine: bool = True) -> nn.InstanceNorm:
    return nn.InstanceNorm(use_scale=affine, use_bias=affine, name=name)


def _check_labels(labels: jax.Array, num_classes: int) -> None:
    chex.assert_rank(labels, 4)
    chex.assert_axis_dimension(labels, 3, num_classes)


def _check_side(labels: jax.Array, levels: int) -> None:
    factor = 2**levels
    if labels.shape[1] % factor or labels.shape[2] % factor:
        raise ValueError(
            f"label maps of shape {labels.shape}: H and W must be divisible by 2**levels = "
            f"{factor} (levels={levels})."
        )


def _per_row_dropout(
    module: nn.Module, hidden: jax.Array, rate: float, positions: jax.Array | None
) -> jax.Array:
    """Inverted dropout whose mask of row i is drawn from fold_in(the 'dropout' key, position i)."""
    if positions is None:
        positions = jnp.arange(hidden.shape[0])
    keep = per_example(
        module.make_rng("dropout"),
        positions,
        lambda key: jax.random.bernoulli(key, 1.0 - rate, hidden.shape[1:]),
    )
    return jnp.where(keep, hidden / (1.0 - rate), 0.0)


class _LabelMapGenerator(nn.Module):
    """The fields both generators share (their docstrings say what each means)."""

    num_classes: int = NUM_CLASSES
    width: int = 64
    levels: int = 3
    first_layer: str = "conv"
    nib: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        _validate_first_layer(self.width, self.first_layer, self.nib)
        if self.levels < 1:
            raise ValueError(f"levels={self.levels!r} must be >= 1.")
        super().__post_init__()


class Pix2PixGenerator(_LabelMapGenerator):
    """Pix2Pix-style U-Net generator, label map → image (module docstring).

    Attributes:
      num_classes: K, the label map's channels.
      width: channels of the first layer; doubled per encoder level up to 8·width.
      levels: encoder steps (H and W divisible by 2^levels).
      first_layer: "conv" (plain 3×3) or "nib" (Noise Incentive Block).
      nib: the `NoiseIncentiveBlock` fields (not features/dtype), with "nib" only.
      dropout: dropout rate of the decoder's inner levels (all but the last) in training mode
        (Pix2Pix: 0.5, its only source of randomness); 0: none. Needs the 'dropout' rng.
    """

    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r} must lie in [0, 1).")
        super().__post_init__()

    def _features(self, level: int) -> int:
        return self.width * min(2**level, 8)

    @nn.compact
    def __call__(
        self, labels: jax.Array, positions: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        """One-hot label maps (B, H, W, K) → images (B, H, W, 3) in [−1, 1]; ``positions``: the
        rows' global positions (dynamic NIB noise, dropout masks); ``train``: dropout on."""
        _check_labels(labels, self.num_classes)
        _check_side(labels, self.levels)
        hidden = _first_layer(self.width, self.first_layer, self.nib, None, labels, positions)
        hidden = nn.leaky_relu(hidden, LEAKY_SLOPE)
        skips = [hidden]
        for level in range(1, self.levels + 1):
            hidden = nn.Conv(
                self._features(level), (4, 4), strides=2, padding="SAME", name=f"down{level}"
            )(hidden)
            if level < self.levels:  # the innermost map may be 1×1: no statistics to normalise
                hidden = _instance_norm(f"down{level}_norm")(hidden)
            hidden = nn.leaky_relu(hidden, LEAKY_SLOPE)
            skips.append(hidden)
        skips.pop()
        for level in reversed(range(self.levels)):
            hidden = nn.ConvTranspose(
                self._features(level), (4, 4), strides=(2, 2), padding="SAME", name=f"up{level}"
            )(hidden)
            hidden = _instance_norm(f"up{level}_norm")(hidden)
            if train and self.dropout > 0 and level > 0:
                hidden = _per_row_dropout(self, hidden, self.dropout, positions)
            hidden = jnp.concatenate([nn.relu(hidden), skips[level]], axis=-1)
        images = jnp.tanh(_conv(3, (3, 3), name="to_rgb")(hidden))
        chex.assert_shape(images, (*labels.shape[:3], 3))
        return images


class SpadeNorm(nn.Module):
    """A SPADE module: ``IN(x)·(1 + γ(m)) + β(m)``, γ and β 3×3 convolutions of a shared
    ReLU(first layer(m)) of the label map m at x's size; the shared layer is a plain 3×3
    convolution or a NIB (module docstring)."""

    features: int
    hidden: int
    first_layer: str = "conv"
    nib: Mapping[str, Any] | None = None

    @nn.compact
    def __call__(self, x: jax.Array, labels: jax.Array, positions: jax.Array | None) -> jax.Array:
        chex.assert_equal_shape_prefix((x, labels), 3)
        normalized = _instance_norm(affine=False)(x)
        shared = _first_layer(self.hidden, self.first_layer, self.nib, None, labels, positions)
        shared = nn.relu(shared)
        gamma = _conv(self.features, (3, 3), name="gamma")(shared)
        beta = _conv(self.features, (3, 3), name="beta")(shared)
        return normalized * (1.0 + gamma) + beta


class SpadeResBlock(nn.Module):
    """SPADE's residual block: [SPADE, leaky ReLU, 3×3 conv] twice, plus a shortcut (SPADE and a
    1×1 convolution without bias when the widths differ)."""

    features: int
    hidden: int
    first_layer: str = "conv"
    nib: Mapping[str, Any] | None = None

    @nn.compact
    def __call__(self, x: jax.Array, labels: jax.Array, positions: jax.Array | None) -> jax.Array:
        spade = functools.partial(
            SpadeNorm, hidden=self.hidden, first_layer=self.first_layer, nib=self.nib
        )
        middle = min(x.shape[-1], self.features)
        residual = nn.leaky_relu(spade(x.shape[-1], name="norm_0")(x, labels, positions), 0.2)
        residual = _conv(middle, (3, 3), name="conv_0")(residual)
        residual = nn.leaky_relu(spade(middle, name="norm_1")(residual, labels, positions), 0.2)
        residual = _conv(self.features, (3, 3), name="conv_1")(residual)
        shortcut = x
        if x.shape[-1] != self.features:
            shortcut = spade(x.shape[-1], name="norm_shortcut")(x, labels, positions)
            shortcut = nn.Conv(self.features, (1, 1), use_bias=False, name="conv_shortcut")(
                shortcut
            )
        return shortcut + residual


def nearest_resize(labels: jax.Array, side: tuple[int, int]) -> jax.Array:
    """The label map (B, H, W, K) sampled at the centres of a (h, w) grid (nearest neighbour,
    so it stays one-hot and flat segments stay flat)."""
    rows = (jnp.arange(side[0]) * labels.shape[1] + labels.shape[1] // 2) // side[0]
    columns = (jnp.arange(side[1]) * labels.shape[2] + labels.shape[2] // 2) // side[1]
    return labels[:, rows][:, :, columns]


class SpadeGenerator(_LabelMapGenerator):
    """SPADE-style generator from the downsampled label map (module docstring).

    Attributes:
      num_classes: K, the label map's channels.
      width: channels at full resolution; ×2 per level below it, up to 4·width.
      levels: ×2 upsamplings (the label map is read at H/2^levels first).
      first_layer: "conv" or "nib": every convolution that reads the label map.
      nib: the `NoiseIncentiveBlock` fields (not features/dtype), with "nib" only.
      spade_hidden: channels of the SPADE modules' shared layer (SPADE: 128); 0: ``width``.
    """

    spade_hidden: int = 0

    def _features(self, level: int) -> int:
        """Channels at ``level`` upsamplings (0: the smallest map)."""
        return self.width * min(2 ** (self.levels - level), 4)

    @nn.compact
    def __call__(
        self, labels: jax.Array, positions: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        """One-hot label maps (B, H, W, K) → images (B, H, W, 3) in [−1, 1]; ``positions``: the
        rows' global positions (dynamic NIB noise); ``train`` is unused (no dropout)."""
        del train
        _check_labels(labels, self.num_classes)
        _check_side(labels, self.levels)
        hidden_width = self.spade_hidden or self.width
        block = functools.partial(
            SpadeResBlock, hidden=hidden_width, first_layer=self.first_layer, nib=self.nib
        )
        factor = 2**self.levels
        side = (labels.shape[1] // factor, labels.shape[2] // factor)
        small = nearest_resize(labels, side)
        with_nib = dict(first_layer=self.first_layer, nib=self.nib)
        hidden = _Fc(self._features(0), **with_nib, name="fc")(small, positions)
        hidden = block(self._features(0), name="head")(hidden, small, positions)
        for level in range(1, self.levels + 1):
            hidden = jnp.repeat(jnp.repeat(hidden, 2, axis=1), 2, axis=2)
            resized = nearest_resize(labels, hidden.shape[1:3])
            hidden = block(self._features(level), name=f"up{level}")(hidden, resized, positions)
        images = jnp.tanh(_conv(3, (3, 3), name="to_rgb")(nn.leaky_relu(hidden, LEAKY_SLOPE)))
        chex.assert_shape(images, (*labels.shape[:3], 3))
        return images


class _Fc(nn.Module):
    """SPADE's ``fc``: the first layer (3×3 conv or NIB) on the downsampled label map."""

    features: int
    first_layer: str = "conv"
    nib: Mapping[str, Any] | None = None

    @nn.compact
    def __call__(self, labels: jax.Array, positions: jax.Array | None) -> jax.Array:
        return _first_layer(self.features, self.first_layer, self.nib, None, labels, positions)


class PatchDiscriminator(nn.Module):
    """Label-conditioned (multi-scale) PatchGAN (module docstring).

    ``inputs`` (B, H, W, K + 3): the one-hot label map and the image concatenated on channels →
    ``(logits, features)``: per scale, logits (B, h, w, 1) and the tuple of its hidden
    activations (for feature matching).
    """

    width: int = 64
    num_layers: int = 3
    num_scales: int = 1

    def __post_init__(self) -> None:
        if self.width < 1 or self.num_layers < 1 or self.num_scales < 1:
            raise ValueError(
                f"width={self.width!r}, num_layers={self.num_layers!r}, "
                f"num_scales={self.num_scales!r} must be positive integers."
            )
        super().__post_init__()

    @nn.compact
    def __call__(
        self, inputs: jax.Array
    ) -> tuple[tuple[jax.Array, ...], tuple[tuple[jax.Array, ...], ...]]:
        chex.assert_rank(inputs, 4)
        all_logits, all_features = [], []
        x = inputs
        for scale in range(self.num_scales):
            if scale:
                x = nn.avg_pool(x, (3, 3), strides=(2, 2), padding="SAME", count_include_pad=False)
            hidden, features = x, []
            for layer in range(self.num_layers + 1):
                stride = 2 if layer < self.num_layers else 1
                width = self.width * min(2**layer, 8)
                hidden = _conv(width, (4, 4), strides=stride, name=f"scale{scale}_conv{layer}")(
                    hidden
                )
                if layer:
                    hidden = _instance_norm(f"scale{scale}_norm{layer}")(hidden)
                hidden = nn.leaky_relu(hidden, LEAKY_SLOPE)
                features.append(hidden)
            all_logits.append(_conv(1, (4, 4), name=f"scale{scale}_logits")(hidden))
            all_features.append(tuple(features))
        return tuple(all_logits), tuple(all_features)


GENERATORS = {"pix2pix": Pix2PixGenerator, "spade": SpadeGenerator}


def build_generator(architecture: str, **fields: Any) -> Pix2PixGenerator | SpadeGenerator:
    """The generator of ``architecture`` ('pix2pix' or 'spade') with the module's ``fields``."""
    if architecture not in GENERATORS:
        raise ValueError(
            f"architecture={architecture!r} is not a synthesis generator; allowed: "
            f"{', '.join(GENERATORS)}."
        )
    return GENERATORS[architecture](**fields)


# The NIB of the registered NIB twins: the paper's F-D-N-0.3, f1(I) + f2(N) with dynamic N(0, 0.3),
# "especially suitable to the case of semantic input" (section 3.2).
REGISTERED_NIB = {"combine": "feature", "distribution": "normal", "noise_scale": 0.3}


def _generator_factory(architecture: str, first_layer: str):
    """A registry factory: the generator at width 32, 3 levels, on (1, 64, 64, K) label maps."""

    def factory(shape: tuple[int, ...] | None):
        nib = dict(REGISTERED_NIB, stationary=False) if first_layer == "nib" else None
        module = build_generator(architecture, width=32, first_layer=first_layer, nib=nib)
        example = jax.ShapeDtypeStruct(shape or (1, 64, 64, NUM_CLASSES), jnp.float32)
        return module, example, ("noise",) if first_layer == "nib" else ()

    return factory


def _discriminator_factory(shape: tuple[int, ...] | None):
    module = PatchDiscriminator(width=32, num_layers=3, num_scales=2)
    return module, jax.ShapeDtypeStruct(shape or (1, 64, 64, NUM_CLASSES + 3), jnp.float32), ()


register_block("synthesis_pix2pix", _generator_factory("pix2pix", "nib"))
register_block("synthesis_pix2pix_plain", _generator_factory("pix2pix", "conv"))
register_block("synthesis_spade", _generator_factory("spade", "nib"))
register_block("synthesis_spade_plain", _generator_factory("spade", "conv"))
register_block("synthesis_patch_discriminator", _discriminator_factory)
