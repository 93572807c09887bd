"""The halftoning networks of the NIB paper (section 3.2, Table 1): a ResNet and a U-Net.

Both map a grayscale image in [−1, 1], shape (B, H, W, 1), to the continuous map y = tanh(·) of the
same shape (float32); the halftoning task binarises y. Their first layer is a plain 3×3 convolution
("standard") or a Noise Incentive Block ("NIB-equipped": "adopting a NIB as the first layer could
potentially secure the whole CNN model free of flatness degradation", section 3.1). Params are
float32; `dtype` sets the compute dtype.
"""

import functools
from collections.abc import Mapping
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.typing import Dtype

from noise_research.layers.nib import NoiseIncentiveBlock
from noise_research.registry import register_block

FIRST_LAYERS = ("conv", "nib")
"""A halftoning model's first layer: a plain 3×3 convolution or a Noise Incentive Block."""

_NIB_KEYS_SET_BY_MODEL = ("features", "dtype", "param_dtype", "parent", "name")


def _validate_first_layer(width: int, first_layer: str, nib: Mapping[str, Any] | None) -> None:
    """Checks the fields the two models share; builds the NIB once so its own checks run now."""
    if width < 1:
        raise ValueError(f"width={width!r} must be a positive integer.")
    if first_layer not in FIRST_LAYERS:
        raise ValueError(f"first_layer={first_layer!r} is not supported; allowed: {FIRST_LAYERS}.")
    if nib is None:
        return
    if first_layer != "nib":
        raise ValueError(
            f"nib={dict(nib)!r} is given but first_layer={first_layer!r}; set "
            "first_layer='nib' to use it, or drop nib."
        )
    model_keys = sorted(set(nib) & set(_NIB_KEYS_SET_BY_MODEL))
    if model_keys:
        raise ValueError(
            f"nib={dict(nib)!r} sets {model_keys}: the model sets these itself "
            "(features = width, dtype = the model's dtype)."
        )
    NoiseIncentiveBlock(features=width, parent=None, **nib)


def _first_layer_kernel_size(first_layer: str, nib: Mapping[str, Any] | None) -> int:
    """The first layer's kernel size: 3, or the NIB's `kernel_size` (default 3)."""
    return (nib or {}).get("kernel_size", 3) if first_layer == "nib" else 3


def _first_layer(
    width: int,
    first_layer: str,
    nib: Mapping[str, Any] | None,
    dtype: Dtype | None,
    images: jax.Array,
    positions: jax.Array | None,
) -> jax.Array:
    """The model's first layer applied to `images` (call inside a compact method): a 3×3 conv or a
    NIB, which takes the rows' global positions for its dynamic noise."""
    if first_layer == "nib":
        block = NoiseIncentiveBlock(
            features=width, dtype=dtype, param_dtype=jnp.float32, name="nib", **(nib or {})
        )
        return block(images, positions)
    conv = nn.Conv(
        width, (3, 3), padding="SAME", dtype=dtype, param_dtype=jnp.float32, name="first_conv"
    )
    return conv(images)


def _check_halftone_input(images: jax.Array) -> None:
    chex.assert_rank(images, 4)
    chex.assert_axis_dimension(images, 3, 1)


class HalftoneResNet(nn.Module):
    """The paper's halftoning ResNet: first layer, `num_blocks` residual blocks, 3×3 conv, tanh.

    first layer (3×3 conv or NIB) → ReLU → `num_blocks` × [h = ReLU(h + conv(ReLU(conv(h))))]
    with 3×3 convs of `width` channels → 3×3 conv to 1 channel → tanh, the layout of the
    project's PyTorch peer benchmark (peer_torch_halftone.py). Receptive field: every 3×3 conv on
    the longest path adds 2, so 1 + 2·(2·num_blocks + 2) = 4·num_blocks + 5 = 45×45 for 10 blocks
    (the paper quotes ≈41×41); `receptive_field` gives it.

    Attributes:
      width: channels of every hidden layer.
      first_layer: "conv" (standard) or "nib" (NIB-equipped).
      nib: keyword arguments for the `NoiseIncentiveBlock` (not features/dtype), with "nib" only.
      num_blocks: residual blocks (paper: 10).
      dtype: compute dtype (None: float32); params are float32.
    """

    width: int = 64
    first_layer: str = "conv"
    nib: Mapping[str, Any] | None = None
    num_blocks: int = 10
    dtype: Dtype | None = None

    def __post_init__(self) -> None:
        _validate_first_layer(self.width, self.first_layer, self.nib)
        if self.num_blocks < 0:
            raise ValueError(f"num_blocks={self.num_blocks!r} must be >= 0.")
        super().__post_init__()

    @property
    def receptive_field(self) -> int:
        """Side of the square receptive field of one output pixel, in pixels (45 by default)."""
        return _first_layer_kernel_size(self.first_layer, self.nib) + 4 * self.num_blocks + 2

    @nn.compact
    def __call__(self, images: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """Maps (B, H, W, 1) images in [−1, 1] to the continuous (B, H, W, 1) float32 map y;
        `positions`: the rows' global positions, for a dynamic-noise NIB (see its docstring)."""
        _check_halftone_input(images)
        conv = functools.partial(
            nn.Conv, kernel_size=(3, 3), padding="SAME", dtype=self.dtype, param_dtype=jnp.float32
        )
        hidden = nn.relu(
            _first_layer(self.width, self.first_layer, self.nib, self.dtype, images, positions)
        )
        for block in range(self.num_blocks):
            residual = nn.relu(conv(self.width, name=f"block{block}_conv1")(hidden))
            residual = conv(self.width, name=f"block{block}_conv2")(residual)
            hidden = nn.relu(hidden + residual)
        outputs = jnp.tanh(conv(1, name="output_conv")(hidden)).astype(jnp.float32)
        chex.assert_equal_shape((outputs, images))
        return outputs


def _unet_receptive_field_range(levels: int, first_kernel_size: int) -> tuple[int, int]:
    """Exact (smallest, largest) receptive-field side of `HalftoneUNet` outputs, along one axis.

    Propagates, for every position of a long 1-D line, the interval [lo, hi] of input pixels it
    depends on through the same sequence of layers as `HalftoneUNet.__call__`: a 'SAME' conv
    takes the union over its window, pooling over its pair, upsampling copies, a skip
    concatenation unites the two branches. The line is long enough that its wrapped ends
    (np.roll) never reach the central 2^levels positions that are measured.
    """
    size = 32 * 2**levels
    extent = np.stack([np.arange(size), np.arange(size)])  # rows: lo, hi

    def union(first: np.ndarray, second: np.ndarray) -> np.ndarray:
        return np.stack([np.minimum(first[0], second[0]), np.maximum(first[1], second[1])])

    def conv(extent: np.ndarray, kernel_size: int = 3) -> np.ndarray:
        half_width = kernel_size // 2
        shifted = [np.roll(extent, shift, axis=1) for shift in range(-half_width, half_width + 1)]
        return functools.reduce(union, shifted)

    extent = conv(extent, first_kernel_size)
    skips = []
    for level in range(levels):
        extent = conv(extent) if level == 0 else conv(conv(extent))
        skips.append(extent)
        extent = union(extent[:, 0::2], extent[:, 1::2])
    extent = conv(conv(extent))
    for level in reversed(range(levels)):
        extent = conv(conv(union(np.repeat(extent, 2, axis=1), skips[level])))
    lo, hi = extent[:, size // 2 : size // 2 + 2**levels]
    sides = hi - lo + 1
    return int(sides.min()), int(sides.max())


class HalftoneUNet(nn.Module):
    """The paper's halftoning U-Net: an encoder–decoder with skip connections.

    Encoder level l = 0 … levels−1 (width·2^l channels): two 3×3 convs with ReLU (at level 0 the
    first is the model's first layer, conv or NIB), kept as the skip, then 2×2 average pooling.
    Bottleneck: two 3×3 convs (width·2^levels channels). Decoder level l = levels−1 … 0: ×2
    nearest upsampling, concatenation with skip l, two 3×3 convs with ReLU. Then a 1×1 conv to 1
    channel and tanh. H and W must be divisible by 2^levels.

    Receptive field: the classic sum Σ (k − 1)·spacing gives 13·2^levels − 8 = 200 for 4 levels,
    but nearest upsampling makes the side depend on where the output pixel sits on the
    2^levels-pixel pooling grid: exactly, it ranges from 188 to 204 pixels for 4 levels (92 to
    100 for 3, 380 to 412 for 5), so 4 levels land nearest the paper's ≈183×183.
    `receptive_field_range` gives (smallest, largest), `receptive_field` the largest.

    Attributes:
      width: channels at full resolution; doubled at every level.
      first_layer: "conv" (standard) or "nib" (NIB-equipped).
      nib: keyword arguments for the `NoiseIncentiveBlock` (not features/dtype), with "nib" only.
      levels: number of 2× downsamplings.
      dtype: compute dtype (None: float32); params are float32.
    """

    width: int = 64
    first_layer: str = "conv"
    nib: Mapping[str, Any] | None = None
    levels: int = 4
    dtype: Dtype | None = None

    def __post_init__(self) -> None:
        _validate_first_layer(self.width, self.first_layer, self.nib)
        if self.levels < 1:
            raise ValueError(f"levels={self.levels!r} must be >= 1.")
        super().__post_init__()

    @property
    def receptive_field_range(self) -> tuple[int, int]:
        """Smallest and largest receptive-field side over output pixels ((188, 204) by default)."""
        return _unet_receptive_field_range(
            self.levels, _first_layer_kernel_size(self.first_layer, self.nib)
        )

    @property
    def receptive_field(self) -> int:
        """Largest receptive-field side of any output pixel, in pixels (204 by default)."""
        return self.receptive_field_range[1]

    @nn.compact
    def __call__(self, images: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """Maps (B, H, W, 1) images in [−1, 1] to the continuous (B, H, W, 1) float32 map y;
        `positions`: the rows' global positions, for a dynamic-noise NIB (see its docstring)."""
        _check_halftone_input(images)
        factor = 2**self.levels
        if images.shape[1] % factor or images.shape[2] % factor:
            raise ValueError(
                f"images of shape {images.shape}: H and W must be divisible by 2**levels = "
                f"{factor} (levels={self.levels})."
            )
        conv = functools.partial(
            nn.Conv, kernel_size=(3, 3), padding="SAME", dtype=self.dtype, param_dtype=jnp.float32
        )
        hidden = nn.relu(
            _first_layer(self.width, self.first_layer, self.nib, self.dtype, images, positions)
        )
        skips = []
        for level in range(self.levels):
            features = self.width * 2**level
            if level > 0:
                hidden = nn.relu(conv(features, name=f"encoder{level}_conv1")(hidden))
            hidden = nn.relu(conv(features, name=f"encoder{level}_conv2")(hidden))
            skips.append(hidden)
            hidden = nn.avg_pool(hidden, (2, 2), strides=(2, 2))
        bottleneck_features = self.width * factor
        hidden = nn.relu(conv(bottleneck_features, name="bottleneck_conv1")(hidden))
        hidden = nn.relu(conv(bottleneck_features, name="bottleneck_conv2")(hidden))
        for level in reversed(range(self.levels)):
            features = self.width * 2**level
            hidden = jnp.repeat(jnp.repeat(hidden, 2, axis=1), 2, axis=2)
            hidden = jnp.concatenate([hidden, skips[level]], axis=-1)
            hidden = nn.relu(conv(features, name=f"decoder{level}_conv1")(hidden))
            hidden = nn.relu(conv(features, name=f"decoder{level}_conv2")(hidden))
        output_conv = nn.Conv(
            1, (1, 1), dtype=self.dtype, param_dtype=jnp.float32, name="output_conv"
        )
        outputs = jnp.tanh(output_conv(hidden)).astype(jnp.float32)
        chex.assert_equal_shape((outputs, images))
        return outputs


HALFTONE_MODELS = {"resnet": HalftoneResNet, "unet": HalftoneUNet}


def build_halftone_model(name: str, **kwargs: Any) -> HalftoneResNet | HalftoneUNet:
    """Builds the halftoning model `name` ("resnet" or "unet") with the model's fields `kwargs`."""
    if name not in HALFTONE_MODELS:
        raise ValueError(
            f"name={name!r} is not a halftoning model; allowed: {tuple(HALFTONE_MODELS)}."
        )
    return HALFTONE_MODELS[name](**kwargs)


def _halftone_block_factory(model_class: type[nn.Module], first_layer: str):
    """A registry factory for the model at width 64 with ``first_layer`` 'nib' (stationary
    N(0, 0.3)) or 'conv' (the plain 3×3 twin); default input (1, 64, 64, 1)."""

    def factory(shape: tuple[int, ...] | None):
        module = model_class(first_layer=first_layer)
        return module, jax.ShapeDtypeStruct(shape or (1, 64, 64, 1), jnp.float32), ()

    return factory


register_block("halftone_resnet", _halftone_block_factory(HalftoneResNet, "nib"))
register_block("halftone_unet", _halftone_block_factory(HalftoneUNet, "nib"))
register_block("halftone_resnet_plain", _halftone_block_factory(HalftoneResNet, "conv"))
register_block("halftone_unet_plain", _halftone_block_factory(HalftoneUNet, "conv"))
